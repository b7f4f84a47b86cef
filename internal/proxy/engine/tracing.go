package engine

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/types/known/anypb"
)

// Span reporting, as an Istio sidecar's Envoy does it with its Zipkin or
// OpenTelemetry tracer: an HTTP connection manager whose tracing names
// the envoy.tracers.zipkin or envoy.tracers.opentelemetry provider
// samples new traces at random_sampling percent (incoming decisions are
// kept), and every sampled request becomes one span — CLIENT on outbound
// listeners, SERVER on inbound ones, local replies included — sent in
// batches to the collector cluster: as Zipkin v2 JSON, or as OTLP over
// gRPC or HTTP. Chains without tracing propagate trace headers as before
// (trace.go) and report nothing.

const (
	zipkinTracerName = "envoy.tracers.zipkin"
	otelTracerName   = "envoy.tracers.opentelemetry"
	// minFlushSpans is Envoy's tracing.zipkin.min_flush_spans and
	// tracing.opentelemetry.min_flush_spans.
	minFlushSpans = 5
	// spanQueue bounds the spans waiting for a collector; more are
	// dropped and counted.
	spanQueue = 1024
	// defaultTraceFlushInterval is Envoy's tracing.zipkin.flush_interval_ms
	// (and its OpenTelemetry tracer's).
	defaultTraceFlushInterval = 5 * time.Second
	// defaultExportTimeout bounds a batch's delivery when the config
	// gives no timeout.
	defaultExportTimeout = 5 * time.Second
	// otlpExportPath is OTLP/gRPC's trace export method.
	otlpExportPath = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
	// unknownService is the OTLP service.name without service_name, as
	// Envoy's.
	unknownService = "unknown_service:envoy"
)

// tracingConfig is one connection manager's compiled tracing.
type tracingConfig struct {
	// sampling is the share of new traces sampled (random_sampling),
	// client the share of requests with x-client-trace-id sampled
	// (client_sampling), overall the share of sampled requests reported
	// (overall_sampling).
	sampling, client, overall float64
	collector                 exportDest
	sharedSpanContext         bool
	// w3c and id64: trace_context_option USE_B3_WITH_W3C_PROPAGATION,
	// trace_id_128bit false (traceOptions); both false with OTLP, whose
	// trace context is W3C's alone.
	w3c, id64  bool
	maxPathTag int
	tags       []customTag
	// noPropagation: no_context_propagation (Istio's Telemetry
	// disableContextPropagation): spans are reported, but this hop's
	// context is not written into the upstream request, whose trace
	// headers stay as the downstream sent them, as Envoy's.
	noPropagation bool
}

// traceOptions are how a chain with tracing c reads and writes trace
// context; inbound: on the destination's side (a server span).
func (c *tracingConfig) traceOptions(inbound bool) traceOptions {
	return traceOptions{sampling: c.sampling, client: c.client, force: !inbound,
		shared: c.sharedSpanContext && inbound, w3c: c.w3c, id64: c.id64, otel: c.collector.format != zipkinJSON}
}

// customTag is one custom_tags entry: a literal, or a request header,
// environment variable or request metadata value (metaNS, then the keys
// of metaPath) with a default.
type customTag struct {
	name, literal, header, def string
	metaNS                     string
	metaPath                   []string
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
	c := &tracingConfig{sampling: 1, client: 1, overall: 1, maxPathTag: 256, noPropagation: t.GetNoContextPropagation()}
	p := t.GetProvider()
	var err error
	switch tc := p.GetTypedConfig(); {
	case tc != nil && tc.MessageIs(&tracev3.ZipkinConfig{}):
		err = c.compileZipkin(tc)
	case tc != nil && tc.MessageIs(&tracev3.OpenTelemetryConfig{}):
		err = c.compileOTel(tc)
	default:
		return nil, fmt.Errorf("tracing: provider %q is not supported (%s with a ZipkinConfig and %s with an OpenTelemetryConfig are)",
			p.GetName(), zipkinTracerName, otelTracerName)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: provider %q: %w", p.GetName(), err)
	}
	pct := func(name string, v float64) (float64, error) {
		if v < 0 || v > 100 {
			return 0, fmt.Errorf("tracing: %s %v is not a percentage", name, v)
		}
		return v / 100, nil
	}
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
		case ct.GetMetadata() != nil:
			// As istiod's dry-run tags: a value the request's HTTP filters
			// left (RBAC's shadow verdict), by namespace and key path.
			m := ct.GetMetadata()
			if m.GetKind().GetRequest() == nil {
				return nil, fmt.Errorf("tracing: custom tag %q: only request metadata is supported", tag.name)
			}
			tag.metaNS, tag.def = m.GetMetadataKey().GetKey(), m.GetDefaultValue()
			for _, seg := range m.GetMetadataKey().GetPath() {
				tag.metaPath = append(tag.metaPath, seg.GetKey())
			}
			if tag.metaNS == "" || len(tag.metaPath) == 0 {
				return nil, fmt.Errorf("tracing: custom tag %q: metadata needs a key and a path", tag.name)
			}
		default:
			return nil, fmt.Errorf("tracing: custom tag %q: only literal, request_header, environment and request metadata tags are supported", tag.name)
		}
		c.tags = append(c.tags, tag)
	}
	return c, nil
}

