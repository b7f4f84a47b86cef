package engine

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/telemetry"
	"google.golang.org/protobuf/types/known/anypb"
	statspb "istio.io/api/envoy/extensions/stats"
)

// Istio's stats filter (istio.stats, stats.PluginConfig), which istiod
// puts on a connection manager (before the router) or a TCP chain
// (before tcp_proxy) when the Telemetry API customises metrics. Its
// metrics entries change Istio's standard metrics for that chain: drop
// leaves a metric out, tags_to_remove empties standard labels (Prometheus
// stores an empty label as none) and dimensions set standard labels to
// CEL expressions over the request (accesslog.Attributes), evaluated per
// request; a dimension that is not one of Istio's standard labels adds
// that label to the metric (for every chain: a metric has one label set,
// so chains without it record it empty). An entry without a name applies
// to every metric; a name weft does not record (request_messages_total,
// response_messages_total) is accepted and changes nothing.

// statsTypeURL is the istio.stats filter's config type.
const statsTypeURL = "type.googleapis.com/stats.PluginConfig"

// statsConfig is a compiled istio.stats filter.
type statsConfig struct {
	// extraRequest and extraTCP are the labels its dimensions add to the
	// request and the TCP metrics.
	extraRequest, extraTCP []string
	drop                   [telemetry.NumMetrics]bool
	// removed are the labels emptied, dims those computed, per metric.
	removed [telemetry.NumMetrics][]string
	dims    [telemetry.NumMetrics][]statsDim
	// headers are the headers the dimensions read that an access log
	// entry has no field for.
	headers []accesslog.HeaderRef
	// tcpReporting is how often an open TCP connection's bytes are
	// counted (tcp_reporting_duration; 0: the default).
	tcpReporting time.Duration
	// changes is whether it changes any metric: a filter may only set
	// tcp_reporting_duration.
	changes bool
}

// changesMetrics reports whether sc (nil: none) changes any metric, so
// that its chain needs per-request label overrides rather than the
// standard (cached) recording.
func (sc *statsConfig) changesMetrics() bool { return sc != nil && sc.changes }

// defaultTCPReporting is Istio's stats filter's default
// tcp_reporting_duration: an open connection's bytes reach
// istio_tcp_sent_bytes_total and istio_tcp_received_bytes_total every
// 15 s, not only when it closes.
const defaultTCPReporting = 15 * time.Second

// tcpReportEvery is the TCP reporting interval of a chain with stats
// config sc (nil: none).
func (sc *statsConfig) tcpReportEvery() time.Duration {
	if sc != nil && sc.tcpReporting > 0 {
		return sc.tcpReporting
	}
	return defaultTCPReporting
}

type statsDim struct {
	label string
	value *accesslog.Value
}

