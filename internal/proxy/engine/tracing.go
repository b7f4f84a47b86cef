package engine

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster"
)

// Span reporting, as an Istio sidecar's Envoy does it with the Zipkin
// tracer: an HTTP connection manager whose tracing names the
// envoy.tracers.zipkin provider samples new traces at random_sampling
// percent (incoming decisions are kept), and every sampled request
// becomes one span — CLIENT on outbound listeners, SERVER on inbound
// ones, local replies included — sent in batches as Zipkin v2 JSON to the collector
// cluster. Chains without tracing propagate trace headers as before
// (trace.go) and report nothing.

const (
	zipkinTracerName = "envoy.tracers.zipkin"
	// zipkinMinFlushSpans is Envoy's tracing.zipkin.min_flush_spans.
	zipkinMinFlushSpans = 5
	// zipkinQueue bounds the spans waiting for a collector; more are
	// dropped and counted.
	zipkinQueue = 1024
	// defaultTraceFlushInterval is Envoy's tracing.zipkin.flush_interval_ms.
	defaultTraceFlushInterval = 5 * time.Second
)

// tracingConfig is one connection manager's compiled tracing.
type tracingConfig struct {
	// sampling is the share of new traces sampled (random_sampling),
	// client the share of requests with x-client-trace-id sampled
	// (client_sampling), overall the share of sampled requests reported
	// (overall_sampling).
	sampling, client, overall float64
	collector                 zipkinCollector
	sharedSpanContext         bool
	// w3c and id64: trace_context_option USE_B3_WITH_W3C_PROPAGATION,
	// trace_id_128bit false (traceOptions).
	w3c, id64  bool
	maxPathTag int
	tags       []customTag
}

// traceOptions are how a chain with tracing c (nil: none, as Istio's
// default Zipkin tracer without a collector) reads and writes trace
// context; inbound: on the destination's side (a server span).
func (c *tracingConfig) traceOptions(inbound bool) traceOptions {
	if c == nil {
		return traceOptions{sampling: defaultTraceSampling, client: 1, force: !inbound}
	}
	return traceOptions{sampling: c.sampling, client: c.client, force: !inbound,
		shared: c.sharedSpanContext && inbound, w3c: c.w3c, id64: c.id64}
}

// zipkinCollector is where spans go: a cluster, the path and Host.
type zipkinCollector struct {
	cluster, path, host string
}

// customTag is one custom_tags entry: a literal, or a request header or
// environment variable with a default.
type customTag struct {
	name, literal, header, def string
}

