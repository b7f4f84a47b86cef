package translate

import (
	"fmt"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// ldsChain is one candidate filter chain of an outbound listener.
type ldsChain struct {
	// owner names what the chain serves, for conflict reports.
	owner string
	// bySubnet is set when the chain matches a route's destinationSubnets
	// rather than the service's VIPs.
	bySubnet bool
	fc       *listenerv3.FilterChain
}

// chainSet collects the filter chains of one listener so that no two
// chains match the same connection, which Envoy rejects. Chains are added
// in priority order; a later chain loses every destination prefix an
// earlier chain already matches (for the same SNI and source), and is
// dropped when nothing is left. A loss to another owner is reported.
type chainSet struct {
	g     *netBuilder
	port  uint32
	taken map[string]string
	names map[string]bool
	// chains are the accepted chains, in order.
	chains []*listenerv3.FilterChain
	// catchAll is set once a chain matches any destination, SNI and source.
	catchAll bool
	// sni is set when a chain matches server names (needs tls_inspector).
	sni bool
}

// newChainSet starts the chains of the listener on port.
func newChainSet(g *netBuilder, port uint32) *chainSet {
	return &chainSet{g: g, port: port, taken: map[string]string{}, names: map[string]bool{}}
}

// orAny returns list, or a single "" standing for "any" when it is empty.
func orAny(list []string) []string {
	if len(list) == 0 {
		return []string{""}
	}
	return list
}

// cidrKey identifies a CIDR range in conflict checks.
func cidrKey(c *corev3.CidrRange) string {
	return fmt.Sprintf("%s/%d", c.GetAddressPrefix(), c.GetPrefixLen().GetValue())
}

// add offers one chain (see chainSet).
func (cs *chainSet) add(c ldsChain) {
	m := c.fc.GetFilterChainMatch()
	var sources []string
	for _, s := range m.GetSourcePrefixRanges() {
		sources = append(sources, cidrKey(s))
	}
	alpn := strings.Join(m.GetApplicationProtocols(), ",")
	atoms := func(prefix string) []string {
		var out []string
		for _, sn := range orAny(m.GetServerNames()) {
			for _, src := range orAny(sources) {
				out = append(out, prefix+"|"+sn+"|"+src+"|"+alpn)
			}
		}
		return out
	}
	prefixes := m.GetPrefixRanges()
	candidates := []*corev3.CidrRange{nil}
	if len(prefixes) > 0 {
		candidates = prefixes
	}
	var keep []*corev3.CidrRange
	accepted, winner := false, ""
	for _, p := range candidates {
		key := ""
		if p != nil {
			key = cidrKey(p)
		}
		clash := ""
		for _, a := range atoms(key) {
			if owner, ok := cs.taken[a]; ok {
				clash = owner
				break
			}
		}
		if clash != "" {
			if clash != c.owner {
				winner = clash
			}
			continue
		}
		for _, a := range atoms(key) {
			cs.taken[a] = c.owner
		}
		accepted = true
		if p != nil {
			keep = append(keep, p)
		}
	}
	if winner != "" {
		cs.g.warnOnce("port %d: %s ignored where it cannot be told apart from %s (same destination, SNI and source), which takes precedence (HTTP first, then older services)",
			cs.port, c.owner, winner)
	}
	if !accepted {
		return
	}
	if m != nil {
		m.PrefixRanges = keep
		if proto.Size(m) == 0 {
			c.fc.FilterChainMatch = nil
		}
	}
	if len(keep) == 0 && len(m.GetServerNames()) == 0 && len(m.GetSourcePrefixRanges()) == 0 && alpn == "" {
		cs.catchAll = true
	}
	if len(m.GetServerNames()) > 0 {
		cs.sni = true
	}
	name := c.fc.GetName()
	for i := 2; cs.names[name]; i++ {
		name = fmt.Sprintf("%s#%d", c.fc.GetName(), i)
	}
	cs.names[name] = true
	c.fc.Name = name
	cs.chains = append(cs.chains, c.fc)
}

// cidrRange parses an IP or CIDR ("10.0.0.1", "10.0.0.0/16").
func cidrRange(s string) (*corev3.CidrRange, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		p = p.Masked()
		return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: ldsUint32(uint32(p.Bits()))}, true
	}
	if ip, err := netip.ParseAddr(s); err == nil && !ip.IsUnspecified() {
		ip = ip.Unmap()
		return &corev3.CidrRange{AddressPrefix: ip.String(), PrefixLen: ldsUint32(uint32(ip.BitLen()))}, true
	}
	return nil, false
}

