package translate

import (
	"slices"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Listener layout (LDS), by proxy type:
//
// Sidecar with traffic capture (the default):
//   - virtualOutbound, 0.0.0.0:15001, use_original_dst: hands each captured
//     connection to the listener of its original destination port; what no
//     listener takes goes to PassthroughCluster (ALLOW_ANY) or
//     BlackHoleCluster (REGISTRY_ONLY).
//   - 0.0.0.0_<port> for every port of a visible service, not bound
//     (bind_to_port false). HTTP services on the port share one HTTP
//     connection manager whose routes come by RDS (OutboundRouteName(port))
//     and select the service by Host header; it is the catch-all chain.
//     TCP and TLS services get tcp_proxy chains matched by VIP (and SNI for
//     TLS routes); connections matching no chain pass through (or are
//     refused under REGISTRY_ONLY).
//   - virtualInbound, 0.0.0.0:15006: one chain per inbound port (the
//     endpoint ports of services that have an endpoint at one of the
//     proxy's IPs) to InboundCluster(port), HTTP or TCP by the service
//     port's protocol; anything else to InboundPassthroughCluster. With
//     TPROXY capture (Proxy.TProxy) it is transparent and has the
//     original_src listener filter (mark TProxyMark), and the inbound
//     clusters target the workload's IP instead of 127.0.0.1: a connection
//     from the client's address may not go to loopback.
//
// Sidecar in explicit mode (no capture): explicit_<port> on 127.0.0.1:<port>
// for every visible service port, and explicit_inbound_<sidecar port> on
// the workload's IPs for every inbound port that has a sidecar port (see
// explicitListeners). Several services on one port: HTTP services share the
// listener and are told apart by Host header (the oldest one also answers
// any other Host, e.g. "localhost:<port>"); TCP services cannot be told
// apart, so the oldest wins and the others are reported; when HTTP and TCP
// services share a port, HTTP wins.
//
// A port is HTTP when its protocol is HTTP, HTTP2, GRPC or GRPC-WEB (any
// case); a port whose protocol is unset is detected per connection (HTTP
// and TCP chains, see lds_sniff.go); everything else is proxied as TCP.
// HTTPS and TLS ports are TCP routed by SNI.
//
// Proxyless gRPC: one API listener per HTTP/gRPC service port, see
// lds_proxyless.go. Gateways (model.Router): one listener per Gateway
// server port, see lds_gateway.go.

// Filter and listener filter names.
const (
	hcmFilterName          = "envoy.filters.network.http_connection_manager"
	tcpProxyFilterName     = "envoy.filters.network.tcp_proxy"
	routerFilterName       = "envoy.filters.http.router"
	originalDstFilterName  = "envoy.filters.listener.original_dst"
	tlsInspectorFilterName = "envoy.filters.listener.tls_inspector"
	originalSrcFilterName  = "envoy.filters.listener.original_src"
	passthroughChainName   = "PassthroughFilterChain"
	blackHoleChainName     = "BlackHoleFilterChain"
)

// listeners returns the proxy's listeners and the route configurations
// they reference, each sorted by name.
func (b *builder) listeners() ([]*listenerv3.Listener, []*routev3.RouteConfiguration) {
	var ls []*listenerv3.Listener
	var rs []*routev3.RouteConfiguration
	switch b.p.Type {
	case model.Sidecar:
		g := newNetBuilder(b)
		ls, rs = g.sidecarListeners()
	case model.Proxyless:
		ls, rs = newNetBuilder(b).proxylessListeners()
	case model.Router:
		ls, rs = newNetBuilder(b).gatewayListeners()
	default:
		return nil, nil
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].GetName() < ls[j].GetName() })
	sort.Slice(rs, func(i, j int) bool { return rs[i].GetName() < rs[j].GetName() })
	return ls, rs
}

