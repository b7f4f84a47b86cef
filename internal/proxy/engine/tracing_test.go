package engine

import (
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	tracingtagv3 "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
	"github.com/weftmesh/weft/internal/testutil/zipkintest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const zipkinCluster = "outbound|9411||zipkin.istio-system.svc.cluster.local"

// hcmTracing is the tracing istiod sets for its Zipkin provider, at
// sampling percent; shared leaves shared_span_context unset (Envoy's
// default, true) instead of Istio's false.
func hcmTracing(sampling float64, shared bool, tags ...*tracingtagv3.CustomTag) *hcmv3.HttpConnectionManager_Tracing {
	zc := &tracev3.ZipkinConfig{CollectorCluster: zipkinCluster, CollectorEndpoint: "/api/v2/spans",
		CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true,
		CollectorHostname: "zipkin.istio-system.svc.cluster.local"}
	if !shared {
		zc.SharedSpanContext = wrapperspb.Bool(false)
	}
	a, _ := anypb.New(zc)
	return &hcmv3.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: sampling}, CustomTags: tags,
		Provider: &tracev3.Tracing_Http{Name: zipkinTracerName, ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}}}
}

// w3cTracing is tr with the Zipkin tracer's
// USE_B3_WITH_W3C_PROPAGATION.
func w3cTracing(tr *hcmv3.HttpConnectionManager_Tracing) *hcmv3.HttpConnectionManager_Tracing {
	zc := &tracev3.ZipkinConfig{}
	_ = tr.GetProvider().GetTypedConfig().UnmarshalTo(zc)
	zc.TraceContextOption = tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION
	a, _ := anypb.New(zc)
	tr.Provider.ConfigType = &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}
	return tr
}

// failingBackend answers "ok", and 503 to /fail, until the test ends.
func failingBackend(t *testing.T) *httptest.Server {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(backend.Close)
	return backend
}

// awaitCount waits up to 5 s for c to reach n, and returns its value.
func awaitCount(c prometheus.Counter, n float64) float64 {
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(c) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return testutil.ToFloat64(c)
}

// withTracing returns l with tr on its HCMs.
func withTracing(t *testing.T, l *listenerv3.Listener, tr *hcmv3.HttpConnectionManager_Tracing) *listenerv3.Listener {
	t.Helper()
	l = proto.Clone(l).(*listenerv3.Listener)
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			h := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
				t.Fatal(err)
			}
			h.Tracing = tr
			a, _ := anypb.New(h)
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		}
	}
	return l
}

