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

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
	"github.com/weftmesh/weft/internal/testutil/otlptest"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
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
	if h := grpcSink.Headers()[0]; h.Get("X-Tenant-Token") != "abc" || h.Get(":authority") != "otel-collector.observability.svc.cluster.local" {
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
	if got := awaitCount(e.metrics.SpansDropped, 1); got != 1 {
		t.Errorf("weft_tracing_spans_dropped_total = %v, want 1 (the gRPC collector answered UNAVAILABLE)", got)
	}
}

// otelLogProto is an OpenTelemetry access log as weft's pilot writes it
// for an envoyOtelAls provider (builtin: Envoy's built-in resource labels
// left on, as without Istio), with body and attribute formats.
func otelLogProto(cluster, logName, body string, builtin bool, attrs ...string) *accesslogv3.AccessLog {
	str := func(v string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}
	}
	cfg := &otelalsv3.OpenTelemetryAccessLogConfig{LogName: logName,
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
			ClusterName: cluster, Authority: "otel-collector.observability.svc.cluster.local"}},
			InitialMetadata: []*corev3.HeaderValue{{Key: "x-token", Value: "abc"}}},
		DisableBuiltinLabels: !builtin}
	if builtin {
		cfg.ResourceAttributes = &commonpb.KeyValueList{Values: []*commonpb.KeyValue{{Key: "env", Value: str("test")}}}
	}
	if body != "" {
		cfg.Body = str(body)
	}
	if len(attrs) > 0 {
		cfg.Attributes = &commonpb.KeyValueList{}
		for i := 0; i+1 < len(attrs); i += 2 {
			cfg.Attributes.Values = append(cfg.Attributes.Values, &commonpb.KeyValue{Key: attrs[i], Value: str(attrs[i+1])})
		}
	}
	tc, _ := anypb.New(cfg)
	return &accesslogv3.AccessLog{Name: "envoy.access_loggers.open_telemetry", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: tc}}
}

// inCommonConfig is al with its log name and gRPC service moved into the
// deprecated common_config, as istiod writes them.
func inCommonConfig(al *accesslogv3.AccessLog) *accesslogv3.AccessLog {
	return otelVariant(al, func(c *otelalsv3.OpenTelemetryAccessLogConfig) {
		//lint:ignore SA1019 istiod's form
		c.CommonConfig = &grpcalsv3.CommonGrpcAccessLogConfig{LogName: c.LogName, GrpcService: c.GrpcService, TransportApiVersion: corev3.ApiVersion_V3}
		c.LogName, c.GrpcService = "", nil
	})
}