// serviceVIPs are a service's addresses usable as destination matches
// (host names and 0.0.0.0 are not).
func serviceVIPs(addrs []string) []*corev3.CidrRange {
	var out []*corev3.CidrRange
	for _, a := range addrs {
		if c, ok := cidrRange(a); ok {
			out = append(out, c)
		}
	}
	return out
}

// hasIPVIP reports whether a service has a single-address VIP.
func hasIPVIP(addrs []string) bool {
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil && !ip.IsUnspecified() {
			return true
		}
	}
	return false
}

// l4Applies reports whether a match entry (its port, caller and gateway
// conditions) of a VirtualService in namespace vsNS applies to this proxy
// on listenerPort. A match without gateways inherits the VirtualService's,
// which already bound it to this proxy.
func (g *netBuilder) l4Applies(port uint32, sourceLabels map[string]string, sourceNS string, gateways []string, vsNS string, listenerPort uint32) bool {
	if port != 0 && port != listenerPort {
		return false
	}
	if len(gateways) > 0 && !g.namesThisProxy(gateways, vsNS) {
		return false
	}
	if sourceNS != "" && sourceNS != g.p.Namespace {
		return false
	}
	return registry.LabelsMatch(sourceLabels, g.p.Labels)
}

// tcpChains returns the chains for one TCP or TLS service port, in
// priority order: TLS routes of its VirtualService (TLS ports only; by SNI
// and destination), then TCP routes (by destination subnets, source subnet,
// or the service's VIPs), then the service's own cluster on its VIPs. A TLS
// service without a VIP (none, or only CIDRs) is matched by its hostname as
// SNI; any other service without VIPs matches any destination on the port.
func (g *netBuilder) tcpChains(sp ldsServicePort) []ldsChain {
	svc, port := sp.svc, sp.port
	vips := serviceVIPs(svc.Addresses)
	owner := "service " + svc.Hostname
	var out []ldsChain
	if c := g.routing[svc.Hostname]; c != nil {
		vs := c.vs
		chain := func(i int, kind string, m *listenerv3.FilterChainMatch, subnets []string, routes []*networking.RouteDestination) ldsChain {
			bySubnet := len(subnets) > 0
			if bySubnet {
				m.PrefixRanges = g.subnets(vs, subnets)
			} else {
				m.PrefixRanges = cloneCIDRs(vips)
			}
			return ldsChain{owner: owner, bySubnet: bySubnet, fc: &listenerv3.FilterChain{
				Name:             fmt.Sprintf("%s|%s[%d]", vs.cfg.Key(), kind, i),
				FilterChainMatch: m,
				Filters:          g.tcpFilters(false, g.tcpRouteFilter(vs, routes, sp.port.Number, OutboundCluster(sp.port.Number, "", sp.svc.Hostname))),
			}}
		}
		if ldsIsTLS(port.Protocol) {
			for i, rule := range vs.spec.GetTls() {
				for _, m := range rule.GetMatch() {
					if !g.l4Applies(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), vs.cfg.Namespace, port.Number) {
						continue
					}
					fcm := &listenerv3.FilterChainMatch{ServerNames: append([]string(nil), m.GetSniHosts()...)}
					out = append(out, chain(i, "tls", fcm, m.GetDestinationSubnets(), rule.GetRoute()))
				}
			}
		}
	tcpRules:
		for i, rule := range vs.spec.GetTcp() {
			if len(rule.GetMatch()) == 0 {
				out = append(out, chain(i, "tcp", &listenerv3.FilterChainMatch{}, nil, rule.GetRoute()))
				break
			}
			for _, m := range rule.GetMatch() {
				if !g.l4Applies(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), vs.cfg.Namespace, port.Number) {
					continue
				}
				fcm := &listenerv3.FilterChainMatch{}
				if s := m.GetSourceSubnet(); s != "" {
					c, ok := cidrRange(s)
					if !ok {
						g.warnOnce("%s: sourceSubnet %q is not an IP or CIDR; match ignored", vs.cfg.Key(), s)
						continue
					}
					fcm.SourcePrefixRanges = []*corev3.CidrRange{c}
				}
				out = append(out, chain(i, "tcp", fcm, m.GetDestinationSubnets(), rule.GetRoute()))
				if len(m.GetDestinationSubnets()) == 0 && m.GetSourceSubnet() == "" {
					break tcpRules // catches all of this service's traffic
				}
			}
		}
	}
	cluster := OutboundCluster(port.Number, "", svc.Hostname)
	m := &listenerv3.FilterChainMatch{PrefixRanges: cloneCIDRs(vips)}
	if ldsIsTLS(port.Protocol) && !hasIPVIP(svc.Addresses) {
		// As Istio: without a VIP, SNI is what tells TLS services apart.
		m.ServerNames = []string{svc.Hostname}
	}
	out = append(out, ldsChain{owner: owner, fc: &listenerv3.FilterChain{
		Name:             cluster,
		FilterChainMatch: m,
		Filters:          g.tcpFilters(false, g.tcpProxy(false, cluster, cluster)),
	}})
	return out
}

