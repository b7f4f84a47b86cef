package engine

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Envoy's RBAC shadow statistics as Istio exposes them for dry-run
// AuthorizationPolicies: the RBAC filters count each shadow verdict in
// <filter stats>.rbac.<shadow_rules_stat_prefix>shadow_allowed or
// …shadow_denied, and Istio's bootstrap tag rules turn istiod's prefixes
// into labels, so the HTTP filter of the connection manager
// inbound_0.0.0.0_80 counts into
// envoy_http_inbound_0_0_0_0_80_rbac{authz_dry_run_action="deny",authz_dry_run_result="denied"},
// and a TCP chain's network filter (stat_prefix "tcp.") into
// envoy_tcp_rbac{…}. Verdicts under other prefixes are not counted.

// httpRBACMetadata is the HTTP RBAC filter's dynamic metadata namespace.
const httpRBACMetadata = "envoy.filters.http.rbac"

// rbacStats collects the shadow verdict counters, one vector per metric
// name (the stats prefix is part of it). It describes nothing: the names
// come with the config.
type rbacStats struct {
	vecs sync.Map // metric name -> *prometheus.CounterVec
}

func (*rbacStats) Describe(chan<- *prometheus.Desc) {}

func (s *rbacStats) Collect(ch chan<- prometheus.Metric) {
	s.vecs.Range(func(_, v any) bool {
		v.(*prometheus.CounterVec).Collect(ch)
		return true
	})
}

// count records the shadow verdicts in md (one RBAC metadata namespace)
// under the filter stats prefix stats ("http.inbound_0.0.0.0_80", "tcp.").
func (s *rbacStats) count(stats string, md map[string]any) {
	for k, v := range md {
		rest, ok := strings.CutPrefix(k, "istio_dry_run_")
		if !ok {
			continue
		}
		action, ok := strings.CutSuffix(rest, "_shadow_engine_result")
		result, _ := v.(string)
		if !ok || action != "allow" && action != "deny" || result != "allowed" && result != "denied" {
			continue
		}
		s.vec(stats).WithLabelValues(action, result).Inc()
	}
}

func (s *rbacStats) vec(stats string) *prometheus.CounterVec {
	name := "envoy_" + promName(strings.TrimSuffix(stats, ".")+".rbac")
	if v, ok := s.vecs.Load(name); ok {
		return v.(*prometheus.CounterVec)
	}
	v, _ := s.vecs.LoadOrStore(name, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name,
		Help: "RBAC shadow rule verdicts (Istio dry-run AuthorizationPolicies)."}, []string{"authz_dry_run_action", "authz_dry_run_result"}))
	return v.(*prometheus.CounterVec)
}

// promName is an Envoy stat name as a Prometheus metric name: every
// character outside [a-zA-Z0-9_] becomes "_".
func promName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}