// TestZipkinSpans: a request crossing an outbound and an inbound
// connection manager with Zipkin tracing becomes a CLIENT and a SERVER
// span of one trace, delivered as Zipkin v2 JSON to the collector
// cluster: a new trace when the request has none (sampling 100 %), the
// caller's trace and parent when it has one, nothing when the caller
// decided not to sample. The inbound side keeps Envoy's default shared
// span context (same span id, marked shared); Istio's false gives the
// outbound span a new id under the caller's.
func TestZipkinSpans(t *testing.T) {
	backend := failingBackend(t)
	col := &zipkintest.Collector{}
	zipkin := httptest.NewServer(col)
	defer zipkin.Close()

	outAddr, inAddr, uhAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	const svc = "outbound|8080||svc.default.svc.cluster.local"
	const inb = "inbound|8080||"
	const empty = "outbound|80||empty.default.svc.cluster.local"
	// The outbound side reads and writes W3C trace context too; the
	// inbound side keeps Zipkin's default, B3 only.
	out := withTracing(t, httpListener("out", outAddr, svc, nil), w3cTracing(hcmTracing(100, false,
		&tracingtagv3.CustomTag{Tag: "istio.mesh_id", Type: &tracingtagv3.CustomTag_Literal_{Literal: &tracingtagv3.CustomTag_Literal{Value: "cluster.local"}}},
		&tracingtagv3.CustomTag{Tag: "tenant", Type: &tracingtagv3.CustomTag_RequestHeader{RequestHeader: &tracingtagv3.CustomTag_Header{Name: "x-tenant", DefaultValue: "none"}}})))
	in := withTracing(t, httpListener("in", inAddr, inb, nil), hcmTracing(100, true))
	uh := withTracing(t, httpListener("uh", uhAddr, empty, nil), hcmTracing(100, false))
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 50 * time.Millisecond, NodeID: "sidecar~10.0.0.1~a.default~default.svc.cluster.local",
		Workload: telemetry.Peer{Workload: "a", Namespace: "default", App: "a"}})
	defer e.shutdown()
	snap := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"out": out, "in": in, "uh": uh},
		Clusters: map[string]*clusterv3.Cluster{
			empty:         {Name: empty, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, ConnectTimeout: durationpb.New(time.Second)},
			svc:           staticCluster(svc, inAddr, false),
			inb:           staticCluster(inb, netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
			zipkinCluster: staticCluster(zipkinCluster, netip.MustParseAddrPort(zipkin.Listener.Addr().String()), false),
		}}
	if err := e.Apply(snap); err != nil {
		t.Fatal(err)
	}
	getAt := func(addr netip.AddrPort, path string, hdr ...string) {
		t.Helper()
		getStatus(t, "http://"+addr.String()+path, append([]string{"Host", "svc.default:8080"}, hdr...)...)
	}
	get := func(path string, hdr ...string) { t.Helper(); getAt(outAddr, path, hdr...) }
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	get("/new?x=1", "X-Tenant", "t1")
	get("/fail", "Traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	get("/unsampled", "X-B3-Traceid", "463ac35c9f6413ad", "X-B3-Spanid", "a2fb4a1d1a96d312", "X-B3-Sampled", "0")
	// The proxy's own answer (no healthy upstream) is a span too.
	getAt(uhAddr, "/nobody", "X-B3-Traceid", "463ac35c9f6413ad", "X-B3-Spanid", "a2fb4a1d1a96d312", "X-B3-Sampled", "1")

	col.Wait(5, 10*time.Second)
	time.Sleep(100 * time.Millisecond) // a sixth span would come by now
	spans := col.Wait(5, 10*time.Second)
	if len(spans) != 5 {
		t.Fatalf("collector got %d spans, want 5 (two sampled requests, two hops; one local reply):\n%+v", len(spans), spans)
	}
	byKind := map[string][]zipkintest.Span{}
	for _, s := range spans {
		byKind[s.Kind+" "+s.Tags["http.url"]] = append(byKind[s.Kind+" "+s.Tags["http.url"]], s)
	}
	one := func(key string) zipkintest.Span {
		t.Helper()
		if len(byKind[key]) != 1 {
			t.Fatalf("spans %q: %d, want 1 (have %v)", key, len(byKind[key]), spans)
		}
		return byKind[key][0]
	}
	c1, s1 := one("CLIENT http://svc.default:8080/new?x=1"), one("SERVER http://svc.default:8080/new?x=1")
	if len(c1.TraceID) != 32 || c1.ParentID != "" || c1.TraceID != s1.TraceID {
		t.Errorf("new trace: client %s/%s parent %q, server %s, want one 128-bit trace and a root client span", c1.TraceID, c1.ID, c1.ParentID, s1.TraceID)
	}
	if s1.ID != c1.ID || !s1.Shared || c1.Shared {
		t.Errorf("shared span context: server span %s shared=%v, client span %s shared=%v; want the client's id, shared", s1.ID, s1.Shared, c1.ID, c1.Shared)
	}
	c2, s2 := one("CLIENT http://svc.default:8080/fail"), one("SERVER http://svc.default:8080/fail")
	if c2.TraceID != callerTrace || c2.ParentID != callerSpan || c2.ID == callerSpan || s2.TraceID != callerTrace || s2.ID != c2.ID {
		t.Errorf("continued trace: client %+v server %+v, want trace %s with the client span under %s", c2, s2, callerTrace, callerSpan)
	}
	for tag, want := range map[string]string{
		"http.method": "GET", "http.status_code": "200", "upstream_cluster": svc, "istio.mesh_id": "cluster.local",
		"tenant": "t1", "component": "proxy", "node_id": "sidecar~10.0.0.1~a.default~default.svc.cluster.local", "response_flags": "-",
	} {
		if got := c1.Tags[tag]; got != want {
			t.Errorf("client span tag %s = %q, want %q", tag, got, want)
		}
	}
	if c1.Name != "svc.default.svc.cluster.local:8080/*" || c1.LocalEndpoint.ServiceName != "a.default" || c1.LocalEndpoint.IPv4 != "127.0.0.1" {
		t.Errorf("client span name %q, local endpoint %+v", c1.Name, c1.LocalEndpoint)
	}
	if c1.Tags["guid:x-request-id"] == "" || c1.Tags["guid:x-request-id"] != s1.Tags["guid:x-request-id"] {
		t.Errorf("x-request-id tags: client %q server %q, want one id", c1.Tags["guid:x-request-id"], s1.Tags["guid:x-request-id"])
	}
	if c2.Tags["http.status_code"] != "503" || c2.Tags["error"] != "true" || c2.Tags["tenant"] != "none" || c1.Tags["error"] != "" {
		t.Errorf("failed request's tags: %v", c2.Tags)
	}
	uhSpan := one("CLIENT http://svc.default:8080/nobody")
	if uhSpan.TraceID != "463ac35c9f6413ad" || uhSpan.ParentID != "a2fb4a1d1a96d312" || uhSpan.Tags["response_flags"] != "UH" ||
		uhSpan.Tags["http.status_code"] != "503" || uhSpan.Tags["error"] != "true" || uhSpan.Name != "empty.default.svc.cluster.local:80/*" {
		t.Errorf("local reply span %+v, want the caller's 64-bit trace, UH, 503, error", uhSpan)
	}
	if c1.Duration <= 0 || c1.Timestamp < time.Now().Add(-time.Minute).UnixMicro() {
		t.Errorf("client span timestamp %d duration %d", c1.Timestamp, c1.Duration)
	}
	for _, h := range col.Hosts() {
		if h != "zipkin.istio-system.svc.cluster.local" {
			t.Errorf("collector request Host %q, want collector_hostname", h)
		}
	}
	if got := testutil.ToFloat64(e.metrics.SpansSent); got != 5 {
		t.Errorf("weft_tracing_spans_sent_total = %v, want 5", got)
	}

	// Without the collector cluster the spans are counted as dropped.
	delete(snap.Clusters, zipkinCluster)
	if err := e.Apply(snap); err != nil {
		t.Fatal(err)
	}
	get("/dropped")
	if got := awaitCount(e.metrics.SpansDropped, 2); got != 2 {
		t.Errorf("weft_tracing_spans_dropped_total = %v, want 2 (no collector cluster)", got)
	}
}

