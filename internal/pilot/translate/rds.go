package translate

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	networking "istio.io/api/networking/v1alpha3"
)

// This file holds the RDS half of the sidecar translation: which
// VirtualService routes which service (selection, conflicts), and the
// RouteConfiguration of every outbound HTTP port. rds_http.go turns one
// VirtualService HTTP rule into Envoy routes, rds_policy.go the per-route
// policies (retries, fault, CORS, mirrors, headers).

// vsMeshGateway is the reserved gateway name binding a VirtualService to
// sidecars and proxyless clients.
const vsMeshGateway = "mesh"

// Virtual host names Istio uses for unknown destinations on an HTTP port.
const (
	allowAnyVirtualHost = "allow_any"
	blockAllVirtualHost = "block_all"
)

// boundVS is a VirtualService that applies to the proxy.
type boundVS struct {
	cfg  *model.Config
	spec *networking.VirtualService
}

// vsClaim records which VirtualService routes one service host and through
// which of its hosts (the pattern decides specificity).
type vsClaim struct {
	vs      *boundVS
	pattern string
}

// netBuilder carries what LDS and RDS share for one proxy: the services it
// sees (one per hostname), the VirtualService routing each of them, and the
// warnings already given (each is given once).
type netBuilder struct {
	*builder
	// services are b.services with one service per hostname, registry order.
	services []*registry.Service
	byHost   map[string]*registry.Service
	// routing maps a service hostname to the VirtualService routing it.
	routing map[string]*vsClaim
	warned  map[string]bool
	// authzF are the inbound RBAC filters (authz), built on first use.
	authzF *authzFilters
	// sidesF is the outbound and inbound sides' tracing, access logs and
	// istio.stats config, built on first use (side).
	sidesF *[2]sideTelemetry
	// gateway is, for a gateway (model.Router), the Gateway whose server
	// is being built ("namespace/name"): match entries naming gateways
	// apply when they name it (namesThisProxy).
	gateway string
	// gatewayVS are the VirtualServices bound to each Gateway
	// ("namespace/name"), built on first use (gatewayVirtualServices).
	gatewayVS map[string][]*boundVS
}

// newNetBuilder prepares LDS/RDS for b's proxy: services by hostname and
// the VirtualService routing each.
func newNetBuilder(b *builder) *netBuilder {
	g := &netBuilder{builder: b, byHost: map[string]*registry.Service{}, routing: map[string]*vsClaim{}, warned: map[string]bool{}}
	g.dedupServices()
	if b.p.Type != model.Router {
		g.indexVirtualServices()
	}
	return g
}

// warnOnce reports a warning unless the same text was already reported.
func (g *netBuilder) warnOnce(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if g.warned[msg] {
		return
	}
	g.warned[msg] = true
	g.warn("%s", msg)
}

// dedupServices keeps one service per hostname, with the rule CDS uses
// (cluster names carry no namespace): the oldest definition wins, then the
// first in registry order. CDS reports the conflict.
func (g *netBuilder) dedupServices() {
	for i := range g.builder.services {
		s := &g.builder.services[i]
		if prev, ok := g.byHost[s.Hostname]; !ok || s.CreationTime < prev.CreationTime {
			g.byHost[s.Hostname] = s
		}
	}
	for i := range g.builder.services {
		s := &g.builder.services[i]
		if g.byHost[s.Hostname] == s {
			g.services = append(g.services, s)
		}
	}
}

// boundToMesh reports whether a gateways list includes sidecars.
func boundToMesh(gateways []string) bool {
	if len(gateways) == 0 {
		return true
	}
	for _, gw := range gateways {
		if gw == vsMeshGateway {
			return true
		}
	}
	return false
}

// namesThisProxy reports whether a non-empty gateways list, of a
// VirtualService in namespace vsNS or of one of its match entries, names
// this proxy: "mesh" for sidecars and proxyless clients; for a gateway, the
// Gateway whose server is being built (g.gateway).
func (g *netBuilder) namesThisProxy(gateways []string, vsNS string) bool {
	if g.p.Type != model.Router {
		return boundToMesh(gateways)
	}
	for _, gw := range gateways {
		if gatewayRef(gw, vsNS) == g.gateway {
			return true
		}
	}
	return false
}

// gatewayRef resolves a VirtualService's gateway reference ("name" in the
// VirtualService's namespace vsNS, or "namespace/name") to
// "namespace/name".
func gatewayRef(ref, vsNS string) string {
	if strings.Contains(ref, "/") {
		return ref
	}
	return vsNS + "/" + ref
}

// specificity ranks host patterns: an exact host beats any wildcard, a
// longer wildcard beats a shorter one.
func specificity(pattern string) int {
	if strings.HasPrefix(pattern, "*") {
		return len(pattern)
	}
	return 1 << 20
}

