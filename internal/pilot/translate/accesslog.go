package translate

import (
	"cmp"
	"encoding/json"
	"sort"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/registry"
	otlpcommon "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/types/known/structpb"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// Access logs, as istiod configures them: file access loggers
// (envoy.access_loggers.file) on every HTTP connection manager and
// tcp_proxy of a sidecar's listeners, set as each is built
// (netBuilder.side), outbound listeners being the proxy's CLIENT side and
// inbound ones its SERVER side.
//
// Telemetry resources decide when any applies to the proxy (or MeshConfig
// sets defaultProviders.accessLogging): the root namespace's oldest
// selector-less one (mesh), the proxy namespace's oldest selector-less
// one, and the oldest one of the proxy's namespace whose selector matches
// it (workload) are merged in that order as Istio merges them: a level
// naming providers replaces the providers of the levels above, an entry
// without providers applies to its parent's, disabled turns a provider
// off, match.mode limits an entry to CLIENT or SERVER. Providers are
// MeshConfig envoyFileAccessLog extensionProviders, envoyOtelAls ones
// (envoy.access_loggers.open_telemetry: OTLP log records over gRPC), or
// the built-in "envoy" (/dev/stdout, Istio's TEXT format). Otherwise MeshConfig
// accessLogFile (with accessLogEncoding and accessLogFormat) applies.
//
// A filter expression must compile as weft-proxy compiles it
// (accesslog.ParseFilter: CEL over Envoy's attributes); a provider whose
// filter does not, or whose format uses an operator weft-proxy lacks, is
// left out and reported rather than logging everything.

const (
	fileAccessLogName = "envoy.access_loggers.file"
	otelAccessLogName = "envoy.access_loggers.open_telemetry"
	// otelAccessLogDefaultName is istiod's log_name for an envoyOtelAls
	// provider without logName.
	otelAccessLogDefaultName = "otel_envoy_accesslog"
	telemetryKind            = "Telemetry"
	// builtinEnvoyProvider is Istio's built-in file provider.
	builtinEnvoyProvider = "envoy"
)

// loggingLevel is the accessLogging of one applicable Telemetry.
type loggingLevel struct {
	cfg     *model.Config
	entries []*telemetry.AccessLogging
}

// telemetryLevels returns the applicable Telemetries' accessLogging, root
// first.
func (g *netBuilder) telemetryLevels() []loggingLevel {
	var out []loggingLevel
	for _, c := range g.telemetryScopes() {
		if e := c.Spec.(*telemetry.Telemetry).GetAccessLogging(); len(e) > 0 {
			out = append(out, loggingLevel{cfg: c, entries: e})
		}
	}
	return out
}

// telemetryScopes returns the Telemetries that apply to the proxy, root
// first: the root namespace's oldest selector-less one, the proxy
// namespace's oldest selector-less one, and the oldest one of its
// namespace whose selector matches it.
func (g *netBuilder) telemetryScopes() []*model.Config {
	root := g.s.Mesh.RootNamespace
	var rootWide, nsWide, workload *model.Config
	for _, c := range g.s.Configs(telemetryKind) {
		tm, ok := c.Spec.(*telemetry.Telemetry)
		if !ok {
			continue
		}
		if tm.GetTargetRef() != nil || len(tm.GetTargetRefs()) > 0 {
			if len(tm.GetAccessLogging()) > 0 || len(tm.GetTracing()) > 0 || len(tm.GetMetrics()) > 0 {
				g.warnOnce("%s: targetRef is not supported by weft (gateways only); accessLogging, metrics and tracing ignored", c.Key())
			}
			continue
		}
		sel := tm.GetSelector().GetMatchLabels()
		switch {
		case len(sel) == 0 && c.Namespace == root:
			if rootWide == nil {
				rootWide = c
			}
		case len(sel) == 0 && c.Namespace == g.p.Namespace:
			if nsWide == nil {
				nsWide = c
			}
		case len(sel) > 0 && c.Namespace == g.p.Namespace:
			if workload == nil && registry.LabelsMatch(sel, g.p.Labels) {
				workload = c
			}
		}
	}
	var out []*model.Config
	for _, c := range []*model.Config{rootWide, nsWide, workload} {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// providerFilter is one enabled provider and its filter (nil: none).
type providerFilter struct {
	filter *telemetry.AccessLogging_Filter
	from   *model.Config
}

// accessLogs computes the access_log entries of one side of the proxy
// (nil: none).
func (g *netBuilder) accessLogs(mode telemetry.WorkloadMode) []*accesslogv3.AccessLog {
	mesh := g.s.Mesh.AccessLog
	if mesh == nil {
		mesh = &model.AccessLogging{}
	}
	levels := g.telemetryLevels()
	if len(levels) == 0 && len(mesh.DefaultProviders) == 0 {
		return g.meshAccessLog(mesh)
	}
	providers := mergeLogging(levels, mesh.DefaultProviders, mode)
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []*accesslogv3.AccessLog
	for _, n := range names {
		pf := providers[n]
		where := "mesh config defaultProviders"
		if pf.from != nil {
			where = pf.from.Key()
		}
		var al *accesslogv3.AccessLog
		p, ok := mesh.Providers[n]
		if !ok && strings.EqualFold(n, builtinEnvoyProvider) {
			p, ok = model.FileLogProvider{Path: "/dev/stdout"}, true
		}
		op, isOTel := mesh.OTelProviders[n]
		switch {
		case ok:
			al = g.fileAccessLog(where+" provider "+n, p.Path, p.Text, p.Labels)
		case isOTel:
			al = g.otelAccessLog(where+" provider "+n, op)
		default:
			g.warnOnce("%s: access log provider %q is not an envoyFileAccessLog or envoyOtelAls extension provider in the mesh config; ignored", where, n)
			continue
		}
		if al == nil {
			continue
		}
		if expr := pf.filter.GetExpression(); expr != "" {
			if err := accesslog.CheckFilter(expr); err != nil {
				g.warnOnce("%s: %v; provider %q does not log for this proxy", where, err, n)
				continue
			}
			al.Filter = celFilter(expr)
		}
		out = append(out, al)
	}
	return out
}

// mergeLogging merges Telemetry levels (root first) into the enabled
// providers of one side, as Istio does.
func mergeLogging(levels []loggingLevel, defaults []string, mode telemetry.WorkloadMode) map[string]providerFilter {
	names := func(refs []*telemetry.ProviderRef) []string {
		out := make([]string, 0, len(refs))
		for _, r := range refs {
			out = append(out, r.GetName())
		}
		return out
	}
	providers := map[string]providerFilter{}
	if len(levels) == 0 {
		for _, d := range defaults {
			providers[d] = providerFilter{}
		}
		return providers
	}
	// The providers in scope: those of the lowest level that names any.
	inScope := defaults
	filters := map[string]providerFilter{}
	for _, l := range levels {
		var named []string
		for _, e := range l.entries {
			for _, n := range names(e.GetProviders()) {
				named = append(named, n)
				filters[n] = providerFilter{filter: e.GetFilter(), from: l.cfg}
			}
		}
		if len(named) > 0 {
			inScope = named
		}
	}
	scope := map[string]bool{}
	for _, n := range inScope {
		scope[n] = true
	}
	parent := defaults
	for _, l := range levels {
		for _, e := range l.entries {
			ps := names(e.GetProviders())
			if len(ps) == 0 {
				ps = parent
			}
			parent = ps
			if m := e.GetMatch().GetMode(); e.GetMatch() != nil && m != telemetry.WorkloadMode_CLIENT_AND_SERVER && m != mode {
				continue
			}
			for _, p := range ps {
				if !scope[p] {
					continue
				}
				if e.GetDisabled().GetValue() {
					delete(providers, p)
					continue
				}
				pf := filters[p]
				if e.GetFilter() != nil {
					pf = providerFilter{filter: e.GetFilter(), from: l.cfg}
				}
				if pf.from == nil {
					pf.from = l.cfg
				}
				providers[p] = pf
			}
		}
	}
	return providers
}

// meshAccessLog is MeshConfig accessLogFile's log (nil when unset).
func (g *netBuilder) meshAccessLog(mesh *model.AccessLogging) []*accesslogv3.AccessLog {
	if mesh.File == "" {
		return nil
	}
	var al *accesslogv3.AccessLog
	if mesh.JSON {
		labels := accesslog.IstioJSONFormat
		if mesh.Format != "" {
			var obj map[string]any
			if err := json.Unmarshal([]byte(mesh.Format), &obj); err != nil {
				g.warnOnce("mesh config accessLogFormat: %v; access log not configured", err)
				return nil
			}
			labels = map[string]string{}
			for k, v := range obj {
				s, ok := v.(string)
				if !ok {
					g.warnOnce("mesh config accessLogFormat: %q is not a string; access log not configured", k)
					return nil
				}
				labels[k] = s
			}
		}
		al = g.fileAccessLog("mesh config accessLogFormat", mesh.File, "", labels)
	} else {
		al = g.fileAccessLog("mesh config accessLogFormat", mesh.File, mesh.Format, nil)
	}
	if al == nil {
		return nil
	}
	return []*accesslogv3.AccessLog{al}
}

// fileAccessLog is one file access log: JSON when labels are set, else
// text (Istio's TEXT format when text is empty). A format weft-proxy
// cannot write is reported (what names its source) and yields nil.
func (g *netBuilder) fileAccessLog(what, path, text string, labels map[string]string) *accesslogv3.AccessLog {
	lf := &corev3.SubstitutionFormatString{}
	if labels != nil {
		if _, err := accesslog.ParseJSONMap(labels); err != nil {
			g.warnOnce("%s: %v; access log not configured", what, err)
			return nil
		}
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for k, v := range labels {
			s.Fields[k] = structpb.NewStringValue(v)
		}
		lf.Format = &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: s}
	} else {
		if text == "" {
			text = accesslog.IstioTextFormat
		}
		if !strings.HasSuffix(text, "\n") {
			text += "\n"
		}
		if _, err := accesslog.ParseText(text); err != nil {
			g.warnOnce("%s: %v; access log not configured", what, err)
			return nil
		}
		lf.Format = &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: text}}}
	}
	return &accesslogv3.AccessLog{Name: fileAccessLogName, ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: ldsAny(&filev3.FileAccessLog{Path: path, AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: lf}})}}
}

