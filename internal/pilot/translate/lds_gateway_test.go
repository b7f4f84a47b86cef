package translate

import (
	"maps"
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"
)

// chainBySNI finds the filter chain of l whose match lists exactly sni.
func chainBySNI(t *testing.T, l *listenerv3.Listener, sni ...string) *listenerv3.FilterChain {
	t.Helper()
	for _, fc := range l.GetFilterChains() {
		if slices.Equal(fc.GetFilterChainMatch().GetServerNames(), sni) && fc.GetFilterChainMatch().GetTransportProtocol() == TransportProtocolTLS {
			return fc
		}
	}
	t.Fatalf("listener %s has no TLS chain for SNI %v", l.GetName(), sni)
	return nil
}

// downstreamTLSOf unpacks a chain's DownstreamTlsContext: its certificate
// and validation SDS names.
func downstreamTLSOf(t *testing.T, fc *listenerv3.FilterChain) (cert, root string, ctx *tlsv3.DownstreamTlsContext) {
	t.Helper()
	ctx = ldsUnpack(t, fc.GetTransportSocket().GetTypedConfig(), &tlsv3.DownstreamTlsContext{})
	c := ctx.GetCommonTlsContext()
	if len(c.GetTlsCertificateSdsSecretConfigs()) != 1 {
		t.Fatalf("chain %s: certificates %v", fc.GetName(), c.GetTlsCertificateSdsSecretConfigs())
	}
	return c.GetTlsCertificateSdsSecretConfigs()[0].GetName(),
		c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName(), ctx
}

