package push

import "github.com/prometheus/client_golang/prometheus"

// metrics are Istio's pilot metric names, so dashboards carry over.
type metrics struct {
	pushes       *prometheus.CounterVec
	pushTime     prometheus.Histogram
	convergence  prometheus.Histogram
	rejects      *prometheus.CounterVec
	connected    prometheus.Gauge
	inconsistent prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_pushes", Help: "xDS pushes by type (cds, eds, lds, rds).",
		}, []string{"type"}),
		pushTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pilot_xds_push_time", Help: "Seconds to translate and set snapshots for all proxies after a change.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pilot_proxy_convergence_time", Help: "Seconds from a config change to the proxy acknowledging every pushed type.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_total_xds_rejects", Help: "xDS responses rejected (NACKed) by proxies, by type.",
		}, []string{"type"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pilot_xds", Help: "Connected xDS clients (distinct node IDs).",
		}),
		inconsistent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pilot_inconsistent_snapshots_total", Help: "Snapshots not pushed because translation produced an inconsistent set.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.pushes, m.pushTime, m.convergence, m.rejects, m.connected, m.inconsistent)
	}
	return m
}
