// Package ldsgolden reads the LDS/RDS golden files of weft's translator
// (internal/pilot/translate/testdata/lds: the exact listeners and routes the
// control plane sends) for the proxy's tests.
//
// It links every Envoy type those files carry (filters, access loggers,
// retry plugins, transport sockets) so that they decode: when the
// translator starts to emit a new type, register it here, once.
package ldsgolden

import (
	"encoding/json"
	"os"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/priority/previous_priorities/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// Dir is the golden directory as seen from a package directory under
// internal/proxy (such as internal/proxy/route).
const Dir = "../../pilot/translate/testdata/lds"

// Load decodes the listeners and the RDS routes of one golden file.
func Load(t testing.TB, file string) ([]*listenerv3.Listener, []*routev3.RouteConfiguration) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Listeners []json.RawMessage `json:"listeners"`
		Routes    []json.RawMessage `json:"routes"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var routes []*routev3.RouteConfiguration
	for _, r := range doc.Routes {
		rc := &routev3.RouteConfiguration{}
		if err := protojson.Unmarshal(r, rc); err != nil {
			t.Fatalf("%s: route: %v", file, err)
		}
		routes = append(routes, rc)
	}
	var listeners []*listenerv3.Listener
	for _, l := range doc.Listeners {
		lis := &listenerv3.Listener{}
		if err := protojson.Unmarshal(l, lis); err != nil {
			t.Fatalf("%s: listener: %v", file, err)
		}
		listeners = append(listeners, lis)
	}
	return listeners, routes
}
