package sidecar

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil/otlptest"
	"github.com/weftmesh/weft/internal/testutil/zipkintest"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// tracedPair is a mesh pair with a Zipkin collector registered as
// Istio's add-on names it (zipkin.istio-system:9411), and what app B saw.
type tracedPair struct {
	t       *testing.T
	svcPort int
	client  *http.Client
	appSaw  chan seenTrace
	spans   zipkintest.Collector
}

// seenTrace is the trace context app B received.
type seenTrace struct{ trace, span, sampled, parent, traceparent string }

// startTracedPair starts the pair with mesh config meshYAML and a
// Zipkin collector.
func startTracedPair(t *testing.T, meshYAML string) *tracedPair {
	p := &tracedPair{t: t}
	collector := serve(t, &http.Server{Handler: &p.spans})
	p.start(meshYAML, collectorEntry("zipkin", "zipkin.istio-system.svc.cluster.local", 9411, "http-query", "HTTP", collector))
	return p
}

// collectorEntry is a ServiceEntry for a tracing collector listening on
// 127.0.0.1:target.
func collectorEntry(name, host string, port int, portName, protocol string, target int) string {
	return fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %s}
spec:
  hosts: [%s]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: %d, name: %s, protocol: %s, targetPort: %d}]
  endpoints: [{address: 127.0.0.1}]
`, name, host, port, portName, protocol, target)
}

// otelCollectorHost is the OpenTelemetry collector's service, as Istio's
// OpenTelemetry tasks name it.
const otelCollectorHost = "opentelemetry-collector.observability.svc.cluster.local"

// otelCollectorEntry is its ServiceEntry (OTLP/gRPC on port 4317) for a
// collector listening on 127.0.0.1:target.
func otelCollectorEntry(target int) string {
	return collectorEntry("otel-collector", otelCollectorHost, 4317, "grpc-otlp", "GRPC", target)
}

// start starts the pair with mesh config meshYAML and config resources
// extra (the collector's service).
func (p *tracedPair) start(meshYAML, extra string) {
	t := p.t
	p.client, p.appSaw = &http.Client{Timeout: 10 * time.Second}, make(chan seenTrace, 16)
	backend := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.appSaw <- seenTrace{r.Header.Get("X-B3-Traceid"), r.Header.Get("X-B3-Spanid"), r.Header.Get("X-B3-Sampled"), r.Header.Get("X-B3-Parentspanid"), r.Header.Get("Traceparent")}
		_, _ = io.WriteString(w, "ok")
	})})
	meshConfig := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(meshConfig, []byte(meshYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	p.svcPort = freePort(t)
	startMeshPairArgs(t, []string{"--mesh-config", meshConfig}, []appPort{{"http", backend, freePort(t)}},
		webService(p.svcPort)+extra)
	eventually(t, "a request through both sidecars", func() error { return p.call() })
	// Sidecar A may have got its tracing config after the first request:
	// five more fill a batch, which is sent at once.
	for range 5 {
		if err := p.call(); err != nil {
			t.Fatal(err)
		}
	}
}

// call sends app A's request, with headers hdr (name, value, …).
func (p *tracedPair) call(hdr ...string) error {
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/traced", p.svcPort), nil)
	req.Host = "web.b.mesh"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// lastSeen is the trace context of app B's latest request.
func (p *tracedPair) lastSeen() seenTrace {
	var last seenTrace
	for len(p.appSaw) > 0 {
		last = <-p.appSaw
	}
	return last
}

// spansOf waits for the collector to have spans of trace, and returns
// them.
func (p *tracedPair) spansOf(trace string) []zipkintest.Span {
	var mine []zipkintest.Span
	eventually(p.t, "sidecar A's spans at the collector", func() error {
		all := p.spans.Spans()
		mine = mine[:0]
		for _, s := range all {
			if s.TraceID == trace {
				mine = append(mine, s)
			}
		}
		if len(mine) == 0 {
			return fmt.Errorf("%d spans, none of trace %s", len(all), trace)
		}
		return nil
	})
	return mine
}

// TestTracingSpans: tracing set up the way the installation guide did
// before Istio 1.22 (meshConfig.enableTracing with
// defaultConfig.tracing.sampling: 100 and the zipkin address that was
// then the default).
// Requests from app A cross both sidecars; sidecar A reports one CLIENT
// span per request, as Zipkin v2 JSON, to the collector, and app B
// receives the same trace, in B3 headers only, with A's span as its
// parent. (Sidecar B calls nothing in this pair, so it sees no collector:
// it propagates and drops its spans; the engine tests cover SERVER spans.)
func TestTracingSpans(t *testing.T) {
	p := startTracedPair(t, `enableTracing: true
