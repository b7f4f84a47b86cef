package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/bolt"
)

var quiet = slog.New(slog.DiscardHandler)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// openStore opens a bolt store at dir/weft.db, closed at cleanup.
func openStore(t testing.TB, dir string) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(dir, "weft.db"), store.Options{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// newAuthority returns a self-signed Authority over a fresh store.
func newAuthority(t testing.TB, opts Options) (*Authority, *bolt.Store, string) {
	t.Helper()
	dir := t.TempDir()
	st := openStore(t, dir)
	if opts.KEKFile == "" {
		opts.KEKFile = filepath.Join(dir, KEKFileName)
	}
	a, err := New(context.Background(), st, opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return a, st, dir
}

// putWorkloadGroup stores WorkloadGroup ns/name with service account sa
// ("" leaves it unset).
func putWorkloadGroup(t testing.TB, st store.Store, ns, name, sa string) {
	t.Helper()
	k, err := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	if err != nil {
		t.Fatal(err)
	}
	tmpl := map[string]any{"labels": map[string]any{"app": name}}
	if sa != "" {
		tmpl["serviceAccount"] = sa
	}
	obj := map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     map[string]any{"template": tmpl},
	}
	raw, _ := json.Marshal(obj)
	if _, err := st.Create(context.Background(), k.Key(ns, name), raw); err != nil {
		t.Fatal(err)
	}
}

// newKey returns a P-256 key.
func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// forgedCSR returns a PEM CSR for key that claims a foreign identity in
// every field it can.
func forgedCSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	u, _ := url.Parse("spiffe://cluster.local/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		DNSNames:       []string{"istiod.istio-system.svc"},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{u},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// testCA is a CA certificate and key made for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func (c testCA) pem() []byte { return []byte(certPEM(c.cert.Raw)) }

func (c testCA) keyPEM(t testing.TB) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// makeCA makes a CA signed by parent (self-signed if parent is nil).
// isCA false makes a leaf-like certificate.
func makeCA(t testing.TB, cn string, parent *testCA, isCA bool) testCA {
	t.Helper()
	key := newKey(t)
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: isCA,
	}
	if !isCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert: cert, key: key}
}

// writeCACerts writes Istio's cacerts files into a new directory; nil
// values are not written.
func writeCACerts(t testing.TB, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if data == nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// parseChain parses a PEM chain as returned by Sign.
func parseChain(t testing.TB, chain []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, p := range chain {
		cs, err := parseCerts([]byte(p), "chain")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cs...)
	}
	return out
}

// verifyLeaf checks chain[0] against the Authority's trust bundle with the
// chain's other certificates as intermediates and returns the leaf.
func verifyLeaf(t testing.TB, a *Authority, chain []string) *x509.Certificate {
	t.Helper()
	certs := parseChain(t, chain)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range a.RootCertificates() {
		roots.AddCert(r)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: a.opts.Clock(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify against the trust bundle: %v", err)
	}
	return certs[0]
}

// wantOnlyIdentity checks that leaf carries exactly the SPIFFE ID of id
// and nothing from a forged CSR.
func wantOnlyIdentity(t testing.TB, leaf *x509.Certificate, td string, id Identity) {
	t.Helper()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.SPIFFEID(td) {
		t.Fatalf("URI SANs = %v, want only %s", leaf.URIs, id.SPIFFEID(td))
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) > 0 || leaf.Subject.CommonName != "" || len(leaf.Subject.Organization) > 0 {
		t.Fatalf("certificate carries CSR-provided names: dns=%v email=%v ip=%v subject=%q", leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses, leaf.Subject)
	}
	if leaf.IsCA {
		t.Fatal("workload certificate is a CA")
	}
}

func openBolt(dir string) (*bolt.Store, error) {
	return bolt.Open(filepath.Join(dir, "weft.db"), store.Options{}, quiet)
}

func parseURL(s string) (*url.URL, error) { return url.Parse(s) }
