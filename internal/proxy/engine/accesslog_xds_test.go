package engine

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fileLog is an xDS file access log as istiod writes it: text
// (text_format_source) or JSON (json_format), optionally with a CEL
// filter.
func fileLogProto(path, text string, jsonFormat map[string]string, filter string) *accesslogv3.AccessLog {
	lf := &corev3.SubstitutionFormatString{}
	if jsonFormat != nil {
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for k, v := range jsonFormat {
			s.Fields[k] = structpb.NewStringValue(v)
		}
		lf.Format = &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: s}
	} else {
		lf.Format = &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: text}}}
	}
	tc, _ := anypb.New(&filev3.FileAccessLog{Path: path, AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: lf}})
	al := &accesslogv3.AccessLog{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: tc}}
	if filter != "" {
		ftc, _ := anypb.New(&celv3.ExpressionFilter{Expression: filter})
		al.Filter = &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
			ExtensionFilter: &accesslogv3.ExtensionFilter{Name: celFilterName, ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: ftc}}}}
	}
	return al
}

// withAccessLogs returns l with als on every chain's HCM or tcp_proxy.
func withAccessLogs(l *listenerv3.Listener, als ...*accesslogv3.AccessLog) *listenerv3.Listener {
	l = proto.Clone(l).(*listenerv3.Listener)
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			var m interface {
				proto.Message
			}
			switch {
			case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
				h := &hcmv3.HttpConnectionManager{}
				_ = tc.UnmarshalTo(h)
				h.AccessLog = als
				m = h
			case tc.MessageIs(&tcpproxyv3.TcpProxy{}):
				t := &tcpproxyv3.TcpProxy{}
				_ = tc.UnmarshalTo(t)
				t.AccessLog = als
				m = t
			default:
				continue
			}
			a, _ := anypb.New(m)
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		}
	}
	return l
}

