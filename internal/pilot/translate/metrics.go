package translate

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	wtelemetry "github.com/weftmesh/weft/internal/telemetry"
	"google.golang.org/protobuf/types/known/durationpb"
	stats "istio.io/api/envoy/extensions/stats"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// Metrics, as istiod configures its prometheus provider: when the
// Telemetry resources that apply to a sidecar (telemetryScopes: root
// namespace, proxy namespace, workload; the later overrides the earlier)
// customise its metrics, every connection manager of a side gets Istio's
// stats filter (istio.stats, stats.PluginConfig) just before its router,
// and every tcp_proxy chain just before the tcp_proxy. Without such a
// Telemetry there is no filter and weft-proxy records Istio's standard
// metrics unchanged.
//
// The metrics entries count in order, root first. An entry without
// providers applies to its parent's (the entry before it, else the mesh's
// default provider, prometheus); one that is not for prometheus — weft's
// only metrics provider — is reported and ignored. Each override selects
// a metric (match.metric, or match.customMetric by its name; ALL_METRICS
// or no match is every metric) and a side (match.mode). disabled drops
// the metric (false keeps it again); tagOverrides UPSERT a label to a CEL
// expression (passed through as is) or REMOVE it. A later setting of a
// metric's label or of its disabled replaces an earlier one, and an
// override of every metric replaces the earlier settings of each metric
// too, as istiod's flattening of ALL_METRICS does. As in istiod,
// disabling every metric removes the side's metrics altogether until a
// later override of the side turns them back on.
//
// The filter holds one stats.MetricConfig per metric with a setting,
// sorted by name: "" (every metric) first, whose settings a named
// metric's entry then replaces, label by label.

const (
	statsFilterName = "istio.stats"
	// prometheusProvider is Istio's (and weft's) metrics provider, and
	// the mesh's default one.
	prometheusProvider = "prometheus"
)

// istioMetricNames are Istio's standard metrics as the stats filter names
// them (without the istio_ prefix).
var istioMetricNames = map[telemetry.MetricSelector_IstioMetric]string{
	telemetry.MetricSelector_ALL_METRICS:            "",
	telemetry.MetricSelector_REQUEST_COUNT:          "requests_total",
	telemetry.MetricSelector_REQUEST_DURATION:       "request_duration_milliseconds",
	telemetry.MetricSelector_REQUEST_SIZE:           "request_bytes",
	telemetry.MetricSelector_RESPONSE_SIZE:          "response_bytes",
	telemetry.MetricSelector_TCP_OPENED_CONNECTIONS: "tcp_connections_opened_total",
	telemetry.MetricSelector_TCP_CLOSED_CONNECTIONS: "tcp_connections_closed_total",
	telemetry.MetricSelector_TCP_SENT_BYTES:         "tcp_sent_bytes_total",
	telemetry.MetricSelector_TCP_RECEIVED_BYTES:     "tcp_received_bytes_total",
	telemetry.MetricSelector_GRPC_REQUEST_MESSAGES:  "request_messages_total",
	telemetry.MetricSelector_GRPC_RESPONSE_MESSAGES: "response_messages_total",
}

// metricSetting is what the overrides set for one metric name.
type metricSetting struct {
	drop *bool // nil: not set
	// tags are the label operations by label.
	tags map[string]tagSetting
}

// tagSetting is one label's operation: removed, or set to a CEL
// expression.
type tagSetting struct {
	remove bool
	value  string
}

// apply records an override's settings.
func (s *metricSetting) apply(o *telemetry.MetricsOverrides, tags map[string]tagSetting) {
	if d := o.GetDisabled(); d != nil {
		v := d.GetValue()
		s.drop = &v
	}
	for k, t := range tags {
		if s.tags == nil {
			s.tags = map[string]tagSetting{}
		}
		s.tags[k] = t
	}
}

// config is the setting as a stats filter entry (nil: nothing set).
func (s *metricSetting) config(name string) *stats.MetricConfig {
	if s.drop == nil && len(s.tags) == 0 {
		return nil
	}
	mc := &stats.MetricConfig{Name: name, Drop: s.drop != nil && *s.drop}
	for k, t := range s.tags {
		if t.remove {
			mc.TagsToRemove = append(mc.TagsToRemove, k)
			continue
		}
		if mc.Dimensions == nil {
			mc.Dimensions = map[string]string{}
		}
		mc.Dimensions[k] = t.value
	}
	sort.Strings(mc.TagsToRemove)
	return mc
}