// sidecarListeners builds a sidecar's listeners and outbound routes.
func (g *netBuilder) sidecarListeners() ([]*listenerv3.Listener, []*routev3.RouteConfiguration) {
	numbers, groups := g.portsByNumber()
	inbound := g.inboundPorts()
	if g.p.Explicit {
		ls, served := g.explicitListeners(numbers, groups, inbound)
		return ls, g.routeConfigs(served, groups)
	}
	ls := []*listenerv3.Listener{g.virtualOutbound(), g.virtualInbound(inbound)}
	var served []uint32
	for _, n := range numbers {
		if n == OutboundCapturePort || n == InboundCapturePort {
			g.warnOnce("port %d is the proxy's capture port; services on it (%s) are not routed", n, groups[n][0].svc.Hostname)
			continue
		}
		served = append(served, n)
		ls = append(ls, g.outboundListener(n, groups[n]))
	}
	return ls, g.routeConfigs(served, groups)
}

// virtualOutbound is the 15001 capture listener.
func (g *netBuilder) virtualOutbound() *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:               VirtualOutboundListener,
		Address:            socketAddress("0.0.0.0", OutboundCapturePort),
		UseOriginalDst:     ldsBool(true),
		DefaultFilterChain: g.passthroughChain(),
		TrafficDirection:   corev3.TrafficDirection_OUTBOUND,
	}
}

// passthroughChain forwards to the original destination (ALLOW_ANY) or
// refuses (REGISTRY_ONLY).
func (g *netBuilder) passthroughChain() *listenerv3.FilterChain {
	if g.s.Mesh.OutboundTrafficPolicyAllowAny {
		return &listenerv3.FilterChain{Name: passthroughChainName, Filters: g.tcpFilters(false, g.tcpProxy(false, PassthroughCluster, PassthroughCluster))}
	}
	return &listenerv3.FilterChain{Name: blackHoleChainName, Filters: g.tcpFilters(false, g.tcpProxy(false, BlackHoleCluster, BlackHoleCluster))}
}

// outboundListener is 0.0.0.0_<port> for captured traffic to port.
func (g *netBuilder) outboundListener(port uint32, sps []ldsServicePort) *listenerv3.Listener {
	cs := newChainSet(g, port)
	var tcp []ldsServicePort
	declaredHTTP, auto := false, false
	for _, sp := range sps {
		switch {
		case ldsIsHTTP(sp.port.Protocol):
			declaredHTTP = true
		case ldsIsAuto(sp.port.Protocol):
			auto = true
			tcp = append(tcp, sp)
		default:
			tcp = append(tcp, sp)
		}
	}
	switch {
	case declaredHTTP:
		// Services whose protocol is detected share the HTTP chain.
		cs.add(ldsChain{owner: "the HTTP services", fc: g.httpChain(port)})
		tcp = slices.DeleteFunc(tcp, func(sp ldsServicePort) bool { return ldsIsAuto(sp.port.Protocol) })
	case auto:
		cs.add(ldsChain{owner: "the HTTP services", fc: sniffedHTTP(g.httpChain(port))})
	}
	for _, sp := range tcp {
		for _, c := range g.tcpChains(sp) {
			cs.add(c)
		}
	}
	l := &listenerv3.Listener{
		Name:             "0.0.0.0_" + strconv.FormatUint(uint64(port), 10),
		Address:          socketAddress("0.0.0.0", port),
		BindToPort:       ldsBool(false),
		FilterChains:     cs.chains,
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}
	if !cs.catchAll {
		l.DefaultFilterChain = g.passthroughChain()
	}
	if cs.sni {
		l.ListenerFilters = []*listenerv3.ListenerFilter{listenerFilter(tlsInspectorFilterName, &tlsinspectorv3.TlsInspector{})}
	}
	addHTTPInspector(l)
	return l
}

// httpChain is the catch-all chain of an outbound HTTP port.
func (g *netBuilder) httpChain(port uint32) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{Name: "http", Filters: []*listenerv3.Filter{networkFilter(hcmFilterName, g.outboundHCM(port, OutboundRouteName(port)))}}
}