// TestNoContextPropagation: with no_context_propagation (Istio's
// Telemetry disableContextPropagation) the outbound hop still reports its
// span, but writes none of its context into the upstream request: a trace
// it starts stays its own, and a caller's trace headers go on as the
// caller sent them. The inbound hop, which propagates as usual, then
// starts its own trace, or puts its span under the caller's.
func TestNoContextPropagation(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]http.Header{}
	backend := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.Header.Clone()
		mu.Unlock()
	}))
	defer backend.Close()
	col := &zipkintest.Collector{}
	zipkin := httptest.NewServer(col)
	defer zipkin.Close()

	outAddr, inAddr := freeAddr(t), freeAddr(t)
	const svc, inb = "outbound|8080||svc.default.svc.cluster.local", "inbound|8080||"
	noProp := hcmTracing(100, false)
	noProp.NoContextPropagation = true
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 50 * time.Millisecond})
	defer e.shutdown()
	snap := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{
		"out": withTracing(t, httpListener("out", outAddr, svc, nil), noProp),
		"in":  withTracing(t, httpListener("in", inAddr, inb, nil), hcmTracing(100, false)),
	}, Clusters: map[string]*clusterv3.Cluster{
		svc:           staticCluster(svc, inAddr, false),
		inb:           staticCluster(inb, netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
		zipkinCluster: staticCluster(zipkinCluster, netip.MustParseAddrPort(zipkin.Listener.Addr().String()), false),
	}}
	if err := e.Apply(snap); err != nil {
		t.Fatal(err)
	}
	const callerTrace, callerSpan = "463ac35c9f6413ad463ac35c9f6413ad", "a2fb4a1d1a96d312"
	for path, hdr := range map[string][]string{
		"/new":    nil,
		"/caller": {"X-B3-Traceid", callerTrace, "X-B3-Spanid", callerSpan, "X-B3-Sampled", "1"},
	} {
		if code := getStatus(t, "http://"+outAddr.String()+path, append([]string{"Host", "svc.default:8080"}, hdr...)...); code != http.StatusOK {
			t.Fatalf("GET %s: %d", path, code)
		}
	}
	spans := col.Wait(4, 10*time.Second)
	if len(spans) != 4 {
		t.Fatalf("collector got %d spans, want 4 (two requests, two hops): %+v", len(spans), spans)
	}
	byKey := map[string]zipkintest.Span{}
	for _, s := range spans {
		byKey[s.Kind+" "+s.Tags["http.url"]] = s
	}
	c1, s1 := byKey["CLIENT http://svc.default:8080/new"], byKey["SERVER http://svc.default:8080/new"]
	if c1.TraceID == "" || s1.TraceID == "" || c1.TraceID == s1.TraceID || s1.ParentID != "" {
		t.Errorf("new trace: client span %+v, server span %+v; want the server hop to start a trace of its own", c1, s1)
	}
	c2, s2 := byKey["CLIENT http://svc.default:8080/caller"], byKey["SERVER http://svc.default:8080/caller"]
	if c2.TraceID != callerTrace || c2.ParentID != callerSpan || s2.TraceID != callerTrace || s2.ParentID != callerSpan || s2.ParentID == c2.ID {
		t.Errorf("caller's trace: client span %+v, server span %+v; want both directly under the caller's span %s", c2, s2, callerSpan)
	}
	mu.Lock()
	defer mu.Unlock()
	// What the application behind the inbound hop saw is that hop's
	// context: its own new trace, or its span under the caller's.
	if got := seen["/new"].Get("X-B3-Traceid"); got != s1.TraceID {
		t.Errorf("/new reached the app with trace %q, want the inbound hop's %s", got, s1.TraceID)
	}
	if got := seen["/caller"].Get("X-B3-Parentspanid"); got != callerSpan {
		t.Errorf("/caller reached the app with parent span %q, want the caller's %s (the outbound hop wrote nothing)", got, callerSpan)
	}
}

