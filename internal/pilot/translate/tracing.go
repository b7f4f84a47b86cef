package translate

import (
	"cmp"
	"sort"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	tracingtagv3 "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	stats "istio.io/api/envoy/extensions/stats"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// Tracing, as istiod configures it for its Zipkin and OpenTelemetry
// tracers: every HTTP connection manager of a sidecar gets tracing with
// the envoy.tracers.zipkin provider (Zipkin v2 JSON) or the
// envoy.tracers.opentelemetry one (OTLP over gRPC, or over HTTP with the
// provider's http), reporting to the collector service's outbound
// cluster, sampling new traces at a percentage.
//
// The provider is the first one the applicable Telemetry resources name
// (merged root, namespace, workload as for access logs; match.mode limits
// an entry to CLIENT or SERVER), else MeshConfig defaultProviders.tracing,
// else — with enableTracing, Istio's default — defaultConfig.tracing's
// zipkin address. Since Istio 1.22 there is no default address, so a mesh
// that names no tracer gets none: its sidecars neither report spans nor
// touch trace headers. Sampling is the Telemetry's
// randomSamplingPercentage, else defaultConfig.tracing.sampling (1 %).
// disableSpanReporting turns reporting off; enableIstioTags: false
// leaves out Istio's tags (istioTags), most specific level first. A named provider's collector
// service the proxy cannot see leaves tracing off, with a warning, as
// istiod does. A zipkin.address the proxy cannot see still gets its
// tracer, as Istio's bootstrap tracer does: trace headers are written and
// spans are dropped (weft_tracing_spans_dropped_total).

const (
	zipkinTracer = "envoy.tracers.zipkin"
	otelTracer   = "envoy.tracers.opentelemetry"
	// defaultOTLPTimeout bounds an HTTP export (OTLP/HTTP, or Zipkin
	// through an HTTP service) whose provider sets no timeout.
	defaultOTLPTimeout = 5 * time.Second
)

// sideTelemetry is what one side of the proxy, outbound (CLIENT) or
// inbound (SERVER), puts on every connection manager and tcp_proxy it
// builds: tracing (nil: none; connection managers only), access logs and
// the istio.stats filter's config (nil: none, metrics.go).
type sideTelemetry struct {
	tracing *hcmv3.HttpConnectionManager_Tracing
	logs    []*accesslogv3.AccessLog
	stats   *stats.PluginConfig
}

// side is the outbound or inbound side's telemetry, worked out on first
// use and shared by every filter of the side (each is marshalled as it
// is built).
func (g *netBuilder) side(inbound bool) *sideTelemetry {
	if g.sidesF == nil {
		g.sidesF = &[2]sideTelemetry{}
		for i, mode := range []telemetry.WorkloadMode{telemetry.WorkloadMode_CLIENT, telemetry.WorkloadMode_SERVER} {
			g.sidesF[i] = sideTelemetry{tracing: g.tracing(mode), logs: g.accessLogs(mode), stats: g.statsConfig(mode)}
		}
	}
	if inbound {
		return &g.sidesF[1]
	}
	return &g.sidesF[0]
}

// tracing computes one side's connection manager tracing (nil: none).
func (g *netBuilder) tracing(mode telemetry.WorkloadMode) *hcmv3.HttpConnectionManager_Tracing {
	mt := g.s.Mesh.Tracing
	var providers []string
	sampling, disabled, istioTags, noPropagation := -1.0, false, true, false
	tags := map[string]*telemetry.Tracing_CustomTag{}
	for _, c := range g.telemetryScopes() {
		for _, tr := range c.Spec.(*telemetry.Telemetry).GetTracing() {
			if m := tr.GetMatch().GetMode(); m != telemetry.WorkloadMode_CLIENT_AND_SERVER && m != mode {
				continue
			}
			if ps := tr.GetProviders(); len(ps) > 0 {
				providers = providers[:0]
				for _, p := range ps {
					providers = append(providers, p.GetName())
				}
			}
			if s := tr.GetRandomSamplingPercentage(); s != nil {
				// The API server refuses others; one stored before that
				// would make every sidecar NACK its listeners.
				if v := s.GetValue(); v >= 0 && v <= 100 {
					sampling = v
				} else {
					g.warnOnce("%s: tracing randomSamplingPercentage %v is not in [0, 100]; ignored", c.Key(), v)
				}
			}
			if d := tr.GetDisableSpanReporting(); d != nil {
				disabled = d.GetValue()
			}
			if it := tr.GetEnableIstioTags(); it != nil {
				istioTags = it.GetValue()
			}
			if d := tr.GetDisableContextPropagation(); d != nil {
				noPropagation = d.GetValue()
			}
			if u := tr.GetUseRequestIdForTraceSampling(); u != nil && !u.GetValue() {
				g.warnOnce("%s: tracing useRequestIdForTraceSampling: false has no effect: weft samples new traces at random, never by x-request-id", c.Key())
			}
			for k, v := range tr.GetCustomTags() {
				tags[k] = v
			}
		}
	}
	if providers == nil {
		providers = mt.DefaultProviders
	}
	if disabled {
		return nil
	}
	var host string
	var port uint32
	var tp model.TracingProvider // a named provider's settings
	switch {
	case len(providers) > 0:
		if len(providers) > 1 {
			g.warnOnce("tracing: providers %v: a sidecar reports to one tracer; using %q", providers, providers[0])
		}
		p, ok := mt.Providers[providers[0]]
		if !ok {
			g.warnOnce("tracing: provider %q is not a zipkin or opentelemetry extensionProvider in the mesh config; spans are not reported", providers[0])
			return nil
		}
		tp = p
		host, port = p.Service, p.Port
		if _, h, ok := strings.Cut(host, "/"); ok { // "namespace/hostname"
			host = h
		}
	case mt.Enabled && mt.ZipkinAddress != "":
		var ok bool
		if host, port, ok = mt.ZipkinHostPort(); !ok {
			return nil
		}
	default:
		return nil
	}
	svc := g.collectorService(host, port)
	switch {
	case svc != "":
	case len(providers) > 0:
		g.warnOnce("tracing: provider %q: no service %s with port %d is visible to this proxy; spans are not reported", providers[0], host, port)
		return nil
	default:
		g.warnOnce("tracing: defaultConfig.tracing.zipkin.address %s: no service %s with port %d is visible to this proxy; "+
			"it propagates trace headers and drops its spans", mt.ZipkinAddress, host, port)
		svc = host
	}
	if sampling < 0 {
		sampling = mt.Sampling
	}
	a, name := g.tracerConfig(tp, svc, port)
	out := &hcmv3.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: sampling},
		Provider:             &tracev3.Tracing_Http{Name: name, ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: a}},
		NoContextPropagation: noPropagation,
	}
	if istioTags {
		out.CustomTags = g.istioTags()
	}
	if tp.MaxTagLength > 0 {
		out.MaxPathTagLength = wrapperspb.UInt32(tp.MaxTagLength)
	}
	names := make([]string, 0, len(tags))
	for k := range tags {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		ct := &tracingtagv3.CustomTag{Tag: k}
		switch t := tags[k].GetType().(type) {
		case *telemetry.Tracing_CustomTag_Literal:
			ct.Type = &tracingtagv3.CustomTag_Literal_{Literal: &tracingtagv3.CustomTag_Literal{Value: t.Literal.GetValue()}}
		case *telemetry.Tracing_CustomTag_Environment:
			ct.Type = &tracingtagv3.CustomTag_Environment_{Environment: &tracingtagv3.CustomTag_Environment{
				Name: t.Environment.GetName(), DefaultValue: t.Environment.GetDefaultValue()}}
		case *telemetry.Tracing_CustomTag_Header:
			ct.Type = &tracingtagv3.CustomTag_RequestHeader{RequestHeader: &tracingtagv3.CustomTag_Header{
				Name: t.Header.GetName(), DefaultValue: t.Header.GetDefaultValue()}}
		default:
			g.warnOnce("tracing: custom tag %q: only literal, environment and header tags are supported; left out", k)
			continue
		}
		out.CustomTags = append(out.CustomTags, ct)
	}
	return out
}