// compileZipkin reads an envoy.tracers.zipkin provider's ZipkinConfig.
func (c *tracingConfig) compileZipkin(tc *anypb.Any) error {
	zc := &tracev3.ZipkinConfig{}
	if err := tc.UnmarshalTo(zc); err != nil {
		return err
	}
	if v := zc.GetCollectorEndpointVersion(); v != tracev3.ZipkinConfig_HTTP_JSON {
		return fmt.Errorf("zipkin: collector_endpoint_version %v is not supported (HTTP_JSON is)", v)
	}
	if cs := zc.GetCollectorService(); cs != nil {
		// As istiod 1.29 writes it: the collector as an HTTP service, which
		// takes precedence over the cluster fields.
		dest, err := httpServiceDest("zipkin: collector_service", cs)
		if err != nil {
			return err
		}
		dest.format = zipkinJSON
		c.collector = dest
	} else {
		if zc.GetCollectorCluster() == "" || zc.GetCollectorEndpoint() == "" {
			return errors.New("zipkin: collector_cluster and collector_endpoint, or collector_service, are required")
		}
		if !strings.HasPrefix(zc.GetCollectorEndpoint(), "/") {
			return fmt.Errorf("zipkin: collector_endpoint %q must be a path", zc.GetCollectorEndpoint())
		}
		c.collector = exportDest{format: zipkinJSON, cluster: zc.GetCollectorCluster(), path: zc.GetCollectorEndpoint(),
			host: cmp.Or(zc.GetCollectorHostname(), zc.GetCollectorCluster())}
	}
	// A caller's 64-bit B3 trace stays 64-bit whatever trace_id_128bit
	// says; it sizes new traces' ids.
	c.sharedSpanContext = zc.GetSharedSpanContext() == nil || zc.GetSharedSpanContext().GetValue()
	c.w3c = zc.GetTraceContextOption() == tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION
	c.id64 = !zc.GetTraceId_128Bit()
	return nil
}

// compileOTel reads an envoy.tracers.opentelemetry provider's
// OpenTelemetryConfig: an Envoy gRPC service or an HTTP service naming a
// cluster, and the service name.
func (c *tracingConfig) compileOTel(tc *anypb.Any) error {
	oc := &tracev3.OpenTelemetryConfig{}
	if err := tc.UnmarshalTo(oc); err != nil {
		return err
	}
	switch {
	case len(oc.GetResourceDetectors()) > 0:
		return errors.New("opentelemetry: resource_detectors are not supported")
	case oc.GetSampler() != nil:
		return errors.New("opentelemetry: sampler is not supported (the connection manager's sampling is)")
	case oc.GetGrpcService() != nil && oc.GetHttpService() != nil:
		return errors.New("opentelemetry: grpc_service and http_service are exclusive")
	}
	var col exportDest
	var err error
	switch {
	case oc.GetGrpcService() != nil:
		col, err = grpcServiceDest("opentelemetry: grpc_service", oc.GetGrpcService(), otlpExportPath)
		col.format = otlpGRPC
	case oc.GetHttpService() != nil:
		col, err = httpServiceDest("opentelemetry: http_service", oc.GetHttpService())
		col.format = otlpHTTP
	default:
		return errors.New("opentelemetry: grpc_service or http_service is required")
	}
	if err != nil {
		return err
	}
	col.service = cmp.Or(oc.GetServiceName(), unknownService)
	c.collector = col
	return nil
}