// outboundHCM is the HTTP connection manager of outbound traffic on port
// (sidecars' outbound ports, gateways' servers), with routes rds: fault
// injection, CORS, istio.stats, then the router.
func (g *netBuilder) outboundHCM(port uint32, rds string) *hcmv3.HttpConnectionManager {
	filters := []*hcmv3.HttpFilter{httpFilter(faultFilterName, &faultv3.HTTPFault{}), httpFilter(corsFilterName, &corsv3.Cors{})}
	filters = append(filters, g.statsHTTPFilters(false)...)
	h := &hcmv3.HttpConnectionManager{
		StatPrefix:     "outbound_0.0.0.0_" + strconv.FormatUint(uint64(port), 10),
		CodecType:      hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: rdsRoute(rds),
		HttpFilters:    append(filters, httpFilter(routerFilterName, g.routerConfig())),
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		Tracing:        g.side(false).tracing,
		AccessLog:      g.side(false).logs,
	}
	g.setPathNormalization(h)
	g.setProxyHeaders(h, false)
	return h
}

// inboundPort is one port the workload serves.
type inboundPort struct {
	port     uint32
	protocol string
	// sidecar is the explicit-mode sidecar port in front of port (0: none).
	sidecar uint32
}

// inboundPorts lists the endpoint ports of every service with an endpoint
// at one of the proxy's IPs, by port. When services disagree on a port's
// protocol the first service (by hostname) decides and the conflict is
// reported.
func (g *netBuilder) inboundPorts() []inboundPort {
	seen := map[uint32]string{}
	var out []inboundPort
	for i := range g.s.Services() {
		svc := &g.s.Services()[i]
		for _, ep := range g.s.Endpoints(svc.Namespace, svc.Hostname) {
			if !slices.Contains(g.p.IPs, ep.Address) {
				continue
			}
			for _, p := range svc.Ports {
				n, protocol := ep.PortFor(p), registry.ProtocolOf(p)
				if prev, ok := seen[n]; ok {
					if ldsIsHTTP(prev) != ldsIsHTTP(protocol) || ldsIsAuto(prev) != ldsIsAuto(protocol) {
						g.warnOnce("inbound port %d: service %s says %s but an earlier service says %s; using %s",
							n, svc.Hostname, protocolName(protocol), protocolName(prev), protocolName(prev))
					}
					continue
				}
				seen[n] = protocol
				out = append(out, inboundPort{port: n, protocol: protocol, sidecar: ep.SidecarPorts[n]})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].port < out[j].port })
	return out
}

// protocolName names a registry protocol in messages ("" is detected).
func protocolName(p string) string {
	if p == "" {
		return "unset (detected)"
	}
	return p
}

// inboundChains forwards one inbound port to its inbound cluster: one
// chain, or for a port whose protocol is detected an HTTP chain for
// connections the inspectors find to be HTTP and a TCP chain (named with
// a "-tcp" suffix) for the others (lds_sniff.go).
func (g *netBuilder) inboundChains(ip inboundPort, matchPort bool) []*listenerv3.FilterChain {
	if !ldsIsAuto(ip.protocol) {
		return []*listenerv3.FilterChain{g.inboundChain(ip, matchPort)}
	}
	h, t := ip, ip
	h.protocol, t.protocol = "HTTP", "TCP"
	tcp := g.inboundChain(t, matchPort)
	tcp.Name += "-tcp"
	return []*listenerv3.FilterChain{sniffedHTTP(g.inboundChain(h, matchPort)), tcp}
}