func TestLDSGatewayIngress(t *testing.T) {
	r := runLDSCase(t, "gateway-ingress")
	var names []string
	for _, l := range r.listeners {
		names = append(names, l.GetName())
		if l.GetBindToPort() != nil && !l.GetBindToPort().GetValue() {
			t.Errorf("%s is not bound: a gateway listens on its ports", l.GetName())
		}
	}
	if want := []string{"0.0.0.0_443", "0.0.0.0_80", "0.0.0.0_8443", "0.0.0.0_9000"}; !slices.Equal(names, want) {
		t.Fatalf("listeners %v, want %v", names, want)
	}

	// Port 80: one plain HTTP chain; every server host redirects to https.
	l80 := r.listener(t, "0.0.0.0_80")
	if len(l80.GetFilterChains()) != 1 || len(l80.GetListenerFilters()) != 0 {
		t.Errorf("port 80: %d chains, listener filters %v", len(l80.GetFilterChains()), l80.GetListenerFilters())
	}
	h := hcmOf(t, l80.GetFilterChains()[0])
	if h.GetRds().GetRouteConfigName() != "http.80" || !h.GetUseRemoteAddress().GetValue() {
		t.Errorf("port 80 connection manager: rds %q, use_remote_address %v", h.GetRds().GetRouteConfigName(), h.GetUseRemoteAddress())
	}
	rc80 := r.routeConfig(t, "http.80")
	if !rc80.GetIgnorePortInHostMatching() {
		t.Errorf("http.80 matches hosts with their port")
	}
	for _, d := range []string{"*.bookinfo.com", "foo.example.com", "*.bar.example.com"} {
		vh := r.vhost(t, "http.80", d+":80")
		if vh.GetRequireTls() != routev3.VirtualHost_ALL {
			t.Errorf("%s: require_tls %v, want ALL (httpsRedirect)", d, vh.GetRequireTls())
		}
	}
	if rs := r.vhost(t, "http.80", "foo.example.com:80").GetRoutes(); len(rs) != 1 || rs[0].GetMatch().GetPrefix() != "/api" {
		t.Errorf("foo.example.com on 80: routes %v, want foo's /api only (its mesh match does not apply)", rs)
	}

	// Port 443: terminated HTTPS by SNI (file certificate, credentialName)
	// and passthrough by the VirtualServices' sniHosts.
	l443 := r.listener(t, "0.0.0.0_443")
	if len(l443.GetListenerFilters()) != 1 || l443.GetListenerFilters()[0].GetName() != tlsInspectorFilterName {
		t.Errorf("port 443 needs tls_inspector: %v", l443.GetListenerFilters())
	}
	for _, tc := range []struct {
		sni, cert, rds string
	}{
		{"*.bookinfo.com", "file-cert:/etc/certs/servercert.pem~/etc/certs/privatekey.pem", "https.443.https.istio-ingressgateway.istio-system"},
		{"foo.example.com", "kubernetes://foo-credential", "https.443.https.foo.istio-system"},
		{"*.bar.example.com", "kubernetes://bar-credential", "https.443.https.bar.istio-system"},
	} {
		fc := chainBySNI(t, l443, tc.sni)
		cert, root, ctx := downstreamTLSOf(t, fc)
		if cert != tc.cert || root != "" || ctx.GetRequireClientCertificate().GetValue() {
			t.Errorf("%s: certificate %q, client CA %q, require client certificate %v; want %q and no client check",
				tc.sni, cert, root, ctx.GetRequireClientCertificate(), tc.cert)
		}
		if got := hcmOf(t, fc).GetRds().GetRouteConfigName(); got != tc.rds {
			t.Errorf("%s: routes %q, want %q", tc.sni, got, tc.rds)
		}
	}
	if rs := r.vhost(t, "https.443.https.istio-ingressgateway.istio-system", "*.bookinfo.com:443").GetRoutes(); len(rs) != 1 ||
		rs[0].GetRoute().GetCluster() != OutboundCluster(80, "", "www.bookinfo.com") {
		t.Errorf("*.bookinfo.com over https: %v", rs)
	}
	if vh := r.vhost(t, "https.443.https.foo.istio-system", "foo.example.com:443"); vh.GetRequireTls() != routev3.VirtualHost_NONE ||
		vh.GetRoutes()[0].GetRoute().GetCluster() != OutboundCluster(8000, "", "foo.default.svc.cluster.local") {
		t.Errorf("foo.example.com over https: %v", vh)
	}
	for sni, vs := range map[string]string{"https.secure.com": "https", "tls.secure.com": "tls"} {
		fc := chainBySNI(t, l443, sni)
		if fc.GetTransportSocket() != nil || fc.GetName() != "VirtualService/istio-system/"+vs+"|tls[0]" ||
			tcpProxyOf(t, fc).GetCluster() != OutboundCluster(443, "", "https.secure.com") {
			t.Errorf("passthrough %s: %v", sni, fc)
		}
	}

	// Port 8443: MUTUAL with a credential; only VirtualServices of the
	// default namespace ("default/*").
	l8443 := r.listener(t, "0.0.0.0_8443")
	fc := chainBySNI(t, l8443)
	if cert, root, ctx := downstreamTLSOf(t, fc); cert != "kubernetes://foo-mtls" || root != "kubernetes://foo-mtls-cacert" ||
		!ctx.GetRequireClientCertificate().GetValue() {
		t.Errorf("MUTUAL: certificate %q, client CA %q, require %v", cert, root, ctx.GetRequireClientCertificate())
	}
	if cert, root, ctx := downstreamTLSOf(t, chainBySNI(t, l8443, "opt.example.com")); cert != "kubernetes://opt-cred" ||
		root != "kubernetes://opt-cred-cacert" || ctx.GetRequireClientCertificate().GetValue() {
		t.Errorf("OPTIONAL_MUTUAL: certificate %q, client CA %q, require %v; want the CA checked only when a client sends one", cert, root, ctx.GetRequireClientCertificate())
	}
	var domains []string
	for _, vh := range r.routeConfig(t, "https.8443.mutual.istio-ingressgateway.istio-system").GetVirtualHosts() {
		domains = append(domains, vh.GetDomains()...)
	}
	if !slices.Equal(domains, []string{"internal.example.com"}) {
		t.Errorf("MUTUAL server's domains %v, want internal.example.com only (other.example.com is from another namespace)", domains)
	}

	// Port 9000: TCP by the first VirtualService with a tcp route.
	if c := tcpProxyOf(t, r.listener(t, "0.0.0.0_9000").GetFilterChains()[0]).GetCluster(); c != OutboundCluster(9000, "", "foo.default.svc.cluster.local") {
		t.Errorf("port 9000 to %q", c)
	}
	if len(r.warnings) != 0 {
		t.Errorf("warnings: %q", r.warnings)
	}
}

