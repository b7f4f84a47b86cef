// Package telemetry defines Istio's standard metrics, shared by weft-proxy
// (which records them) and the control plane (which documents and scrapes
// them), so that Istio's dashboards and alerts work unchanged.
package telemetry

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
)

// Standard label names, as Istio's stats filter emits them.
var requestLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Metrics are Istio's standard request and TCP metrics.
type Metrics struct {
	// vecs are the request and TCP metric vectors with their label names;
	// SetExtraLabels replaces them when labels are added.
	vecs atomic.Pointer[metricVecs]
	mu   sync.Mutex // serialises SetExtraLabels

	// RetryOverflow counts retries not made because the cluster's retry
	// budget or max_retries was exhausted (Envoy's
	// upstream_rq_retry_overflow).
	RetryOverflow prometheus.Counter
	// SpansSent and SpansDropped count the spans reported to a tracing
	// collector and those lost (queue full, collector unknown or failing),
	// as Envoy's tracing.zipkin.spans_sent and reports_dropped do.
	SpansSent, SpansDropped prometheus.Counter
	// LogsSent and LogsDropped count the access log entries sent to an
	// OpenTelemetry collector and those lost.
	LogsSent, LogsDropped prometheus.Counter
}

// metricVecs is one generation of the request and TCP metrics: Istio's
// standard labels plus the extra ones (sorted) that istio.stats
// dimensions add.
type metricVecs struct {
	requestExtra, tcpExtra []string
	// observers caches the per-label-set metric children, so a request
	// does not build a label map and hash it four times.
	observers                                  sync.Map // requestKey -> *requestObservers
	requests                                   *prometheus.CounterVec
	duration, reqBytes, respBytes              *prometheus.HistogramVec
	reqMsgs, respMsgs                          *prometheus.CounterVec // gRPC messages
	tcpSent, tcpReceived, tcpOpened, tcpClosed *prometheus.CounterVec
}

func (v *metricVecs) collectors() []prometheus.Collector {
	return []prometheus.Collector{v.requests, v.duration, v.reqBytes, v.respBytes, v.tcpSent, v.tcpReceived, v.tcpOpened, v.tcpClosed,
		v.reqMsgs, v.respMsgs}
}

func newMetricVecs(requestExtra, tcpExtra []string) *metricVecs {
	rl := append(slices.Clip(requestLabels), requestExtra...)
	tl := append(slices.Clip(tcpLabels), tcpExtra...)
	return &metricVecs{requestExtra: requestExtra, tcpExtra: tcpExtra,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests handled by the proxy.",
		}, rl),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_duration_milliseconds", Help: "Request duration in milliseconds.", Buckets: durationBuckets,
		}, rl),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_bytes", Help: "Request body sizes in bytes.", Buckets: sizeBuckets,
		}, rl),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_response_bytes", Help: "Response body sizes in bytes.", Buckets: sizeBuckets,
		}, rl),
		reqMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_request_messages_total", Help: "gRPC messages sent by clients.",
		}, rl),
		respMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_response_messages_total", Help: "gRPC messages sent by servers.",
		}, rl),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent to the downstream in TCP connections.",
		}, tl),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total", Help: "Bytes received from the downstream in TCP connections.",
		}, tl),
		tcpOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened.",
		}, tl),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed.",
		}, tl),
	}
}

// SetExtraLabels gives the request and the TCP metrics labels beyond
// Istio's standard ones (istio.stats dimensions; sorted, without
// duplicates). When they change, the metrics start again from zero under
// the new label names, as Prometheus's rate() expects of a reset counter;
// recording never fails on labels meanwhile. It reports whether they
// changed.
func (m *Metrics) SetExtraLabels(request, tcp []string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.vecs.Load()
	if slices.Equal(old.requestExtra, request) && slices.Equal(old.tcpExtra, tcp) {
		return false
	}
	m.vecs.Store(newMetricVecs(slices.Clone(request), slices.Clone(tcp)))
	return true
}

// vecCollector collects the current generation's vectors. It describes
// nothing (an unchecked collector): a registry insists that a described
// metric keeps its label names for the life of the program, and
// SetExtraLabels changes them.
type vecCollector struct{ m *Metrics }

func (vecCollector) Describe(chan<- *prometheus.Desc) {}

func (c vecCollector) Collect(ch chan<- prometheus.Metric) {
	for _, col := range c.m.vecs.Load().collectors() {
		col.Collect(ch)
	}
}

// Istio's default histogram buckets.
var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizeBuckets     = prometheus.ExponentialBuckets(1, 10, 9)
)