defaultConfig:
  tracing:
    sampling: 100.0
    zipkin: {address: zipkin.istio-system:9411}
`)
	last := p.lastSeen()
	// Istio's Zipkin tracer by default (traceContextOption USE_B3):
	// B3 headers only.
	if len(last.trace) != 32 || last.sampled != "1" || last.traceparent != "" {
		t.Fatalf("app B saw %+v: want a sampled 128-bit B3 trace and no traceparent", last)
	}
	mine := p.spansOf(last.trace)
	s := mine[0]
	if len(mine) != 1 || s.Kind != "CLIENT" || s.ID != last.parent || s.ParentID != "" {
		t.Errorf("spans of the last trace: %+v; want one root CLIENT span whose id (%s) app B sees as its parent", mine, last.parent)
	}
	wantName := "web.b.mesh:" + fmt.Sprint(p.svcPort) + "/*"
	if s.Name != wantName || s.LocalEndpoint.ServiceName != "a.default" || s.Tags["http.status_code"] != "200" ||
		s.Tags["istio.canonical_service"] != "a" || s.Tags["upstream_cluster"] != "outbound|"+fmt.Sprint(p.svcPort)+"||web.b.mesh" {
		t.Errorf("span %+v: want name %s, service a.default, status 200, Istio's tags", s, wantName)
	}
}

// TestTracingW3C: a zipkin extension provider with Istio's
// traceContextOption USE_B3_WITH_W3C_PROPAGATION. App A's request
// carries only a W3C traceparent (an OpenTelemetry client): sidecar A
// continues that trace, reports its CLIENT span under the caller's span,
// and app B receives the trace in both forms.
func TestTracingW3C(t *testing.T) {
	p := startTracedPair(t, `extensionProviders:
- name: jaeger
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
    traceContextOption: USE_B3_WITH_W3C_PROPAGATION
defaultProviders:
  tracing: [jaeger]
defaultConfig:
  tracing:
    sampling: 100.0
`)
	const trace, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for range 5 { // a whole batch of this trace
		if err := p.call("Traceparent", "00-"+trace+"-"+caller+"-01"); err != nil {
			t.Fatal(err)
		}
	}
	// Sidecar B sees no collector (its Sidecar resource hides it), so
	// it has no tracer and passes sidecar A's headers on untouched.
	last := p.lastSeen()
	if last.trace != trace || last.sampled != "1" || last.parent != caller || len(last.span) != 16 || last.span == caller ||
		last.traceparent != "00-"+trace+"-"+last.span+"-01" {
		t.Fatalf("app B saw %+v: want trace %s in B3 and W3C, in sidecar A's span under the caller's", last, trace)
	}
	for _, s := range p.spansOf(trace) {
		if s.Kind != "CLIENT" || s.ParentID != caller {
			t.Errorf("span %+v: want sidecar A's CLIENT spans under the caller's span %s", s, caller)
		}
	}
}

// TestTracingOTel: Istio's opentelemetry extension provider, as its
// OpenTelemetry task sets it up (an OTLP/gRPC collector on port 4317,
// chosen by a Telemetry resource). App A's request carries a W3C
// traceparent and B3 headers: sidecar A continues the W3C trace, leaves
// the B3 headers as they were, and reports its CLIENT span over OTLP/gRPC
// with the service name a.default. (It fails with a Zipkin tracer in
// sidecar A, which would rewrite the B3 span id.)
func TestTracingOTel(t *testing.T) {
	p := &tracedPair{t: t}
	var otel otlptest.Collector
	p.start(`extensionProviders:
- name: otel-tracing
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
`, otelCollectorEntry(otel.ServeGRPC(t))+`---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: otel-demo, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel-tracing}]
    randomSamplingPercentage: 100
`)
	const trace, caller, b3 = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "463ac35c9f6413ad"
	for range 5 { // a whole batch of this trace
		if err := p.call("Traceparent", "00-"+trace+"-"+caller+"-01", "X-B3-Traceid", b3, "X-B3-Spanid", caller, "X-B3-Sampled", "0"); err != nil {
			t.Fatal(err)
		}
	}
	// Sidecar B sees no collector (its Sidecar resource hides it), so it
	// has no tracer and passes every trace header on untouched: app B
	// sees the caller's B3 headers if sidecar A left them alone.
	last := p.lastSeen()
	if last.trace != b3 || last.sampled != "0" || last.span != caller || last.parent != "" || len(last.traceparent) != 55 ||
		last.traceparent[:36] != "00-"+trace+"-" || last.traceparent[36:52] == caller || last.traceparent[52:] != "-01" {
		t.Fatalf("app B saw %+v: want the caller's B3 headers untouched and trace %s in a traceparent under sidecar A's span", last, trace)
	}
	// The last request's span may wait for the reporter's flush interval.
	aSpan := last.traceparent[36:52]
	var mine []otlptest.Span
	eventually(t, "sidecar A's span of the last request at the OTLP collector", func() error {
		mine = mine[:0]
		seen := false
		for _, s := range otel.Spans() {
			if hex.EncodeToString(s.GetTraceId()) == trace {
				mine = append(mine, s)
				seen = seen || hex.EncodeToString(s.GetSpanId()) == aSpan
			}
		}
		if !seen {
			return fmt.Errorf("%d spans of trace %s, none with id %s", len(mine), trace, aSpan)
		}
		return nil
	})
	for _, s := range mine {
		if s.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || hex.EncodeToString(s.GetParentSpanId()) != caller || s.Service != "a.default" ||
			s.Attr("http.status_code") != "200" {
			t.Errorf("span %v (service %s): want sidecar A's CLIENT spans of a.default under the caller's span %s", s.Span, s.Service, caller)
		}
	}
}

// TestAccessLogsOTel: Istio's envoyOtelAls access log provider, as its
// OpenTelemetry access logging task sets it up (a collector on port 4317
// and a Telemetry naming the provider). Sidecar A sends an OTLP log
// record over gRPC for each of app A's requests: Istio's TEXT line as
// the body, the provider's labels as attributes.
func TestAccessLogsOTel(t *testing.T) {
	p := &tracedPair{t: t}
	var logs otlptest.LogCollector
	p.start(`extensionProviders:
- name: otel-als
  envoyOtelAls:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
    logFormat:
      labels:
        code: "%RESPONSE_CODE%"
        cluster: "%UPSTREAM_CLUSTER%"
`, otelCollectorEntry(logs.ServeGRPC(t))+`---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: otel-als}]
`)
	for range 5 { // a whole batch, sent at once
		if err := p.call(); err != nil {
			t.Fatal(err)
		}
	}
	cluster := fmt.Sprintf("outbound|%d||web.b.mesh", p.svcPort)
	eventually(t, "sidecar A's records at the OTLP collector", func() error {
		n := 0
		for _, r := range logs.Records() {
			body := r.GetBody().GetStringValue()
			if !strings.Contains(body, `"GET /traced HTTP/1.1" 200 `) || !strings.Contains(body, cluster) || !strings.HasSuffix(body, "\n") {
				return fmt.Errorf("record body %q: want Istio's TEXT line for GET /traced to %s", body, cluster)
			}
			if a := r.Attrs(); a["code"] != "200" || a["cluster"] != cluster || len(r.Resource) != 0 {
				return fmt.Errorf("record attributes %v, resource %v: want code and cluster, no built-in labels", a, r.Resource)
			}
			n++
		}
		if n < 5 {
			return fmt.Errorf("%d records, want at least 5", n)
		}
		return nil
	})
	if h := logs.Headers()[0]; h.Get(":authority") != otelCollectorHost {
		t.Errorf("export metadata %v, want the collector's host as authority", h)
	}
}