// tracerConfig is the tracer a provider's spans go to the collector
// service svc through, and its name: Envoy's OpenTelemetry tracer
// (OTLP over gRPC, or over HTTP), or its Zipkin tracer (tp zero: Istio's
// default zipkin address).
func (g *netBuilder) tracerConfig(tp model.TracingProvider, svc string, port uint32) (*anypb.Any, string) {
	cluster := OutboundCluster(port, "", svc)
	var timeout *durationpb.Duration
	if tp.Timeout > 0 {
		timeout = durationpb.New(tp.Timeout)
	}
	if !tp.OTel {
		zc := &tracev3.ZipkinConfig{CollectorCluster: cluster, CollectorEndpoint: cmp.Or(tp.Path, "/api/v2/spans"),
			CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: !tp.TraceID64,
			SharedSpanContext: wrapperspb.Bool(false), CollectorHostname: svc}
		if tp.W3C {
			zc.TraceContextOption = tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION
		}
		if timeout != nil || len(tp.Headers) > 0 {
			// As istiod 1.29: a timeout or headers need the collector as an
			// HTTP service, which replaces the cluster fields. Without them
			// the older fields keep older Envoys able to take the config.
			zc.CollectorService = httpService("http://"+svc+zc.GetCollectorEndpoint(), cluster, timeout, tp.Headers)
			zc.CollectorCluster, zc.CollectorEndpoint, zc.CollectorHostname = "", "", ""
		}
		a, _ := anypb.New(zc)
		return a, zipkinTracer
	}
	// The service is Istio's service cluster, as the proxy's Zipkin spans
	// name it: "<canonical service>.<namespace>".
	oc := &tracev3.OpenTelemetryConfig{}
	if name := g.canonicalService(); name != "" {
		oc.ServiceName = name + "." + g.p.Namespace
	}
	if tp.OTLPHTTP {
		oc.HttpService = httpService(svc+tp.Path, cluster, timeout, tp.Headers)
	} else {
		gs := &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
			ClusterName: cluster, Authority: svc}}, Timeout: timeout}
		for _, h := range tp.Headers {
			gs.InitialMetadata = append(gs.InitialMetadata, &corev3.HeaderValue{Key: strings.ToLower(h.Name), Value: h.Value})
		}
		oc.GrpcService = gs
	}
	a, _ := anypb.New(oc)
	return a, otelTracer
}