// TestTracingConfigErrors: tracing weft-proxy cannot honour is refused
// with the reason, so the update is NACKed rather than half applied.
func TestTracingConfigErrors(t *testing.T) {
	otel := func(oc *tracev3.OpenTelemetryConfig) *hcmv3.HttpConnectionManager_Tracing {
		a, _ := anypb.New(oc)
		return &hcmv3.HttpConnectionManager_Tracing{Provider: &tracev3.Tracing_Http{Name: otelTracerName,
			ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}}}
	}
	envoyGRPC := &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "otel"}}}
	other, _ := anypb.New(&tracev3.DatadogConfig{})
	zc := &tracev3.ZipkinConfig{}
	_ = hcmTracing(1, false).GetProvider().GetTypedConfig().UnmarshalTo(zc)
	with := func(f func(*tracev3.ZipkinConfig)) *hcmv3.HttpConnectionManager_Tracing {
		z := proto.Clone(zc).(*tracev3.ZipkinConfig)
		f(z)
		a, _ := anypb.New(z)
		tr := hcmTracing(1, false)
		tr.Provider.ConfigType = &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}
		return tr
	}
	for _, tc := range []struct {
		tr   *hcmv3.HttpConnectionManager_Tracing
		want string
	}{
		{&hcmv3.HttpConnectionManager_Tracing{Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.datadog",
			ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: other}}}, `provider "envoy.tracers.datadog" is not supported`},
		{otel(&tracev3.OpenTelemetryConfig{}), "grpc_service or http_service is required"},
		{otel(&tracev3.OpenTelemetryConfig{GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{
			GoogleGrpc: &corev3.GrpcService_GoogleGrpc{TargetUri: "otel:4317"}}}}), "google_grpc is not supported"},
		{otel(&tracev3.OpenTelemetryConfig{GrpcService: envoyGRPC, HttpService: &corev3.HttpService{}}), "exclusive"},
		{otel(&tracev3.OpenTelemetryConfig{HttpService: &corev3.HttpService{HttpUri: &corev3.HttpUri{Uri: "otel/v1/traces"}}}), "must name a cluster"},
		{otel(&tracev3.OpenTelemetryConfig{GrpcService: envoyGRPC, ResourceDetectors: []*corev3.TypedExtensionConfig{{Name: "env"}}}),
			"resource_detectors are not supported"},
		{otel(&tracev3.OpenTelemetryConfig{GrpcService: envoyGRPC, Sampler: &corev3.TypedExtensionConfig{Name: "dynatrace"}}), "sampler is not supported"},
		{otel(&tracev3.OpenTelemetryConfig{GrpcService: &corev3.GrpcService{TargetSpecifier: envoyGRPC.TargetSpecifier,
			InitialMetadata: []*corev3.HeaderValue{{Key: "bad key", Value: "v"}}}}), `header "bad key" is not a valid header`},
		{with(func(z *tracev3.ZipkinConfig) { z.CollectorEndpointVersion = tracev3.ZipkinConfig_HTTP_PROTO }), "collector_endpoint_version HTTP_PROTO is not supported"},
		{with(func(z *tracev3.ZipkinConfig) { z.CollectorCluster = "" }), "collector_cluster and collector_endpoint, or collector_service, are required"},
		{with(func(z *tracev3.ZipkinConfig) {
			z.CollectorService = &corev3.HttpService{HttpUri: &corev3.HttpUri{Uri: "http://zipkin/api/v2/spans"}}
		}), "collector_service: http_uri must name a cluster"},
		{with(func(z *tracev3.ZipkinConfig) { z.CollectorEndpoint = "api/v2/spans" }), "must be a path"},
		{func() *hcmv3.HttpConnectionManager_Tracing {
			tr := hcmTracing(1, false)
			tr.RandomSampling = &typev3.Percent{Value: 150}
			return tr
		}(), "random_sampling 150 is not a percentage"},
		{func() *hcmv3.HttpConnectionManager_Tracing {
			tr := hcmTracing(1, false)
			tr.ClientSampling = &typev3.Percent{Value: -1}
			return tr
		}(), "client_sampling -1 is not a percentage"},
		{hcmTracing(1, false, &tracingtagv3.CustomTag{Tag: "m", Type: &tracingtagv3.CustomTag_Metadata_{Metadata: &tracingtagv3.CustomTag_Metadata{}}}),
			`custom tag "m": only request metadata is supported`},
		{hcmTracing(1, false, &tracingtagv3.CustomTag{Tag: "v", Type: &tracingtagv3.CustomTag_Value{Value: "%REQ(x)%"}}),
			`custom tag "v": only literal, request_header, environment and request metadata tags are supported`},
		{func() *hcmv3.HttpConnectionManager_Tracing {
			tr := hcmTracing(1, false)
			tr.SpawnUpstreamSpan = wrapperspb.Bool(true)
			return tr
		}(), "spawn_upstream_span is not supported"},
	} {
		_, err := compileTracing(&hcmv3.HttpConnectionManager{Tracing: tc.tr})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("compileTracing: %v, want an error with %q", err, tc.want)
		}
	}
	e := New(slog.New(slog.DiscardHandler), Options{})
	defer e.shutdown()
	l := withTracing(t, httpListener("out", freeAddr(t), "c", nil), otel(&tracev3.OpenTelemetryConfig{GrpcService: &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{GoogleGrpc: &corev3.GrpcService_GoogleGrpc{TargetUri: "otel:4317"}}}}))
	if err := e.Validate(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"out": l}}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("Validate with a google_grpc OpenTelemetry tracer: %v, want a NACK", err)
	}
}

