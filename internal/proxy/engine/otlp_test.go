package engine

import (
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
	"github.com/weftmesh/weft/internal/testutil/otlptest"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// otelTracing is the tracing istiod sets for an opentelemetry provider.
func otelTracing(oc *tracev3.OpenTelemetryConfig) *hcmv3.HttpConnectionManager_Tracing {
	a, _ := anypb.New(oc)
	return &hcmv3.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: 100},
		Provider: &tracev3.Tracing_Http{Name: otelTracerName, ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}}}
}

// TestOTelSpans: with Envoy's OpenTelemetry tracer, as istiod configures
// it for an opentelemetry provider, trace context is W3C's alone (B3
// headers pass through untouched) and spans go as OTLP: over gRPC from
// the outbound side, over HTTP from the inbound side, each with its
// headers, service name and authority. A caller's traceparent and
// tracestate are continued, an unsampled one is not reported, and a
// failing collector's spans are counted as dropped.
func TestOTelSpans(t *testing.T) {
	var mu sync.Mutex
	var seen []http.Header // what the application received
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer backend.Close()

	grpcSink, httpSink := &otlptest.Collector{}, &otlptest.Collector{}
	grpcPort := grpcSink.ServeGRPC(t)
	hs := httptest.NewServer(httpSink)
	defer hs.Close()

	const (
		svc         = "outbound|8080||svc.default.svc.cluster.local"
		inb         = "inbound|8080||"
		grpcCluster = "outbound|4317||otel-collector.observability.svc.cluster.local"
		httpCluster = "outbound|4318||otel-http.observability.svc.cluster.local"
	)
	outAddr, inAddr := freeAddr(t), freeAddr(t)
	out := withTracing(t, httpListener("out", outAddr, svc, nil), otelTracing(&tracev3.OpenTelemetryConfig{ServiceName: "a.default",
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
			ClusterName: grpcCluster, Authority: "otel-collector.observability.svc.cluster.local"}},
			Timeout: durationpb.New(2 * time.Second), InitialMetadata: []*corev3.HeaderValue{{Key: "x-tenant-token", Value: "abc"}}}}))
	in := withTracing(t, httpListener("in", inAddr, inb, nil), otelTracing(&tracev3.OpenTelemetryConfig{
		HttpService: &corev3.HttpService{HttpUri: &corev3.HttpUri{Uri: "otel-http.observability.svc.cluster.local/v1/traces",
			HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: httpCluster}},
			RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "Authorization", Value: "Bearer t0ken"}}}}}))
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 50 * time.Millisecond,
		Workload: telemetry.Peer{Workload: "a", Namespace: "default", App: "a"}})
	defer e.shutdown()
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"out": out, "in": in},
		Clusters: map[string]*clusterv3.Cluster{
			svc:         staticCluster(svc, inAddr, false),
			inb:         staticCluster(inb, netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
			grpcCluster: staticCluster(grpcCluster, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(grpcPort)), false),
			httpCluster: staticCluster(httpCluster, netip.MustParseAddrPort(hs.Listener.Addr().String()), false),
		}}); err != nil {
		t.Fatal(err)
	}
	get := func(path string, hdr ...string) {
		t.Helper()
		getStatus(t, "http://"+outAddr.String()+path, append([]string{"Host", "svc.default:8080"}, hdr...)...)
	}
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	const b3Trace = "463ac35c9f6413ad"
	get("/new", "X-B3-Traceid", b3Trace, "X-B3-Spanid", "a2fb4a1d1a96d312", "X-B3-Sampled", "0")
	get("/fail", "Traceparent", "00-"+callerTrace+"-"+callerSpan+"-01", "Tracestate", "vendor=1")
	get("/unsampled", "Traceparent", "00-"+callerTrace+"-"+callerSpan+"-00")

	grpcSink.Wait(2, 10*time.Second)
	httpSink.Wait(2, 10*time.Second)
	time.Sleep(150 * time.Millisecond) // a third span would come by now
	client, server := grpcSink.Spans(), httpSink.Spans()
	if len(client) != 2 || len(server) != 2 {
		t.Fatalf("gRPC collector got %d spans, HTTP collector %d; want the two sampled requests' client and server spans", len(client), len(server))
	}
	byPath := func(spans []otlptest.Span, kind tracepb.Span_SpanKind) map[string]otlptest.Span {
		m := map[string]otlptest.Span{}
		for _, sp := range spans {
			if sp.GetKind() != kind {
				t.Errorf("span %q kind %v, want %v", sp.GetName(), sp.GetKind(), kind)
			}
			m[sp.Attr("http.url")] = sp
		}
		return m
	}
	cs, ss := byPath(client, tracepb.Span_SPAN_KIND_CLIENT), byPath(server, tracepb.Span_SPAN_KIND_SERVER)
	c1, s1 := cs["http://svc.default:8080/new"], ss["http://svc.default:8080/new"]
	c2, s2 := cs["http://svc.default:8080/fail"], ss["http://svc.default:8080/fail"]
	if c1.Span == nil || s1.Span == nil || c2.Span == nil || s2.Span == nil {
		t.Fatalf("spans by URL: client %v server %v", cs, ss)
	}
	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	// B3 is not OpenTelemetry's: the first request starts a new trace.
	if len(c1.GetTraceId()) != 16 || hexOf(c1.GetTraceId()) == "0000000000000000"+b3Trace || len(c1.GetParentSpanId()) != 0 {
		t.Errorf("first request: trace %x parent %x, want a new 128-bit trace with a root client span", c1.GetTraceId(), c1.GetParentSpanId())
	}
	// No shared span context: the server span is the client span's child.
	if hexOf(s1.GetTraceId()) != hexOf(c1.GetTraceId()) || hexOf(s1.GetParentSpanId()) != hexOf(c1.GetSpanId()) || hexOf(s1.GetSpanId()) == hexOf(c1.GetSpanId()) {
		t.Errorf("server span %x/%x parent %x, want a child of client span %x", s1.GetTraceId(), s1.GetSpanId(), s1.GetParentSpanId(), c1.GetSpanId())
	}
	if hexOf(c2.GetTraceId()) != callerTrace || hexOf(c2.GetParentSpanId()) != callerSpan || c2.GetTraceState() != "vendor=1" ||
		hexOf(s2.GetParentSpanId()) != hexOf(c2.GetSpanId()) || s2.GetTraceState() != "vendor=1" {
		t.Errorf("continued trace: client %x parent %x state %q; server parent %x state %q; want trace %s under %s, vendor=1",
			c2.GetTraceId(), c2.GetParentSpanId(), c2.GetTraceState(), s2.GetParentSpanId(), s2.GetTraceState(), callerTrace, callerSpan)
	}
	if c2.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || c1.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_UNSET {
		t.Errorf("statuses: 503 %v, 200 %v; want ERROR and unset", c2.GetStatus(), c1.GetStatus())
	}
	if c1.Attr("http.method") != "GET" || c1.Attr("http.status_code") != "200" || c1.Attr("upstream_cluster") != svc {
		t.Errorf("client span attributes %v", c1.GetAttributes())
	}
	if c1.GetName() != "svc.default.svc.cluster.local:8080/*" || c1.GetEndTimeUnixNano() <= c1.GetStartTimeUnixNano() {
		t.Errorf("client span %q from %d to %d", c1.GetName(), c1.GetStartTimeUnixNano(), c1.GetEndTimeUnixNano())
	}
	if c1.Service != "a.default" || s1.Service != unknownService {
		t.Errorf("resource service.name: client %q, server %q; want a.default and Envoy's default", c1.Service, s1.Service)
	}
	// gRPC metadata keys are lower case: not http.Header's canonical form.
	if h := grpcSink.Headers()[0]; len(h["x-tenant-token"]) != 1 || h["x-tenant-token"][0] != "abc" ||
		len(h[":authority"]) != 1 || h[":authority"][0] != "otel-collector.observability.svc.cluster.local" {
		t.Errorf("gRPC export metadata %v, want the initial metadata and the authority", h)
	}
	if h := httpSink.Headers()[0]; h.Get("Authorization") != "Bearer t0ken" || h.Get("Host") != "otel-http.observability.svc.cluster.local" || h.Get("Path") != "/v1/traces" {
		t.Errorf("OTLP/HTTP export headers %v", h)
	}

	// The application sees the trace in a traceparent, and the caller's
	// B3 headers as they were sent.
	mu.Lock()
	first := seen[0]
	mu.Unlock()
	tp := first.Get("Traceparent")
	if len(tp) != 55 || tp[3:35] != hexOf(c1.GetTraceId()) || tp[36:52] != hexOf(s1.GetSpanId()) || tp[53:] != "01" {
		t.Errorf("application's traceparent %q, want the server span %x of trace %x, sampled", tp, s1.GetSpanId(), c1.GetTraceId())
	}
	if first.Get("X-B3-Traceid") != b3Trace || first.Get("X-B3-Spanid") != "a2fb4a1d1a96d312" || first.Get("X-B3-Sampled") != "0" {
		t.Errorf("B3 headers reached the application as %v, want them untouched", first)
	}
	if got := testutil.ToFloat64(e.metrics.SpansSent); got != 4 {
		t.Errorf("weft_tracing_spans_sent_total = %v, want 4", got)
	}

	// An export the collector refuses is dropped and counted.
	grpcSink.SetFail(true)
	get("/refused")
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(e.metrics.SpansDropped) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(e.metrics.SpansDropped); got != 1 {
		t.Errorf("weft_tracing_spans_dropped_total = %v, want 1 (the gRPC collector answered UNAVAILABLE)", got)
	}
}
