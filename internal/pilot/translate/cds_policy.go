package translate

import (
	"fmt"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// applyLoadBalancer sets the cluster's LB policy. It returns false when the
// policy asks for PASSTHROUGH (the caller turns c into ORIGINAL_DST).
// The default is LEAST_REQUEST, Istio's, or ROUND_ROBIN for proxyless
// clients (supported by every gRPC version).
func (r *cdsRun) applyLoadBalancer(c *clusterv3.Cluster, lb *networking.LoadBalancerSettings) bool {
	if c.GetType() == clusterv3.Cluster_ORIGINAL_DST {
		return true
	}
	c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	if r.p.Type == model.Proxyless {
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	}
	if ch := lb.GetConsistentHash(); ch != nil {
		if mg := ch.GetMaglev(); mg != nil {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			if mg.GetTableSize() > 0 {
				c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{
					TableSize: wrapperspb.UInt64(mg.GetTableSize())}}
			}
			return true
		}
		size := ch.GetRingHash().GetMinimumRingSize()
		if size == 0 {
			//lint:ignore SA1019 the deprecated field is still honoured, as Istio does
			size = ch.GetMinimumRingSize()
		}
		if size == 0 {
			size = defaultRingSize
		}
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
			MinimumRingSize: wrapperspb.UInt64(size)}}
		return true
	}
	switch lb.GetSimple() {
	case networking.LoadBalancerSettings_ROUND_ROBIN:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	//lint:ignore SA1019 LEAST_CONN is LEAST_REQUEST's deprecated name
	case networking.LoadBalancerSettings_LEAST_REQUEST, networking.LoadBalancerSettings_LEAST_CONN:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case networking.LoadBalancerSettings_RANDOM:
		c.LbPolicy = clusterv3.Cluster_RANDOM
	case networking.LoadBalancerSettings_PASSTHROUGH:
		return false
	}
	if ss := slowStart(lb); ss != nil && r.p.Type == model.Proxyless {
		r.warnOnce("cluster %s: loadBalancer.warmup is not supported by proxyless gRPC clients; ignored for them", c.GetName())
	} else if ss != nil {
		switch c.LbPolicy {
		case clusterv3.Cluster_ROUND_ROBIN:
			c.LbConfig = &clusterv3.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &clusterv3.Cluster_RoundRobinLbConfig{SlowStartConfig: ss}}
		case clusterv3.Cluster_LEAST_REQUEST:
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{SlowStartConfig: ss}}
		}
	}
	return true
}

// slowStart is the slow start config of warmup (or the deprecated
// warmupDurationSecs), as istiod writes it for round robin and least
// request clusters; nil without either.
func slowStart(lb *networking.LoadBalancerSettings) *clusterv3.Cluster_SlowStartConfig {
	if w := lb.GetWarmup(); w != nil {
		ss := &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: durationpb.New(w.GetDuration().AsDuration())}
		if a := w.GetAggression(); a != nil {
			ss.Aggression = &corev3.RuntimeDouble{DefaultValue: a.GetValue(), RuntimeKey: "upstream.slow_start.aggression"}
		}
		if m := w.GetMinimumPercent(); m != nil {
			ss.MinWeightPercent = &typev3.Percent{Value: m.GetValue()}
		}
		return ss
	}
	if d := lb.GetWarmupDurationSecs(); d != nil {
		return &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: durationpb.New(d.AsDuration())}
	}
	return nil
}