// inboundChain forwards one inbound port to its inbound cluster; matchPort
// selects it by original destination port (capture mode). HTTP chains run
// the proxy's inbound HTTP filters: end-user authentication
// (requestauthn.go), then authorization (authz.go), then istio.stats
// (metrics.go), then the router.
func (g *netBuilder) inboundChain(ip inboundPort, matchPort bool) *listenerv3.FilterChain {
	cluster := InboundCluster(ip.port)
	fc := &listenerv3.FilterChain{Name: cluster}
	if matchPort {
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{DestinationPort: ldsUint32(ip.port)}
	}
	if !ldsIsHTTP(ip.protocol) {
		fc.Filters = g.inboundTCPFilters(cluster)
		return fc
	}
	action := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}
	rdsSetTimeout(action, nil)
	rc := &routev3.RouteConfiguration{
		Name: cluster,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "inbound|http|" + strconv.FormatUint(uint64(ip.port), 10),
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:   "default",
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: action},
			}},
		}},
		ValidateClusters: ldsBool(false),
	}
	h := &hcmv3.HttpConnectionManager{
		StatPrefix:     "inbound_0.0.0.0_" + strconv.FormatUint(uint64(ip.port), 10),
		CodecType:      hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters:    g.inboundHTTPFilters(),
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		// As Istio's sidecars: the application learns its mTLS caller's
		// identity from x-forwarded-client-cert (outbound managers keep
		// Envoy's default, SANITIZE).
		ForwardClientCertDetails: hcmv3.HttpConnectionManager_APPEND_FORWARD,
		SetCurrentClientCertDetails: &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
			Subject: wrapperspb.Bool(true), Uri: true, Dns: true},
		Tracing:   g.side(true).tracing,
		AccessLog: g.side(true).logs,
	}
	g.setPathNormalization(h)
	g.setProxyHeaders(h, true)
	fc.Filters = []*listenerv3.Filter{networkFilter(hcmFilterName, h)}
	return fc
}

// virtualInbound is the 15006 capture listener.
func (g *netBuilder) virtualInbound(ports []inboundPort) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:            VirtualInboundListener,
		Address:         socketAddress("0.0.0.0", InboundCapturePort),
		ListenerFilters: []*listenerv3.ListenerFilter{listenerFilter(originalDstFilterName, &originaldstv3.OriginalDst{})},
		DefaultFilterChain: &listenerv3.FilterChain{
			Name:    "virtualInbound-passthrough",
			Filters: g.inboundTCPFilters(InboundPassthroughCluster),
		},
		TrafficDirection: corev3.TrafficDirection_INBOUND,
	}
	for _, ip := range ports {
		if ip.port == OutboundCapturePort || ip.port == InboundCapturePort {
			g.warnOnce("inbound port %d is the proxy's capture port; not served", ip.port)
			continue
		}
		l.FilterChains = append(l.FilterChains, g.inboundChains(ip, true)...)
	}
	g.secureInbound(l, 0)
	addHTTPInspector(l)
	if g.p.TProxy {
		// TPROXY capture: connections arrive unchanged (IP_TRANSPARENT
		// listener), and original_src makes the proxy's connections to the
		// application carry the client's address, marked so that the
		// application's replies are routed back to the proxy.
		l.Transparent = ldsBool(true)
		l.ListenerFilters = append(l.ListenerFilters, listenerFilter(originalSrcFilterName, &originalsrcv3.OriginalSrc{Mark: TProxyMark}))
	}
	return l
}

// explicitListeners builds explicit mode's listeners; served are the ports
// that got an outbound listener (their routes are needed). Inbound ports
// with a sidecar port (registry.Endpoint.SidecarPorts, from the
// weft.io/inbound-ports annotation) get explicit_inbound_<sidecar port> on
// the workload's IPs, with the same chains as virtualInbound's for the
// application port (PeerAuthentication, AuthorizationPolicy, metrics with
// reporter "destination") and forwarding to 127.0.0.1:<application port>.
// Inbound ports without one are not served: peers reach the application
// directly.
func (g *netBuilder) explicitListeners(numbers []uint32, groups map[uint32][]ldsServicePort, inbound []inboundPort) (ls []*listenerv3.Listener, served []uint32) {
	for _, n := range numbers {
		served = append(served, n)
		ls = append(ls, g.explicitOutbound(n, groups[n]))
	}
	for _, ip := range inbound {
		if ip.sidecar == 0 {
			g.warnOnce("explicit mode: inbound port %d has no sidecar port (weft-proxy --inbound-ports %d=<port>, annotation %s); peers reach the application directly, without mesh mTLS or inbound policy",
				ip.port, ip.port, registry.AnnotationInboundPorts)
			continue
		}
		if len(g.p.IPs) == 0 {
			g.warnOnce("explicit mode: inbound port %d: the proxy has no IP to bind sidecar port %d on", ip.port, ip.sidecar)
			continue
		}
		l := &listenerv3.Listener{
			Name:             ExplicitInboundListener(ip.sidecar),
			Address:          socketAddress(g.p.IPs[0], ip.sidecar),
			BindToPort:       ldsBool(true),
			FilterChains:     g.inboundChains(ip, false),
			TrafficDirection: corev3.TrafficDirection_INBOUND,
		}
		for _, a := range g.p.IPs[1:] {
			l.AdditionalAddresses = append(l.AdditionalAddresses, &listenerv3.AdditionalAddress{Address: socketAddress(a, ip.sidecar)})
		}
		g.secureInbound(l, ip.port)
		addHTTPInspector(l)
		ls = append(ls, l)
	}
	return ls, served
}

