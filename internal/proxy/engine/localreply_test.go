package engine

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
)

// localReplyListener routes by path prefix to what makes each kind of
// local reply: a cluster without endpoints (UH), a backend slower than the
// route timeout (UT), fault aborts (gRPC and HTTP status), a direct
// response, a missing cluster (NC); other paths match no route (NR).
func localReplyListener(t *testing.T, addr netip.AddrPort, slow, empty string) *listenerv3.Listener {
	t.Helper()
	abort := func(fa *faultv3.FaultAbort) map[string]*anypb.Any {
		fa.Percentage = &typev3.FractionalPercent{Numerator: 100}
		a, err := anypb.New(&faultv3.HTTPFault{Abort: fa})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]*anypb.Any{"envoy.filters.http.fault": a}
	}
	to := func(prefix, cluster string, timeout time.Duration) *routev3.Route {
		return &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}, Timeout: durationpb.New(timeout)}}}
	}
	faultGRPC := to("/fault.grpc", slow, 0)
	faultGRPC.TypedPerFilterConfig = abort(&faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: uint32(codes.ResourceExhausted)}})
	faultHTTP := to("/fault.http", slow, 0)
	faultHTTP.TypedPerFilterConfig = abort(&faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 403}})
	direct := &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/direct."}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 503,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "down for maintenance: 100% ünplanned"}}}}}
	rc := &routev3.RouteConfiguration{Name: "local", VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"},
		Routes: []*routev3.Route{
			to("/nohost.", empty, 0), to("/slow.", slow, 50*time.Millisecond), faultGRPC, faultHTTP, direct,
			to("/nocluster.", "outbound|1||missing", 0),
		}}}}
	faultCfg, _ := anypb.New(&faultv3.HTTPFault{})
	router, _ := anypb.New(&routerv3.Router{})
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: "local",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.fault", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: faultCfg}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{Name: "local", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
}

// TestLocalReplyGRPC: every reply the proxy makes itself reaches a gRPC
// client (grpc-go over h2c) as a trailers-only gRPC status, with Envoy's
// code (from gRPC's HTTP mapping, or the fault's own) and the reply's
// text as the message; the access log records HTTP 200 and the gRPC
// status. A plain HTTP client on the same routes still gets the HTTP
// status and body.
func TestLocalReplyGRPC(t *testing.T) {
	slowL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	slowSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})}
	go func() { _ = slowSrv.Serve(slowL) }()
	defer slowSrv.Close()
	const slow, empty = "outbound|80||slow", "outbound|80||empty"
	addr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	e := New(slog.New(slog.DiscardHandler), Options{})
	defer e.shutdown()
	plain := localReplyListener(t, addr, slow, empty)
	snap := func(l *listenerv3.Listener) *xdsclient.Snapshot {
		return &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{l.GetName(): l},
			Clusters: map[string]*clusterv3.Cluster{
				slow:  staticCluster(slow, netip.MustParseAddrPort(slowL.Addr().String()), false),
				empty: {Name: empty, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, ConnectTimeout: durationpb.New(time.Second)},
			}}
	}
	logged := withAccessLogs(plain, fileLogProto(logPath, "%REQ(:PATH)% %RESPONSE_CODE% %GRPC_STATUS_NUMBER% %RESPONSE_FLAGS%\n", nil, ""))
	if err := e.Apply(snap(logged)); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient("passthrough:///"+addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cases := []struct {
		method string
		code   codes.Code
		msg    string
		log    string // access log line
	}{
		{"/nohost.S/M", codes.Unavailable, "no healthy upstream", "200 14 UH"},
		{"/slow.S/M", codes.Unavailable, "upstream request timeout", "200 14 UT"},
		{"/fault.grpc.S/M", codes.ResourceExhausted, "fault filter abort", "200 8 FI"},
		{"/fault.http.S/M", codes.PermissionDenied, "fault filter abort", "200 7 FI"},
		{"/direct.S/M", codes.Unavailable, "down for maintenance: 100% ünplanned", "200 14 -"},
		{"/nocluster.S/M", codes.Unavailable, "", "200 14 NC"},
		{"/unrouted.S/M", codes.Unimplemented, "", "200 12 NR"},
	}
	var want []string
	for _, tc := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := conn.Invoke(ctx, tc.method, &emptypb.Empty{}, &emptypb.Empty{})
		cancel()
		st, _ := status.FromError(err)
		if st.Code() != tc.code || st.Message() != tc.msg {
			t.Errorf("%s: status %v %q, want %v %q (error %v)", tc.method, st.Code(), st.Message(), tc.code, tc.msg, err)
		}
		want = append(want, tc.method+" "+tc.log)
	}

	// On the wire it is one header block: 200, application/grpc and the
	// status, no body, no trailers.
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: &protos}}
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr.String()+"/nohost.S/M", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := h2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/grpc" ||
		resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("Grpc-Message") != "no healthy upstream" || len(body) != 0 || len(resp.Trailer) != 0 {
		t.Errorf("gRPC local reply on the wire: %s %d %v body %q trailers %v, want HTTP/2 200 with content-type, grpc-status 14 "+
			"and grpc-message in the headers, nothing else", resp.Proto, resp.StatusCode, resp.Header, body, resp.Trailer)
	}
	want = append(want, "/nohost.S/M 200 14 UH")

	// A plain HTTP client gets Envoy's HTTP replies on the same routes.
	for path, wantCode := range map[string]int{"/nohost.S/M": 503, "/fault.http.S/M": 403, "/direct.S/M": 503, "/unrouted": 404} {
		resp, err := http.Post("http://"+addr.String()+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != wantCode || resp.Header.Get("Grpc-Status") != "" {
			t.Errorf("HTTP %s: %d (grpc-status %q) %q, want %d without grpc-status", path, resp.StatusCode, resp.Header.Get("Grpc-Status"), body, wantCode)
		}
		if path == "/direct.S/M" && string(body) != "down for maintenance: 100% ünplanned" {
			t.Errorf("HTTP %s: body %q", path, body)
		}
	}

	// A config without the access log closes the file, writing what its
	// logger holds.
	if err := e.Apply(snap(plain)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) < len(want) {
		t.Fatalf("access log has %d lines, want at least %d:\n%s", len(lines), len(want), got)
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("access log line %d: %q, want %q", i+1, lines[i], w)
		}
	}
}