// compileTracing compiles h's tracing; nil when it has none.
func compileTracing(h *hcmv3.HttpConnectionManager) (*tracingConfig, error) {
	t := h.GetTracing()
	if t == nil || t.GetProvider() == nil {
		return nil, nil
	}
	if t.GetSpawnUpstreamSpan().GetValue() {
		return nil, errors.New("tracing: spawn_upstream_span is not supported (the sidecar reports one span per request)")
	}
	p := t.GetProvider()
	zc := &tracev3.ZipkinConfig{}
	if tc := p.GetTypedConfig(); tc == nil || !tc.MessageIs(zc) {
		return nil, fmt.Errorf("tracing: provider %q is not supported (%s with a ZipkinConfig is)", p.GetName(), zipkinTracerName)
	} else if err := tc.UnmarshalTo(zc); err != nil {
		return nil, fmt.Errorf("tracing: provider %q: %w", p.GetName(), err)
	}
	if zc.GetCollectorCluster() == "" || zc.GetCollectorEndpoint() == "" {
		return nil, errors.New("tracing: zipkin: collector_cluster and collector_endpoint are required")
	}
	if !strings.HasPrefix(zc.GetCollectorEndpoint(), "/") {
		return nil, fmt.Errorf("tracing: zipkin: collector_endpoint %q must be a path", zc.GetCollectorEndpoint())
	}
	if v := zc.GetCollectorEndpointVersion(); v != tracev3.ZipkinConfig_HTTP_JSON {
		return nil, fmt.Errorf("tracing: zipkin: collector_endpoint_version %v is not supported (HTTP_JSON is)", v)
	}
	if zc.GetCollectorService() != nil {
		return nil, errors.New("tracing: zipkin: collector_service is not supported (collector_cluster and collector_endpoint are)")
	}
	// A caller's 64-bit B3 trace stays 64-bit whatever trace_id_128bit
	// says; it sizes new traces' ids.
	c := &tracingConfig{sampling: 1, client: 1, overall: 1, maxPathTag: 256,
		sharedSpanContext: zc.GetSharedSpanContext() == nil || zc.GetSharedSpanContext().GetValue(),
		w3c:               zc.GetTraceContextOption() == tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION,
		id64:              !zc.GetTraceId_128Bit(),
		collector: zipkinCollector{cluster: zc.GetCollectorCluster(), path: zc.GetCollectorEndpoint(),
			host: cmp.Or(zc.GetCollectorHostname(), zc.GetCollectorCluster())}}
	pct := func(name string, v float64) (float64, error) {
		if v < 0 || v > 100 {
			return 0, fmt.Errorf("tracing: %s %v is not a percentage", name, v)
		}
		return v / 100, nil
	}
	var err error
	if s := t.GetRandomSampling(); s != nil {
		if c.sampling, err = pct("random_sampling", s.GetValue()); err != nil {
			return nil, err
		}
	}
	if s := t.GetClientSampling(); s != nil {
		if c.client, err = pct("client_sampling", s.GetValue()); err != nil {
			return nil, err
		}
	}
	if s := t.GetOverallSampling(); s != nil {
		if c.overall, err = pct("overall_sampling", s.GetValue()); err != nil {
			return nil, err
		}
	}
	if n := t.GetMaxPathTagLength(); n != nil {
		c.maxPathTag = int(n.GetValue())
	}
	for _, ct := range t.GetCustomTags() {
		tag := customTag{name: ct.GetTag()}
		switch {
		case ct.GetLiteral() != nil:
			tag.literal = ct.GetLiteral().GetValue()
		case ct.GetRequestHeader() != nil:
			tag.header, tag.def = http.CanonicalHeaderKey(ct.GetRequestHeader().GetName()), ct.GetRequestHeader().GetDefaultValue()
		case ct.GetEnvironment() != nil:
			// Read once: Envoy reads the environment when it loads the config.
			tag.literal = cmp.Or(os.Getenv(ct.GetEnvironment().GetName()), ct.GetEnvironment().GetDefaultValue())
		default:
			return nil, fmt.Errorf("tracing: custom tag %q: only literal, request_header and environment tags are supported", tag.name)
		}
		c.tags = append(c.tags, tag)
	}
	return c, nil
}

// zipkinSpan is a span in Zipkin's v2 JSON model.
type zipkinSpan struct {
	TraceID       string            `json:"traceId"`
	ID            string            `json:"id"`
	ParentID      string            `json:"parentId,omitempty"`
	Name          string            `json:"name"`
	Kind          string            `json:"kind"`
	Timestamp     int64             `json:"timestamp"`
	Duration      int64             `json:"duration"`
	Shared        bool              `json:"shared,omitempty"`
	LocalEndpoint zipkinEndpoint    `json:"localEndpoint"`
	Tags          map[string]string `json:"tags,omitempty"`
}

type zipkinEndpoint struct {
	ServiceName string `json:"serviceName"`
	IPv4        string `json:"ipv4,omitempty"`
	IPv6        string `json:"ipv6,omitempty"`
}

