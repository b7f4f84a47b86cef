package translate

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/tlsnames"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// Gateways (model.Router), as Istio's ingress and egress gateways.
//
// Every Gateway whose selector matches the proxy's labels (an empty selector
// matches every gateway) gives it its servers. Servers are grouped by port
// number into one listener per port, 0.0.0.0_<port>, bound to the port.
// On a port:
//   - plain HTTP servers (HTTP, HTTP2, GRPC, GRPC-WEB; their tls can only
//     ask for httpsRedirect) share one chain that matches any connection
//     not matched by a TLS chain; its routes are "http.<port>";
//   - servers that terminate TLS (mode SIMPLE, MUTUAL or ISTIO_MUTUAL) get
//     a chain each, matched by SNI: the server's hosts, or any name when
//     one of them is "*". HTTPS servers route HTTP with routes
//     "https.<port>.<port name>.<gateway>.<namespace>"; TLS servers proxy
//     the decrypted bytes by VirtualService tcp routes;
//   - PASSTHROUGH servers get a chain per VirtualService tls match,
//     matched by its sniHosts, that proxies the connection unopened;
//   - TCP servers proxy by VirtualService tcp routes.
//
// A VirtualService applies to a server when its gateways name the server's
// Gateway ("name" in the VirtualService's namespace, or "namespace/name"),
// it is exported to the gateway's namespace, and one of its hosts falls
// within one of the server's hosts ("namespace/host" limits a server host
// to VirtualServices of that namespace; "." is the Gateway's own).
// VirtualServices for the same host on one route configuration are merged,
// oldest first, as Istio merges them. A host no VirtualService routes is
// answered 404 by the proxy, as Envoy answers a request no virtual host
// matches.
//
// Certificates: serverCertificate/privateKey become the SDS secret
// "file-cert:<cert>~<key>" and caCertificates "file-root:<ca>", which
// weft-proxy reads from its own file system (as Istio's agent does);
// credentialName becomes "kubernetes://<name>" (and "-cacert" for the
// client CA), which weft-proxy resolves in its --credential-dir.
// ISTIO_MUTUAL uses the mesh identity ("default", "ROOTCA").

// gwServer is one server of a Gateway that selects the proxy.
type gwServer struct {
	gw    *model.Config
	spec  *networking.Server
	index int
}

// key names the server's Gateway as VirtualServices reference it.
func (s gwServer) key() string { return s.gw.Namespace + "/" + s.gw.Name }

// where names the server in warnings.
func (s gwServer) where() string { return fmt.Sprintf("%s: servers[%d]", s.gw.Key(), s.index) }

// serverKind is how a gateway serves one server.
type serverKind int

const (
	serverSkip        serverKind = iota // not served (reported)
	serverHTTP                          // plain HTTP
	serverHTTPS                         // TLS terminated, HTTP inside
	serverTLS                           // TLS terminated, TCP inside
	serverPassthrough                   // routed by SNI, TLS left to the destination
	serverTCP                           // plain TCP
)

// gatewayListeners builds a gateway's listeners and route configurations.
func (g *netBuilder) gatewayListeners() ([]*listenerv3.Listener, []*routev3.RouteConfiguration) {
	byPort := map[uint32][]gwServer{}
	var numbers []uint32
	for _, c := range g.s.Configs("Gateway") {
		gw, ok := c.Spec.(*networking.Gateway)
		if !ok || !registry.LabelsMatch(gw.GetSelector(), g.p.Labels) {
			continue
		}
		for i, s := range gw.GetServers() {
			n := s.GetPort().GetNumber()
			if n == 0 {
				continue
			}
			if _, ok := byPort[n]; !ok {
				numbers = append(numbers, n)
			}
			byPort[n] = append(byPort[n], gwServer{gw: c, spec: s, index: i})
		}
	}
	slices.Sort(numbers)
	var ls []*listenerv3.Listener
	var rs []*routev3.RouteConfiguration
	for _, n := range numbers {
		l, routes := g.gatewayListener(n, byPort[n])
		if l != nil {
			ls = append(ls, l)
		}
		rs = append(rs, routes...)
	}
	g.gateway = ""
	return ls, rs
}

