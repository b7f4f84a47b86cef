package translate

import (
	"maps"
	"math"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// Locality load balancing, as istiod applies it to the load assignment
// of each proxy's clusters (its locality_lb_setting and the mesh's
// localityLbSetting, enabled when unset):
//   - distribute: the localities that match a rule's "to" patterns get
//     its weights (shared by the localities one pattern matches, in
//     proportion to their own weights); the others get nothing. The
//     first rule whose "from" matches the proxy's locality applies.
//   - failover, only for clusters with outlier detection (without it the
//     proxy would never see its local endpoints fail): each locality gets
//     a priority by how much of it matches the proxy's locality (0: the
//     same region, zone and subzone; 1: region and zone; 2: region; 3:
//     none), and failover rules push regions not named as the proxy
//     region's failover target down to 4. With failoverPriority, the
//     labels it lists order the endpoints first (see failoverPriority),
//     and localities only within that order, when failover rules are set
//     too. The sidecar sends the load to the highest priority whose
//     endpoints are up.

// defaultLocalityLB is Istio's default locality setting: enabled, no
// rules. Read only.
var defaultLocalityLB = &networking.LocalityLoadBalancerSetting{}

// localityLB returns the locality settings that apply to a cluster: the
// destination rule's, else the mesh's; nil when locality load balancing
// is off for it.
func (r *cdsRun) localityLB(lb *networking.LoadBalancerSettings) *networking.LocalityLoadBalancerSetting {
	if s := lb.GetLocalityLbSetting(); s != nil {
		if s.GetEnabled() != nil && !s.GetEnabled().GetValue() {
			return nil
		}
		return s
	}
	m := r.s.Mesh.LocalityLB
	if m == nil {
		return defaultLocalityLB
	}
	if m.GetEnabled() != nil && !m.GetEnabled().GetValue() {
		return nil
	}
	return m
}

// proxyLocality is where the proxy runs: its node's locality (or
// istio-locality label), else, for sidecars and gateways, the locality
// of their own workload in the registry (a WorkloadEntry's locality).
// It is worked out once per run.
func (r *cdsRun) proxyLocality() *corev3.Locality {
	if r.locality != nil {
		return r.locality
	}
	r.locality = &corev3.Locality{}
	if r.p.Locality != "" {
		r.locality = parseLocality(r.p.Locality)
	} else if reg := r.s.Registry; reg != nil && r.p.Type != model.Proxyless && len(r.p.IPs) > 0 {
	search:
		for _, eps := range reg.Endpoints {
			for _, ep := range eps {
				if ep.Locality != "" && slices.Contains(r.p.IPs, ep.Address) {
					r.locality = parseLocality(ep.Locality)
					break search
				}
			}
		}
	}
	return r.locality
}

// applyLocalityLB applies locality load balancing to la (see above);
// failover only when the cluster has outlier detection. With
// failoverPriority, la's priorities are already the labels' (see
// failoverPriority); localities then only refine them when failover
// rules are set too, as istiod does.
func (r *cdsRun) applyLocalityLB(la *endpointv3.ClusterLoadAssignment, lb *networking.LoadBalancerSettings, outlier bool) {
	s := r.localityLB(lb)
	if s == nil || la == nil || len(la.GetEndpoints()) == 0 {
		return
	}
	switch {
	case len(s.GetDistribute()) > 0:
		distributeLocalities(la, r.proxyLocality(), s.GetDistribute())
	case !outlier:
	case len(s.GetFailoverPriority()) > 0 && len(r.p.Labels) > 0:
		if len(s.GetFailover()) > 0 {
			failoverLocalities(la, r.proxyLocality(), s.GetFailover())
		}
		compressPriorities(la)
	default:
		failoverLocalities(la, r.proxyLocality(), s.GetFailover())
	}
}

// Istio's topology labels, which failoverPriority may name: a proxy and
// an endpoint that do not carry them get them from their locality.
const (
	labelRegion  = "topology.kubernetes.io/region"
	labelZone    = "topology.kubernetes.io/zone"
	labelSubZone = "topology.istio.io/subzone"
)

// topologyLabel is the value of label name in labels, or for a topology
// label that labels lack, the part of the locality l it stands for.
func topologyLabel(labels map[string]string, l *corev3.Locality, name string) string {
	if v, ok := labels[name]; ok {
		return v
	}
	switch name {
	case labelRegion:
		return l.GetRegion()
	case labelZone:
		return l.GetZone()
	case labelSubZone:
		return l.GetSubZone()
	}
	return ""
}

// failoverPriority returns the priority of each endpoint by policy's
// failoverPriority (nil when it does not apply: no such list, locality
// load balancing off or distributing, no outlier detection, or a proxy
// without labels). Each entry names a label, or "label=value" to compare
// with value instead of the proxy's own: an endpoint matching the proxy
// on every label has priority 0, one that first differs at the i-th of n
// labels priority n-i.
func (r *cdsRun) failoverPriority(policy *networking.TrafficPolicy) func(*registry.Endpoint) uint32 {
	s := r.localityLB(policy.GetLoadBalancer())
	if s == nil || len(s.GetDistribute()) > 0 || policy.GetOutlierDetection() == nil || len(s.GetFailoverPriority()) == 0 || len(r.p.Labels) == 0 {
		return nil
	}
	names := make([]string, len(s.GetFailoverPriority()))
	want := make([]string, len(names))
	for i, e := range s.GetFailoverPriority() {
		name, value, ok := strings.Cut(e, "=")
		names[i] = name
		if ok {
			want[i] = value
		} else {
			want[i] = topologyLabel(r.p.Labels, r.proxyLocality(), name)
		}
	}
	return func(ep *registry.Endpoint) uint32 {
		loc := parseLocality(ep.Locality)
		for i, name := range names {
			if topologyLabel(ep.Labels, loc, name) != want[i] {
				return uint32(len(names) - i)
			}
		}
		return 0
	}
}

// localityMatch reports whether l matches pattern "region/zone/subzone",
// where "*" matches anything and a missing or empty zone or subzone
// matches any.
func localityMatch(l *corev3.Locality, pattern string) bool {
	parts := append(strings.SplitN(pattern, "/", 3), "", "")
	match := func(rule, v string, emptyMatches bool) bool {
		return rule == "*" || (emptyMatches && rule == "") || rule == v
	}
	return match(parts[0], l.GetRegion(), false) && match(parts[1], l.GetZone(), true) && match(parts[2], l.GetSubZone(), true)
}

// distributeLocalities weights la's localities by the first rule whose
// from matches the proxy; localities no "to" pattern matches get no
// endpoints.
func distributeLocalities(la *endpointv3.ClusterLoadAssignment, proxy *corev3.Locality, rules []*networking.LocalityLoadBalancerSetting_Distribute) {
	for _, rule := range rules {
		if !localityMatch(proxy, rule.GetFrom()) {
			continue
		}
		unmatched := make([]bool, len(la.Endpoints))
		for i := range unmatched {
			unmatched[i] = true
		}
		// Patterns in a stable order: a locality goes to the first one
		// that matches it.
		for _, pattern := range slices.Sorted(maps.Keys(rule.GetTo())) {
			weight := rule.GetTo()[pattern]
			var idx []int
			var total uint64
			for i, lle := range la.Endpoints {
				if unmatched[i] && localityMatch(lle.GetLocality(), pattern) {
					unmatched[i] = false
					idx = append(idx, i)
					total += uint64(max(lle.GetLoadBalancingWeight().GetValue(), 1))
				}
			}
			for _, i := range idx {
				own := uint64(max(la.Endpoints[i].GetLoadBalancingWeight().GetValue(), 1))
				if w := math.Ceil(float64(own*uint64(weight)) / float64(total)); w > 0 {
					la.Endpoints[i].LoadBalancingWeight = wrapperspb.UInt32(uint32(min(w, math.MaxUint32)))
				}
			}
		}
		// Localities no pattern matched take no traffic.
		kept := la.Endpoints[:0]
		for i, lle := range la.Endpoints {
			if !unmatched[i] {
				kept = append(kept, lle)
			}
		}
		la.Endpoints = kept
		return
	}
}

// failoverLocalities gives la's localities priorities by their distance
// from the proxy's locality, then makes them consecutive from 0.
func failoverLocalities(la *endpointv3.ClusterLoadAssignment, proxy *corev3.Locality, failover []*networking.LocalityLoadBalancerSetting_Failover) {
	for _, lle := range la.Endpoints {
		l := lle.GetLocality()
		p := uint32(3)
		switch {
		case l.GetRegion() != proxy.GetRegion():
			for _, f := range failover {
				if f.GetFrom() == proxy.GetRegion() {
					if l.GetRegion() != f.GetTo() {
						p = 4
					}
					break
				}
			}
		case l.GetZone() != proxy.GetZone():
			p = 2
		case l.GetSubZone() != proxy.GetSubZone():
			p = 1
		default:
			p = 0
		}
		// Within a failoverPriority level (0 without one): at most five
		// locality priorities each.
		lle.Priority = lle.Priority*5 + p
	}
	compressPriorities(la)
}

// compressPriorities renumbers la's priorities 0, 1, 2, … in their order,
// as Envoy wants them.
func compressPriorities(la *endpointv3.ClusterLoadAssignment) {
	var used []uint32
	for _, lle := range la.Endpoints {
		used = append(used, lle.Priority)
	}
	slices.Sort(used)
	used = slices.Compact(used)
	for _, lle := range la.Endpoints {
		lle.Priority = uint32(slices.Index(used, lle.Priority))
	}
}