// TestZipkinReporterRetires: a collector's reporter ends once idle (so a
// collector the config no longer names leaves no goroutine behind), and a
// span for it afterwards starts a new one and is delivered.
func TestZipkinReporterRetires(t *testing.T) {
	col := &zipkintest.Collector{}
	zipkin := httptest.NewServer(col)
	defer zipkin.Close()
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 5 * time.Millisecond})
	defer e.shutdown()
	if err := e.Apply(&xdsclient.Snapshot{Clusters: map[string]*clusterv3.Cluster{
		zipkinCluster: staticCluster(zipkinCluster, netip.MustParseAddrPort(zipkin.Listener.Addr().String()), false)}}); err != nil {
		t.Fatal(err)
	}
	target := exportDest{cluster: zipkinCluster, path: "/api/v2/spans", host: "zipkin"}
	reporters := func() int {
		n := 0
		e.reporters.Range(func(any, any) bool { n++; return true })
		return n
	}
	first := e.reporter(target)
	first.enqueue(&span{trace: [16]byte{15: 1}, id: [8]byte{1}, name: "one", start: time.Now()})
	col.Wait(1, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for reporters() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("an idle reporter is still registered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	first.mu.Lock()
	done := first.done
	first.mu.Unlock()
	if !done {
		t.Fatal("an idle reporter left the map but is not done")
	}
	// A span handed to the retired reporter (a request that looked it up
	// before it retired) reaches the collector through a new one.
	first.enqueue(&span{trace: [16]byte{15: 1}, id: [8]byte{2}, name: "two", start: time.Now()})
	if got := col.Wait(2, 10*time.Second); len(got) != 2 || got[1].Name != "two" {
		t.Fatalf("collector got %+v, want the span sent after retirement", got)
	}
	if reporters() != 1 {
		t.Fatalf("%d reporters after a span for a retired one, want 1", reporters())
	}
}

// TestZipkinCollectorService: a Zipkin tracer whose collector is an HTTP
// service (as istiod 1.29 writes it, for a provider's timeout and
// headers) sends its spans to the URI's path and host through the
// service's cluster, with the headers.
func TestZipkinCollectorService(t *testing.T) {
	col := &zipkintest.Collector{}
	var mu sync.Mutex
	var auth []string
	zipkin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		col.ServeHTTP(w, r)
	}))
	defer zipkin.Close()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer backend.Close()
	const svc = "outbound|8080||svc.default.svc.cluster.local"
	tr := hcmTracing(100, false)
	zc := &tracev3.ZipkinConfig{}
	_ = tr.GetProvider().GetTypedConfig().UnmarshalTo(zc)
	zc.CollectorCluster, zc.CollectorEndpoint, zc.CollectorHostname = "", "", ""
	zc.CollectorService = &corev3.HttpService{HttpUri: &corev3.HttpUri{Uri: "http://jaeger.observability.svc.cluster.local/api/v2/spans",
		HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: zipkinCluster}, Timeout: durationpb.New(2 * time.Second)},
		RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "Authorization", Value: "Bearer t0ken"}}}}
	a, _ := anypb.New(zc)
	tr.Provider.ConfigType = &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}
	addr := freeAddr(t)
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 20 * time.Millisecond})
	defer e.shutdown()
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"out": withTracing(t, httpListener("out", addr, svc, nil), tr)},
		Clusters: map[string]*clusterv3.Cluster{
			svc:           staticCluster(svc, netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
			zipkinCluster: staticCluster(zipkinCluster, netip.MustParseAddrPort(zipkin.Listener.Addr().String()), false),
		}}); err != nil {
		t.Fatal(err)
	}
	getStatus(t, "http://"+addr.String()+"/x", "Host", "svc.default:8080")
	spans := col.Wait(1, 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(spans) != 1 || spans[0].Kind != "CLIENT" || len(auth) == 0 || auth[0] != "Bearer t0ken" {
		t.Fatalf("spans %+v, Authorization %q; want the request's CLIENT span sent with the service's header", spans, auth)
	}
	if h := col.Hosts(); len(h) == 0 || h[0] != "jaeger.observability.svc.cluster.local" {
		t.Errorf("collector request Host %q, want the URI's host", h)
	}
}

