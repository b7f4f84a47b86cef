package engine

import (
	"slices"
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

// rbacStats collects the verdict counters: for HTTP filters by their
// connection manager's stat_prefix, for network filters by their own
// stat_prefix. It describes nothing: the names come with the config, and
// a metric's enforced and shadow series have different labels, as
// Envoy's do.
type rbacStats struct {
	http, tcp rbacFamilies
}

// rbacFamilies are one kind's counters by stats prefix (the key is the
// prefix as the caller has it, so a request computes no name).
type rbacFamilies struct {
	shadow, enforced sync.Map // prefix -> *prometheus.CounterVec
}

func (*rbacStats) Describe(chan<- *prometheus.Desc) {}

func (s *rbacStats) Collect(ch chan<- prometheus.Metric) {
	collect := func(_, v any) bool {
		v.(*prometheus.CounterVec).Collect(ch)
		return true
	}
	for _, f := range []*rbacFamilies{&s.http, &s.tcp} {
		f.shadow.Range(collect)
		f.enforced.Range(collect)
	}
}

// rbacMetric is the Prometheus name of an RBAC filter's statistics: the
// HTTP filters' under "http.<connection manager prefix>.rbac", the
// network filters' under "<prefix>rbac" (Envoy's stat names, "." → "_").
func rbacMetric(tcp bool, prefix string) string {
	if tcp {
		return "envoy_" + promName(strings.TrimSuffix(prefix, ".")+".rbac")
	}
	return "envoy_" + promName("http."+prefix+".rbac")
}

// vec is the vector under prefix in m, made with labels the first time.
func (f *rbacFamilies) vec(m *sync.Map, tcp bool, prefix string, labels ...string) *prometheus.CounterVec {
	v, ok := m.Load(prefix)
	if !ok {
		v, _ = m.LoadOrStore(prefix, prometheus.NewCounterVec(prometheus.CounterOpts{Name: rbacMetric(tcp, prefix), Help: rbacHelp}, labels))
	}
	return v.(*prometheus.CounterVec)
}

func (s *rbacStats) families(tcp bool) *rbacFamilies {
	if tcp {
		return &s.tcp
	}
	return &s.http
}

// countEnforced records an enforced verdict of an RBAC filter (tcp: a
// network one) under prefix.
func (s *rbacStats) countEnforced(tcp bool, prefix string, allowed bool) {
	result := "denied"
	if allowed {
		result = "allowed"
	}
	f := s.families(tcp)
	f.vec(&f.enforced, tcp, prefix, "authz_enforce_result").WithLabelValues(result).Inc()
}

// countShadow records the shadow verdicts in md (one RBAC metadata
// namespace) of an RBAC filter (tcp: a network one) under prefix.
func (s *rbacStats) countShadow(tcp bool, prefix string, md map[string]any) {
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
		f := s.families(tcp)
		f.vec(&f.shadow, tcp, prefix, "authz_dry_run_action", "authz_dry_run_result").WithLabelValues(action, result).Inc()
	}
}

// bindChainStats gives each HTTP chain of rt with filters its Count hook
// for the filters' Envoy statistics (rbac.allowed, rbac.denied), made
// once per config rather than per request.
func (e *Engine) bindChainStats(rt *runtime) {
	for _, ls := range rt.listeners {
		for _, ch := range append(slices.Clip(ls.chains), ls.defChain) {
			if ch == nil || ch.http == nil || len(ch.http.filters) == 0 {
				continue
			}
			prefix := ch.http.statPrefix
			ch.http.countStat = func(stat string) {
				switch stat {
				case "rbac.allowed", "rbac.denied":
					e.rbacStats.countEnforced(false, prefix, stat == "rbac.allowed")
				}
			}
		}
	}
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