// NewMetrics registers the standard metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		RetryOverflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_upstream_rq_retry_overflow_total", Help: "Retries not made because the cluster's retry budget (or max_retries) was exhausted.",
		}),
		SpansSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_tracing_spans_sent_total", Help: "Spans delivered to a tracing collector.",
		}),
		SpansDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_tracing_spans_dropped_total", Help: "Spans lost: queue full, collector cluster unknown or without endpoints, or the collector failed.",
		}),
		LogsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_access_log_otlp_sent_total", Help: "Access log entries delivered to an OpenTelemetry collector.",
		}),
		LogsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_access_log_otlp_dropped_total", Help: "Access log entries for an OpenTelemetry collector lost: queue full, collector cluster unknown or without endpoints, or the collector failed.",
		}),
	}
	m.vecs.Store(newMetricVecs(nil, nil))
	reg.MustRegister(vecCollector{m}, m.RetryOverflow, m.SpansSent, m.SpansDropped, m.LogsSent, m.LogsDropped)
	return m
}

// TCPVec is the TCP metric's vector of the current generation (tests).
func (m *Metrics) TCPVec(metric int) *prometheus.CounterVec { return m.vecs.Load().tcpVec(metric) }

// RequestVec is a request histogram's vector of the current generation
// (tests).
func (m *Metrics) RequestVec(metric int) prometheus.Collector {
	v := m.vecs.Load()
	return [...]prometheus.Collector{RequestsTotal: v.requests, RequestDurationMilliseconds: v.duration,
		RequestBytesMetric: v.reqBytes, ResponseBytesMetric: v.respBytes,
		GRPCRequestMessagesTotal: v.reqMsgs, GRPCResponseMessagesTotal: v.respMsgs}[metric]
}

// Peer describes one side of a request for labels.
type Peer struct {
	Workload, Namespace, Principal, App, Version string
	// CanonicalService and CanonicalRevision are the workload's
	// service.istio.io/canonical-name and -revision (CanonicalNames);
	// Cluster is the ID of the cluster it runs in.
	CanonicalService, CanonicalRevision, Cluster string
}

// Istio's canonical service labels.
const (
	CanonicalNameLabel     = "service.istio.io/canonical-name"
	CanonicalRevisionLabel = "service.istio.io/canonical-revision"
)

// CanonicalNames are a workload's canonical service and revision, by
// Istio's rules: the canonical labels, else app.kubernetes.io/name and
// app.kubernetes.io/version, else app and version, else the workload's
// name and "latest".
func CanonicalNames(labels map[string]string, workload string) (service, revision string) {
	pick := func(fallback string, keys ...string) string {
		for _, k := range keys {
			if v := labels[k]; v != "" {
				return v
			}
		}
		return fallback
	}
	return pick(workload, CanonicalNameLabel, "app.kubernetes.io/name", "app"),
		pick("latest", CanonicalRevisionLabel, "app.kubernetes.io/version", "version")
}

// Connection is one TCP connection, as the TCP metrics' labels need it.
type Connection struct {
	// Reporter is "source" (outbound, client side) or "destination".
	Reporter                    string
	Source, Destination         Peer
	DestinationService          string // FQDN
	DestinationServiceName      string
	DestinationServiceNamespace string
	Flags                       string // Envoy response flags, "-" when none
	Security                    string // mutual_tls, none (destination) or unknown (source)
}

// Labels are the connection's standard TCP metric labels.
func (c Connection) Labels() prometheus.Labels {
	l := prometheus.Labels{"reporter": c.Reporter, "request_protocol": "tcp"}
	serviceLabels(l, c.Source, c.Destination, c.DestinationService, c.DestinationServiceName, c.DestinationServiceNamespace)
	l["response_flags"], l["connection_security_policy"] = orDefault(c.Flags, "-"), orDefault(c.Security, "none")
	return l
}

// Request is one finished HTTP request, as labels need it.
type Request struct {
	// Reporter is "source" (outbound, client side) or "destination".
	Reporter                    string
	Source, Destination         Peer
	DestinationService          string // FQDN
	DestinationServiceName      string
	DestinationServiceNamespace string
	Protocol                    string // http, grpc
	Code                        int
	GRPCStatus                  string
	Flags                       string // Envoy response flags, "-" when none
	Security                    string // mutual_tls, none (destination) or unknown (source)
	Duration                    time.Duration
	RequestBytes, ResponseBytes int64
	// RequestMessages and ResponseMessages are a gRPC call's messages
	// each way (istio_request_messages_total and
	// istio_response_messages_total; Protocol "grpc" only).
	RequestMessages, ResponseMessages int64
}

func orUnknown(s string) string { return orDefault(s, "unknown") }

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// peerLabelNames are each side's labels, in Peer's field order:
// workload, namespace, principal, app, version, canonical service and
// revision, cluster.
var peerLabelNames = [2][8]string{
	{"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
		"source_canonical_service", "source_canonical_revision", "source_cluster"},
	{"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
		"destination_canonical_service", "destination_canonical_revision", "destination_cluster"},
}

