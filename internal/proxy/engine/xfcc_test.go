package engine

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// withHCM edits the connection manager of l's first filter chain.
func withHCM(tb testing.TB, l *listenerv3.Listener, edit func(*hcmv3.HttpConnectionManager)) *listenerv3.Listener {
	tb.Helper()
	tc := l.FilterChains[0].Filters[0].GetTypedConfig()
	h := &hcmv3.HttpConnectionManager{}
	if err := tc.UnmarshalTo(h); err != nil {
		tb.Fatal(err)
	}
	edit(h)
	a, err := anypb.New(h)
	if err != nil {
		tb.Fatal(err)
	}
	tc.Value = a.Value
	return l
}

// xfccInbound is the inbound listener of the tests' two-hop chains with
// x-forwarded-client-cert treated by mode, with subject, URI and DNS (as
// pilot configures inbound sidecars: APPEND_FORWARD).
func xfccInbound(tb testing.TB, addr netip.AddrPort, tlsCtx *tlsv3.DownstreamTlsContext,
	mode hcmv3.HttpConnectionManager_ForwardClientCertDetails) *listenerv3.Listener {
	return withHCM(tb, httpListener("virtualInbound", addr, "inbound|8080||", tlsCtx), func(h *hcmv3.HttpConnectionManager) {
		h.ForwardClientCertDetails = mode
		h.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
			Subject: wrapperspb.Bool(true), Uri: true, Dns: true}
	})
}

// TestClientCertHeader: x-forwarded-client-cert as Envoy sets it under
// Istio. The outbound sidecar (Envoy's default, SANITIZE) drops what the
// application sent; the inbound one (APPEND_FORWARD with subject, URI and
// DNS, as pilot configures it) tells the backend who called over mTLS.
func TestClientCertHeader(t *testing.T) {
	seen := make(chan []string, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Values("X-Forwarded-Client-Cert")
	}))
	defer backend.Close()
	backendAddr := netip.MustParseAddrPort(backend.Listener.Addr().String())
	clientID, serverID := newTestMesh(t)
	sum := sha256.Sum256(clientID.cert.Certificate[0])
	elem := "By=spiffe://cluster.local/ns/default/sa/server;Hash=" + hex.EncodeToString(sum[:]) +
		`;Subject="";URI=spiffe://cluster.local/ns/default/sa/client`
	// With cert and chain: the client's certificate, and every one it
	// sent, as PEM with Envoy's URL escapes (written out here, not by
	// the code under test).
	escape := func(ders [][]byte) string {
		var b strings.Builder
		for _, der := range ders {
			b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		}
		out := b.String()
		for _, r := range [][2]string{{"\n", "%0A"}, {" ", "%20"}, {"+", "%2B"}, {"/", "%2F"}, {"=", "%3D"}} {
			out = strings.ReplaceAll(out, r[0], r[1])
		}
		return out
	}
	// That case's client sends its CA certificate after its own.
	chainID := &testCerts{roots: clientID.roots, ca: clientID.ca,
		cert: &tls.Certificate{Certificate: [][]byte{clientID.cert.Certificate[0], clientID.ca}, PrivateKey: clientID.cert.PrivateKey}}
	withCert := "By=spiffe://cluster.local/ns/default/sa/server;Hash=" + hex.EncodeToString(sum[:]) +
		`;Cert="` + escape(chainID.cert.Certificate[:1]) + `";Chain="` + escape(chainID.cert.Certificate) +
		`";Subject="";URI=spiffe://cluster.local/ns/default/sa/client`
	if chain := escape(chainID.cert.Certificate); strings.ContainsAny(chain, "\n /+=") || strings.Count(chain, "BEGIN%20CERTIFICATE") != 2 {
		t.Fatal("the escaped PEM still has characters Envoy escapes")
	}

	for _, tc := range []struct {
		name     string
		outbound hcmv3.HttpConnectionManager_ForwardClientCertDetails
		inbound  hcmv3.HttpConnectionManager_ForwardClientCertDetails
		plain    bool // the inbound hop without mTLS
		certs    bool // set_current_client_cert_details cert and chain too
		sent     string
		want     []string
	}{
		{name: "istio: forged header dropped, caller appended", outbound: hcmv3.HttpConnectionManager_SANITIZE,
			inbound: hcmv3.HttpConnectionManager_APPEND_FORWARD, sent: "By=forged", want: []string{elem}},
		{name: "append to a forwarded header", outbound: hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY,
			inbound: hcmv3.HttpConnectionManager_APPEND_FORWARD, sent: "By=upstream", want: []string{"By=upstream," + elem}},
		{name: "sanitize_set replaces", outbound: hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY,
			inbound: hcmv3.HttpConnectionManager_SANITIZE_SET, sent: "By=upstream", want: []string{elem}},
		{name: "forward_only keeps", outbound: hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY,
			inbound: hcmv3.HttpConnectionManager_FORWARD_ONLY, sent: "By=upstream", want: []string{"By=upstream"}},
		{name: "cert and chain", outbound: hcmv3.HttpConnectionManager_SANITIZE,
			inbound: hcmv3.HttpConnectionManager_SANITIZE_SET, certs: true, sent: "By=forged", want: []string{withCert}},
		{name: "no mTLS: removed", outbound: hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY,
			inbound: hcmv3.HttpConnectionManager_APPEND_FORWARD, plain: true, sent: "By=upstream", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tlsCtx = inboundTLS()
			if tc.plain {
				tlsCtx = nil
			}
			inAddr := freeAddr(t)
			in := xfccInbound(t, inAddr, tlsCtx, tc.inbound)
			if tc.certs {
				in = withHCM(t, in, func(h *hcmv3.HttpConnectionManager) {
					h.SetCurrentClientCertDetails.Cert, h.SetCurrentClientCertDetails.Chain = true, true
				})
			}
			startEngine(t, serverID, in, staticCluster("inbound|8080||", backendAddr, false))
			outAddr := freeAddr(t)
			const svc = "outbound|8080||server.default.svc.cluster.local"
			out := withHCM(t, httpListener("0.0.0.0_8080", outAddr, svc, nil), func(h *hcmv3.HttpConnectionManager) {
				h.ForwardClientCertDetails = tc.outbound
			})
			id := clientID
			if tc.certs {
				id = chainID
			}
			startEngine(t, id, out, staticCluster(svc, inAddr, !tc.plain))

			for i := range 2 { // the second request reuses the connection's element
				req, _ := http.NewRequest("GET", "http://"+outAddr.String()+"/", nil)
				req.Header.Set("X-Forwarded-Client-Cert", tc.sent)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if got := <-seen; strings.Join(got, "|") != strings.Join(tc.want, "|") {
					t.Fatalf("request %d: backend saw XFCC %q, want %q", i, got, tc.want)
				}
			}
		})
	}
}

// TestClientCertHeaderConfig: what weft cannot put in the header is
// refused with the reason, not silently dropped.
func TestClientCertHeaderConfig(t *testing.T) {
	for _, s := range []*hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
		{Issuer: true}, {Format: hcmv3.HttpConnectionManager_JSON},
	} {
		_, err := compileXFCC(&hcmv3.HttpConnectionManager{ForwardClientCertDetails: hcmv3.HttpConnectionManager_APPEND_FORWARD,
			SetCurrentClientCertDetails: s})
		if err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Fatalf("%v: error %v, want a refusal", s, err)
		}
	}
	if _, err := compileXFCC(&hcmv3.HttpConnectionManager{ForwardClientCertDetails: 42}); err == nil {
		t.Fatal("unknown forward_client_cert_details accepted")
	}
}