// applyConnectionPool maps Istio's connection pool onto circuit breaker
// thresholds, connection options and HTTP protocol options.
func applyConnectionPool(c *clusterv3.Cluster, cp *networking.ConnectionPoolSettings, opts *httpOptions) {
	if cp == nil {
		return
	}
	th := c.GetCircuitBreakers().GetThresholds()[0]
	if tcp := cp.GetTcp(); tcp != nil {
		if tcp.GetMaxConnections() > 0 {
			th.MaxConnections = wrapperspb.UInt32(uint32(tcp.GetMaxConnections()))
		}
		if d := tcp.GetConnectTimeout(); d.AsDuration() > 0 {
			c.ConnectTimeout = durationpb.New(d.AsDuration())
		}
		if d := tcp.GetMaxConnectionDuration(); d.AsDuration() > 0 {
			opts.commonOpts().MaxConnectionDuration = durationpb.New(d.AsDuration())
		}
		if ka := tcp.GetTcpKeepalive(); ka != nil {
			k := &corev3.TcpKeepalive{}
			if ka.GetProbes() > 0 {
				k.KeepaliveProbes = wrapperspb.UInt32(ka.GetProbes())
			}
			if s := ka.GetTime().AsDuration() / time.Second; s > 0 {
				k.KeepaliveTime = wrapperspb.UInt32(uint32(s))
			}
			if s := ka.GetInterval().AsDuration() / time.Second; s > 0 {
				k.KeepaliveInterval = wrapperspb.UInt32(uint32(s))
			}
			c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{TcpKeepalive: k}
		}
	}
	if h := cp.GetHttp(); h != nil {
		if h.GetHttp1MaxPendingRequests() > 0 {
			th.MaxPendingRequests = wrapperspb.UInt32(uint32(h.GetHttp1MaxPendingRequests()))
		}
		if h.GetHttp2MaxRequests() > 0 {
			th.MaxRequests = wrapperspb.UInt32(uint32(h.GetHttp2MaxRequests()))
		}
		if h.GetMaxRetries() > 0 {
			th.MaxRetries = wrapperspb.UInt32(uint32(h.GetMaxRetries()))
		}
		if h.GetMaxRequestsPerConnection() > 0 {
			opts.commonOpts().MaxRequestsPerConnection = wrapperspb.UInt32(uint32(h.GetMaxRequestsPerConnection()))
		}
		if d := h.GetIdleTimeout(); d != nil {
			opts.commonOpts().IdleTimeout = durationpb.New(d.AsDuration())
		}
		if h.GetMaxConcurrentStreams() > 0 && opts.h2 != nil {
			opts.h2.MaxConcurrentStreams = wrapperspb.UInt32(uint32(h.GetMaxConcurrentStreams()))
		}
	}
}

// applyRetryBudget maps a DestinationRule retryBudget onto the default
// thresholds' retry_budget: concurrent retries are limited to a
// percentage (default 20) of the cluster's active and pending requests,
// but never below min_retry_concurrency (default 3), so retries cannot
// multiply the load on a failing upstream. Without it, Envoy's
// max_retries (3 concurrent retries; DestinationRule
// connectionPool.http.maxRetries) applies.
func applyRetryBudget(c *clusterv3.Cluster, rb *networking.TrafficPolicy_RetryBudget) {
	if rb == nil {
		return
	}
	th := c.GetCircuitBreakers().GetThresholds()[0]
	pct := 20.0
	if rb.GetPercent() != nil {
		pct = rb.GetPercent().GetValue()
	}
	minC := uint32(3)
	if rb.GetMinRetryConcurrency() > 0 {
		minC = rb.GetMinRetryConcurrency()
	}
	th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
		BudgetPercent:       &typev3.Percent{Value: pct},
		MinRetryConcurrency: wrapperspb.UInt32(minC),
	}
}