// kindOf decides how a server is served, reporting servers weft cannot
// serve as asked.
func (g *netBuilder) kindOf(s gwServer) serverKind {
	protocol := strings.ToUpper(s.spec.GetPort().GetProtocol())
	t := s.spec.GetTls()
	terminated := func(k serverKind) serverKind {
		switch t.GetMode() {
		case networking.ServerTLSSettings_SIMPLE, networking.ServerTLSSettings_MUTUAL, networking.ServerTLSSettings_OPTIONAL_MUTUAL,
			networking.ServerTLSSettings_ISTIO_MUTUAL:
			return k
		case networking.ServerTLSSettings_PASSTHROUGH:
			return serverPassthrough
		}
		g.warnOnce("%s: tls mode %s is not supported by weft; server ignored", s.where(), t.GetMode())
		return serverSkip
	}
	switch {
	case ldsIsHTTP(protocol):
		return serverHTTP
	case protocol == "HTTPS" || protocol == "TLS":
		if t == nil {
			g.warnOnce("%s: protocol %s needs tls settings; server ignored", s.where(), protocol)
			return serverSkip
		}
		if protocol == "HTTPS" {
			return terminated(serverHTTPS)
		}
		return terminated(serverTLS)
	case protocol == "TCP" || protocol == "MONGO" || protocol == "MYSQL" || protocol == "REDIS":
		return serverTCP
	}
	g.warnOnce("%s: protocol %q is not supported on gateways; server ignored", s.where(), s.spec.GetPort().GetProtocol())
	return serverSkip
}

// gatewayListener builds the listener of one port and its route
// configurations; nil when no server on the port can be served.
func (g *netBuilder) gatewayListener(port uint32, servers []gwServer) (*listenerv3.Listener, []*routev3.RouteConfiguration) {
	ps := strconv.FormatUint(uint64(port), 10)
	var plainHTTP []gwServer
	var chains []*listenerv3.FilterChain
	var routes []*routev3.RouteConfiguration
	var plain *listenerv3.FilterChain // the chain without TLS: HTTP or TCP
	matchers := map[string]string{}   // filter chain match → the server that has it
	addTLS := func(s gwServer, fc *listenerv3.FilterChain) bool {
		m := fc.GetFilterChainMatch()
		key := m.GetTransportProtocol() + "|" + strings.Join(m.GetServerNames(), ",")
		if prev, ok := matchers[key]; ok {
			g.warnOnce("%s: port %d: SNI %v is already served by %s; ignored", s.where(), port, orAny(m.GetServerNames()), prev)
			return false
		}
		matchers[key] = s.where()
		chains = append(chains, fc)
		return true
	}
	for _, s := range servers {
		g.gateway = s.key()
		switch g.kindOf(s) {
		case serverHTTP:
			plainHTTP = append(plainHTTP, s)
		case serverHTTPS:
			rds := fmt.Sprintf("https.%d.%s.%s.%s", port, s.spec.GetPort().GetName(), s.gw.Name, s.gw.Namespace)
			fc, ok := g.terminatingChain(s, "h2", "http/1.1")
			if !ok {
				continue
			}
			fc.Name = rds
			fc.Filters = []*listenerv3.Filter{networkFilter(hcmFilterName, g.gatewayHCM(port, rds))}
			if addTLS(s, fc) {
				routes = append(routes, g.gatewayRouteConfig(rds, port, []gwServer{s}))
			}
		case serverTLS:
			fc, ok := g.terminatingChain(s)
			if !ok {
				continue
			}
			tcp := g.gatewayTCPRoute(s, port)
			if tcp == nil {
				continue
			}
			fc.Name = fmt.Sprintf("tls.%d.%s.%s.%s", port, s.spec.GetPort().GetName(), s.gw.Name, s.gw.Namespace)
			fc.Filters = g.tcpFilters(false, tcp)
			addTLS(s, fc)
		case serverPassthrough:
			for _, fc := range g.passthroughChains(s, port) {
				addTLS(s, fc)
			}
		case serverTCP:
			tcp := g.gatewayTCPRoute(s, port)
			switch {
			case tcp == nil:
			case plain != nil:
				g.warnOnce("%s: port %d already proxies TCP for another server; ignored", s.where(), port)
			default:
				plain = &listenerv3.FilterChain{Name: "tcp." + ps, Filters: g.tcpFilters(false, tcp)}
			}
		}
	}
	if len(plainHTTP) > 0 {
		if plain != nil {
			g.warnOnce("gateway port %d: plain HTTP and TCP servers share the port; the TCP server is ignored", port)
		}
		g.gateway = ""
		rds := "http." + ps
		plain = &listenerv3.FilterChain{Name: rds, Filters: []*listenerv3.Filter{networkFilter(hcmFilterName, g.gatewayHCM(port, rds))}}
		routes = append(routes, g.gatewayRouteConfig(rds, port, plainHTTP))
	}
	if plain != nil {
		chains = append(chains, plain)
	}
	if len(chains) == 0 {
		return nil, routes
	}
	l := &listenerv3.Listener{
		Name:             "0.0.0.0_" + ps,
		Address:          socketAddress("0.0.0.0", port),
		FilterChains:     chains,
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}
	if len(matchers) > 0 {
		l.ListenerFilters = []*listenerv3.ListenerFilter{listenerFilter(tlsInspectorFilterName, &tlsinspectorv3.TlsInspector{})}
	}
	return l, routes
}

