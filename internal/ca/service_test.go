package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securitypb "istio.io/api/security/v1alpha1"
)

// csrEnv is a CA service on a loopback TLS listener.
type csrEnv struct {
	a       *Authority
	svc     *Service
	addr    string
	serving *pki.CA
}

// startService serves a's CSR service over TLS on loopback. clientAuth
// overrides the TLS client-auth policy when non-nil (to prove the handler
// verifies certificates itself).
func startService(t *testing.T, a *Authority, reg prometheus.Registerer, clientAuth *tls.ClientAuthType) *csrEnv {
	t.Helper()
	sca, _, err := pki.LoadOrCreateCA(t.TempDir(), "test-serving-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := sca.Issue("weft", nil, []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cfg := a.ServerTLS(&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
	if clientAuth != nil {
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: *clientAuth, NextProtos: []string{"h2"}}
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	svc := NewService(a, ServiceOptions{Registerer: reg}, quiet)
	svc.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return &csrEnv{a: a, svc: svc, addr: ln.Addr().String(), serving: sca}
}

// client dials the service, presenting clientCert if given.
func (e *csrEnv) client(t *testing.T, clientCert *tls.Certificate) securitypb.IstioCertificateServiceClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.serving.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return securitypb.NewIstioCertificateServiceClient(cc)
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// tlsCert turns an issued chain and its key into a client certificate.
func tlsCert(t *testing.T, chain []string, key *ecdsa.PrivateKey) *tls.Certificate {
	t.Helper()
	c := &tls.Certificate{PrivateKey: key}
	for _, cert := range parseChain(t, chain) {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("err = %v, want %v containing %q", err, code, msg)
	}
}

func TestCreateCertificateWithBootstrapToken(t *testing.T) {
	clk := newClock()
	a, st, _ := newAuthority(t, Options{Clock: clk.Now, MaxWorkloadTTL: 72 * time.Hour})
	putWorkloadGroup(t, st, "bookinfo", "ratings", "ratings-sa")
	reg := prometheus.NewRegistry()
	env := startService(t, a, reg, nil)
	tok, _, err := a.IssueBootstrapToken(context.Background(), "bookinfo", "ratings", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := env.client(t, nil)
	key := newKey(t)
	resp, err := c.CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key))})
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{"bookinfo", "ratings-sa"}
	leaf := verifyLeaf(t, a, resp.CertChain)
	wantOnlyIdentity(t, leaf, DefaultTrustDomain, id)
	if last := resp.CertChain[len(resp.CertChain)-1]; last != a.Roots()[0] {
		t.Fatal("the last element of cert_chain is not the root")
	}
	if got := leaf.NotAfter.Sub(clk.Now()); got < 24*time.Hour-2*time.Second || got > 24*time.Hour {
		t.Fatalf("default lifetime %v", got)
	}
	// validity_duration (seconds) is honoured and clamped.
	resp, err = c.CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key)), ValidityDuration: int64(30 * 24 * time.Hour / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got := parseChain(t, resp.CertChain)[0].NotAfter.Sub(clk.Now()); got < 72*time.Hour-2*time.Second || got > 72*time.Hour {
		t.Fatalf("requested 30d, got %v, want the 72h maximum", got)
	}

	// Bad requests.
	_, err = c.CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{Csr: "garbage"})
	wantCode(t, err, codes.InvalidArgument, "invalid certificate signing request")
	_, err = c.CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{})
	wantCode(t, err, codes.InvalidArgument, "csr is empty")
	_, err = c.CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key)), ValidityDuration: -1})
	wantCode(t, err, codes.InvalidArgument, "negative")

	// Unauthenticated callers, before the CSR is even looked at.
	csr := string(forgedCSR(t, key))
	_, err = c.CreateCertificate(context.Background(), &securitypb.IstioCertificateRequest{Csr: csr})
	wantCode(t, err, codes.Unauthenticated, "no credentials")
	_, err = c.CreateCertificate(withToken("wbt_0123456789abcdef.AAAA"), &securitypb.IstioCertificateRequest{Csr: csr})
	wantCode(t, err, codes.Unauthenticated, "invalid or revoked bootstrap token")
	_, err = c.CreateCertificate(withToken("eyJhbGciOiJSUzI1NiJ9.e30.sig"), &securitypb.IstioCertificateRequest{Csr: csr})
	wantCode(t, err, codes.Unauthenticated, "not a weft bootstrap token")
	_, err = c.CreateCertificate(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic abc"), &securitypb.IstioCertificateRequest{Csr: csr})
	wantCode(t, err, codes.Unauthenticated, "Bearer")
	clk.Add(time.Hour)
	_, err = c.CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{Csr: csr})
	wantCode(t, err, codes.Unauthenticated, "bootstrap token expired")

	if n := counterValue(t, reg, "token", "issued"); n != 2 {
		t.Errorf("weft_ca_csr_total{token,issued} = %v, want 2", n)
	}
	if n := counterValue(t, reg, "none", "unauthenticated"); n != 2 {
		t.Errorf("weft_ca_csr_total{none,unauthenticated} = %v, want 2", n)
	}
}