// TestOTelAccessLog: OpenTelemetry access loggers (one as istiod writes
// it, in common_config) send every entry that passes their filter as an
// OTLP log record over gRPC: the body and
// attribute formats' values, the start time, and the resource — Envoy's
// built-in labels and resource_attributes, or nothing when Istio turns
// the labels off — with the gRPC service's metadata and authority. A
// collector that fails has the entries counted as dropped.
func TestOTelAccessLog(t *testing.T) {
	backend := failingBackend(t)
	col := &otlptest.LogCollector{}
	port := col.ServeGRPC(t)
	const (
		svc = "outbound|8080||svc.default.svc.cluster.local"
		als = "outbound|4317||otel-collector.observability.svc.cluster.local"
	)
	addr := freeAddr(t)
	// A Zipkin tracer (its collector absent) continues the callers'
	// traces, so a sampled request's record carries its ids.
	l := withAccessLogs(withTracing(t, httpListener("out", addr, svc, nil), hcmTracing(0, false)),
		inCommonConfig(otelLogProto(als, "otel_envoy_accesslog", "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %TRACE_ID%", true,
			"code", "%RESPONSE_CODE%", "tenant", "%REQ(X-TENANT)%")),
		withFilter(otelLogProto(als, "errors", "", false, "flags", "%RESPONSE_FLAGS%"), fileLogProto("/dev/null", "", nil, "response.code >= 500").GetFilter()))
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 50 * time.Millisecond, NodeID: "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local",
		Workload: telemetry.Peer{Workload: "a", Namespace: "default", App: "a"}})
	defer e.shutdown()
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"out": l},
		Clusters: map[string]*clusterv3.Cluster{
			svc: staticCluster(svc, netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
			als: staticCluster(als, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), false),
		}}); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	const trace, caller = "463ac35c9f6413ad463ac35c9f6413ad", "a2fb4a1d1a96d312"
	getStatus(t, "http://"+addr.String()+"/ok", "Host", "svc.default:8080", "X-Tenant", "t1",
		"X-B3-Traceid", trace, "X-B3-Spanid", caller, "X-B3-Sampled", "1")
	getStatus(t, "http://"+addr.String()+"/fail", "Host", "svc.default:8080", "X-B3-Traceid", trace, "X-B3-Spanid", caller, "X-B3-Sampled", "0")
	col.Wait(3, 10*time.Second)
	time.Sleep(150 * time.Millisecond) // a fourth record would come by now
	recs := col.Records()
	if len(recs) != 3 {
		t.Fatalf("collector got %d records, want 3 (two requests; one failed)", len(recs))
	}
	var all []otlptest.Record
	var errs []otlptest.Record
	for _, r := range recs {
		if r.Resource["log_name"] == "otel_envoy_accesslog" {
			all = append(all, r)
		} else {
			errs = append(errs, r)
		}
	}
	if len(all) != 2 || len(errs) != 1 {
		t.Fatalf("records by log: %d and %d, want 2 and 1: %v", len(all), len(errs), recs)
	}
	bodies := map[string]map[string]string{}
	for _, r := range all {
		bodies[r.GetBody().GetStringValue()] = r.Attrs()
		// A traced request's record names the hop's span; others none.
		traced := r.Attrs()["code"] == "200"
		if got := hex.EncodeToString(r.GetTraceId()); traced && (got != trace || len(r.GetSpanId()) != 8 || hex.EncodeToString(r.GetSpanId()) == caller) ||
			!traced && (len(r.GetTraceId()) != 0 || len(r.GetSpanId()) != 0) {
			t.Errorf("record %q: trace %x span %x; want trace %s with the hop's own span when sampled, none otherwise",
				r.GetBody().GetStringValue(), r.GetTraceId(), r.GetSpanId(), trace)
		}
		if diff := cmp.Diff(r.Resource, map[string]string{"log_name": "otel_envoy_accesslog", "env": "test",
			"node_name": "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local", "cluster_name": "a.default"}); diff != "" {
			t.Errorf("resource (-got +want)\n%s", diff)
		}
		if ts := time.Unix(0, int64(r.GetTimeUnixNano())); ts.Before(before.Add(-time.Second)) || ts.After(time.Now()) {
			t.Errorf("record time %v, want the request's start", ts)
		}
	}
	if diff := cmp.Diff(bodies, map[string]map[string]string{
		"GET /ok 200 " + trace: {"code": "200", "tenant": "t1"},
		"GET /fail 503 -":      {"code": "503", "tenant": "-"},
	}); diff != "" {
		t.Errorf("bodies and attributes (-got +want)\n%s", diff)
	}
	if e := errs[0]; len(e.Resource) != 0 || e.GetBody() != nil || e.Attrs()["flags"] != "-" {
		t.Errorf("filtered log's record: resource %v body %v attributes %v; want no labels, no body, flags", e.Resource, e.GetBody(), e.Attrs())
	}
	if h := col.Headers()[0]; h.Get("X-Token") != "abc" || h.Get(":authority") != "otel-collector.observability.svc.cluster.local" {
		t.Errorf("export metadata %v", h)
	}
	if got := testutil.ToFloat64(e.metrics.LogsSent); got != 3 {
		t.Errorf("weft_access_log_otlp_sent_total = %v, want 3", got)
	}
	col.SetFail(true)
	getStatus(t, "http://"+addr.String()+"/dropped", "Host", "svc.default:8080")
	if got := awaitCount(e.metrics.LogsDropped, 1); got != 1 {
		t.Errorf("weft_access_log_otlp_dropped_total = %v, want 1 (the collector answered UNAVAILABLE)", got)
	}
}