// otelAccessLog is an envoyOtelAls provider's access log, as istiod
// writes it: OTLP log records over gRPC to the collector service's
// outbound cluster, the format's line as each record's body (Istio's
// TEXT format by default) and the labels as its attributes, without
// Envoy's built-in resource labels. A collector the proxy cannot see or
// a format weft-proxy cannot write is reported (what names its source)
// and yields nil.
func (g *netBuilder) otelAccessLog(what string, p model.OTelLogProvider) *accesslogv3.AccessLog {
	host := p.Service
	if _, h, ok := strings.Cut(host, "/"); ok { // "namespace/hostname"
		host = h
	}
	svc := g.collectorService(host, p.Port)
	if svc == "" {
		g.warnOnce("%s: no service %s with port %d is visible to this proxy; access log not configured", what, host, p.Port)
		return nil
	}
	text := cmp.Or(p.Text, accesslog.IstioTextFormat)
	if _, err := accesslog.ParseText(text); err != nil {
		g.warnOnce("%s: %v; access log not configured", what, err)
		return nil
	}
	keys := make([]string, 0, len(p.Labels))
	for k, v := range p.Labels {
		if _, err := accesslog.ParseText(v); err != nil {
			g.warnOnce("%s: label %q: %v; access log not configured", what, k, err)
			return nil
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	str := func(v string) *otlpcommon.AnyValue {
		return &otlpcommon.AnyValue{Value: &otlpcommon.AnyValue_StringValue{StringValue: v}}
	}
	// istiod still writes the deprecated common_config; its log_name and
	// grpc_service now have fields of their own.
	cfg := &otelalsv3.OpenTelemetryAccessLogConfig{LogName: cmp.Or(p.LogName, otelAccessLogDefaultName),
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
			ClusterName: OutboundCluster(p.Port, "", svc), Authority: svc}}},
		DisableBuiltinLabels: true,
		Body:                 str(text),
	}
	if len(keys) > 0 {
		cfg.Attributes = &otlpcommon.KeyValueList{}
		for _, k := range keys {
			cfg.Attributes.Values = append(cfg.Attributes.Values, &otlpcommon.KeyValue{Key: k, Value: str(p.Labels[k])})
		}
	}
	return &accesslogv3.AccessLog{Name: otelAccessLogName, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: ldsAny(cfg)}}
}

// celFilter is Istio's CEL extension filter for a Telemetry filter
// expression.
func celFilter(expr string) *accesslogv3.AccessLogFilter {
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
		ExtensionFilter: &accesslogv3.ExtensionFilter{Name: "envoy.access_loggers.extension_filters.cel",
			ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: ldsAny(&celv3.ExpressionFilter{Expression: expr})}}}}
}