// getStatus GETs url with the header pairs in hdr ("Host" sets the
// authority) and returns the status.
func getStatus(t *testing.T, url string, hdr ...string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestXDSAccessLogHTTP: an HCM's file access logs write each request in
// their own format (request and response headers, route, cluster), the
// CEL filters keep only errors in the JSON log and only requests with a
// header no format reads in the third, and a config without access logs
// closes the files while traffic goes on.
func TestXDSAccessLogHTTP(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", "b1")
		if r.URL.Path == "/missing" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer backend.Close()
	dir := t.TempDir()
	textPath, jsonPath, debugPath := filepath.Join(dir, "text.log"), filepath.Join(dir, "json.log"), filepath.Join(dir, "debug.log")
	addr := freeAddr(t)
	const cluster = "outbound|80||backend"
	plain := httpListener("0.0.0.0_8080", addr, cluster, nil)
	logged := withAccessLogs(plain,
		fileLogProto(textPath, "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESP(x-backend)% %REQ(x-custom?user-agent)% "+
			"%UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS% %DOWNSTREAM_LOCAL_ADDRESS%\n", nil, ""),
		fileLogProto(jsonPath, "", accesslog.IstioJSONFormat, "response.code >= 400"),
		fileLogProto(debugPath, "%REQ(:PATH)% %RESPONSE_CODE%\n", nil,
			"request.headers['X-Debug'] == 'on' && response.headers['x-backend'].startsWith('b') && xds.cluster_name == '"+cluster+"'"))
	e := New(slog.New(slog.DiscardHandler), Options{})
	defer e.shutdown()
	snap := func(l *listenerv3.Listener) *xdsclient.Snapshot {
		return &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{l.GetName(): l},
			Clusters: map[string]*clusterv3.Cluster{cluster: staticCluster(cluster, netip.MustParseAddrPort(backend.Listener.Addr().String()), false)}}
	}
	if err := e.Apply(snap(logged)); err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr.String()
	if c := getStatus(t, base+"/ok?x=1", "X-Custom", "c1"); c != 200 {
		t.Fatalf("status %d", c)
	}
	if c := getStatus(t, base+"/missing", "User-Agent", "ua", "X-Debug", "on"); c != 404 {
		t.Fatalf("status %d", c)
	}
	if c := getStatus(t, base+"/other", "X-Debug", "off"); c != 200 {
		t.Fatalf("status %d", c)
	}
	http.DefaultClient.CloseIdleConnections()
	// Applying a config without access logs releases the files: their
	// loggers write what they hold and close.
	if err := e.Apply(snap(plain)); err != nil {
		t.Fatal(err)
	}
	if p := e.logFiles.Paths(); len(p) != 0 {
		t.Fatalf("files still open: %v", p)
	}
	if c := getStatus(t, base+"/after"); c != 200 {
		t.Fatalf("status %d", c)
	}
	text, _ := os.ReadFile(textPath)
	want := "GET /ok?x=1 200 b1 c1 outbound|80||backend via_upstream " + addr.String() + "\n" +
		"GET /missing 404 b1 ua outbound|80||backend via_upstream " + addr.String() + "\n" +
		"GET /other 200 b1 Go-http-client/1.1 outbound|80||backend via_upstream " + addr.String() + "\n"
	if diff := cmp.Diff(string(text), want); diff != "" {
		t.Errorf("text log (-got +want)\n%s", diff)
	}
	debug, _ := os.ReadFile(debugPath)
	if diff := cmp.Diff(string(debug), "/missing 404\n"); diff != "" {
		t.Errorf("debug log, want the request with X-Debug: on only (-got +want)\n%s", diff)
	}
	js, _ := os.ReadFile(jsonPath)
	lines := strings.Split(strings.TrimSpace(string(js)), "\n")
	if len(lines) != 1 {
		t.Fatalf("json log, want the 404 only:\n%s", js)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	if got["path"] != "/missing" || got["response_code"] != 404.0 || got["method"] != "GET" || got["upstream_host"] != backend.Listener.Addr().String() {
		t.Errorf("json entry %v", got)
	}
}

// TestXDSAccessLogUpstreamLocal: %UPSTREAM_LOCAL_ADDRESS% is the address
// the backend saw the request come from, on the in-place HTTP/1.1 fast
// path (GET) and through net/http's transport (POST with a body).
func TestXDSAccessLogUpstreamLocal(t *testing.T) {
	peers := make(chan string, 4)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		peers <- r.RemoteAddr
	}))
	defer backend.Close()
	path := filepath.Join(t.TempDir(), "a.log")
	addr := freeAddr(t)
	const cluster = "outbound|80||backend"
	l := withAccessLogs(httpListener("0.0.0.0_8080", addr, cluster, nil),
		fileLogProto(path, "%REQ(:METHOD)% %UPSTREAM_LOCAL_ADDRESS%\n", nil, ""))
	e := New(slog.New(slog.DiscardHandler), Options{})
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{l.GetName(): l},
		Clusters: map[string]*clusterv3.Cluster{cluster: staticCluster(cluster, netip.MustParseAddrPort(backend.Listener.Addr().String()), false)}}); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, method := range []string{"GET", "POST"} {
		req, _ := http.NewRequest(method, "http://"+addr.String()+"/", nil)
		if method == "POST" {
			req, _ = http.NewRequest(method, "http://"+addr.String()+"/", strings.NewReader("body"))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Fprintf(&want, "%s %s\n", method, <-peers)
	}
	e.shutdown() // writes what the logger holds
	got, _ := os.ReadFile(path)
	if string(got) != want.String() {
		t.Errorf("access log:\n%s\nwant (the backend's view of the sidecar's address):\n%s", got, want.String())
	}
}