// indexVirtualServices decides which VirtualService routes each visible
// service. Only VirtualServices bound to the mesh and exported to the
// proxy's namespace count; delegates (no hosts) never route by themselves.
// The most specific host wins; between equally specific claims the oldest
// VirtualService wins and the others are reported.
func (g *netBuilder) indexVirtualServices() {
	for _, c := range g.s.Configs("VirtualService") {
		spec, ok := c.Spec.(*networking.VirtualService)
		if !ok || !boundToMesh(spec.GetGateways()) || !exportedTo(spec.GetExportTo(), c.Namespace, g.p.Namespace) {
			continue
		}
		vs := &boundVS{cfg: c, spec: spec}
		for _, h := range spec.GetHosts() {
			pattern := g.resolveHost(h, c.Namespace)
			for _, svc := range g.services {
				if !HostMatches(pattern, svc.Hostname) {
					continue
				}
				prev := g.routing[svc.Hostname]
				switch {
				case prev == nil || specificity(pattern) > specificity(prev.pattern):
					g.routing[svc.Hostname] = &vsClaim{vs: vs, pattern: pattern}
				case prev.vs == vs:
				case specificity(pattern) == specificity(prev.pattern):
					g.warnOnce("%s: host %s already routed by %s (older); ignored for this host",
						c.Key(), svc.Hostname, prev.vs.cfg.Key())
				}
			}
		}
	}
}

// ldsIsHTTP reports whether a registry protocol is served by the HTTP
// connection manager (everything else is proxied as TCP).
func ldsIsHTTP(protocol string) bool {
	switch strings.ToUpper(protocol) {
	case "HTTP", "HTTP2", "GRPC", "GRPC-WEB":
		return true
	}
	return false
}

// ldsIsTLS reports whether a registry protocol carries TLS the proxy does not
// terminate (routed by SNI).
func ldsIsTLS(protocol string) bool {
	switch strings.ToUpper(protocol) {
	case "HTTPS", "TLS":
		return true
	}
	return false
}

// ldsServicePort is one port of one service.
type ldsServicePort struct {
	svc  *registry.Service
	port registry.Port
}

// portsByNumber groups the visible service ports by port number, each group
// oldest service first (the order conflicts are resolved in).
func (g *netBuilder) portsByNumber() (numbers []uint32, groups map[uint32][]ldsServicePort) {
	groups = map[uint32][]ldsServicePort{}
	for _, svc := range g.services {
		for _, p := range svc.Ports {
			p.Protocol = registry.ProtocolOf(p)
			if _, ok := groups[p.Number]; !ok {
				numbers = append(numbers, p.Number)
			}
			groups[p.Number] = append(groups[p.Number], ldsServicePort{svc: svc, port: p})
		}
	}
	sort.Slice(numbers, func(i, j int) bool { return numbers[i] < numbers[j] })
	for _, n := range numbers {
		sort.SliceStable(groups[n], func(i, j int) bool {
			return groups[n][i].svc.CreationTime < groups[n][j].svc.CreationTime
		})
	}
	return numbers, groups
}

// outboundRouteConfig is the RouteConfiguration of one outbound HTTP port
// (named OutboundRouteName(port)): one virtual host per HTTP service on the
// port, in registry order, then the catch-all for unknown hosts. In explicit
// mode there is no capture, so unknown hosts cannot pass through; instead
// the oldest service on the port also takes the "*" domain, which lets
// applications address it as localhost.
func (g *netBuilder) outboundRouteConfig(port uint32, sps []ldsServicePort) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: OutboundRouteName(port), ValidateClusters: ldsBool(false)}
	used := map[string]bool{}
	var fallback string
	if g.p.Explicit {
		fallback = sps[0].svc.Hostname
	}
	byRegistry := append([]ldsServicePort(nil), sps...)
	sort.SliceStable(byRegistry, func(i, j int) bool { return byRegistry[i].svc.Hostname < byRegistry[j].svc.Hostname })
	for _, sp := range byRegistry {
		var domains []string
		for _, d := range g.domains(sp.svc, sp.port.Number) {
			if !used[d] {
				used[d] = true
				domains = append(domains, d)
			}
		}
		if sp.svc.Hostname == fallback && !used["*"] {
			used["*"] = true
			domains = append(domains, "*")
		}
		if len(domains) == 0 {
			continue
		}
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:                       sp.svc.Hostname + ":" + strconv.FormatUint(uint64(sp.port.Number), 10),
			Domains:                    domains,
			Routes:                     g.httpRoutes(sp.svc, sp.port, false),
			IncludeRequestAttemptCount: !g.s.Mesh.ProxyHeaders.AttemptCountDisabled,
		})
	}
	if !used["*"] {
		rc.VirtualHosts = append(rc.VirtualHosts, g.unknownHostVirtualHost())
	}
	return rc
}

// unknownHostVirtualHost routes requests for hosts no service claims: to
// the original destination under ALLOW_ANY, refused with 502 otherwise.
func (g *netBuilder) unknownHostVirtualHost() *routev3.VirtualHost {
	if g.s.Mesh.OutboundTrafficPolicyAllowAny {
		return &routev3.VirtualHost{
			Name:    allowAnyVirtualHost,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:  allowAnyVirtualHost,
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: PassthroughCluster},
					Timeout:          ldsDuration(0),
					MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{
						MaxStreamDuration: ldsDuration(0), GrpcTimeoutHeaderMax: ldsDuration(0)},
				}},
			}},
			IncludeRequestAttemptCount: !g.s.Mesh.ProxyHeaders.AttemptCountDisabled,
		}
	}
	return &routev3.VirtualHost{
		Name:    blockAllVirtualHost,
		Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Name:   blockAllVirtualHost,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 502}},
		}},
		IncludeRequestAttemptCount: !g.s.Mesh.ProxyHeaders.AttemptCountDisabled,
	}
}