// applyOutlierDetection maps Istio's outlier detection as Istio does:
// success-rate ejection off, 5xx / gateway-error ejection enforced only when
// configured, and the panic threshold set to minHealthPercent (0 when unset,
// which disables panic mode).
func applyOutlierDetection(c *clusterv3.Cluster, od *networking.OutlierDetection) {
	if od == nil {
		return
	}
	out := &clusterv3.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}
	enforce := func(v uint32) *wrapperspb.UInt32Value {
		if v > 0 {
			v = 100
		}
		return wrapperspb.UInt32(v)
	}
	//lint:ignore SA1019 the deprecated field is still honoured, as Istio does
	if v := od.GetConsecutiveErrors(); v > 0 {
		// Deprecated consecutiveErrors counts gateway errors only.
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(uint32(v))
		out.EnforcingConsecutiveGatewayFailure = enforce(uint32(v))
		out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(0)
	}
	if v := od.GetConsecutive_5XxErrors(); v != nil {
		out.Consecutive_5Xx = wrapperspb.UInt32(v.GetValue())
		out.EnforcingConsecutive_5Xx = enforce(v.GetValue())
	}
	if v := od.GetConsecutiveGatewayErrors(); v != nil {
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(v.GetValue())
		out.EnforcingConsecutiveGatewayFailure = enforce(v.GetValue())
	}
	if d := od.GetInterval(); d != nil {
		out.Interval = durationpb.New(d.AsDuration())
	}
	if d := od.GetBaseEjectionTime(); d != nil {
		out.BaseEjectionTime = durationpb.New(d.AsDuration())
	}
	if v := od.GetMaxEjectionPercent(); v > 0 {
		out.MaxEjectionPercent = wrapperspb.UInt32(uint32(v))
	}
	if od.GetSplitExternalLocalOriginErrors() {
		out.SplitExternalLocalOriginErrors = true
		if v := od.GetConsecutiveLocalOriginFailures(); v != nil {
			out.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(v.GetValue())
		}
	}
	c.OutlierDetection = out
	if c.CommonLbConfig == nil {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
	}
	minHealth := max(od.GetMinHealthPercent(), 0)
	c.CommonLbConfig.HealthyPanicThreshold = &typev3.Percent{Value: float64(minHealth)}
}

// hashPolicy returns the route hash policy that the consistentHash load
// balancer of the DestinationRule for (host, port, subset) asks for, or nil.
// Envoy's RING_HASH/MAGLEV clusters hash on what the route computes, so
// RDS must put this on every route action towards that cluster. port 0
// means "the service's only port".
func (b *builder) hashPolicy(host string, port uint32, subset string) []*routev3.RouteAction_HashPolicy {
	svc := b.serviceByHost(host)
	if svc == nil {
		return nil
	}
	if port == 0 && len(svc.Ports) == 1 {
		port = svc.Ports[0].Number
	}
	dr := b.destinationRule(svc, nil)
	var ss *networking.Subset
	if subset != "" {
		if ss = dr.subset(subset); ss == nil {
			return nil
		}
	}
	ch := dr.policyFor(ss, port).GetLoadBalancer().GetConsistentHash()
	if ch == nil {
		return nil
	}
	hp := &routev3.RouteAction_HashPolicy{}
	switch key := ch.GetHashKey().(type) {
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{
			HeaderName: key.HttpHeaderName}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
		ck := key.HttpCookie
		cookie := &routev3.RouteAction_HashPolicy_Cookie{Name: ck.GetName(), Path: ck.GetPath()}
		if ck.GetTtl() != nil {
			cookie.Ttl = durationpb.New(ck.GetTtl().AsDuration())
		}
		for _, a := range ck.GetAttributes() {
			cookie.Attributes = append(cookie.Attributes, &routev3.RouteAction_HashPolicy_CookieAttribute{Name: a.GetName(), Value: a.GetValue()})
		}
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_Cookie_{Cookie: cookie}
	case *networking.LoadBalancerSettings_ConsistentHashLB_UseSourceIp:
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: key.UseSourceIp}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
		hp.PolicySpecifier = &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{
			Name: key.HttpQueryParameterName}}
	default:
		return nil
	}
	return []*routev3.RouteAction_HashPolicy{hp}
}

// destRule is the DestinationRule that applies to one service for this
// proxy: the rules of one namespace for the most specific matching host,
// merged (subsets of younger rules added unless their names collide; the
// oldest rule's trafficPolicy wins).
type destRule struct {
	// keys of the merged configs, oldest first.
	keys    []string
	first   *model.Config // the oldest (or workload-specific) rule
	host    string
	policy  *networking.TrafficPolicy
	subsets []*networking.Subset
}

// key names the rule in warnings.
func (d *destRule) key() string {
	if d == nil || len(d.keys) == 0 {
		return "DestinationRule"
	}
	return d.keys[0]
}