// serviceLabels sets the labels of the two peers and the destination
// service, as requests and connections share them.
func serviceLabels(l prometheus.Labels, src, dst Peer, svc, svcName, svcNS string) {
	for i, p := range [2]*Peer{&src, &dst} {
		n := &peerLabelNames[i]
		l[n[0]], l[n[1]], l[n[2]] = orUnknown(p.Workload), orUnknown(p.Namespace), orUnknown(p.Principal)
		l[n[3]], l[n[4]] = orUnknown(p.App), orUnknown(p.Version)
		l[n[5]], l[n[6]], l[n[7]] = orUnknown(p.CanonicalService), orDefault(p.CanonicalRevision, "latest"), orUnknown(p.Cluster)
	}
	l["destination_service"] = orUnknown(svc)
	l["destination_service_name"] = orUnknown(svcName)
	l["destination_service_namespace"] = orUnknown(svcNS)
}

// requestKey is one request label set.
type requestKey struct {
	reporter                                           string
	src, dst                                           Peer
	svc, svcName, svcNS, proto, grpcStatus, flags, sec string
	code                                               int
}

type requestObservers struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
	reqMsgs, respMsgs             prometheus.Counter // gRPC calls only; nil otherwise
}

// ObserveRequest records one request in every request metric.
func (m *Metrics) ObserveRequest(r Request) {
	v := m.vecs.Load()
	observe(v.observersFor(r.key(), r), r)
}

// RequestCache remembers the observers of the last label set recorded
// through it, so that ObserveRequestCached skips hashing the labels when
// a request has the same ones, as the requests of one connection mostly
// do. One per connection; safe for concurrent use (HTTP/2 streams).
type RequestCache struct {
	last atomic.Pointer[cachedObservers]
}

type cachedObservers struct {
	v   *metricVecs // the generation the observers belong to
	key requestKey
	o   *requestObservers
}

// ObserveRequestCached is ObserveRequest through c.
func (m *Metrics) ObserveRequestCached(r Request, c *RequestCache) {
	v := m.vecs.Load()
	key := r.key()
	if last := c.last.Load(); last != nil && last.v == v && last.key == key {
		observe(last.o, r)
		return
	}
	o := v.observersFor(key, r)
	c.last.Store(&cachedObservers{v: v, key: key, o: o})
	observe(o, r)
}

func (r *Request) key() requestKey {
	return requestKey{reporter: r.Reporter, src: r.Source, dst: r.Destination, svc: r.DestinationService,
		svcName: r.DestinationServiceName, svcNS: r.DestinationServiceNamespace, proto: r.Protocol,
		grpcStatus: r.GRPCStatus, flags: r.Flags, sec: r.Security, code: r.Code}
}

// observersFor is key's observers, made the first time it is seen.
func (v *metricVecs) observersFor(key requestKey, r Request) *requestObservers {
	if o, ok := v.observers.Load(key); ok {
		return o.(*requestObservers)
	}
	return v.newObservers(key, r)
}

func observe(o *requestObservers, r Request) {
	o.requests.Inc()
	o.duration.Observe(float64(r.Duration) / float64(time.Millisecond))
	o.reqBytes.Observe(float64(r.RequestBytes))
	o.respBytes.Observe(float64(r.ResponseBytes))
	if o.reqMsgs != nil {
		o.reqMsgs.Add(float64(r.RequestMessages))
		o.respMsgs.Add(float64(r.ResponseMessages))
	}
}

// newObservers builds the label set once for a new key.
func (v *metricVecs) newObservers(key requestKey, r Request) *requestObservers {
	l := requestLabelMap(r)
	for _, x := range v.requestExtra {
		l[x] = ""
	}
	o := &requestObservers{requests: v.requests.With(l), duration: v.duration.With(l),
		reqBytes: v.reqBytes.With(l), respBytes: v.respBytes.With(l)}
	if r.Protocol == "grpc" {
		o.reqMsgs, o.respMsgs = v.reqMsgs.With(l), v.respMsgs.With(l)
	}
	actual, _ := v.observers.LoadOrStore(key, o)
	return actual.(*requestObservers)
}

// requestLabelMap is r's standard labels.
func requestLabelMap(r Request) prometheus.Labels {
	l := prometheus.Labels{
		"reporter":                   r.Reporter,
		"request_protocol":           r.Protocol,
		"response_code":              strconv.Itoa(r.Code),
		"grpc_response_status":       r.GRPCStatus,
		"response_flags":             orDefault(r.Flags, "-"),
		"connection_security_policy": orDefault(r.Security, "none"),
	}
	serviceLabels(l, r.Source, r.Destination, r.DestinationService, r.DestinationServiceName, r.DestinationServiceNamespace)
	return l
}