func TestRenewalWithWorkloadCertificate(t *testing.T) {
	a, st, _ := newAuthority(t, Options{})
	putWorkloadGroup(t, st, "bookinfo", "ratings", "ratings-sa")
	env := startService(t, a, nil, nil)
	tok, _, err := a.IssueBootstrapToken(context.Background(), "bookinfo", "ratings", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	resp, err := env.client(t, nil).CreateCertificate(withToken(tok), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key))})
	if err != nil {
		t.Fatal(err)
	}
	// Renew with the certificate alone (the token may be long gone), with a
	// new key and a CSR that claims to be someone else.
	if err := a.RevokeBootstrapToken(context.Background(), tok[4:20]); err != nil {
		t.Fatal(err)
	}
	c := env.client(t, tlsCert(t, resp.CertChain, key))
	key2 := newKey(t)
	resp2, err := c.CreateCertificate(context.Background(), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key2))})
	if err != nil {
		t.Fatal(err)
	}
	leaf := verifyLeaf(t, a, resp2.CertChain)
	wantOnlyIdentity(t, leaf, DefaultTrustDomain, Identity{"bookinfo", "ratings-sa"})
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key2.PublicKey) {
		t.Fatal("renewed certificate is not for the CSR's key")
	}
}

func TestForeignCertificateRefused(t *testing.T) {
	a, _, _ := newAuthority(t, Options{})
	// Another mesh with its own root issues a certificate claiming an
	// identity here.
	other, _, _ := newAuthority(t, Options{})
	key := newKey(t)
	foreign, err := other.Sign(forgedCSR(t, key), Identity{"kube-system", "admin"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.IdentityFromCertificate(parseChain(t, foreign)); err == nil || !strings.Contains(err.Error(), "not issued by this mesh's CA") {
		t.Fatalf("IdentityFromCertificate(foreign) err = %v", err)
	}
	// With the ServerTLS config the handshake itself fails.
	env := startService(t, a, nil, nil)
	_, err = env.client(t, tlsCert(t, foreign, key)).CreateCertificate(context.Background(), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key))})
	if err == nil {
		t.Fatal("a certificate from another root was accepted")
	}
	// Even behind a listener that does not verify client certificates, the
	// service refuses it.
	lax := tls.RequireAnyClientCert
	env = startService(t, a, nil, &lax)
	_, err = env.client(t, tlsCert(t, foreign, key)).CreateCertificate(context.Background(), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, key))})
	wantCode(t, err, codes.Unauthenticated, "not issued by this mesh's CA")

	// A certificate of this CA for another trust domain's ID, or a non-SPIFFE
	// leaf, is refused too.
	td := makeCA(t, "x", nil, true)
	if _, err := a.IdentityFromCertificate([]*x509.Certificate{td.cert}); err == nil {
		t.Fatal("self-signed CA accepted as a workload certificate")
	}
}