func TestLDSGatewaySelection(t *testing.T) {
	// bookinfo-gateway.yaml's Gateway selects istio=ingressgateway only.
	r := runLDSCase(t, "gateway-bookinfo")
	if len(r.listeners) != 1 || r.listeners[0].GetName() != "0.0.0.0_80" {
		t.Fatalf("listeners %v", r.listeners)
	}
	vh := r.vhost(t, "http.80", "*:80")
	var prefixes []string
	for _, rt := range vh.GetRoutes() {
		if rt.GetRoute().GetCluster() != OutboundCluster(9080, "", "productpage.default.svc.cluster.local") {
			t.Errorf("route %v does not go to productpage", rt.GetMatch())
		}
		prefixes = append(prefixes, rt.GetMatch().GetPath()+rt.GetMatch().GetPrefix())
	}
	if want := []string{"/productpage", "/static", "/login", "/logout", "/api/v1/products"}; !slices.Equal(prefixes, want) {
		t.Errorf("routes %v, want %v", prefixes, want)
	}

	c := loadLDSCase(t, "gateway-bookinfo")
	c.proxy.Labels = map[string]string{"istio": "egressgateway"}
	b := &builder{s: c.snap, p: c.proxy, services: VisibleServices(c.snap, c.proxy)}
	if ls, _ := b.listeners(); len(ls) != 0 {
		t.Errorf("a gateway the Gateway does not select got %d listeners", len(ls))
	}
}

func TestLDSGatewayRefusals(t *testing.T) {
	r := runLDSCase(t, "gateway-refused")
	r.wantWarning(t, "servers[0]", "AUTO_PASSTHROUGH", "not supported")
	r.wantWarning(t, "servers[4]", "SNI [dup.example.com] is already served by", "servers[2]")
	r.wantWarning(t, "servers[3]", "no VirtualService tcp route")
	if len(r.listeners) != 1 {
		t.Fatalf("%d listeners, want only 8443's", len(r.listeners))
	}
	if n := len(r.listeners[0].GetFilterChains()); n != 2 {
		t.Errorf("port 8443 has %d chains, want b.example.com's and the first dup.example.com server's", n)
	}
	// MUTUAL with subjectAltNames: client certificates are checked against
	// them too.
	_, _, ctx := downstreamTLSOf(t, chainBySNI(t, r.listeners[0], "b.example.com"))
	//lint:ignore SA1019 istiod's form
	if sans := ctx.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchSubjectAltNames(); len(sans) != 1 ||
		sans[0].GetExact() != "spiffe://cluster.local/ns/x/sa/y" {
		t.Errorf("client SAN matchers %v", sans)
	}
}

func TestEgressGatewaySample(t *testing.T) {
	// service-entry-egress-gateway-routing.yaml: one VirtualService routes
	// sidecars to the egress gateway and the gateway to httpbin.com, by
	// match-level gateways.
	r := runLDSCase(t, "gateway-egress")
	rs := r.vhost(t, "http.80", "httpbin.com:80").GetRoutes()
	if len(rs) != 1 || rs[0].GetRoute().GetCluster() != OutboundCluster(80, "", "httpbin.com") {
		t.Errorf("egress gateway routes %v, want httpbin.com's cluster only", rs)
	}
	c := loadLDSCase(t, "gateway-egress")
	c.proxy.Type, c.proxy.Labels = model.Sidecar, map[string]string{"app": "sleep"}
	b := &builder{s: c.snap, p: c.proxy, services: VisibleServices(c.snap, c.proxy)}
	_, routes := newNetBuilder(b).sidecarListeners()
	for _, rc := range routes {
		for _, vh := range rc.GetVirtualHosts() {
			if vh.GetName() == "httpbin.com:80" {
				if got := vh.GetRoutes()[0].GetRoute().GetCluster(); got != OutboundCluster(80, "", "istio-egressgateway.istio-system.svc.cluster.local") {
					t.Errorf("sidecar routes httpbin.com to %q, want the egress gateway", got)
				}
				return
			}
		}
	}
	t.Errorf("the sidecar has no virtual host for httpbin.com")
}