// httpService is a collector as an Envoy HTTP service: the URI, its
// cluster, a timeout (Envoy requires one: defaultOTLPTimeout when nil)
// and headers.
func httpService(uri, cluster string, timeout *durationpb.Duration, headers []model.Header) *corev3.HttpService {
	if timeout == nil {
		timeout = durationpb.New(defaultOTLPTimeout)
	}
	hs := &corev3.HttpService{HttpUri: &corev3.HttpUri{Uri: uri, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: cluster}, Timeout: timeout}}
	for _, h := range headers {
		hs.RequestHeadersToAdd = append(hs.RequestHeadersToAdd, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.Name, Value: h.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	return hs
}

// collectorService finds the collector among the services the proxy sees:
// host as given, or a short Kubernetes name ("zipkin.istio-system") under
// the domain suffix, with the port. "" when there is none.
func (g *netBuilder) collectorService(host string, port uint32) string {
	for _, h := range []string{host, host + "." + g.s.Mesh.DomainSuffix} {
		s := g.byHost[h]
		if s == nil {
			continue
		}
		for _, p := range s.Ports {
			if p.Number == port {
				return h
			}
		}
	}
	return ""
}

// istioTags are the tags istiod puts on every span: its dry-run
// authorization tags, and the literal ones — the proxy's canonical
// service and revision, namespace and mesh.
func (g *netBuilder) istioTags() []*tracingtagv3.CustomTag {
	lit := func(k, v string) *tracingtagv3.CustomTag {
		return &tracingtagv3.CustomTag{Tag: k, Type: &tracingtagv3.CustomTag_Literal_{Literal: &tracingtagv3.CustomTag_Literal{Value: v}}}
	}
	l := g.p.Labels
	svc := g.canonicalService()
	rev := cmp.Or(l["service.istio.io/canonical-revision"], l["app.kubernetes.io/version"], l["version"], "latest")
	// istiod's dry-run tags: what the RBAC filters' shadow rules decided
	// (left out of a span when no dry-run policy ran).
	dry := func(tag, key string) *tracingtagv3.CustomTag {
		return &tracingtagv3.CustomTag{Tag: tag, Type: &tracingtagv3.CustomTag_Metadata_{Metadata: &tracingtagv3.CustomTag_Metadata{
			Kind: &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Request_{Request: &metadatav3.MetadataKind_Request{}}},
			MetadataKey: &metadatav3.MetadataKey{Key: httpRBACFilterName,
				Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: key}}}}}}}
	}
	return []*tracingtagv3.CustomTag{
		dry("istio.authorization.dry_run.allow_policy.name", dryRunAllowPrefix+"shadow_effective_policy_id"),
		dry("istio.authorization.dry_run.allow_policy.result", dryRunAllowPrefix+"shadow_engine_result"),
		dry("istio.authorization.dry_run.deny_policy.name", dryRunDenyPrefix+"shadow_effective_policy_id"),
		dry("istio.authorization.dry_run.deny_policy.result", dryRunDenyPrefix+"shadow_engine_result"),
		lit("istio.canonical_revision", rev),
		lit("istio.canonical_service", svc),
		lit("istio.mesh_id", g.s.Mesh.TrustDomain),
		lit("istio.namespace", g.p.Namespace),
	}
}

// canonicalService is the proxy's canonical service name, as Istio's
// injector derives it from the workload's labels.
func (g *netBuilder) canonicalService() string {
	l := g.p.Labels
	return cmp.Or(l["service.istio.io/canonical-name"], l["app.kubernetes.io/name"], l["app"], g.p.WorkloadName)
}