// reportSpan queues the span of a sampled request.
func (e *Engine) reportSpan(cc *chainConn, tc *tracingConfig, ex *exchange, r *http.Request, inbound bool, d time.Duration) {
	if tc.overall < 1 && rand.Float64() >= tc.overall {
		return
	}
	t := &ex.trace
	sp := &zipkinSpan{ID: hex.EncodeToString(t.span[:]), Kind: "CLIENT", Name: spanName(ex.cluster, r.Host),
		Timestamp: ex.start.UnixMicro(), Duration: max(d.Microseconds(), 1),
		LocalEndpoint: e.localEndpoint(cc)}
	if t.is64() { // a 64-bit trace stays one
		sp.TraceID = hex.EncodeToString(t.trace[8:])
	} else {
		sp.TraceID = hex.EncodeToString(t.trace[:])
	}
	if t.parent != ([8]byte{}) {
		sp.ParentID = hex.EncodeToString(t.parent[:])
	}
	if inbound {
		sp.Kind, sp.Shared = "SERVER", tc.sharedSpanContext
	}
	scheme := "http"
	if overTLS(r, cc) {
		scheme = "https"
	}
	url := scheme + "://" + r.Host + ex.path
	if len(url) > tc.maxPathTag && tc.maxPathTag > 0 {
		url = url[:tc.maxPathTag]
	}
	code := ex.code
	tags := map[string]string{
		"component":             "proxy",
		"node_id":               e.opts.NodeID,
		"guid:x-request-id":     hget(r.Header, "X-Request-Id"),
		"http.url":              url,
		"http.method":           r.Method,
		"http.protocol":         r.Proto,
		"downstream_cluster":    "-",
		"user_agent":            cmp.Or(hget(r.Header, "User-Agent"), "-"),
		"request_size":          strconv.FormatInt(ex.reqBytes, 10),
		"response_size":         strconv.FormatInt(ex.respBytes, 10),
		"response_flags":        cmp.Or(ex.flags, "-"),
		"http.status_code":      strconv.Itoa(code),
		"upstream_cluster":      ex.cluster,
		"upstream_cluster.name": ex.cluster,
		"peer.address":          r.RemoteAddr,
	}
	if ex.upstream != "" {
		tags["upstream_address"] = ex.upstream
	}
	if ex.grpcStatus != "" {
		tags["grpc.status_code"] = ex.grpcStatus
	}
	if code >= 500 || code == 0 || (ex.grpcStatus != "" && ex.grpcStatus != "0") {
		tags["error"] = "true"
	}
	for _, ct := range tc.tags {
		v := ct.literal
		if ct.header != "" {
			v = cmp.Or(hget(r.Header, ct.header), ct.def)
		}
		tags[ct.name] = v
	}
	sp.Tags = tags
	e.zipkin(tc.collector).enqueue(sp)
}

// spanName is Istio's span name, the route decorator it sets:
// "<service host>:<port>/*" from an outbound|port||host cluster, else
// the request's authority.
func spanName(clusterName, authority string) string {
	parts := strings.Split(clusterName, "|")
	if len(parts) == 4 && parts[3] != "" {
		return parts[3] + ":" + parts[1] + "/*"
	}
	return authority + "/*"
}

// localEndpoint is the span's service: Istio's service cluster,
// "<app>.<namespace>", and the address the connection reached.
func (e *Engine) localEndpoint(cc *chainConn) zipkinEndpoint {
	w := e.opts.Workload
	ep := zipkinEndpoint{ServiceName: cmp.Or(w.App, w.Workload)}
	if w.Namespace != "" && ep.ServiceName != "" {
		ep.ServiceName += "." + w.Namespace
	}
	if ep.ServiceName == "" {
		ep.ServiceName = "weft-proxy"
	}
	if ap, err := netip.ParseAddrPort(cc.LocalAddr().String()); err == nil {
		if a := ap.Addr().Unmap(); a.Is4() {
			ep.IPv4 = a.String()
		} else {
			ep.IPv6 = a.String()
		}
	}
	return ep
}