// cloneCIDRs copies ranges so chains never share (and later trim) them.
func cloneCIDRs(in []*corev3.CidrRange) []*corev3.CidrRange {
	var out []*corev3.CidrRange
	for _, c := range in {
		out = append(out, proto.Clone(c).(*corev3.CidrRange))
	}
	return out
}

// subnets parses destinationSubnets, reporting the ones that are not IPs
// or CIDRs.
func (g *netBuilder) subnets(vs *boundVS, list []string) []*corev3.CidrRange {
	var out []*corev3.CidrRange
	for _, s := range list {
		c, ok := cidrRange(s)
		if !ok {
			g.warnOnce("%s: destinationSubnet %q is not an IP or CIDR; ignored", vs.cfg.Key(), s)
			continue
		}
		out = append(out, c)
	}
	return out
}

// tcpRouteFilter is the tcp_proxy of a TCP or TLS route on listenerPort:
// one cluster, or weighted clusters (zero weights dropped next to others,
// even split when no weight is given); fallback when the rule has no route.
func (g *netBuilder) tcpRouteFilter(vs *boundVS, routes []*networking.RouteDestination, listenerPort uint32, fallback string) *listenerv3.Filter {
	type wd struct {
		cluster string
		weight  uint32
	}
	var dests []wd
	var total uint32
	for _, rd := range routes {
		if rd.GetWeight() == 0 && len(routes) > 1 {
			continue
		}
		w := uint32(max(rd.GetWeight(), 0))
		total += w
		dests = append(dests, wd{cluster: g.resolveDestination(vs, rd.GetDestination(), listenerPort).cluster, weight: w})
	}
	switch len(dests) {
	case 0:
		g.warnOnce("%s: a tcp/tls rule has no route; traffic goes to %s", vs.cfg.Key(), fallback)
		return g.tcpProxy(false, fallback, fallback)
	case 1:
		return g.tcpProxy(false, dests[0].cluster, dests[0].cluster)
	}
	wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
	for _, d := range dests {
		w := d.weight
		if total == 0 {
			w = 1
		}
		wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: d.cluster, Weight: w})
	}
	return networkFilter(tcpProxyFilterName, &tcpproxyv3.TcpProxy{
		StatPrefix: fallback, ClusterSpecifier: &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}, AccessLog: g.side(false).logs})
}