func TestGRPCMessageEncoding(t *testing.T) {
	for in, want := range map[string]string{
		"no healthy upstream": "no healthy upstream",
		"100% ünplanned":      "100%25 %C3%BCnplanned",
		"tab\there\r\n":       "tab%09here%0D%0A",
		"":                    "",
	} {
		if got := grpcMessage(in); got != want {
			t.Errorf("grpcMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRetryOnLocalReplyUnavailable: a calling sidecar's retryOn
// "unavailable" applies to the trailers-only UNAVAILABLE another sidecar
// makes itself. Sidecar A's cluster has two endpoints: sidecar B, whose
// only cluster has no endpoints (every call there ends in B's own
// no-healthy-upstream reply), and a gRPC server. Every call succeeds,
// and B was asked: A retried B's answers on the server.
func TestRetryOnLocalReplyUnavailable(t *testing.T) {
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(gl) }()
	defer gs.Stop()
	const two, empty = "outbound|80||two.default.svc.cluster.local", "inbound|80||"
	aAddr, bAddr := freeAddr(t), freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "b.log")
	b := httpListener("b", bAddr, empty, nil)
	lbEP := func(ap netip.AddrPort) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddr(ap)}}}
	}
	c := &clusterv3.Cluster{Name: two, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: two, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{lbEP(bAddr), lbEP(netip.MustParseAddrPort(gl.Addr().String()))}}}}}
	//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
	c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{} //nolint:staticcheck // gRPC upstream
	e := New(slog.New(slog.DiscardHandler), Options{})
	defer e.shutdown()
	snap := func(b *listenerv3.Listener) *xdsclient.Snapshot {
		return &xdsclient.Snapshot{
			Listeners: map[string]*listenerv3.Listener{"a": httpListener("a", aAddr, two, nil), "b": b},
			Clusters: map[string]*clusterv3.Cluster{two: c,
				empty: {Name: empty, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, ConnectTimeout: durationpb.New(time.Second)}}}
	}
	if err := e.Apply(snap(withAccessLogs(b, fileLogProto(logPath, "%RESPONSE_FLAGS% %GRPC_STATUS_NUMBER%\n", nil, "")))); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+aAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	for i := range 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %d through sidecar A: %v (B's UNAVAILABLE not retried)", i, err)
		}
	}
	if err := e.Apply(snap(b)); err != nil { // closes B's log
		t.Fatal(err)
	}
	got, _ := os.ReadFile(logPath)
	if !strings.HasPrefix(string(got), "UH 14\n") {
		t.Errorf("sidecar B's log %q: want its no-healthy-upstream replies (UH, grpc-status 14)", got)
	}
}