// zipkinReporter batches spans for one collector. Its goroutine ends
// once no span has come for reporterIdleTicks flush intervals, so that
// collectors a config no longer names leave nothing running; a span for
// one of them after that starts a new reporter.
type zipkinReporter struct {
	e   *Engine
	col zipkinCollector
	ch  chan *zipkinSpan
	mu  sync.Mutex
	// done: run has returned (idle), and the reporter is out of
	// e.reporters; enqueue hands spans to the collector's next one.
	done bool
}

// reporterIdleTicks is how many flush intervals without a span end a
// reporter (a minute at Envoy's 5 s).
const reporterIdleTicks = 12

// zipkin returns the reporter for col, starting it on first use.
func (e *Engine) zipkin(col zipkinCollector) *zipkinReporter {
	if r, ok := e.reporters.Load(col); ok {
		return r.(*zipkinReporter)
	}
	r := &zipkinReporter{e: e, col: col, ch: make(chan *zipkinSpan, zipkinQueue)}
	if prev, loaded := e.reporters.LoadOrStore(col, r); loaded {
		return prev.(*zipkinReporter)
	}
	go r.run()
	return r
}

func (r *zipkinReporter) enqueue(sp *zipkinSpan) {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		r.e.zipkin(r.col).enqueue(sp)
		return
	}
	select {
	case r.ch <- sp:
	default:
		r.e.metrics.SpansDropped.Inc()
	}
	r.mu.Unlock()
}

// run sends a batch once zipkinMinFlushSpans are waiting, or every flush
// interval, until it has been idle for reporterIdleTicks intervals or the
// engine shuts down (then once more, briefly).
func (r *zipkinReporter) run() {
	every := r.e.opts.TraceFlushInterval
	if every <= 0 {
		every = defaultTraceFlushInterval
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var batch []*zipkinSpan
	idle := 0
	for {
		select {
		case sp := <-r.ch:
			idle = 0
			batch = append(batch, sp)
			if len(batch) >= zipkinMinFlushSpans {
				r.send(batch)
				batch = nil
			}
		case <-tick.C:
			if len(batch) > 0 {
				r.send(batch)
				batch = nil
				continue
			}
			if idle++; idle >= reporterIdleTicks && r.retire() {
				return
			}
		case <-r.e.quit:
			for len(r.ch) > 0 {
				batch = append(batch, <-r.ch)
			}
			if len(batch) > 0 {
				r.send(batch)
			}
			return
		}
	}
}

// retire takes an idle reporter out of service, unless a span has just
// come.
func (r *zipkinReporter) retire() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ch) > 0 {
		return false
	}
	r.done = true
	r.e.reporters.CompareAndDelete(r.col, r)
	return true
}

// send posts spans to an endpoint of the collector cluster, through the
// cluster's transport (its TLS, if any, included).
func (r *zipkinReporter) send(spans []*zipkinSpan) {
	n := float64(len(spans))
	rt := r.e.cur.Load()
	var c *cluster.Cluster
	if rt != nil {
		c = rt.clusters[r.col.cluster]
	}
	if c == nil {
		r.fail(n, "collector cluster unknown")
		return
	}
	ep, err := c.Pick(cluster.PickContext{})
	if err != nil {
		r.fail(n, err.Error())
		return
	}
	body, err := json.Marshal(spans)
	if err != nil {
		r.fail(n, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, upstreamScheme(c)+"://"+ep.Address+r.col.path, bytes.NewReader(body))
	req.Host = r.col.host
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.e.transport(rt, c, source{}, upstreamH2(c, req)).RoundTrip(req)
	if err != nil {
		r.fail(n, err.Error())
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		r.fail(n, "collector answered "+resp.Status)
		return
	}
	r.e.metrics.SpansSent.Add(n)
}

// fail counts lost spans; the engine's first failure is also logged.
func (r *zipkinReporter) fail(n float64, why string) {
	r.e.metrics.SpansDropped.Add(n)
	r.e.traceWarn.Do(func() {
		r.e.log.Warn("spans not delivered to the tracing collector (further failures are only counted in weft_tracing_spans_dropped_total)",
			"cluster", r.col.cluster, "reason", why)
	})
}