// domains lists the Host header values that select svc on port: the
// hostname with and without the port, the Kubernetes-style short forms
// (name.namespace, name.namespace.svc, and the bare name for proxies in the
// same namespace), and every VIP with and without the port.
func (g *netBuilder) domains(svc *registry.Service, port uint32) []string {
	ps := ":" + strconv.FormatUint(uint64(port), 10)
	var out []string
	add := func(h string) { out = append(out, h, h+ps) }
	add(svc.Hostname)
	suffix := "." + g.s.Mesh.DomainSuffix
	if g.s.Mesh.DomainSuffix != "" && strings.HasSuffix(svc.Hostname, suffix) {
		if name, ns, ok := strings.Cut(strings.TrimSuffix(svc.Hostname, suffix), "."); ok && !strings.Contains(ns, ".") {
			add(name + "." + ns)
			if strings.HasPrefix(g.s.Mesh.DomainSuffix, "svc.") {
				add(name + "." + ns + ".svc")
			}
			if ns == g.p.Namespace {
				add(name)
			}
		}
	}
	for _, a := range svc.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			continue // a CIDR or a name: no Host header carries it
		}
		if ip.Is6() {
			out = append(out, "["+ip.String()+"]", "["+ip.String()+"]"+ps)
			continue
		}
		add(ip.String())
	}
	return out
}

// httpRoutes returns the routes of svc's virtual host on one port: the
// rules of the VirtualService routing it, or the default route when none
// applies (or none of its rules applies to this proxy and port). Proxyless
// clients get no CORS policy (gRPC has no CORS filter and rejects the
// per-route config).
func (g *netBuilder) httpRoutes(svc *registry.Service, port registry.Port, proxyless bool) []*routev3.Route {
	if c := g.routing[svc.Hostname]; c != nil {
		if routes := g.vsHTTPRoutes(c.vs, port.Number, proxyless); len(routes) > 0 {
			return routes
		}
	}
	return []*routev3.Route{g.defaultRoute(svc, port)}
}

// defaultRoute sends everything to the service's cluster on port, with
// Istio's default retry policy and no timeout.
func (g *netBuilder) defaultRoute(svc *registry.Service, port registry.Port) *routev3.Route {
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: OutboundCluster(port.Number, "", svc.Hostname)},
		HashPolicy:       g.hashPolicy(svc.Hostname, port.Number, ""),
	}
	rdsSetTimeout(action, nil)
	action.RetryPolicy = rdsRetryPolicy(nil, len(action.HashPolicy) > 0)
	return &routev3.Route{
		Name:   "default",
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: action},
	}
}

// routeDest is one resolved VirtualService destination.
type routeDest struct {
	host    string
	port    uint32
	subset  string
	cluster string
}

// resolveDestination finds the cluster a VirtualService destination names,
// as Istio does: destination.port, else the service's only port, else the
// port the request came in on. A host that is no service visible to the
// proxy still gets its cluster name (traffic to it fails) and a warning.
func (g *netBuilder) resolveDestination(vs *boundVS, d *networking.Destination, listenerPort uint32) routeDest {
	host := g.resolveHost(d.GetHost(), vs.cfg.Namespace)
	port := listenerPort
	svc := g.byHost[host]
	switch {
	case d.GetPort().GetNumber() != 0:
		port = d.GetPort().GetNumber()
	case svc != nil && len(svc.Ports) == 1:
		port = svc.Ports[0].Number
	}
	if svc == nil {
		g.warnOnce("%s: destination host %s is not a service visible to this proxy", vs.cfg.Key(), host)
	}
	return routeDest{host: host, port: port, subset: d.GetSubset(), cluster: OutboundCluster(port, d.GetSubset(), host)}
}

// routeConfigs builds the outbound RouteConfigurations for sidecars: one per
// port that has an HTTP service or one whose protocol is detected.
func (g *netBuilder) routeConfigs(numbers []uint32, groups map[uint32][]ldsServicePort) []*routev3.RouteConfiguration {
	var out []*routev3.RouteConfiguration
	for _, n := range numbers {
		var httpSPs []ldsServicePort
		for _, sp := range groups[n] {
			if ldsServesHTTP(sp.port.Protocol) {
				httpSPs = append(httpSPs, sp)
			}
		}
		if len(httpSPs) > 0 {
			out = append(out, g.outboundRouteConfig(n, httpSPs))
		}
	}
	return out
}

// rdsHeaderValue builds one header to add: set (overwrite) or add (append).
func rdsHeaderValue(key, value string, appendValue bool) *corev3.HeaderValueOption {
	action := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	if appendValue {
		action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
	}
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}, AppendAction: action}
}