// TestXDSAccessLogTCP: a tcp_proxy's access log has the connection's
// addresses and bytes.
func TestXDSAccessLogTCP(t *testing.T) {
	echo := tcpEcho(t)
	path, deadPath := filepath.Join(t.TempDir(), "tcp.log"), filepath.Join(t.TempDir(), "dead.log")
	addr, deadAddr, nobody := freeAddr(t), freeAddr(t), freeAddr(t)
	const format = "%REQ(:METHOD)% %RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %DOWNSTREAM_LOCAL_ADDRESS% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%" +
		" %DYNAMIC_METADATA(envoy.filters.network.rbac:istio_dry_run_deny_shadow_engine_result)%"
	// The echo chain has an istiod dry-run DENY of every loopback peer:
	// the connection goes through, and its log says it would not have.
	echoChain := tcpChainProto("echo", "echo", 0)
	dry := &netrbacv3.RBAC{StatPrefix: "tcp.", ShadowRulesStatPrefix: "istio_dry_run_deny_", ShadowRules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY,
		Policies: map[string]*rbacv3.Policy{"ns[default]-policy[dry]-rule[0]": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
			Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: &corev3.CidrRange{
				AddressPrefix: "127.0.0.0", PrefixLen: wrapperspb.UInt32(8)}}}}}}}}
	echoChain.Filters = append([]*listenerv3.Filter{{Name: "envoy.filters.network.rbac",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, dry)}}}, echoChain.Filters...)
	l := withAccessLogs(&listenerv3.Listener{Name: "echo", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{echoChain}},
		fileLogProto(path, format, nil, ""),
		fileLogProto(path, "errors only", nil, "response.code >= 400"))
	dead := withAccessLogs(&listenerv3.Listener{Name: "dead", Address: socketAddr(deadAddr), FilterChains: []*listenerv3.FilterChain{tcpChainProto("dead", "dead", 0)}},
		fileLogProto(deadPath, format, nil, ""))
	reg := prometheus.NewRegistry()
	e := New(slog.New(slog.DiscardHandler), Options{Registerer: reg})
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"echo": l, "dead": dead},
		Clusters: map[string]*clusterv3.Cluster{"echo": staticCluster("echo", netip.MustParseAddrPort(echo.Addr().String()), false),
			"dead": staticCluster("dead", nobody, false)}}); err != nil {
		t.Fatal(err)
	}
	pingTCP(t, e, addr)
	// The verdict is counted as Istio exposes it (rbacstats.go).
	if got := metricSeries(t, reg, "envoy_tcp_rbac"); len(got) != 1 || got[0] != "authz_dry_run_action=deny,authz_dry_run_result=denied" {
		t.Errorf("envoy_tcp_rbac %q, want one denied dry-run DENY verdict", got)
	}
	// A refused connection is one attempt, flagged UF.
	if c, err := net.Dial("tcp", deadAddr.String()); err == nil {
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}
	e.shutdown() // closes the files
	if got, _ := os.ReadFile(deadPath); string(got) != "- 0 0 0 dead "+nobody.String()+" "+deadAddr.String()+" UF 1 -\n" {
		t.Errorf("refused connection logged %q", got)
	}
	got, _ := os.ReadFile(path)
	want := "- 0 5 5 echo " + echo.Addr().String() + " " + addr.String() + " - 1 denied\n"
	if diff := cmp.Diff(string(got), want); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
}