func (d *destRule) subsetList() []*networking.Subset {
	if d == nil {
		return nil
	}
	return d.subsets
}

func (d *destRule) subset(name string) *networking.Subset {
	for _, ss := range d.subsetList() {
		if ss.GetName() == name {
			return ss
		}
	}
	return nil
}

// policyFor is the traffic policy of one port of a subset (ss may be nil):
// the rule's policy, overridden section by section by the subset's, each
// overridden by its portLevelSettings for the port, as Istio merges them.
func (d *destRule) policyFor(ss *networking.Subset, port uint32) *networking.TrafficPolicy {
	if d == nil {
		return nil
	}
	return mergeTrafficPolicy(mergeTrafficPolicy(nil, d.policy, port), ss.GetTrafficPolicy(), port)
}

// mergeTrafficPolicy overrides original with the sections over sets, then
// with over's port-level settings for port. Port-level settings do not
// inherit: a matching entry replaces all four sections, set or not. It
// never modifies its arguments.
func mergeTrafficPolicy(original, over *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	if over == nil {
		return original
	}
	m := &networking.TrafficPolicy{}
	if original != nil {
		m.LoadBalancer, m.ConnectionPool = original.LoadBalancer, original.ConnectionPool
		m.OutlierDetection, m.Tls = original.OutlierDetection, original.Tls
		m.RetryBudget = original.RetryBudget
	}
	if over.RetryBudget != nil {
		m.RetryBudget = over.RetryBudget
	}
	if over.LoadBalancer != nil {
		m.LoadBalancer = over.LoadBalancer
	}
	if over.ConnectionPool != nil {
		m.ConnectionPool = over.ConnectionPool
	}
	if over.OutlierDetection != nil {
		m.OutlierDetection = over.OutlierDetection
	}
	if over.Tls != nil {
		m.Tls = over.Tls
	}
	for _, pl := range over.GetPortLevelSettings() {
		if pl.GetPort().GetNumber() == port {
			m.LoadBalancer, m.ConnectionPool = pl.LoadBalancer, pl.ConnectionPool
			m.OutlierDetection, m.Tls = pl.OutlierDetection, pl.Tls
			break
		}
	}
	return m
}

// resolveHost expands a short DestinationRule host ("reviews") relative to
// the rule's namespace, as Istio does; names with a dot and wildcards stay.
func (b *builder) resolveHost(host, ns string) string {
	return ResolveHost(host, ns, b.s.Mesh.DomainSuffix)
}

// ResolveHost reads a config's host as Istio does: a name without dots
// (and not a wildcard) is a short name of namespace ns, expanded with
// suffix (default "svc.cluster.local").
func ResolveHost(host, ns, suffix string) string {
	if host == "" || strings.HasPrefix(host, "*") || strings.Contains(host, ".") {
		return host
	}
	if suffix == "" {
		suffix = defaultDomainSuffix
	}
	return host + "." + ns + "." + suffix
}

// moreSpecific reports whether host pattern a is a better match than b for
// a host both match: exact beats wildcard, longer wildcard beats shorter.
func moreSpecific(a, b string) bool {
	aw, bw := strings.Contains(a, "*"), strings.Contains(b, "*")
	if aw != bw {
		return !aw
	}
	return len(a) > len(b)
}

