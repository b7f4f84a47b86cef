package cluster

import (
	"fmt"
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// dnsTarget is one hostname of a DNS cluster; each resolved address
// becomes an endpoint copying tmpl.
type dnsTarget struct {
	host string
	port uint16
	tmpl Endpoint
}

// health maps EDS health status as Envoy does.
func health(s corev3.HealthStatus) Health {
	switch s {
	case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
		return Healthy
	case corev3.HealthStatus_DEGRADED:
		return Degraded
	}
	return Unhealthy // UNHEALTHY, DRAINING, TIMEOUT
}

// loadAssignment reads la's endpoints into out: IP endpoints into
// out.endpoints, hostnames (dns clusters only) into out.dnsTargets.
func (k *compiler) loadAssignment(field string, la *endpointv3.ClusterLoadAssignment, out *Cluster, dns bool) {
	if la == nil {
		return
	}
	if len(la.GetNamedEndpoints()) > 0 {
		k.unsupported(field + ".named_endpoints")
	}
	if p := la.GetPolicy(); p != nil {
		if len(p.GetDropOverloads()) > 0 {
			k.unsupported(field + ".policy.drop_overloads")
		}
		if v := p.GetOverprovisioningFactor(); v != nil {
			if v.GetValue() == 0 {
				k.invalid(field+".policy.overprovisioning_factor", "must be positive")
			}
			out.OverprovisioningFactor = v.GetValue()
		}
	}
	// Priorities run from 0 without gaps (Envoy's rule): a level is only
	// reached through the ones before it.
	seen := make([]bool, len(la.GetEndpoints()))
	for i, lle := range la.GetEndpoints() {
		p := lle.GetPriority()
		if p >= uint32(len(seen)) {
			k.invalid(fmt.Sprintf("%s.endpoints[%d].priority", field, i), "%d leaves a gap: priorities run from 0 without gaps", p)
			return
		}
		seen[p] = true
	}
	if gap := slices.Index(seen, false); gap >= 0 && slices.Contains(seen[gap:], true) {
		k.invalid(field+".endpoints", "no locality has priority %d: priorities run from 0 without gaps", gap)
		return
	}
	n := 0
	for i, lle := range la.GetEndpoints() {
		f := fmt.Sprintf("%s.endpoints[%d]", field, i)
		if lle.GetLedsClusterLocalityConfig() != nil {
			k.unsupported(f + ".leds_cluster_locality_config")
		}
		loc := lle.GetLocality()
		tmpl := Endpoint{
			Locality: Locality{Region: loc.GetRegion(), Zone: loc.GetZone(), SubZone: loc.GetSubZone()},
			Priority: lle.GetPriority(),
			locality: i,
		}
		if w := lle.GetLoadBalancingWeight(); w != nil {
			if w.GetValue() == 0 {
				k.invalid(f+".load_balancing_weight", "must be at least 1")
			}
			tmpl.LocalityWeight = w.GetValue()
		}
		for j, lbe := range lle.GetLbEndpoints() {
			n++
			ef := fmt.Sprintf("%s.lb_endpoints[%d]", f, j)
			ep := k.endpoint(ef, lbe, tmpl)
			if ep == nil {
				continue
			}
			if ip, err := netip.ParseAddr(ep.Hostname); err == nil {
				ep.AddrPort = netip.AddrPortFrom(ip.Unmap(), ep.AddrPort.Port())
				ep.Address = ep.AddrPort.String()
				ep.Hostname = lbe.GetEndpoint().GetHostname()
				out.endpoints = append(out.endpoints, ep)
				continue
			}
			if !dns {
				k.invalid(ef+".endpoint.address", "%q is not an IP address (%v cluster)", ep.Hostname, out.Type)
				continue
			}
			host := ep.Hostname
			if h := lbe.GetEndpoint().GetHostname(); h != "" {
				ep.Hostname = h
			}
			out.dnsTargets = append(out.dnsTargets, dnsTarget{host: host, port: ep.AddrPort.Port(), tmpl: *ep})
		}
	}
	if out.Type == LogicalDNS && n != 1 {
		k.invalid(field, "LOGICAL_DNS clusters take exactly one endpoint, got %d", n)
	}
}

// endpoint reads one LbEndpoint into a copy of tmpl whose Hostname holds
// the socket address (IP or hostname) and AddrPort the port.
func (k *compiler) endpoint(f string, lbe *endpointv3.LbEndpoint, tmpl Endpoint) *Endpoint {
	if lbe.GetEndpointName() != "" {
		k.unsupported(f + ".endpoint_name")
		return nil
	}
	sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
	switch {
	case sa == nil:
		k.unsupported(f + ".endpoint.address (only socket_address)")
		return nil
	case sa.GetProtocol() != corev3.SocketAddress_TCP:
		k.unsupported(f + ".endpoint.address.protocol " + sa.GetProtocol().String())
		return nil
	case sa.GetNamedPort() != "":
		k.unsupported(f + ".endpoint.address.named_port")
		return nil
	case sa.GetResolverName() != "":
		k.unsupported(f + ".endpoint.address.resolver_name")
		return nil
	case sa.GetPortValue() == 0 || sa.GetPortValue() > 65535:
		k.invalid(f+".endpoint.address.port_value", "%d not in 1..65535", sa.GetPortValue())
		return nil
	case sa.GetAddress() == "":
		k.invalid(f+".endpoint.address.address", "empty")
		return nil
	}
	ep := tmpl
	ep.Weight = 1
	if w := lbe.GetLoadBalancingWeight(); w != nil {
		if w.GetValue() == 0 {
			k.invalid(f+".load_balancing_weight", "must be at least 1")
		}
		ep.Weight = max(w.GetValue(), 1)
	}
	ep.Health = health(lbe.GetHealthStatus())
	ep.Hostname = sa.GetAddress()
	ep.AddrPort = netip.AddrPortFrom(netip.Addr{}, uint16(sa.GetPortValue()))
	return &ep
}
