package translate

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Mesh mTLS golden cases live in testdata/mtls/<case>.yaml, in the CDS
// test input format (testhelpers_cds_test.go). Their golden
// testdata/mtls/<case>.json holds every cluster, the inbound listeners
// (virtualInbound, explicit_inbound_<port>) and the warnings of a full Build.

// mtlsResult is what one case produced.
type mtlsResult struct {
	res     *Resources
	inbound []*listenerv3.Listener
}

// cluster returns the cluster named name.
func (r *mtlsResult) cluster(t *testing.T, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range r.res.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

// listener returns the listener named name.
func (r *mtlsResult) listener(t *testing.T, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range r.res.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	t.Fatalf("no listener %q", name)
	return nil
}

// runMTLSCase builds a case, validates every resource and compares with
// its golden file.
func runMTLSCase(t *testing.T, name string) *mtlsResult {
	t.Helper()
	in := loadCDSCase(t, filepath.Join("testdata", "mtls", name+".yaml"))
	res := Build(in.snap, in.proxy)
	validateCDS(t, &cdsResult{clusters: res.Clusters, endpoints: res.Endpoints})
	for _, l := range res.Listeners {
		ldsValidate(t, l)
	}
	for _, rc := range res.Routes {
		ldsValidate(t, rc)
	}
	r := newMTLSResult(res)
	if !bytes.Equal(renderMTLS(t, newMTLSResult(Build(in.snap, in.proxy))), renderMTLS(t, r)) {
		t.Errorf("%s: two builds differ", name)
	}
	compareGolden(t, filepath.Join("testdata", "mtls", name+".json"), renderMTLS(t, r), ldsLineDiff)
	return r
}

// newMTLSResult picks the inbound listeners of res.
func newMTLSResult(res *Resources) *mtlsResult {
	r := &mtlsResult{res: res}
	for _, l := range res.Listeners {
		if l.GetName() == VirtualInboundListener || strings.HasPrefix(l.GetName(), "inbound_") || strings.HasPrefix(l.GetName(), "explicit_inbound_") {
			r.inbound = append(r.inbound, l)
		}
	}
	return r
}

// renderMTLS formats a result as stable, indented JSON.
func renderMTLS(t *testing.T, r *mtlsResult) []byte {
	t.Helper()
	raw := func(m proto.Message) json.RawMessage {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	out := struct {
		Clusters []json.RawMessage `json:"clusters"`
		Inbound  []json.RawMessage `json:"inboundListeners"`
		Warnings []string          `json:"warnings"`
	}{Clusters: []json.RawMessage{}, Inbound: []json.RawMessage{}, Warnings: r.res.Warnings}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	for _, c := range r.res.Clusters {
		out.Clusters = append(out.Clusters, raw(c))
	}
	for _, l := range r.inbound {
		out.Inbound = append(out.Inbound, raw(l))
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// wantIstioMutual checks an ISTIO_MUTUAL cluster: SNI, SANs, the SDS
// secrets and Istio's ALPN (plus h2 when h2 is set).
func wantIstioMutual(t *testing.T, c *clusterv3.Cluster, wantSNI string, wantSANs []string, h2 bool) {
	t.Helper()
	ctx := upstreamTLS(t, c)
	if ctx == nil {
		t.Errorf("%s: plaintext, want ISTIO_MUTUAL", c.GetName())
		return
	}
	if ctx.GetSni() != wantSNI {
		t.Errorf("%s: sni %q, want %q", c.GetName(), ctx.GetSni(), wantSNI)
	}
	common := ctx.GetCommonTlsContext()
	if got := common.GetTlsCertificateSdsSecretConfigs(); len(got) != 1 || got[0].GetName() != SDSDefaultCert || got[0].GetSdsConfig().GetAds() == nil {
		t.Errorf("%s: certificate SDS %v", c.GetName(), got)
	}
	cv := common.GetCombinedValidationContext()
	if cv.GetValidationContextSdsSecretConfig().GetName() != SDSRootCA {
		t.Errorf("%s: root SDS %q", c.GetName(), cv.GetValidationContextSdsSecretConfig().GetName())
	}
	var sans []string
	for _, m := range cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			t.Errorf("%s: SAN type %v", c.GetName(), m.GetSanType())
		}
		sans = append(sans, m.GetMatcher().GetExact())
	}
	wantStrings(t, c.GetName()+" SANs", sans, wantSANs)
	alpn := []string{"istio-peer-exchange", "istio"}
	if h2 {
		alpn = append(alpn, "h2")
	}
	wantStrings(t, c.GetName()+" ALPN", common.GetAlpnProtocols(), alpn)
}

// wantPlaintext fails when a cluster has a transport socket.
func wantPlaintext(t *testing.T, c *clusterv3.Cluster) {
	t.Helper()
	if c.GetTransportSocket() != nil {
		t.Errorf("%s: transport socket %s, want plaintext", c.GetName(), c.GetTransportSocket().GetName())
	}
}

// chainShape summarises one filter chain: "<name> port=<p> <transport> tls|plain".
func chainShape(fc *listenerv3.FilterChain) string {
	m := fc.GetFilterChainMatch()
	s := fc.GetName()
	if p := m.GetDestinationPort().GetValue(); p != 0 {
		s += " port=" + itoa(p)
	}
	if tp := m.GetTransportProtocol(); tp != "" {
		s += " " + tp
	}
	if fc.GetTransportSocket() != nil {
		return s + " tls"
	}
	return s + " plain"
}

// wantChains checks a listener's chains (in order), its default chain
// ("" for none) and whether it has the tls_inspector.
func wantChains(t *testing.T, l *listenerv3.Listener, want []string, defaultChain string, inspector bool) {
	t.Helper()
	var got []string
	for _, fc := range l.GetFilterChains() {
		got = append(got, chainShape(fc))
		if ts := fc.GetTransportSocket(); ts != nil {
			wantInboundTLS(t, fc)
		}
	}
	wantStrings(t, l.GetName()+" chains", got, want)
	if dc := l.GetDefaultFilterChain(); dc.GetName() != defaultChain {
		t.Errorf("%s: default chain %q, want %q", l.GetName(), dc.GetName(), defaultChain)
	} else if dc != nil && (dc.GetTransportSocket() != nil || dc.GetFilterChainMatch() != nil) {
		t.Errorf("%s: default chain must be plaintext without match: %v", l.GetName(), dc)
	}
	has := slices.ContainsFunc(l.GetListenerFilters(), func(f *listenerv3.ListenerFilter) bool { return f.GetName() == tlsInspectorFilterName })
	if has != inspector {
		t.Errorf("%s: tls_inspector %v, want %v", l.GetName(), has, inspector)
	}
}

// wantInboundTLS checks a chain's DownstreamTlsContext.
func wantInboundTLS(t *testing.T, fc *listenerv3.FilterChain) {
	t.Helper()
	if fc.GetTransportSocket().GetName() != tlsTransportSocket || fc.GetFilterChainMatch().GetTransportProtocol() != TransportProtocolTLS {
		t.Errorf("chain %s: socket %q, transport %q", fc.GetName(), fc.GetTransportSocket().GetName(), fc.GetFilterChainMatch().GetTransportProtocol())
	}
	ctx := ldsUnpack(t, fc.GetTransportSocket().GetTypedConfig(), &tlsv3.DownstreamTlsContext{})
	if !ctx.GetRequireClientCertificate().GetValue() {
		t.Errorf("chain %s: client certificate not required", fc.GetName())
	}
	common := ctx.GetCommonTlsContext()
	if got := common.GetTlsCertificateSdsSecretConfigs(); len(got) != 1 || got[0].GetName() != SDSDefaultCert || got[0].GetSdsConfig().GetAds() == nil {
		t.Errorf("chain %s: certificate SDS %v", fc.GetName(), got)
	}
	if got := common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); got.GetName() != SDSRootCA || got.GetSdsConfig().GetAds() == nil {
		t.Errorf("chain %s: root SDS %v", fc.GetName(), got)
	}
	wantStrings(t, fc.GetName()+" ALPN", common.GetAlpnProtocols(), []string{"h2", "http/1.1", "istio-peer-exchange", "istio"})
}

const (
	mtlsReviews = "reviews.default.svc.cluster.local"
	mtlsRatings = "ratings.default.svc.cluster.local"
	mtlsPP      = "productpage.default.svc.cluster.local"
)

func TestMTLSAuto(t *testing.T) {
	r := runMTLSCase(t, "auto-mtls")
	wantIstioMutual(t, r.cluster(t, OutboundCluster(9080, "", mtlsReviews)), "outbound_.9080_._."+mtlsReviews,
		[]string{"spiffe://cluster.local/ns/default/sa/bookinfo-reviews", "spiffe://cluster.local/ns/default/sa/default"}, false)
	wantIstioMutual(t, r.cluster(t, OutboundCluster(9090, "", mtlsRatings)), "outbound_.9090_._."+mtlsRatings,
		[]string{"spiffe://cluster.local/ns/default/sa/bookinfo-ratings"}, true)
	for _, n := range []string{OutboundCluster(5432, "", "legacy.default.svc.cluster.local"), OutboundCluster(443, "", "api.example.com"),
		OutboundCluster(8000, "", "nobody.default.svc.cluster.local"), PassthroughCluster, InboundCluster(9080)} {
		wantPlaintext(t, r.cluster(t, n))
	}
	// PERMISSIVE by default.
	wantChains(t, r.listener(t, VirtualInboundListener), []string{
		"inbound|9080||-mtls port=9080 tls tls", "inbound|9080|| port=9080 raw_buffer plain",
		"virtualInbound-passthrough-mtls tls tls",
	}, "virtualInbound-passthrough", true)
	if len(r.res.Warnings) != 0 {
		t.Errorf("warnings: %q", r.res.Warnings)
	}
}

func TestMTLSAutoOff(t *testing.T) {
	r := runMTLSCase(t, "auto-mtls-off")
	for _, c := range r.res.Clusters {
		wantPlaintext(t, c)
	}
	if !model.DefaultMesh().EnableAutoMTLS {
		t.Errorf("auto mTLS must be on by default")
	}
}

func TestMTLSDestinationRuleDisableAndPortLevel(t *testing.T) {
	r := runMTLSCase(t, "dr-disable-per-port")
	for _, c := range r.res.Clusters {
		wantPlaintext(t, c)
	}
	wantChains(t, r.listener(t, VirtualInboundListener), []string{
		"inbound|8090||-mtls port=8090 tls tls",
		"inbound|9000|| port=9000 plain",
		"virtualInbound-passthrough plain",
	}, "", true)
}

func TestMTLSMixedEndpoints(t *testing.T) {
	r := runMTLSCase(t, "mixed")
	reviewsSAN := []string{"spiffe://cluster.local/ns/default/sa/bookinfo-reviews"}
	wantPlaintext(t, r.cluster(t, OutboundCluster(9080, "", mtlsReviews)))
	wantPlaintext(t, r.cluster(t, OutboundCluster(9080, "v2", mtlsReviews)))
	wantIstioMutual(t, r.cluster(t, OutboundCluster(9080, "v1", mtlsReviews)), "outbound_.9080_.v1_."+mtlsReviews, reviewsSAN, false)
	wantPlaintext(t, r.cluster(t, OutboundCluster(9080, "", mtlsRatings)))
	wantIstioMutual(t, r.cluster(t, OutboundCluster(9080, "", "details.default.svc.cluster.local")),
		"outbound_.9080_._.details.default.svc.cluster.local", []string{"spiffe://cluster.local/ns/default/sa/bookinfo-details"}, false)
	wantIstioMutual(t, r.cluster(t, OutboundCluster(8080, "", "vm-api.default.svc.cluster.local")),
		"outbound_.8080_._.vm-api.default.svc.cluster.local", []string{"spiffe://cluster.local/ns/default/sa/vm-api"}, false)
	// No inbound port: only the passthrough, PERMISSIVE.
	wantChains(t, r.listener(t, VirtualInboundListener), []string{"virtualInbound-passthrough-mtls tls tls"}, "virtualInbound-passthrough", true)
}

func TestMTLSPermissive(t *testing.T) {
	r := runMTLSCase(t, "permissive-default")
	wantChains(t, r.listener(t, VirtualInboundListener), []string{
		"inbound|9000||-mtls port=9000 tls tls", "inbound|9000|| port=9000 raw_buffer plain",
		"inbound|9080||-mtls port=9080 tls tls", "inbound|9080|| port=9080 raw_buffer plain",
		"virtualInbound-passthrough-mtls tls tls",
	}, "virtualInbound-passthrough", true)
	// Both chains of a port do the same thing once TLS is terminated.
	l := r.listener(t, VirtualInboundListener)
	tlsChain, plain := chainNamed(t, l, "inbound|9080||-mtls"), chainNamed(t, l, "inbound|9080||")
	if !proto.Equal(hcmOf(t, tlsChain), hcmOf(t, plain)) {
		t.Errorf("TLS and plaintext chains of 9080 differ in their filters")
	}
}

func TestMTLSStrictNamespace(t *testing.T) {
	r := runMTLSCase(t, "strict-namespace")
	wantChains(t, r.listener(t, VirtualInboundListener), []string{
		"inbound|9000||-mtls port=9000 tls tls", "inbound|9000|| port=9000 raw_buffer plain",
		"inbound|9080||-mtls port=9080 tls tls",
		"virtualInbound-passthrough-7070 port=7070 plain",
		"virtualInbound-passthrough-mtls tls tls",
	}, "", true)
}

func TestMTLSStrictExplicit(t *testing.T) {
	r := runMTLSCase(t, "strict-explicit")
	l := r.listener(t, ExplicitInboundListener(15080))
	wantChains(t, l, []string{"inbound|9080||-mtls tls tls"}, "", true)
	if a := l.GetAddress().GetSocketAddress(); a.GetAddress() != "10.0.0.99" || a.GetPortValue() != 15080 {
		t.Errorf("%s binds %v, want 10.0.0.99:15080", l.GetName(), a)
	}
	// Peers dial the sidecar port, and still originate mTLS to it: the
	// endpoint accepts mTLS on its application port 9080.
	const pp = "productpage.default.svc.cluster.local"
	var ports []uint32
	for _, cla := range r.res.Endpoints {
		if cla.GetClusterName() != OutboundCluster(9080, "", pp) {
			continue
		}
		for _, le := range cla.GetEndpoints() {
			for _, e := range le.GetLbEndpoints() {
				ports = append(ports, e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
			}
		}
	}
	if !slices.Equal(ports, []uint32{15080}) {
		t.Errorf("EDS for %s: ports %v, want [15080] (the sidecar port)", pp, ports)
	}
	wantIstioMutual(t, r.cluster(t, OutboundCluster(9080, "", pp)), "outbound_.9080_._."+pp,
		[]string{"spiffe://cluster.local/ns/default/sa/default"}, false)
}

func TestMTLSStrictMeshSample(t *testing.T) {
	r := runMTLSCase(t, "strict-mesh-sample")
	const http1, http2 = "http1.ns1.svc.cluster.local", "http2.ns1.svc.cluster.local"
	wantPlaintext(t, r.cluster(t, OutboundCluster(8080, "v1", http1)))
	wantIstioMutual(t, r.cluster(t, OutboundCluster(8080, "", http2)), "outbound_.8080_._."+http2,
		[]string{"spiffe://cluster.local/ns/ns1/sa/default"}, true)
	wantChains(t, r.listener(t, VirtualInboundListener), []string{
		"inbound|8080||-mtls port=8080 tls tls",
		"virtualInbound-passthrough-mtls tls tls",
	}, "", true)
}

func TestMTLSMeshDisable(t *testing.T) {
	r := runMTLSCase(t, "mesh-disable")
	wantPlaintext(t, r.cluster(t, OutboundCluster(9080, "", mtlsReviews)))
	wantPlaintext(t, r.cluster(t, OutboundCluster(9080, "", mtlsPP)))
	wantIstioMutual(t, r.cluster(t, OutboundCluster(8200, "", "vault.secure.svc.cluster.local")),
		"outbound_.8200_._.vault.secure.svc.cluster.local", []string{"spiffe://cluster.local/ns/secure/sa/vault"}, false)
	l := r.listener(t, VirtualInboundListener)
	wantChains(t, l, []string{"inbound|9080|| port=9080 plain"}, "virtualInbound-passthrough", false)
	if n := len(l.GetListenerFilters()); n != 1 {
		t.Errorf("%d listener filters, want original_dst only", n)
	}
}

// TestPeerAuthnResolution checks the precedence rules directly.
func TestPeerAuthnResolution(t *testing.T) {
	in := loadCDSCase(t, filepath.Join("testdata", "mtls", "dr-disable-per-port.yaml"))
	x := newPAIndex(in.snap)
	b := x.lookup("default", map[string]string{"app": "b", "x": "y"})
	if b.mode != mtlsDisable || b.forPort(8090) != mtlsStrict || b.forPort(80) != mtlsDisable {
		t.Errorf("workload b: mode %v, 8090 %v, 80 %v", b.mode, b.forPort(8090), b.forPort(80))
	}
	if a := x.lookup("default", map[string]string{"app": "a"}); a.mode != mtlsPermissive || a.forPort(8090) != mtlsPermissive {
		t.Errorf("workload a: %v, want PERMISSIVE (no policy)", a.mode)
	}
	in = loadCDSCase(t, filepath.Join("testdata", "mtls", "mesh-disable.yaml"))
	x = newPAIndex(in.snap)
	for ns, want := range map[string]mtlsMode{"default": mtlsDisable, "secure": mtlsStrict, "other": mtlsDisable} {
		if got := x.lookup(ns, nil).mode; got != want {
			t.Errorf("namespace %s: %v, want %v", ns, got, want)
		}
	}
}

func TestTProxyInbound(t *testing.T) {
	r := runMTLSCase(t, "tproxy")
	l := r.listener(t, VirtualInboundListener)
	if !l.GetTransparent().GetValue() {
		t.Errorf("virtualInbound: transparent %v, want true under TPROXY", l.GetTransparent())
	}
	var src *originalsrcv3.OriginalSrc
	for _, lf := range l.GetListenerFilters() {
		if lf.GetName() == originalSrcFilterName {
			src = ldsUnpack(t, lf.GetTypedConfig(), &originalsrcv3.OriginalSrc{})
		}
	}
	if src == nil || src.GetMark() != TProxyMark {
		t.Errorf("virtualInbound listener filters %v: want original_src with mark %d", l.GetListenerFilters(), TProxyMark)
	}
	in := r.cluster(t, InboundCluster(9080))
	if a := in.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); a.GetAddress() != "10.0.0.99" {
		t.Errorf("%s targets %v, want the workload IP 10.0.0.99", in.GetName(), a)
	}
	if b := r.cluster(t, InboundPassthroughCluster).GetUpstreamBindConfig(); b != nil {
		t.Errorf("%s binds %v under TPROXY, want no bind (original_src sets the source)", InboundPassthroughCluster, b)
	}
	// Without TPROXY: loopback, 127.0.0.6, no original_src.
	plain := runMTLSCase(t, "permissive-default")
	if plain.listener(t, VirtualInboundListener).GetTransparent().GetValue() {
		t.Errorf("virtualInbound transparent without TPROXY")
	}
}