// gatewayHCM is the HTTP connection manager of a gateway's HTTP servers: a
// sidecar's outbound one that takes the client's address from the
// connection (use_remote_address), as the edge of the mesh.
func (g *netBuilder) gatewayHCM(port uint32, rds string) *hcmv3.HttpConnectionManager {
	h := g.outboundHCM(port, rds)
	h.UseRemoteAddress = wrapperspb.Bool(true)
	return h
}

// serverDomains returns the domains of one server's virtual hosts that a
// VirtualService serves: each of its hosts within a server host, or the
// server host when it is the narrower one.
func (g *netBuilder) serverDomains(vs *boundVS, s gwServer) []string {
	var out []string
	for _, sh := range s.spec.GetHosts() {
		ns, host, ok := strings.Cut(sh, "/")
		if !ok {
			ns, host = "*", sh
		}
		switch ns {
		case "*":
		case ".":
			if vs.cfg.Namespace != s.gw.Namespace {
				continue
			}
		default:
			if vs.cfg.Namespace != ns {
				continue
			}
		}
		for _, h := range vs.spec.GetHosts() {
			h = g.resolveHost(h, vs.cfg.Namespace)
			switch {
			case HostMatches(host, h):
				out = append(out, h)
			case HostMatches(h, host):
				out = append(out, host)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// gatewayVirtualServices lists the VirtualServices bound to server s's
// Gateway and exported to the gateway's namespace, oldest first. They are
// indexed by Gateway in one pass over the VirtualServices, on first use.
func (g *netBuilder) gatewayVirtualServices(s gwServer) []*boundVS {
	if g.gatewayVS == nil {
		g.gatewayVS = map[string][]*boundVS{}
		for _, c := range g.s.Configs("VirtualService") {
			spec, ok := c.Spec.(*networking.VirtualService)
			if !ok || len(spec.GetGateways()) == 0 || !exportedTo(spec.GetExportTo(), c.Namespace, g.p.Namespace) {
				continue
			}
			vs := &boundVS{cfg: c, spec: spec}
			for i, ref := range spec.GetGateways() {
				key := gatewayRef(ref, c.Namespace)
				if !slices.ContainsFunc(spec.GetGateways()[:i], func(r string) bool { return gatewayRef(r, c.Namespace) == key }) {
					g.gatewayVS[key] = append(g.gatewayVS[key], vs)
				}
			}
		}
	}
	return g.gatewayVS[s.key()]
}

// gatewayRouteConfig is the route configuration of HTTP servers on port:
// one virtual host per domain, with the routes of every VirtualService
// serving it (merged, oldest first). A server's httpsRedirect makes its
// virtual hosts redirect plain-text requests to https.
func (g *netBuilder) gatewayRouteConfig(name string, port uint32, servers []gwServer) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: name, ValidateClusters: ldsBool(false), IgnorePortInHostMatching: true}
	byDomain := map[string]*routev3.VirtualHost{}
	for _, s := range servers {
		g.gateway = s.key()
		redirect := s.spec.GetTls().GetHttpsRedirect()
		for _, vs := range g.gatewayVirtualServices(s) {
			domains := g.serverDomains(vs, s)
			if len(domains) == 0 {
				continue
			}
			routes := g.vsHTTPRoutes(vs, port, false)
			for _, d := range domains {
				vh := byDomain[d]
				if vh == nil {
					vh = &routev3.VirtualHost{
						Name:                       d + ":" + strconv.FormatUint(uint64(port), 10),
						Domains:                    []string{d},
						IncludeRequestAttemptCount: !g.s.Mesh.ProxyHeaders.AttemptCountDisabled,
					}
					byDomain[d] = vh
					rc.VirtualHosts = append(rc.VirtualHosts, vh)
				}
				if redirect {
					vh.RequireTls = routev3.VirtualHost_ALL
				}
				vh.Routes = append(vh.Routes, routes...)
			}
		}
	}
	g.gateway = ""
	rc.VirtualHosts = slices.DeleteFunc(rc.VirtualHosts, func(vh *routev3.VirtualHost) bool { return len(vh.Routes) == 0 })
	// As Istio: a host that redirects to https needs no VirtualService.
	for _, s := range servers {
		if !s.spec.GetTls().GetHttpsRedirect() {
			continue
		}
		for _, h := range serverHosts(s.spec.GetHosts()) {
			if byDomain[h] == nil || len(byDomain[h].Routes) == 0 {
				byDomain[h] = &routev3.VirtualHost{Name: h + ":" + strconv.FormatUint(uint64(port), 10), Domains: []string{h}, RequireTls: routev3.VirtualHost_ALL}
				rc.VirtualHosts = append(rc.VirtualHosts, byDomain[h])
			}
		}
	}
	return rc
}

// terminatingChain is a filter chain that terminates server s's TLS,
// matched by its hosts as SNI; false when the settings cannot be honoured
// (reported). alpn is offered to clients.
func (g *netBuilder) terminatingChain(s gwServer, alpn ...string) (*listenerv3.FilterChain, bool) {
	ctx, ok := g.serverTLSContext(s, alpn)
	if !ok {
		return nil, false
	}
	m := &listenerv3.FilterChainMatch{TransportProtocol: TransportProtocolTLS, ServerNames: serverSNI(s.spec.GetHosts())}
	return &listenerv3.FilterChain{
		FilterChainMatch: m,
		TransportSocket: &corev3.TransportSocket{Name: tlsTransportSocket,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}},
	}, true
}

// serverHosts lists a server's hosts without their namespaces.
func serverHosts(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if _, host, ok := strings.Cut(h, "/"); ok {
			h = host
		}
		out = append(out, h)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// serverSNI lists a server's hosts as SNI names; none (any name) when one
// of them is "*".
func serverSNI(hosts []string) []string {
	out := serverHosts(hosts)
	if slices.Contains(out, "*") {
		return nil
	}
	return out
}

// clientChecks are what a client certificate must also pass, as istiod
// writes them: one of its SANs is one of subjectAltNames (any SAN type),
// its public key one of verifyCertificateSpki, its hash one of
// verifyCertificateHash.
func clientChecks(t *networking.ServerTLSSettings) *tlsv3.CertificateValidationContext {
	vc := &tlsv3.CertificateValidationContext{
		VerifyCertificateSpki: t.GetVerifyCertificateSpki(),
		VerifyCertificateHash: t.GetVerifyCertificateHash(),
	}
	for _, san := range t.GetSubjectAltNames() {
		//lint:ignore SA1019 the typed form needs a SAN type; Istio's SANs match any
		vc.MatchSubjectAltNames = append(vc.MatchSubjectAltNames, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: san}})
	}
	return vc
}