// destinationRule finds the DestinationRule for svc as seen from the proxy:
// the proxy's namespace first, then the service's, then the root
// namespace, each considering only rules exported to the proxy's namespace
// (and, with a workloadSelector, selecting the proxy). Within a namespace
// the most specific host wins; rules for the same host merge, oldest first.
// warn, when not nil, receives the merge conflicts.
func (b *builder) destinationRule(svc *registry.Service, warn func(string, ...any)) *destRule {
	tiers := []string{b.p.Namespace, svc.Namespace, b.s.Mesh.RootNamespace}
	for i, ns := range tiers {
		if ns == "" || slices.Contains(tiers[:i], ns) {
			continue
		}
		var matched, selected []*model.Config
		best := ""
		for _, c := range b.s.Configs("DestinationRule") {
			spec, ok := c.Spec.(*networking.DestinationRule)
			if !ok || c.Namespace != ns || !exportedTo(spec.GetExportTo(), c.Namespace, b.p.Namespace) {
				continue
			}
			sel := spec.GetWorkloadSelector().GetMatchLabels()
			if len(sel) > 0 && (c.Namespace != b.p.Namespace || !registry.LabelsMatch(sel, b.p.Labels)) {
				continue
			}
			h := b.resolveHost(spec.GetHost(), c.Namespace)
			if h == "" || !HostMatches(h, svc.Hostname) {
				continue
			}
			if best != "" && h != best {
				if !moreSpecific(h, best) {
					continue
				}
				matched, selected = nil, nil
			}
			best = h
			if len(sel) > 0 {
				selected = append(selected, c)
			} else {
				matched = append(matched, c)
			}
		}
		// Rules selecting this workload take precedence over namespace-wide ones.
		if all := append(selected, matched...); len(all) > 0 {
			return mergeDestinationRules(all, best, warn)
		}
	}
	return nil
}

// mergeDestinationRules merges rules for one host, oldest (or
// workload-specific) first.
func mergeDestinationRules(list []*model.Config, host string, warn func(string, ...any)) *destRule {
	if warn == nil {
		warn = func(string, ...any) {}
	}
	d := &destRule{host: host}
	owner := map[string]string{}
	policyOwner := ""
	for _, c := range list {
		spec := c.Spec.(*networking.DestinationRule)
		d.keys = append(d.keys, c.Key())
		if d.first == nil {
			d.first = c
		}
		for _, ss := range spec.GetSubsets() {
			if o, dup := owner[ss.GetName()]; dup {
				warn("%s: subset %q of host %s already defined by %s; ignored", c.Key(), ss.GetName(), host, o)
				continue
			}
			owner[ss.GetName()] = c.Key()
			d.subsets = append(d.subsets, ss)
		}
		if tp := spec.GetTrafficPolicy(); tp != nil {
			if d.policy == nil {
				d.policy, policyOwner = tp, c.Key()
			} else {
				warn("%s: trafficPolicy for host %s ignored; %s sets it", c.Key(), host, policyOwner)
			}
		}
	}
	return d
}

// warnUnsupported reports traffic policy fields weft does not translate.
func (r *cdsRun) warnUnsupported(d *destRule) {
	check := func(where string, tp *networking.TrafficPolicy) {
		if tp == nil {
			return
		}
		lbs := []*networking.LoadBalancerSettings{tp.GetLoadBalancer()}
		for _, pl := range tp.GetPortLevelSettings() {
			lbs = append(lbs, pl.GetLoadBalancer())
		}
		for _, lb := range lbs {
			if lb.GetZoneAwareLbSetting() != nil {
				r.warnOnce("%s: %sloadBalancer.zoneAwareLbSetting is not supported; locality load balancing applies instead", d.key(), where)
			}
			if slowStart(lb) != nil && (lb.GetConsistentHash() != nil || lb.GetSimple() == networking.LoadBalancerSettings_RANDOM) {
				r.warnOnce("%s: %sloadBalancer.warmup applies to ROUND_ROBIN and LEAST_REQUEST only; ignored", d.key(), where)
			}
		}
		if tp.GetTunnel() != nil {
			r.warnOnce("%s: %strafficPolicy.tunnel is not supported; ignored", d.key(), where)
		}
		if tp.GetRetryBudget().GetBudgetInterval() != nil {
			r.warnOnce("%s: %strafficPolicy.retryBudget.budgetInterval is not supported; the budget counts active and pending requests", d.key(), where)
		}
		if tp.GetProxyProtocol() != nil {
			r.warnOnce("%s: %strafficPolicy.proxyProtocol is not supported; ignored", d.key(), where)
		}
	}
	check("", d.policy)
	for _, ss := range d.subsets {
		check(fmt.Sprintf("subset %s: ", ss.GetName()), ss.GetTrafficPolicy())
	}
}