// TestXDSAccessLogNACK: formats and filters weft cannot honour fail
// validation with the reason (the xDS client NACKs).
func TestXDSAccessLogNACK(t *testing.T) {
	dir := t.TempDir()
	base := httpListener("l", freeAddr(t), "c", nil)
	grpcLog, _ := anypb.New(&hcmv3.HttpConnectionManager{})
	for name, tc := range map[string]struct {
		al   *accesslogv3.AccessLog
		want string
	}{
		"operator":        {fileLogProto(filepath.Join(dir, "a"), "%REQ(:METHOD)% %FOO_BAR%", nil, ""), "command operator %FOO_BAR% is not supported"},
		"json":            {fileLogProto(filepath.Join(dir, "a"), "", map[string]string{"x": "%FILTER_STATE(a)%"}, ""), `json_format "x"`},
		"filter":          {fileLogProto(filepath.Join(dir, "a"), "x", nil, "request.headers[request.method] == 'x'"), "can only be read by a constant name"},
		"cel syntax":      {fileLogProto(filepath.Join(dir, "a"), "x", nil, "response.code >= "), "Syntax error"},
		"not bool":        {fileLogProto(filepath.Join(dir, "a"), "x", nil, "1 + 2"), "not a bool"},
		"logger":          {&accesslogv3.AccessLog{Name: "grpc", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: grpcLog}}, "is not supported (envoy.extensions.access_loggers.file.v3.FileAccessLog and open_telemetry.v3.OpenTelemetryAccessLogConfig are)"},
		"untyped":         {&accesslogv3.AccessLog{Name: "x"}, "is not supported"},
		"no path":         {fileLogProto("", "x", nil, ""), "without a path"},
		"unwritable":      {fileLogProto(filepath.Join(dir, "missing", "a.log"), "x", nil, ""), "access log: open " + filepath.Join(dir, "missing", "a.log") + ": no such file or directory"},
		"otel operator":   {otelLogProto("c", "x", "%FOO_BAR%", false), "open_telemetry: body: command operator %FOO_BAR% is not supported"},
		"otel attribute":  {otelLogProto("c", "x", "", false, "a", "%FOO_BAR%"), `open_telemetry: attribute "a": command operator %FOO_BAR% is not supported`},
		"otel no cluster": {otelLogProto("", "x", "", false), "must be an envoy_grpc naming a cluster"},
		"otel http": {otelVariant(otelLogProto("c", "x", "", false), func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
			c.HttpService = &corev3.HttpService{}
		}), "http_service is not supported"},
		"otel google_grpc": {otelVariant(otelLogProto("c", "x", "", false), func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
			c.GrpcService.TargetSpecifier = &corev3.GrpcService_GoogleGrpc_{}
		}), "google_grpc is not supported"},
		"otel kvlist body": {otelVariant(otelLogProto("c", "x", "", false), func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
			c.Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{}}}
		}), "body: only string values are supported"},
		"flagfilter": {withFilter(fileLogProto(filepath.Join(dir, "a"), "x", nil, ""), &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{}}}), "ResponseFlagFilter is not supported"},
	} {
		e := New(slog.New(slog.DiscardHandler), Options{})
		err := e.Validate(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"l": withAccessLogs(base, tc.al)},
			Clusters: map[string]*clusterv3.Cluster{"c": staticCluster("c", freeAddr(t), false)}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "listener l:") {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// otelVariant is OpenTelemetry access log al changed by f.
func otelVariant(al *accesslogv3.AccessLog, f func(*otelalsv3.OpenTelemetryAccessLogConfig)) *accesslogv3.AccessLog {
	al = proto.Clone(al).(*accesslogv3.AccessLog)
	cfg := &otelalsv3.OpenTelemetryAccessLogConfig{}
	_ = al.GetTypedConfig().UnmarshalTo(cfg)
	f(cfg)
	tc, _ := anypb.New(cfg)
	al.ConfigType = &accesslogv3.AccessLog_TypedConfig{TypedConfig: tc}
	return al
}

func withFilter(al *accesslogv3.AccessLog, f *accesslogv3.AccessLogFilter) *accesslogv3.AccessLog {
	al.Filter = f
	return al
}

// BenchmarkAccessLogHop: one plaintext hop to a backend, without access
// logs (the request path only checks a nil pointer: the allocations must
// equal those of a proxy built before access logs existed) and with
// Istio's TEXT and JSON formats on the HCM.
func BenchmarkAccessLogHop(b *testing.B) {
	backend := startBackend(b, 1024)
	const cluster = "outbound|80||backend"
	for _, bc := range []struct {
		name string
		als  []*accesslogv3.AccessLog
	}{
		{"off", nil},
		{"text", []*accesslogv3.AccessLog{fileLogProto(filepath.Join(b.TempDir(), "a.log"), accesslog.IstioTextFormat, nil, "")}},
		{"json", []*accesslogv3.AccessLog{fileLogProto(filepath.Join(b.TempDir(), "a.log"), "", accesslog.IstioJSONFormat, "")}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			addr := freeAddr(b)
			l := httpListener("0.0.0.0_8080", addr, cluster, nil)
			if bc.als != nil {
				l = withAccessLogs(l, bc.als...)
			}
			startEngine(b, nil, l, staticCluster(cluster, backend, false))
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr.String()+"/echo", nil)
			b.ReportAllocs()
			for b.Loop() {
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// TestXDSAccessLogPeerCertificate: on an inbound chain under mutual TLS
// the access log has the client certificate's URI SAN and the TLS
// version, and a CEL filter on the connection's attributes passes.
func TestXDSAccessLogPeerCertificate(t *testing.T) {
	backend := startBackend(t, 10)
	clientID, serverID := newTestMesh(t)
	path := filepath.Join(t.TempDir(), "in.log")
	inAddr := freeAddr(t)
	in := withAccessLogs(httpListener("virtualInbound", inAddr, "inbound|8080||", inboundTLS()),
		fileLogProto(path, "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_TLS_VERSION% %REQ(:METHOD)%\n", nil,
			"connection.mtls && request.scheme == 'https' && connection.uri_san_peer_certificate.endsWith('/sa/client')"))
	inbound, err := newEngine(serverID, in, staticCluster("inbound|8080||", backend, false))
	if err != nil {
		t.Fatal(err)
	}
	defer inbound.shutdown()
	outAddr := freeAddr(t)
	const svc = "outbound|8080||server.default.svc.cluster.local"
	startEngine(t, clientID, httpListener("0.0.0.0_8080", outAddr, svc, nil), staticCluster(svc, inAddr, true))
	if c := getStatus(t, "http://"+outAddr.String()+"/"); c != 200 {
		t.Fatalf("status %d", c)
	}
	http.DefaultClient.CloseIdleConnections()
	inbound.shutdown() // writes the queued lines
	got, _ := os.ReadFile(path)
	if want := "spiffe://cluster.local/ns/default/sa/client TLSv1.3 GET\n"; string(got) != want {
		t.Errorf("inbound log %q, want %q", got, want)
	}
}
