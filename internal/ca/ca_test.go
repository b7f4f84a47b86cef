package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSelfSignedRootCreatedOnceAndReused(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, KEKFileName)
	st, err := openBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	a1, err := New(context.Background(), st, Options{KEKFile: kek}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	first := Fingerprint(a1.SigningCertificate())
	if a1.Plugged() {
		t.Fatal("self-signed root reported as plugged-in")
	}
	if got := time.Until(a1.SigningCertificate().NotAfter); got < DefaultRootTTL-48*time.Hour || got > DefaultRootTTL {
		t.Fatalf("root lifetime %v, want about %v", got, DefaultRootTTL)
	}
	fi, err := os.Stat(kek)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", KEKFileName, fi.Mode().Perm())
	}
	st.Close()

	// Restart on the same store: same root, nothing new written.
	st2 := openStore(t, dir)
	rev, _ := st2.Revision(context.Background())
	a2, err := New(context.Background(), st2, Options{KEKFile: kek}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if got := Fingerprint(a2.SigningCertificate()); got != first {
		t.Fatalf("root changed across restart: %s, was %s", got, first)
	}
	if rev2, _ := st2.Revision(context.Background()); rev2 != rev {
		t.Fatalf("restart wrote to the store (revision %d -> %d)", rev, rev2)
	}
	if roots := a2.Roots(); len(roots) != 1 {
		t.Fatalf("trust bundle has %d roots, want 1", len(roots))
	}
}

func TestRacingReplicasConvergeOnOneRoot(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	kek := filepath.Join(dir, KEKFileName)
	const n = 4
	fps := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := New(context.Background(), st, Options{KEKFile: kek}, quiet)
			if err != nil {
				errs[i] = err
				return
			}
			fps[i] = Fingerprint(a.SigningCertificate())
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if fps[i] != fps[0] {
			t.Fatalf("replica %d uses root %s, replica 0 %s", i, fps[i], fps[0])
		}
	}
}

func TestRootKeyEncryptedAtRest(t *testing.T) {
	a, st, dir := newAuthority(t, Options{})
	kv, err := st.Get(context.Background(), RootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.ca.key)
	if err != nil {
		t.Fatal(err)
	}
	val := string(kv.Value)
	for _, leak := range []string{"PRIVATE KEY", string(keyDER), base64.StdEncoding.EncodeToString(keyDER),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))} {
		if strings.Contains(val, leak) {
			t.Fatalf("stored root contains the private key in the clear")
		}
	}
	if !strings.Contains(val, `"alg":"AES-256-GCM"`) {
		t.Fatalf("stored root does not name its encryption: %s", val)
	}

	// Another replica with a different ca-kek cannot use it, and says why.
	other := filepath.Join(t.TempDir(), KEKFileName)
	if _, err := loadKEK(other, true); err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), st, Options{KEKFile: other}, quiet)
	if err == nil || !strings.Contains(err.Error(), "another key-encryption key") {
		t.Fatalf("wrong ca-kek: err = %v, want a clear refusal", err)
	}
	// A replica without the file is told to copy it.
	_, err = New(context.Background(), st, Options{KEKFile: filepath.Join(t.TempDir(), KEKFileName)}, quiet)
	if err == nil || !strings.Contains(err.Error(), "copy "+KEKFileName) {
		t.Fatalf("missing ca-kek: err = %v, want advice to copy it", err)
	}
	// A tampered ciphertext is refused.
	tampered := strings.Replace(val, `"key":"`, `"key":"AAAA`, 1)
	if _, err := st.Update(context.Background(), RootKey, []byte(tampered), 0); err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), st, Options{KEKFile: filepath.Join(dir, KEKFileName)}, quiet)
	if err == nil || !strings.Contains(err.Error(), "decrypting root key") {
		t.Fatalf("tampered root: err = %v", err)
	}
}