func TestServerTLSFollowsBundle(t *testing.T) {
	a, _, _ := newAuthority(t, Options{})
	env := startService(t, a, nil, nil)
	// A workload certificate from a root that is only later added to the
	// bundle: refused before, accepted after (rotation without restart).
	newRoot := makeCA(t, "new root", nil, true)
	other := &Authority{opts: a.opts, ca: newSigningCA([]*x509.Certificate{newRoot.cert}, newRoot.key, []*x509.Certificate{newRoot.cert}, true)}
	other.swapBundle(nil, 0)
	key := newKey(t)
	chain, err := other.Sign(forgedCSR(t, key), Identity{"ns", "sa"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	req := &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, newKey(t)))}
	if _, err := env.client(t, tlsCert(t, chain, key)).CreateCertificate(context.Background(), req); err == nil {
		t.Fatal("certificate from a root outside the bundle accepted")
	}
	if err := a.AddRoot(context.Background(), []byte(certPEM(newRoot.cert.Raw))); err != nil {
		t.Fatal(err)
	}
	resp, err := env.client(t, tlsCert(t, chain, key)).CreateCertificate(context.Background(), req)
	if err != nil {
		t.Fatalf("renewal with a certificate of an added root: %v", err)
	}
	wantOnlyIdentity(t, verifyLeaf(t, a, resp.CertChain), DefaultTrustDomain, Identity{"ns", "sa"})
	b, _ := pem.Decode([]byte(resp.CertChain[len(resp.CertChain)-1]))
	if rc, _ := x509.ParseCertificate(b.Bytes); Fingerprint(rc) != Fingerprint(a.SigningCertificate()) {
		t.Fatal("renewed certificate not signed by the current signing root")
	}
}

// counterValue reads weft_ca_csr_total{method,result} from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, method, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "weft_ca_csr_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["method"] == method && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestRenewalFromTrustDomainAlias: during a trust domain migration
// (meshConfig.trustDomainAliases), a workload certificate this CA issued
// in the earlier trust domain still authenticates its workload, and
// renewing it gives a certificate in the CA's trust domain. A CA without
// the alias refuses it.
func TestRenewalFromTrustDomainAlias(t *testing.T) {
	a, _, _ := newAuthority(t, Options{TrustDomain: "new.example", TrustDomainAliases: []string{"old.example"}})
	old := &Authority{opts: a.opts, ca: a.ca}
	old.opts.TrustDomain = "old.example"
	key := newKey(t)
	chain, err := old.Sign(forgedCSR(t, key), Identity{"bookinfo", "ratings-sa"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := a.IdentityFromCertificate(parseChain(t, chain)); err != nil || id != (Identity{"bookinfo", "ratings-sa"}) {
		t.Fatalf("IdentityFromCertificate(alias) = %+v, %v", id, err)
	}
	env := startService(t, a, nil, nil)
	resp, err := env.client(t, tlsCert(t, chain, key)).CreateCertificate(context.Background(), &securitypb.IstioCertificateRequest{Csr: string(forgedCSR(t, newKey(t)))})
	if err != nil {
		t.Fatal(err)
	}
	wantOnlyIdentity(t, verifyLeaf(t, a, resp.CertChain), "new.example", Identity{"bookinfo", "ratings-sa"})

	strict := &Authority{opts: a.opts, ca: a.ca}
	strict.opts.TrustDomainAliases = nil
	strict.swapBundle(nil, 0)
	if _, err := strict.IdentityFromCertificate(parseChain(t, chain)); err == nil || !strings.Contains(err.Error(), `trust domain "old.example", this CA serves "new.example"`) {
		t.Fatalf("IdentityFromCertificate(alias) without the alias: err = %v", err)
	}
	dir := t.TempDir()
	bad := Options{TrustDomainAliases: []string{"Old.Example"}, KEKFile: filepath.Join(dir, KEKFileName)}
	if _, err := New(context.Background(), openStore(t, dir), bad, quiet); err == nil || !strings.Contains(err.Error(), `invalid trust domain alias "Old.Example"`) {
		t.Errorf("an invalid trust domain alias: err = %v", err)
	}
}
