package translate

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// filterEndpoints returns the endpoints whose labels carry every selector
// label (a subset's endpoints). An empty selector selects all.
func filterEndpoints(eps []registry.Endpoint, selector map[string]string) []registry.Endpoint {
	if len(selector) == 0 {
		return eps
	}
	var out []registry.Endpoint
	for _, ep := range eps {
		if registry.LabelsMatch(selector, ep.Labels) {
			out = append(out, ep)
		}
	}
	return out
}

// localityEndpoints groups endpoints serving one service port by locality
// ("region/zone/subzone") and, with prio (failoverPriority), by priority
// within it, each endpoint weighted by its Weight (0 means 1)
// and each group by the sum of its endpoints' weights: gRPC's xDS client
// drops localities without a weight. Groups are sorted by locality, then priority,
// endpoints by address and port. Endpoints are dialled at DialPort: an
// explicit-mode sidecar's port in front of the application's. With ipOnly (EDS), addresses that are not
// IPs are skipped and reported; unix sockets are always skipped.
func (r *cdsRun) localityEndpoints(svc *registry.Service, port registry.Port, eps []registry.Endpoint, ipOnly bool,
	prio func(*registry.Endpoint) uint32) []*endpointv3.LocalityLbEndpoints {
	groups := map[string]*endpointv3.LocalityLbEndpoints{}
	sums := map[string]uint64{}
	for i := range eps {
		ep := &eps[i]
		if ep.Address == "" {
			continue
		}
		if strings.HasPrefix(ep.Address, "unix://") || (ipOnly && !isIP(ep.Address)) {
			r.warnOnce("Service %s/%s: endpoint address %q is not an IP; skipped", svc.Namespace, svc.Hostname, ep.Address)
			continue
		}
		w := max(ep.Weight, 1)
		var p uint32
		if prio != nil {
			p = prio(ep)
		}
		key := ep.Locality
		if p > 0 {
			key = fmt.Sprintf("%s\x00%010d", ep.Locality, p)
		}
		g := groups[key]
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{Locality: parseLocality(ep.Locality), Priority: p}
			groups[key] = g
		}
		g.LbEndpoints = append(g.LbEndpoints, lbEndpoint(ep.Address, ep.DialPort(port), ep.Healthy, w))
		sums[key] += uint64(w)
	}
	names := make([]string, 0, len(groups))
	for n := range groups {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*endpointv3.LocalityLbEndpoints, 0, len(names))
	for _, n := range names {
		g := groups[n]
		g.LoadBalancingWeight = wrapperspb.UInt32(uint32(min(sums[n], math.MaxUint32)))
		sort.SliceStable(g.LbEndpoints, func(i, j int) bool {
			a, b := g.LbEndpoints[i].GetEndpoint().GetAddress().GetSocketAddress(), g.LbEndpoints[j].GetEndpoint().GetAddress().GetSocketAddress()
			if a.GetAddress() != b.GetAddress() {
				return a.GetAddress() < b.GetAddress()
			}
			return a.GetPortValue() < b.GetPortValue()
		})
		out = append(out, g)
	}
	return out
}

// isIP reports whether addr is an IPv4 or IPv6 address.
func isIP(addr string) bool {
	_, err := netip.ParseAddr(addr)
	return err == nil
}

// parseLocality splits "region/zone/subzone". An unknown locality is an
// empty Locality, never nil: gRPC's xDS client rejects EDS whose
// localities have no ID.
func parseLocality(s string) *corev3.Locality {
	if s == "" {
		return &corev3.Locality{}
	}
	parts := strings.SplitN(s, "/", 3)
	parts = append(parts, "", "")
	return &corev3.Locality{Region: parts[0], Zone: parts[1], SubZone: parts[2]}
}

// lbEndpoint is one weighted endpoint at addr:port.
func lbEndpoint(addr string, port uint32, healthy bool, weight uint32) *endpointv3.LbEndpoint {
	hs := corev3.HealthStatus_HEALTHY
	if !healthy {
		hs = corev3.HealthStatus_UNHEALTHY
	}
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		}},
		HealthStatus:        hs,
		LoadBalancingWeight: wrapperspb.UInt32(weight),
	}
}