// TestDryRunSpanTags: istiod's dry-run tags read the request's RBAC
// shadow verdict from its dynamic metadata: a dry-run DENY on /admin
// tags the span of /admin as denied by the policy, and that of /other as
// allowed; the dry-run ALLOW tags, with no such filter, are left out.
func TestDryRunSpanTags(t *testing.T) {
	backend := failingBackend(t)
	col := &zipkintest.Collector{}
	zipkin := httptest.NewServer(col)
	defer zipkin.Close()
	const svc = "outbound|8080||svc.default.svc.cluster.local"
	meta := func(tag, key string) *tracingtagv3.CustomTag {
		return &tracingtagv3.CustomTag{Tag: tag, Type: &tracingtagv3.CustomTag_Metadata_{Metadata: &tracingtagv3.CustomTag_Metadata{
			Kind: &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Request_{Request: &metadatav3.MetadataKind_Request{}}},
			MetadataKey: &metadatav3.MetadataKey{Key: "envoy.filters.http.rbac",
				Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: key}}}}}}}
	}
	addr := freeAddr(t)
	l := withTracing(t, httpListener("out", addr, svc, nil), hcmTracing(100, false,
		meta("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
		meta("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
		meta("istio.authorization.dry_run.allow_policy.result", "istio_dry_run_allow_shadow_engine_result")))
	f := l.GetFilterChains()[0].GetFilters()[0]
	h := &hcmv3.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	shadow := mustAnyT(t, &rbachttpv3.RBAC{ShadowRules: denyAdmin(), ShadowRulesStatPrefix: "istio_dry_run_deny_"})
	h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: shadow}}}, h.HttpFilters...)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, h)}
	// The access log reads the same verdict.
	logPath := filepath.Join(t.TempDir(), "a.log")
	l = withAccessLogs(l, fileLogProto(logPath, "%REQ(:PATH)% %DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_deny_shadow_engine_result)%\n", nil, ""))
	e := New(slog.New(slog.DiscardHandler), Options{TraceFlushInterval: 20 * time.Millisecond})
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"out": l},
		Clusters: map[string]*clusterv3.Cluster{
			svc:           staticCluster(svc, netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
			zipkinCluster: staticCluster(zipkinCluster, netip.MustParseAddrPort(zipkin.Listener.Addr().String()), false),
		}}); err != nil {
		t.Fatal(err)
	}
	if st := getStatus(t, "http://"+addr.String()+"/admin", "Host", "svc.default:8080"); st != 200 {
		t.Fatalf("/admin: %d; a dry-run DENY must not refuse", st)
	}
	getStatus(t, "http://"+addr.String()+"/other", "Host", "svc.default:8080")
	spans := col.Wait(2, 10*time.Second)
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	for _, sp := range spans {
		want := map[string]string{"istio.authorization.dry_run.deny_policy.result": "allowed"}
		if strings.HasSuffix(sp.Tags["http.url"], "/admin") {
			want = map[string]string{"istio.authorization.dry_run.deny_policy.result": "denied", "istio.authorization.dry_run.deny_policy.name": "deny-admin"}
		}
		got := map[string]string{}
		for k, v := range sp.Tags {
			if strings.HasPrefix(k, "istio.authorization.") {
				got[k] = v
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("span of %s: dry-run tags %v, want %v", sp.Tags["http.url"], got, want)
		}
	}
	e.shutdown() // writes what the logger holds
	if logged, _ := os.ReadFile(logPath); string(logged) != "/admin denied\n/other allowed\n" {
		t.Errorf("access log %q, want each request's dry-run verdict", logged)
	}
}