// checksClients reports whether a TLS mode verifies client certificates
// against a CA of its own (MUTUAL, OPTIONAL_MUTUAL).
func checksClients(mode networking.ServerTLSSettings_TLSmode) bool {
	return mode == networking.ServerTLSSettings_MUTUAL || mode == networking.ServerTLSSettings_OPTIONAL_MUTUAL
}

// tlsVersions maps Istio's TLS protocol versions to Envoy's.
var tlsVersions = map[networking.ServerTLSSettings_TLSProtocol]tlsv3.TlsParameters_TlsProtocol{
	networking.ServerTLSSettings_TLS_AUTO: tlsv3.TlsParameters_TLS_AUTO,
	networking.ServerTLSSettings_TLSV1_0:  tlsv3.TlsParameters_TLSv1_0,
	networking.ServerTLSSettings_TLSV1_1:  tlsv3.TlsParameters_TLSv1_1,
	networking.ServerTLSSettings_TLSV1_2:  tlsv3.TlsParameters_TLSv1_2,
	networking.ServerTLSSettings_TLSV1_3:  tlsv3.TlsParameters_TLSv1_3,
}

// serverTLSContext is the DownstreamTlsContext of a server that terminates
// TLS; false when it cannot be honoured: no certificate, or client checks
// weft-proxy does not make (subjectAltNames, SPKI and hash pins), which are
// refused rather than silently skipped.
func (g *netBuilder) serverTLSContext(s gwServer, alpn []string) (*tlsv3.DownstreamTlsContext, bool) {
	t := s.spec.GetTls()
	common := &tlsv3.CommonTlsContext{AlpnProtocols: alpn}
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: common}
	root := ""
	switch mode := t.GetMode(); {
	case mode == networking.ServerTLSSettings_ISTIO_MUTUAL:
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: SDSDefaultCert, SdsConfig: adsConfigSource()}}
		root = SDSRootCA
	case t.GetCredentialName() != "":
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: credentialPrefix + t.GetCredentialName(), SdsConfig: adsConfigSource()}}
		if checksClients(mode) {
			root = credentialPrefix + t.GetCredentialName() + credentialCASuffix
		}
	case t.GetServerCertificate() != "" && t.GetPrivateKey() != "":
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{
			Name: "file-cert:" + t.GetServerCertificate() + "~" + t.GetPrivateKey(), SdsConfig: adsConfigSource()}}
		if checksClients(mode) {
			if t.GetCaCertificates() == "" {
				g.warnOnce("%s: %s needs caCertificates (or a credentialName) to check clients against; server ignored", s.where(), mode)
				return nil, false
			}
			root = "file-root:" + t.GetCaCertificates()
		}
	default:
		g.warnOnce("%s: tls mode %s needs credentialName, or serverCertificate and privateKey; server ignored", s.where(), mode)
		return nil, false
	}
	if msg := gatewayTLSPathProblem(t); msg != "" {
		g.warnOnce("%s: %s; server ignored", s.where(), msg)
		return nil, false
	}
	if root != "" {
		// OPTIONAL_MUTUAL checks a client certificate only when one is sent.
		ctx.RequireClientCertificate = wrapperspb.Bool(t.GetMode() != networking.ServerTLSSettings_OPTIONAL_MUTUAL)
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         clientChecks(t),
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: root, SdsConfig: adsConfigSource()},
			}}
	}
	minV, maxV := t.GetMinProtocolVersion(), t.GetMaxProtocolVersion()
	suites := g.cipherSuites(s, t.GetCipherSuites())
	if minV != networking.ServerTLSSettings_TLS_AUTO || maxV != networking.ServerTLSSettings_TLS_AUTO || len(suites) > 0 {
		common.TlsParams = &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsVersions[minV],
			TlsMaximumProtocolVersion: tlsVersions[maxV],
			CipherSuites:              suites,
		}
	}
	for _, name := range []string{common.TlsCertificateSdsSecretConfigs[0].GetName(), root} {
		if strings.HasPrefix(name, credentialPrefix) {
			if g.credentials == nil {
				g.credentials = map[string]bool{}
			}
			g.credentials[name] = true
		}
	}
	return ctx, true
}