// span is one request's span, as the tracers report it.
type span struct {
	trace      [16]byte // a 64-bit id is the low half
	id, parent [8]byte  // parent zero: a root span
	name       string
	// server: the inbound side's span; shared: Zipkin's shared span
	// context (the caller's span id kept).
	server, shared bool
	start          time.Time
	dur            time.Duration
	local          zipkinEndpoint
	// traceState is the caller's W3C tracestate (OTLP).
	traceState string
	tags       map[string]string
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

// zipkin is sp in Zipkin's model.
func (sp *span) zipkin() *zipkinSpan {
	z := &zipkinSpan{TraceID: traceHex(&sp.trace), ID: hex.EncodeToString(sp.id[:]), Kind: "CLIENT", Name: sp.name,
		Timestamp: sp.start.UnixMicro(), Duration: max(sp.dur.Microseconds(), 1),
		LocalEndpoint: sp.local, Tags: sp.tags}
	if sp.parent != ([8]byte{}) {
		z.ParentID = hex.EncodeToString(sp.parent[:])
	}
	if sp.server {
		z.Kind, z.Shared = "SERVER", sp.shared
	}
	return z
}

// otlpExport is spans as one OTLP export request: one resource, the
// collector's service, and its spans, tags as string attributes (sorted)
// and Envoy's "error" tag as an error status.
func otlpExport(service string, spans []*span) *coltracepb.ExportTraceServiceRequest {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	out := make([]*tracepb.Span, 0, len(spans))
	for _, sp := range spans {
		o := &tracepb.Span{TraceId: bytes.Clone(sp.trace[:]), SpanId: bytes.Clone(sp.id[:]), TraceState: sp.traceState,
			Name: sp.name, Kind: tracepb.Span_SPAN_KIND_CLIENT,
			StartTimeUnixNano: uint64(sp.start.UnixNano()), EndTimeUnixNano: uint64(sp.start.Add(sp.dur).UnixNano())}
		if sp.server {
			o.Kind = tracepb.Span_SPAN_KIND_SERVER
		}
		if sp.parent != ([8]byte{}) {
			o.ParentSpanId = bytes.Clone(sp.parent[:])
		}
		keys := make([]string, 0, len(sp.tags))
		for k := range sp.tags {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			o.Attributes = append(o.Attributes, str(k, sp.tags[k]))
		}
		if sp.tags["error"] == "true" {
			o.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
		}
		out = append(out, o)
	}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", service)}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: out}},
	}}}
}

// reportSpan queues the span of a sampled request.
func (e *Engine) reportSpan(cc *chainConn, tc *tracingConfig, ex *exchange, r *http.Request, inbound bool, d time.Duration) {
	if tc.overall < 1 && rand.Float64() >= tc.overall {
		return
	}
	t := &ex.trace
	sp := &span{trace: t.trace, id: t.span, parent: t.parent, name: spanName(ex.cluster, r.Host),
		server: inbound, shared: inbound && tc.sharedSpanContext, start: ex.start, dur: d, local: e.localEndpoint(cc)}
	if tc.collector.format != zipkinJSON {
		sp.traceState = hget(r.Header, "Tracestate")
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
		"request_size":          strconv.FormatInt(ex.requestBytes(), 10),
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
		switch {
		case ct.header != "":
			v = cmp.Or(hget(r.Header, ct.header), ct.def)
		case ct.metaNS != "":
			// Without a value or a default the tag is left out, as Envoy.
			var ok bool
			if v, ok = metadataValue(ex.metadata, ct.metaNS, ct.metaPath); !ok {
				if v = ct.def; v == "" {
					continue
				}
			}
		}
		tags[ct.name] = v
	}
	sp.tags = tags
	e.reporter(tc.collector).enqueue(sp)
}

// metadataValue is the dynamic metadata value at ns and path, as text.
func metadataValue(md map[string]map[string]any, ns string, path []string) (string, bool) {
	v, _ := httpfilter.MetadataValue(md, ns, path)
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return x, true
	default:
		return fmt.Sprint(x), true
	}
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

// serviceCluster is Istio's service cluster for the proxy,
// "<app>.<namespace>" ("weft-proxy" without a workload).
func (e *Engine) serviceCluster() string {
	w := e.opts.Workload
	name := cmp.Or(w.App, w.Workload)
	if w.Namespace != "" && name != "" {
		name += "." + w.Namespace
	}
	return cmp.Or(name, "weft-proxy")
}

// localEndpoint is the span's service: Istio's service cluster,
// "<app>.<namespace>", and the address the connection reached.
func (e *Engine) localEndpoint(cc *chainConn) zipkinEndpoint {
	ep := zipkinEndpoint{ServiceName: e.serviceCluster()}
	if ap, err := netip.ParseAddrPort(cc.LocalAddr().String()); err == nil {
		if a := ap.Addr().Unmap(); a.Is4() {
			ep.IPv4 = a.String()
		} else {
			ep.IPv6 = a.String()
		}
	}
	return ep
}