// The standard metrics by the istio.stats filter's names (Istio's
// metric names without "istio_").
const (
	RequestsTotal = iota
	RequestDurationMilliseconds
	RequestBytesMetric
	ResponseBytesMetric
	TCPSentBytesTotal
	TCPReceivedBytesTotal
	TCPConnectionsOpenedTotal
	TCPConnectionsClosedTotal
	GRPCRequestMessagesTotal
	GRPCResponseMessagesTotal
	NumMetrics
)

// MetricNames are the istio.stats filter's names of the standard metrics.
var MetricNames = [NumMetrics]string{"requests_total", "request_duration_milliseconds", "request_bytes", "response_bytes",
	"tcp_sent_bytes_total", "tcp_received_bytes_total", "tcp_connections_opened_total", "tcp_connections_closed_total",
	"request_messages_total", "response_messages_total"}

// ValidLabelName reports whether name can be a Prometheus label name:
// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved).
func ValidLabelName(name string) bool {
	return !strings.HasPrefix(name, "__") && model.LegacyValidation.IsValidLabelName(name)
}

// IsTCP reports whether metric is one of the TCP metrics.
func IsTCP(metric int) bool {
	return metric >= TCPSentBytesTotal && metric <= TCPConnectionsClosedTotal
}

// IsLabel reports whether label is one of metric's standard labels.
func IsLabel(metric int, label string) bool {
	if IsTCP(metric) {
		return slices.Contains(tcpLabels, label)
	}
	return slices.Contains(requestLabels, label)
}

// LabelOverrides change the standard metrics for one request or
// connection, as the istio.stats filter's config does: metrics left out
// (Drop), and labels with other values (Labels; "" for a removed label,
// which Prometheus stores as no label) — standard ones, or extra ones
// SetExtraLabels added. The zero value changes nothing.
type LabelOverrides struct {
	Drop   [NumMetrics]bool
	Labels [NumMetrics]map[string]string
}

// labels is the label set metric is recorded with in generation v: the
// standard labels l (not changed) with v's extra labels, empty unless ov
// sets them, and ov's values for the labels v has; false when ov leaves
// the metric out.
func (v *metricVecs) labels(ov *LabelOverrides, metric int, l prometheus.Labels) (prometheus.Labels, bool) {
	extra := v.requestExtra
	if IsTCP(metric) {
		extra = v.tcpExtra
	}
	if ov != nil && ov.Drop[metric] {
		return nil, false
	}
	var set map[string]string
	if ov != nil {
		set = ov.Labels[metric]
	}
	if len(extra) == 0 && len(set) == 0 {
		return l, true
	}
	out := maps.Clone(l)
	for _, x := range extra {
		out[x] = ""
	}
	for k, val := range set {
		if _, ok := out[k]; ok { // a label of another generation is left out
			out[k] = val
		}
	}
	return out, true
}

// ObserveRequestOverridden records r as ObserveRequest does, with ov's
// changes; each metric's labels are hashed again, so only requests of
// customised chains take this way.
func (m *Metrics) ObserveRequestOverridden(r Request, ov *LabelOverrides) {
	v := m.vecs.Load()
	l := requestLabelMap(r)
	if ll, ok := v.labels(ov, RequestsTotal, l); ok {
		v.requests.With(ll).Inc()
	}
	for _, h := range []struct {
		metric int
		vec    *prometheus.HistogramVec
		val    float64
	}{
		{RequestDurationMilliseconds, v.duration, float64(r.Duration) / float64(time.Millisecond)},
		{RequestBytesMetric, v.reqBytes, float64(r.RequestBytes)},
		{ResponseBytesMetric, v.respBytes, float64(r.ResponseBytes)},
	} {
		if ll, ok := v.labels(ov, h.metric, l); ok {
			h.vec.With(ll).Observe(h.val)
		}
	}
	if r.Protocol != "grpc" {
		return
	}
	if ll, ok := v.labels(ov, GRPCRequestMessagesTotal, l); ok {
		v.reqMsgs.With(ll).Add(float64(r.RequestMessages))
	}
	if ll, ok := v.labels(ov, GRPCResponseMessagesTotal, l); ok {
		v.respMsgs.With(ll).Add(float64(r.ResponseMessages))
	}
}

// RecordTCP adds val to a TCP metric for a connection with standard
// labels l, changed by ov (nil: none).
func (m *Metrics) RecordTCP(ov *LabelOverrides, metric int, l prometheus.Labels, val float64) {
	v := m.vecs.Load()
	if ll, ok := v.labels(ov, metric, l); ok {
		v.tcpVec(metric).With(ll).Add(val)
	}
}

func (v *metricVecs) tcpVec(metric int) *prometheus.CounterVec {
	switch metric {
	case TCPSentBytesTotal:
		return v.tcpSent
	case TCPReceivedBytesTotal:
		return v.tcpReceived
	case TCPConnectionsOpenedTotal:
		return v.tcpOpened
	}
	return v.tcpClosed
}