// TestLDSGatewayUnvalidated: servers whose certificates weft-proxy could
// not read are left out: TLS settings validation refuses today (in a
// config stored before it did), relative certificate paths and another
// namespace's credential.
func TestLDSGatewayUnvalidated(t *testing.T) {
	https := func(name string, t *networking.ServerTLSSettings) *networking.Server {
		return &networking.Server{Port: &networking.Port{Number: 8443, Name: name, Protocol: "HTTPS"}, Hosts: []string{name + ".example.com"}, Tls: t}
	}
	gw := &networking.Gateway{Servers: []*networking.Server{
		https("a", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_MUTUAL, ServerCertificate: "/c.pem", PrivateKey: "/k.pem"}),
		https("b", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE}),
		https("c", nil),
		https("d", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE, ServerCertificate: "certs/c.pem", PrivateKey: "/k.pem"}),
		https("e", &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE, CredentialName: "other-ns/cred"}),
	}}
	s := model.NewSnapshot("v", model.DefaultMesh(), []*model.Config{{Kind: "Gateway", Name: "old", Namespace: "istio-system", Spec: gw}}, nil)
	r := Build(s, &model.Proxy{Type: model.Router, Namespace: "istio-system"})
	res := &ldsResult{warnings: r.Warnings}
	res.wantWarning(t, "servers[0]", "MUTUAL needs caCertificates")
	res.wantWarning(t, "servers[1]", "SIMPLE needs credentialName")
	res.wantWarning(t, "servers[2]", "needs tls settings")
	res.wantWarning(t, "servers[3]", `serverCertificate "certs/c.pem" must be an absolute path`)
	res.wantWarning(t, "servers[4]", `credentialName "other-ns/cred"`)
	if len(r.Listeners) != 0 {
		t.Errorf("%d listeners, want none", len(r.Listeners))
	}
}

// TestGatewayCipherSuites: cipherSuites weft-proxy does not know are left
// out with a warning, duplicates once, the rest kept in order (istiod's
// filtering), so the gateway's listener still compiles in weft-proxy;
// with none left, no tls_params.
func TestGatewayCipherSuites(t *testing.T) {
	https := func(name string, suites ...string) *networking.Server {
		return &networking.Server{Port: &networking.Port{Number: 8443, Name: name, Protocol: "HTTPS"}, Hosts: []string{name + ".example.com"},
			Tls: &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE, ServerCertificate: "/c.pem", PrivateKey: "/k.pem",
				CipherSuites: suites}}
	}
	gw := &networking.Gateway{Servers: []*networking.Server{
		https("a", "ECDHE-RSA-AES128-GCM-SHA256", "BOGUS-CIPHER", "ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"),
		https("b", "NOT-A-CIPHER"),
	}}
	s := model.NewSnapshot("v", model.DefaultMesh(), []*model.Config{{Kind: "Gateway", Name: "gw", Namespace: "istio-system", Spec: gw}}, nil)
	r := Build(s, &model.Proxy{Type: model.Router, Namespace: "istio-system"})
	res := &ldsResult{warnings: r.Warnings, listeners: r.Listeners}
	res.wantWarning(t, "servers[0]", `"BOGUS-CIPHER"`, "left out")
	res.wantWarning(t, "servers[1]", `"NOT-A-CIPHER"`, "left out")
	l := res.listener(t, "0.0.0.0_8443")
	_, _, a := downstreamTLSOf(t, chainBySNI(t, l, "a.example.com"))
	if got := a.GetCommonTlsContext().GetTlsParams().GetCipherSuites(); !slices.Equal(got, []string{"ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"}) {
		t.Errorf("server a's cipher suites %q", got)
	}
	_, _, b := downstreamTLSOf(t, chainBySNI(t, l, "b.example.com"))
	if p := b.GetCommonTlsContext().GetTlsParams(); p != nil {
		t.Errorf("server b: tls_params %v, want none (no known suite left)", p)
	}
}