// cipherSuites are a server's cipherSuites that weft-proxy can honour,
// each once, in their order. As istiod does, a name the proxy does not
// know is left out, with a warning, rather than failing the gateway's
// listener; when none is left, the proxy's defaults apply.
func (g *netBuilder) cipherSuites(s gwServer, names []string) []string {
	var out, unknown []string
	for _, n := range names {
		if _, ok := tlsnames.CipherSuite(n); !ok {
			unknown = append(unknown, n)
			continue
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(unknown) > 0 {
		g.warnOnce("%s: tls.cipherSuites %q are not supported and are left out (names such as ECDHE-ECDSA-AES128-GCM-SHA256 are)", s.where(), unknown)
	}
	return out
}

// passthroughChains are the chains of a PASSTHROUGH server: one per tls
// match of a VirtualService serving it, by its sniHosts (those within the
// server's hosts).
func (g *netBuilder) passthroughChains(s gwServer, port uint32) []*listenerv3.FilterChain {
	var out []*listenerv3.FilterChain
	for _, vs := range g.gatewayVirtualServices(s) {
		if len(g.serverDomains(vs, s)) == 0 {
			continue
		}
		for i, rule := range vs.spec.GetTls() {
			for _, m := range rule.GetMatch() {
				if !g.l4Applies(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), vs.cfg.Namespace, port) {
					continue
				}
				var sni []string
				for _, h := range m.GetSniHosts() {
					if g.withinServer(h, s) {
						sni = append(sni, h)
					}
				}
				if len(sni) == 0 {
					continue
				}
				if slices.Contains(sni, "*") {
					sni = nil
				}
				out = append(out, &listenerv3.FilterChain{
					Name:             fmt.Sprintf("%s|tls[%d]", vs.cfg.Key(), i),
					FilterChainMatch: &listenerv3.FilterChainMatch{TransportProtocol: TransportProtocolTLS, ServerNames: sni},
					Filters:          g.tcpFilters(false, g.tcpRouteFilter(vs, rule.GetRoute(), port, BlackHoleCluster)),
				})
			}
		}
	}
	return out
}

// withinServer reports whether host (an SNI name or pattern) falls within
// one of server s's hosts.
func (g *netBuilder) withinServer(host string, s gwServer) bool {
	for _, sh := range serverHosts(s.spec.GetHosts()) {
		if HostMatches(sh, host) {
			return true
		}
	}
	return false
}

// gatewayTCPRoute is the tcp_proxy of a TCP server, or of a TLS server
// after termination: the first tcp rule that applies, of the oldest
// VirtualService serving the server; nil when none does (reported).
func (g *netBuilder) gatewayTCPRoute(s gwServer, port uint32) *listenerv3.Filter {
	for _, vs := range g.gatewayVirtualServices(s) {
		if len(g.serverDomains(vs, s)) == 0 {
			continue
		}
		for _, rule := range vs.spec.GetTcp() {
			applies := len(rule.GetMatch()) == 0
			for _, m := range rule.GetMatch() {
				if g.l4Applies(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), vs.cfg.Namespace, port) {
					applies = true
				}
			}
			if applies {
				return g.tcpRouteFilter(vs, rule.GetRoute(), port, BlackHoleCluster)
			}
		}
	}
	g.warnOnce("%s: no VirtualService tcp route serves this server; not served", s.where())
	return nil
}

// gatewayTLSPathProblem says why weft-proxy could not read a server's
// certificate files or credential ("" when it can): paths must be absolute
// on the gateway's host and fit the SDS names (no "~"), and a credential is
// one directory of its --credential-dir (no other namespace's).
func gatewayTLSPathProblem(t *networking.ServerTLSSettings) string {
	for field, p := range map[string]string{"serverCertificate": t.GetServerCertificate(), "privateKey": t.GetPrivateKey(), "caCertificates": t.GetCaCertificates()} {
		if p != "" && (!strings.HasPrefix(p, "/") || strings.Contains(p, "~")) {
			return fmt.Sprintf("%s %q must be an absolute path without '~' on the gateway's host", field, p)
		}
	}
	if n := t.GetCredentialName(); strings.Contains(n, "/") || n == "." || n == ".." {
		return fmt.Sprintf("credentialName %q: only a credential of the gateway's own --credential-dir is supported (no namespace/name)", n)
	}
	return ""
}