func TestSignIgnoresCSRIdentity(t *testing.T) {
	a, _, _ := newAuthority(t, Options{TrustDomain: "mesh.example"})
	id := Identity{Namespace: "bookinfo", ServiceAccount: "ratings"}
	chain, err := a.Sign(forgedCSR(t, newKey(t)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != a.Roots()[0] {
		t.Fatalf("chain has %d certificates, want leaf and root (root last)", len(chain))
	}
	leaf := verifyLeaf(t, a, chain)
	wantOnlyIdentity(t, leaf, "mesh.example", id)
	if leaf.URIs[0].String() != "spiffe://mesh.example/ns/bookinfo/sa/ratings" {
		t.Fatalf("SPIFFE ID %s", leaf.URIs[0])
	}
	// DER CSRs work too.
	b, _ := pem.Decode(forgedCSR(t, newKey(t)))
	if _, err := a.Sign(b.Bytes, id, 0); err != nil {
		t.Fatalf("DER CSR: %v", err)
	}
}

func TestSignRejectsBadInput(t *testing.T) {
	a, _, _ := newAuthority(t, Options{})
	id := Identity{Namespace: "ns", ServiceAccount: "sa"}
	good := forgedCSR(t, newKey(t))
	b, _ := pem.Decode(good)
	flipped := append([]byte(nil), b.Bytes...)
	flipped[len(flipped)-3] ^= 0xff // corrupt the signature
	for name, csr := range map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("not a csr"),
		"bad pem":   []byte("-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n"),
		"wrong pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes}),
		"bad sig":   flipped,
	} {
		if _, err := a.Sign(csr, id, 0); !errors.Is(err, ErrInvalidCSR) {
			t.Errorf("%s: err = %v, want ErrInvalidCSR", name, err)
		}
	}
	for _, bad := range []Identity{{"", "sa"}, {"ns", ""}, {"Ns", "sa"}, {"ns/x", "sa"}, {"ns", "sa/y"}} {
		if _, err := a.Sign(good, bad, 0); !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("identity %+v: err = %v, want ErrInvalidIdentity", bad, err)
		}
	}
	if _, err := a.Sign(good, id, -time.Second); !errors.Is(err, ErrInvalidTTL) {
		t.Errorf("negative ttl: err = %v", err)
	}
}