// compileStats reads an istio.stats filter's config.
func compileStats(tc *anypb.Any) (*statsConfig, error) {
	pc := &statspb.PluginConfig{}
	if err := tc.UnmarshalTo(pc); err != nil {
		return nil, fmt.Errorf("istio.stats: %w", err)
	}
	sc := &statsConfig{}
	if d := pc.GetTcpReportingDuration(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
			return nil, fmt.Errorf("istio.stats: tcp_reporting_duration %v: want a positive duration", d.AsDuration())
		}
		sc.tcpReporting = d.AsDuration()
	}
	for i, mc := range pc.GetMetrics() {
		if n := mc.GetName(); n != "" && !slices.Contains(telemetry.MetricNames[:], n) {
			continue // a metric weft does not record: nothing to change
		}
		// Each dimension is compiled once, whatever metrics it applies to.
		var dims []statsDim
		for _, label := range sortedKeys(mc.GetDimensions()) {
			if !telemetry.ValidLabelName(label) {
				return nil, fmt.Errorf("istio.stats metrics[%d]: dimension %q is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not __...)", i, label)
			}
			v, err := accesslog.ParseValue(mc.GetDimensions()[label])
			if err != nil {
				return nil, fmt.Errorf("istio.stats metrics[%d] dimension %s: %w", i, label, err)
			}
			dims = append(dims, statsDim{label, v})
			for _, h := range v.Headers() {
				if !slices.Contains(sc.headers, h) {
					sc.headers = append(sc.headers, h)
				}
			}
		}
		for m, name := range telemetry.MetricNames {
			if mc.GetName() != "" && mc.GetName() != name {
				continue
			}
			if mc.GetDrop() {
				sc.drop[m] = true
			}
			for _, tag := range mc.GetTagsToRemove() {
				// A label the metric does not have is left alone when
				// recorded (telemetry.LabelOverrides).
				sc.dims[m] = slices.DeleteFunc(sc.dims[m], func(d statsDim) bool { return d.label == tag })
				if !slices.Contains(sc.removed[m], tag) {
					sc.removed[m] = append(sc.removed[m], tag)
				}
			}
			for _, d := range dims {
				if !telemetry.IsLabel(m, d.label) {
					extra := &sc.extraRequest
					if telemetry.IsTCP(m) {
						extra = &sc.extraTCP
					}
					if !slices.Contains(*extra, d.label) {
						*extra = append(*extra, d.label)
					}
				}
				sc.removed[m] = slices.DeleteFunc(sc.removed[m], func(l string) bool { return l == d.label })
				sc.dims[m] = slices.DeleteFunc(sc.dims[m], func(o statsDim) bool { return o.label == d.label })
				sc.dims[m] = append(sc.dims[m], d)
			}
		}
	}
	for m := range sc.drop {
		sc.changes = sc.changes || sc.drop[m] || len(sc.removed[m]) > 0 || len(sc.dims[m]) > 0
	}
	return sc, nil
}

// hcmStats finds the istio.stats filter among an HCM's http_filters (nil:
// none).
func hcmStats(h *hcmv3.HttpConnectionManager) (*statsConfig, error) {
	for _, hf := range h.GetHttpFilters() {
		if tc := hf.GetTypedConfig(); tc.GetTypeUrl() == statsTypeURL && !hf.GetDisabled() {
			return compileStats(tc)
		}
	}
	return nil, nil
}

// overrides are the label changes for one request or connection: the
// dimensions evaluated on en (nil when none reads it).
func (sc *statsConfig) overrides(en func() *accesslog.Entry) *telemetry.LabelOverrides {
	ov := &telemetry.LabelOverrides{Drop: sc.drop}
	var entry *accesslog.Entry
	for m := range ov.Labels {
		if len(sc.removed[m]) == 0 && len(sc.dims[m]) == 0 {
			continue
		}
		l := make(map[string]string, len(sc.removed[m])+len(sc.dims[m]))
		for _, label := range sc.removed[m] {
			l[label] = ""
		}
		for _, d := range sc.dims[m] {
			if entry == nil {
				entry = en()
			}
			l[d.label] = d.value.Eval(entry)
		}
		ov.Labels[m] = l
	}
	return ov
}

// captureHeaders adds to en the request and response headers the
// dimensions read.
func (sc *statsConfig) captureHeaders(en *accesslog.Entry, r *http.Request, w http.ResponseWriter) {
	for _, h := range sc.headers {
		v := r.Header.Get(h.Name)
		if h.Response {
			v = w.Header().Get(h.Name)
		}
		if v != "" {
			en.Headers = append(en.Headers, accesslog.Header{Response: h.Response, Name: h.Name, Value: v})
		}
	}
}

// extraMetricLabels are the labels the istio.stats filters of rt's chains
// add to the request and TCP metrics, sorted.
func extraMetricLabels(rt *runtime) (request, tcp []string) {
	for _, ls := range rt.listeners {
		for _, ch := range append(slices.Clip(ls.chains), ls.defChain) {
			var sc *statsConfig
			switch {
			case ch == nil:
			case ch.http != nil:
				sc = ch.http.stats
			case ch.tcp != nil:
				sc = ch.tcp.stats
			}
			if sc != nil {
				request, tcp = append(request, sc.extraRequest...), append(tcp, sc.extraTCP...)
			}
		}
	}
	slices.Sort(request)
	slices.Sort(tcp)
	return slices.Compact(request), slices.Compact(tcp)
}
