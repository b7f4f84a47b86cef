package engine

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// denyListener is an HTTP listener on addr answering 200 directly, with
// the test filter denying requests that carry header deny.
func denyListener(t *testing.T, addr netip.AddrPort, deny string) *listenerv3.Listener {
	t.Helper()
	cfg, _ := anypb.New(wrapperspb.String(deny))
	router, _ := anypb.New(&routerv3.Router{})
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: "in",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "in",
			VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
					Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "ok"}}}},
			}}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{hf("deny", cfg, false), hf("envoy.filters.http.router", router, false)},
	}
	hcm, _ := anypb.New(h)
	return &listenerv3.Listener{
		Name:    "in",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: addr.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port())}}}},
		FilterChains: []*listenerv3.FilterChain{{Name: "http", Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}
}

// TestListenerUpdateDrainsConnections: after an update that changes a
// listener's filters, the next request of a keep-alive connection runs
// the new filters, then an HTTP/1 connection is closed; an update that
// leaves the listener alone changes nothing.
func TestListenerUpdateDrainsConnections(t *testing.T) {
	t.Run("http1", func(t *testing.T) { testDrain(t, &http.Transport{}, false) })
	t.Run("h2c", func(t *testing.T) {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		testDrain(t, &http.Transport{Protocols: &p}, true)
	})
}

func testDrain(t *testing.T, tr *http.Transport, h2 bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	e := New(slog.New(slog.DiscardHandler), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan *xdsclient.Snapshot)
	done := make(chan struct{})
	go func() { _ = e.Run(ctx, updates); close(done) }()
	defer func() { cancel(); <-done }()
	snap := func(deny string, clusters ...string) *xdsclient.Snapshot {
		s := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"in": denyListener(t, addr, deny)},
			Clusters: map[string]*clusterv3.Cluster{}}
		for _, c := range clusters {
			s.Clusters[c] = &clusterv3.Cluster{Name: c, ConnectTimeout: durationpb.New(1e9),
				ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}
		}
		return s
	}
	apply := func(s *xdsclient.Snapshot) {
		t.Helper()
		if err := e.Validate(s); err != nil {
			t.Fatal(err)
		}
		updates <- s
		// Run applies before taking the next update: a second, identical
		// send returns once the first one was applied.
		updates <- s
	}
	client := &http.Client{Transport: tr}
	do := func() (int, bool) {
		t.Helper()
		reused := false
		req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
		req.Header.Set("X-Evil", "1")
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, reused
	}
	apply(snap("X-Evil"))
	if code, _ := do(); code != http.StatusForbidden {
		t.Fatalf("first config: %d, want 403", code)
	}
	// An unrelated change (a new cluster): the connection stays.
	apply(snap("X-Evil", "other"))
	if code, reused := do(); code != http.StatusForbidden || !reused {
		t.Fatalf("after an unrelated update: %d reused=%v, want 403 on the same connection", code, reused)
	}
	// The listener's filter changes: the next request on the same
	// connection already runs the new filter.
	apply(snap("X-Other", "other"))
	if code, reused := do(); code != http.StatusOK || !reused {
		t.Fatalf("after the listener changed: %d reused=%v, want 200 on the old connection", code, reused)
	}
	// HTTP/1 connections are then closed (drained); h2 ones stay.
	if code, reused := do(); code != http.StatusOK || reused != h2 {
		t.Fatalf("next request: %d reused=%v, want 200 with reused=%v", code, reused, h2)
	}
	// The connection's chain goes away: its requests are refused, and a
	// new connection gets the new chain.
	s := snap("X-Other", "other")
	s.Listeners["in"].FilterChains[0].Name = "renamed"
	apply(s)
	if code, _ := do(); code != http.StatusServiceUnavailable {
		t.Fatalf("chain renamed: %d, want 503", code)
	}
	tr.CloseIdleConnections()
	if code, reused := do(); code != http.StatusOK || reused {
		t.Fatalf("new connection after the rename: %d reused=%v", code, reused)
	}
}
