package engine

import (
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

func bundleSnapshot(pemData string) *xdsclient.Snapshot {
	return &xdsclient.Snapshot{Secrets: map[string]*tlsv3.Secret{sdsRoot: {Name: sdsRoot,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(pemData)}}}}}}}
}

// TestSDSBundleWidensTrust: a peer whose certificate chains to a root
// that only the SDS bundle holds verifies once the bundle is applied,
// and not before; bad bundles are rejected (NACK) with a precise error.
func TestSDSBundleWidensTrust(t *testing.T) {
	own := meshIdentities(t, "spiffe://cluster.local/ns/default/sa/me")[0]
	other := meshIdentities(t, "spiffe://cluster.local/ns/default/sa/peer")[0]
	otherRoot := other.cert.Certificate[1]
	e := New(slog.New(slog.DiscardHandler), Options{Certs: own})
	e.cur.Store(&runtime{})
	peerChain := other.cert.Certificate[:1]
	if _, err := verifyChain(peerChain, e.meshCerts().Roots()); err == nil {
		t.Fatal("a peer of another root verified without the bundle")
	}
	rt, err := compileRuntime(bundleSnapshot(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherRoot}))))
	if err != nil {
		t.Fatal(err)
	}
	e.cur.Store(rt)
	if _, err := verifyChain(peerChain, e.meshCerts().Roots()); err != nil {
		t.Fatalf("a peer of a bundle root: %v", err)
	}
	ownLeaf := own.cert.Certificate[:1]
	if _, err := verifyChain(ownLeaf, e.meshCerts().Roots()); err != nil {
		t.Fatalf("a peer of the proxy's own root with a bundle applied: %v", err)
	}
	leaf, _ := x509.ParseCertificate(own.cert.Certificate[0])
	for name, tc := range map[string]struct{ pem, want string }{
		"empty":   {"", "inline PEM"},
		"garbage": {"not pem", "no PEM certificate"},
		"key":     {"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "unexpected PEM block"},
		"leaf":    {string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})), "not a CA"},
	} {
		if _, err := compileRuntime(bundleSnapshot(tc.pem)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s bundle: err = %v, want %q", name, err, tc.want)
		}
	}
}
