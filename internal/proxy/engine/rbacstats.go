package engine

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Envoy's RBAC statistics as Istio exposes them. Enforced verdicts: the
// HTTP filter counts rbac.allowed and rbac.denied, which Istio's tag rules
// make envoy_http_inbound_0_0_0_0_80_rbac{authz_enforce_result="denied"}.
// Shadow verdicts, for dry-run
// AuthorizationPolicies: the RBAC filters count each shadow verdict in
// <filter stats>.rbac.<shadow_rules_stat_prefix>shadow_allowed or
// …shadow_denied, and Istio's bootstrap tag rules turn istiod's prefixes
// into labels, so the HTTP filter of the connection manager
// inbound_0.0.0.0_80 counts into
// envoy_http_inbound_0_0_0_0_80_rbac{authz_dry_run_action="deny",authz_dry_run_result="denied"},
// and a TCP chain's network filter (stat_prefix "tcp.") into
// envoy_tcp_rbac{…}, beside its enforced verdicts. Shadow verdicts under
// other prefixes are not counted.

// rbacHelp is the help of every RBAC metric: a metric's enforced and
// shadow series must agree on it.
const rbacHelp = "RBAC filter verdicts: enforced rules (authz_enforce_result) and shadow rules of dry-run AuthorizationPolicies (authz_dry_run_*)."

// httpRBACMetadata is the HTTP RBAC filter's dynamic metadata namespace.
const httpRBACMetadata = "envoy.filters.http.rbac"

// rbacStats collects the verdict counters, one vector per metric name
// (the stats prefix is part of it) and kind. It describes nothing: the
// names come with the config, and a metric's enforced and shadow series
// have different labels, as Envoy's do.
type rbacStats struct {
	vecs     sync.Map // metric name -> *prometheus.CounterVec (shadow verdicts)
	enforced sync.Map // connection manager stat prefix -> *prometheus.CounterVec
	// enforcedTCP is the network filters' enforced verdicts, by the
	// filter's stat_prefix.
	enforcedTCP sync.Map
}

func (*rbacStats) Describe(chan<- *prometheus.Desc) {}

func (s *rbacStats) Collect(ch chan<- prometheus.Metric) {
	collect := func(_, v any) bool {
		v.(*prometheus.CounterVec).Collect(ch)
		return true
	}
	s.vecs.Range(collect)
	s.enforced.Range(collect)
	s.enforcedTCP.Range(collect)
}

// countEnforced records an HTTP RBAC filter's statistic stat
// ("rbac.allowed", "rbac.denied") under the connection manager's stat
// prefix; other statistics are not kept.
func (s *rbacStats) countEnforced(hcmPrefix, stat string) {
	result, ok := strings.CutPrefix(stat, "rbac.")
	if !ok || result != "allowed" && result != "denied" {
		return
	}
	enforcedVec(&s.enforced, hcmPrefix, "http."+hcmPrefix).WithLabelValues(result).Inc()
}

// countEnforcedTCP records a network RBAC filter's verdict (allowed or
// not) under its stat_prefix ("tcp.": envoy_tcp_rbac).
func (s *rbacStats) countEnforcedTCP(statPrefix string, allowed bool) {
	result := "denied"
	if allowed {
		result = "allowed"
	}
	enforcedVec(&s.enforcedTCP, statPrefix, strings.TrimSuffix(statPrefix, ".")).WithLabelValues(result).Inc()
}

// enforcedVec is the enforced verdicts' vector of m under key, made for
// the filter stats prefix stats the first time.
func enforcedVec(m *sync.Map, key, stats string) *prometheus.CounterVec {
	v, ok := m.Load(key)
	if !ok {
		v, _ = m.LoadOrStore(key, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_" + promName(stats+".rbac"), Help: rbacHelp,
		}, []string{"authz_enforce_result"}))
	}
	return v.(*prometheus.CounterVec)
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
		Help: rbacHelp}, []string{"authz_dry_run_action", "authz_dry_run_result"}))
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