func TestSignTTLClamping(t *testing.T) {
	clk := newClock()
	a, _, _ := newAuthority(t, Options{Clock: clk.Now, MaxWorkloadTTL: 48 * time.Hour, RootTTL: 30 * 24 * time.Hour})
	id := Identity{Namespace: "ns", ServiceAccount: "sa"}
	lifetime := func(ttl time.Duration) time.Duration {
		t.Helper()
		chain, err := a.Sign(forgedCSR(t, newKey(t)), id, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return parseChain(t, chain)[0].NotAfter.Sub(clk.Now().Truncate(time.Second))
	}
	near := func(got, want time.Duration) bool { return got >= want-time.Second && got <= want+time.Second }
	if got := lifetime(0); !near(got, 24*time.Hour) {
		t.Errorf("default lifetime %v, want 24h", got)
	}
	if got := lifetime(time.Hour); !near(got, time.Hour) {
		t.Errorf("1h lifetime %v", got)
	}
	if got := lifetime(30 * 24 * time.Hour); !near(got, 48*time.Hour) {
		t.Errorf("30d request gave %v, want the 48h maximum", got)
	}
	// Near the end of the root's life, leaves never outlive it.
	clk.Add(30*24*time.Hour - 3*time.Hour)
	rootEnd := a.SigningCertificate().NotAfter
	chain, err := a.Sign(forgedCSR(t, newKey(t)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := parseChain(t, chain)[0].NotAfter; !got.Equal(rootEnd) {
		t.Errorf("leaf expires %v, want the root's expiry %v", got, rootEnd)
	}
	clk.Add(4 * time.Hour)
	if _, err := a.Sign(forgedCSR(t, newKey(t)), id, 0); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("signing with an expired root: err = %v", err)
	}
}

func TestRotationBundle(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	kek := filepath.Join(dir, KEKFileName)
	a, err := New(context.Background(), st, Options{KEKFile: kek}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	replica, err := New(context.Background(), st, Options{KEKFile: kek}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { replica.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	newRoot := makeCA(t, "new root", nil, true)
	if err := a.AddRoot(context.Background(), newRoot.pem()); err != nil {
		t.Fatal(err)
	}
	if err := a.AddRoot(context.Background(), newRoot.pem()); err != nil { // idempotent
		t.Fatal(err)
	}
	roots := a.Roots()
	if len(roots) != 2 || roots[0] != certPEM(a.SigningCertificate().Raw) || roots[1] != string(newRoot.pem()) {
		t.Fatalf("bundle after AddRoot = %d roots, want old then new", len(roots))
	}
	waitFor(t, func() bool { return len(replica.Roots()) == 2 }, "the other replica to see the new root")

	// A workload certificate signed by the new root's CA verifies against
	// the bundle, and so does one from the current root.
	leafNew := makeCA(t, "leaf", &newRoot, false)
	pool := x509.NewCertPool()
	for _, r := range replica.RootCertificates() {
		pool.AddCert(r)
	}
	if _, err := leafNew.cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatalf("cert from the new root does not verify against the bundle: %v", err)
	}

	if err := a.AddRoot(context.Background(), makeCA(t, "leaf", nil, false).pem()); err == nil {
		t.Error("AddRoot accepted a non-CA certificate")
	}
	if err := a.RemoveRoot(context.Background(), Fingerprint(a.SigningCertificate())); !errors.Is(err, ErrUnknownRoot) {
		t.Errorf("removing the signing root: err = %v", err)
	}
	if err := a.RemoveRoot(context.Background(), "00"); !errors.Is(err, ErrUnknownRoot) {
		t.Errorf("removing an unknown root: err = %v", err)
	}
	if err := a.RemoveRoot(context.Background(), Fingerprint(newRoot.cert)); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Roots()); n != 1 {
		t.Fatalf("bundle after RemoveRoot has %d roots", n)
	}
	waitFor(t, func() bool { return len(replica.Roots()) == 1 }, "the other replica to drop the root")
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func TestSPIFFEIDParsing(t *testing.T) {
	a, _, _ := newAuthority(t, Options{})
	chain, err := a.Sign(forgedCSR(t, newKey(t)), Identity{"ns", "sa.v1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	td, id, err := ParseSPIFFEID(parseChain(t, chain)[0].URIs[0])
	if err != nil || td != "cluster.local" || id != (Identity{"ns", "sa.v1"}) {
		t.Fatalf("ParseSPIFFEID = %q %+v %v", td, id, err)
	}
	for _, bad := range []string{"https://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a", "spiffe://cluster.local/ns/a/sa/b/c", "spiffe:///ns/a/sa/b"} {
		u, _ := parseURL(bad)
		if _, _, err := ParseSPIFFEID(u); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
	if _, err := New(context.Background(), nil, Options{TrustDomain: "Bad/Domain"}, quiet); err == nil {
		t.Error("invalid trust domain accepted")
	}
}

func TestRootsHandler(t *testing.T) {
	a, _, _ := newAuthority(t, Options{})
	srv := httptest.NewServer(a.RootsHandler())
	defer srv.Close()
	list := func() []RootInfo {
		t.Helper()
		resp, err := http.Get(srv.URL + RootsPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ Roots []RootInfo }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return out.Roots
	}
	if got := list(); len(got) != 1 || got[0].Extra || got[0].Fingerprint != Fingerprint(a.SigningCertificate()) {
		t.Fatalf("GET = %+v", got)
	}
	newRoot := makeCA(t, "new", nil, true)
	resp, err := http.Post(srv.URL+RootsPath, "application/x-pem-file", bytes.NewReader(newRoot.pem()))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST = %v %v", resp, err)
	}
	if resp, _ := http.Post(srv.URL+RootsPath, "application/x-pem-file", strings.NewReader("junk")); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("POST junk = %d", resp.StatusCode)
	}
	got := list()
	if len(got) != 2 || !got[1].Extra || got[1].Fingerprint != Fingerprint(newRoot.cert) {
		t.Fatalf("GET after POST = %+v", got)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+RootsPath+"/"+got[1].Fingerprint, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE = %v %v", resp, err)
	}
	req, _ = http.NewRequest(http.MethodDelete, srv.URL+RootsPath+"/"+got[0].Fingerprint, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("DELETE signing root = %v %v", resp, err)
	}
}