func TestLDSGatewayIstiodPassthrough(t *testing.T) {
	r := runLDSCase(t, "gateway-istiod")
	for port, cluster := range map[string]string{
		"0.0.0.0_15012": OutboundCluster(15012, "", "istiod.istio-system.svc.cluster.local"),
		"0.0.0.0_15017": OutboundCluster(443, "", "istiod.istio-system.svc.cluster.local"),
	} {
		l := r.listener(t, port)
		fc := chainBySNI(t, l)
		if got := tcpProxyOf(t, fc).GetCluster(); got != cluster || len(l.GetFilterChains()) != 1 {
			t.Errorf("%s: %d chains, to %q; want one to %s", port, len(l.GetFilterChains()), got, cluster)
		}
	}
	if len(r.listeners) != 2 {
		t.Errorf("%d listeners, want istiod's two (15443 is AUTO_PASSTHROUGH)", len(r.listeners))
	}
	r.wantWarning(t, "Gateway/istio-system/cross-network-gateway: servers[0]", "AUTO_PASSTHROUGH")
}

// TestGatewayCredentialSecrets: credentialName certificates come from the
// Secrets of the gateway's namespace, private keys only over a verified
// stream.
func TestGatewayCredentialSecrets(t *testing.T) {
	https := func(name string, mode networking.ServerTLSSettings_TLSmode) *networking.Server {
		return &networking.Server{Port: &networking.Port{Number: 443, Name: name, Protocol: "HTTPS"}, Hosts: []string{name + ".example.com"},
			Tls: &networking.ServerTLSSettings{Mode: mode, CredentialName: name}}
	}
	secret := func(ns, name string, kv ...string) *model.Config {
		st := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for i := 0; i < len(kv); i += 2 {
			st.Fields[kv[i]] = structpb.NewStringValue(kv[i+1])
		}
		return &model.Config{Kind: model.SecretKind, Namespace: ns, Name: name, Spec: st}
	}
	configs := []*model.Config{
		{Kind: "Gateway", Name: "gw", Namespace: "default", Spec: &networking.Gateway{Servers: []*networking.Server{
			https("foo", networking.ServerTLSSettings_SIMPLE), https("bar", networking.ServerTLSSettings_MUTUAL),
			https("generic", networking.ServerTLSSettings_SIMPLE), https("elsewhere", networking.ServerTLSSettings_SIMPLE)}}},
		secret("istio-system", "foo", "tls.crt", "FOO-CERT", "tls.key", "FOO-KEY", "ca.crt", "FOO-CA"),
		secret("istio-system", "bar", "tls.crt", "BAR-CERT", "tls.key", "BAR-KEY", "ca.crt", "BAR-OWN-CA"),
		secret("istio-system", "bar-cacert", "ca.crt", "BAR-CA"),
		secret("istio-system", "generic", "cert", "GEN-CERT", "key", "GEN-KEY"),
		// The gateway runs in istio-system: a Secret of the Gateway's own
		// namespace is not its.
		secret("default", "elsewhere", "tls.crt", "X", "tls.key", "Y"),
	}
	s := model.NewSnapshot("v", model.DefaultMesh(), configs, nil)
	gw := &model.Proxy{Type: model.Router, Namespace: "istio-system", Verified: true}
	got := map[string]string{}
	for _, sec := range Build(s, gw).Secrets {
		got[sec.GetName()] = sec.GetTlsCertificate().GetCertificateChain().GetInlineString() + "|" +
			sec.GetTlsCertificate().GetPrivateKey().GetInlineString() + sec.GetValidationContext().GetTrustedCa().GetInlineString()
	}
	want := map[string]string{
		"kubernetes://foo":        "FOO-CERT|FOO-KEY",
		"kubernetes://bar":        "BAR-CERT|BAR-KEY",
		"kubernetes://bar-cacert": "|BAR-CA",
		"kubernetes://generic":    "GEN-CERT|GEN-KEY",
	}
	if !maps.Equal(got, want) {
		t.Errorf("secrets of a verified gateway:\n got %v\nwant %v", got, want)
	}

	gw.Verified = false
	r := Build(s, gw)
	for _, sec := range r.Secrets {
		t.Errorf("a gateway over an unauthenticated stream got secret %s", sec.GetName())
	}
	res := &ldsResult{warnings: r.Warnings}
	res.wantWarning(t, "credentialName foo", "not sent over an unauthenticated xDS stream")

	sc := &model.Proxy{Type: model.Sidecar, Namespace: "istio-system", Verified: true}
	for _, sec := range Build(s, sc).Secrets {
		t.Errorf("a sidecar got secret %s", sec.GetName())
	}
}