// statsConfig is the istio.stats filter config for one side of the proxy
// (mode CLIENT = outbound, SERVER = inbound), or nil when no Telemetry
// resource customises this proxy's metrics (weft-proxy then records
// Istio's standard metrics unchanged).
func (g *netBuilder) statsConfig(mode telemetry.WorkloadMode) *stats.PluginConfig {
	all := &metricSetting{}
	named := map[string]*metricSetting{}
	allOff := false
	var interval *durationpb.Duration
	parent := []string{prometheusProvider}
	for _, c := range g.telemetryScopes() {
		for _, m := range c.Spec.(*telemetry.Telemetry).GetMetrics() {
			providers := make([]string, 0, len(m.GetProviders()))
			for _, p := range m.GetProviders() {
				providers = append(providers, p.GetName())
			}
			if len(providers) == 0 {
				providers = parent
			}
			parent = providers
			if !slices.ContainsFunc(providers, func(p string) bool { return strings.EqualFold(p, prometheusProvider) }) {
				g.warnOnce("%s: metrics for providers %v: weft only has the %s provider; ignored", c.Key(), providers, prometheusProvider)
				continue
			}
			if ri := m.GetReportingInterval(); ri != nil {
				// The most specific Telemetry's wins; weft-proxy counts an
				// open TCP connection's bytes at this interval.
				if ri.CheckValid() != nil || ri.AsDuration() <= 0 {
					g.warnOnce("%s: metrics reportingInterval %v is not a positive duration; ignored", c.Key(), ri.AsDuration())
				} else {
					interval = ri
				}
			}
			for _, o := range m.GetOverrides() {
				if mm := o.GetMatch().GetMode(); mm != telemetry.WorkloadMode_CLIENT_AND_SERVER && mm != mode {
					continue
				}
				name, ok := g.overrideMetric(c, o.GetMatch())
				if !ok {
					continue
				}
				if name == "" && o.GetDisabled().GetValue() {
					// istiod drops the side's stats filter, keeping
					// what the overrides set for later ones.
					allOff = true
					continue
				}
				allOff = false
				tags := g.overrideTags(c, o)
				if name != "" {
					if named[name] == nil {
						named[name] = &metricSetting{}
					}
					named[name].apply(o, tags)
					continue
				}
				all.apply(o, tags)
				for _, s := range named {
					s.apply(o, tags)
				}
			}
		}
	}
	if allOff {
		return &stats.PluginConfig{Metrics: []*stats.MetricConfig{{Drop: true}}}
	}
	out := &stats.PluginConfig{}
	if mc := all.config(""); mc != nil {
		out.Metrics = append(out.Metrics, mc)
	}
	names := make([]string, 0, len(named))
	for n := range named {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if mc := named[n].config(n); mc != nil {
			out.Metrics = append(out.Metrics, mc)
		}
	}
	g.keepValidDimensions(out)
	out.TcpReportingDuration = interval
	if len(out.Metrics) == 0 && interval == nil {
		return nil
	}
	return out
}

// keepValidDimensions leaves out, with a warning, the dimensions that
// weft-proxy would refuse — and with them the whole listener update: a
// label name Prometheus does not allow, or an expression weft-proxy
// cannot compile (an attribute it does not have, such as upstream_peer).
func (g *netBuilder) keepValidDimensions(pc *stats.PluginConfig) {
	pc.Metrics = slices.DeleteFunc(pc.Metrics, func(mc *stats.MetricConfig) bool {
		left := false
		for label, expr := range mc.GetDimensions() {
			var err error
			if !wtelemetry.ValidLabelName(label) {
				err = fmt.Errorf("not a Prometheus label name")
			} else {
				err = accesslog.CheckValue(expr)
			}
			if err != nil {
				g.warnOnce("metrics tagOverrides %q: %v; left out", label, err)
				delete(mc.Dimensions, label)
				left = true
			}
		}
		if len(mc.Dimensions) == 0 {
			mc.Dimensions = nil
		}
		// An entry that only held such labels has nothing left to say.
		return left && !mc.GetDrop() && len(mc.GetDimensions()) == 0 && len(mc.GetTagsToRemove()) == 0
	})
}

// overrideMetric is the name of the metric an override selects ("":
// every metric); false (reported) when it selects none.
func (g *netBuilder) overrideMetric(c *model.Config, sel *telemetry.MetricSelector) (string, bool) {
	switch m := sel.GetMetricMatch().(type) {
	case *telemetry.MetricSelector_CustomMetric:
		if m.CustomMetric == "" {
			g.warnOnce("%s: metrics override with an empty customMetric; ignored", c.Key())
			return "", false
		}
		return m.CustomMetric, true
	case *telemetry.MetricSelector_Metric:
		name, ok := istioMetricNames[m.Metric]
		if !ok {
			g.warnOnce("%s: metrics override for unknown metric %v; ignored", c.Key(), m.Metric)
		}
		return name, ok
	}
	return "", true
}

// overrideTags are an override's tagOverrides as label operations,
// leaving out (and reporting) those the API server refuses.
func (g *netBuilder) overrideTags(c *model.Config, o *telemetry.MetricsOverrides) map[string]tagSetting {
	out := make(map[string]tagSetting, len(o.GetTagOverrides()))
	for k, t := range o.GetTagOverrides() {
		switch {
		case k == "":
			g.warnOnce("%s: metrics tagOverrides with an empty tag name; ignored", c.Key())
		case t.GetOperation() == telemetry.MetricsOverrides_TagOverride_REMOVE:
			out[k] = tagSetting{remove: true}
		case t.GetOperation() != telemetry.MetricsOverrides_TagOverride_UPSERT:
			g.warnOnce("%s: metrics tagOverrides %q: unknown operation %v; ignored", c.Key(), k, t.GetOperation())
		case t.GetValue() == "":
			g.warnOnce("%s: metrics tagOverrides %q: UPSERT needs a value; ignored", c.Key(), k)
		default:
			out[k] = tagSetting{value: t.GetValue()}
		}
	}
	return out
}

// statsHTTPFilters are the side's istio.stats HTTP filter, to go just
// before the router (none when Telemetry does not customise metrics).
func (g *netBuilder) statsHTTPFilters(inbound bool) []*hcmv3.HttpFilter {
	if sc := g.side(inbound).stats; sc != nil {
		return []*hcmv3.HttpFilter{httpFilter(statsFilterName, sc)}
	}
	return nil
}

// tcpFilters end a TCP chain: the side's istio.stats network filter
// (when Telemetry customises metrics), then proxy, its tcp_proxy.
func (g *netBuilder) tcpFilters(inbound bool, proxy *listenerv3.Filter) []*listenerv3.Filter {
	if sc := g.side(inbound).stats; sc != nil {
		return []*listenerv3.Filter{networkFilter(statsFilterName, sc), proxy}
	}
	return []*listenerv3.Filter{proxy}
}