// explicitOutbound is explicit_<port> on 127.0.0.1:<port>.
func (g *netBuilder) explicitOutbound(port uint32, sps []ldsServicePort) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:             "explicit_" + strconv.FormatUint(uint64(port), 10),
		Address:          socketAddress("127.0.0.1", port),
		BindToPort:       ldsBool(true),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}
	var httpSvc string
	auto := false
	for _, sp := range sps {
		if ldsIsHTTP(sp.port.Protocol) && httpSvc == "" {
			httpSvc = sp.svc.Hostname
		}
		auto = auto || ldsIsAuto(sp.port.Protocol)
	}
	if httpSvc != "" {
		for _, sp := range sps {
			if !ldsServesHTTP(sp.port.Protocol) {
				g.warnOnce("explicit mode: port %d serves HTTP services (%s); %s service %s on the same port is not reachable",
					port, httpSvc, protocolName(sp.port.Protocol), sp.svc.Hostname)
			}
		}
		l.FilterChains = []*listenerv3.FilterChain{g.httpChain(port)}
		return l
	}
	// Without capture every connection arrives at 127.0.0.1: destination
	// addresses tell nothing, SNI still does.
	cs := newChainSet(g, port)
	if auto {
		// Detected protocol: HTTP when the client speaks it, else TCP.
		cs.add(ldsChain{owner: "the HTTP services", fc: sniffedHTTP(g.httpChain(port))})
	}
	for _, sp := range sps {
		for _, c := range g.tcpChains(sp) {
			if c.bySubnet {
				continue
			}
			c.fc.FilterChainMatch.PrefixRanges = nil
			cs.add(c)
		}
	}
	l.FilterChains = cs.chains
	if cs.sni {
		l.ListenerFilters = []*listenerv3.ListenerFilter{listenerFilter(tlsInspectorFilterName, &tlsinspectorv3.TlsInspector{})}
	}
	addHTTPInspector(l)
	return l
}

// socketAddress is a TCP address.
func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// rdsRoute makes an HCM fetch its routes by name over ADS.
func rdsRoute(name string) *hcmv3.HttpConnectionManager_Rds {
	return &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
		ConfigSource: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		},
		RouteConfigName: name,
	}}
}

// httpFilter is one HTTP filter with its typed config.
func httpFilter(name string, cfg anyMessage) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: ldsAny(cfg)}}
}

// networkFilter is one network filter with its typed config.
func networkFilter(name string, cfg anyMessage) *listenerv3.Filter {
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: ldsAny(cfg)}}
}

// listenerFilter is one listener filter with its typed config.
func listenerFilter(name string, cfg anyMessage) *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{Name: name, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: ldsAny(cfg)}}
}

// tcpProxy proxies to one cluster, with the side's access logs.
func (g *netBuilder) tcpProxy(inbound bool, statPrefix, cluster string) *listenerv3.Filter {
	return networkFilter(tcpProxyFilterName, &tcpproxyv3.TcpProxy{
		StatPrefix: statPrefix, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}, AccessLog: g.side(inbound).logs})
}
