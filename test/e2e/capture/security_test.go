package capture

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// secMesh is a control plane, client host a (productpage), server host b
// (reviews: HTTP 9080 and TCP echo 9090 behind a sidecar) and host d
// without a sidecar, in network namespaces on a bridge, with STRICT mTLS.
type secMesh struct {
	hosts, ns map[string]string
	weft      func(stdin string, args ...string) (string, error)
	certDirs  map[string]string
}

// secConfig is the mesh's config (the WorkloadGroups come with the
// sidecars); %s is host b's address.
const secConfig = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.mesh]
  addresses: [240.240.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9090, name: tcp-echo, protocol: TCP}
  endpoints:
  - {address: %s, serviceAccount: reviews, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
`

func startSecMesh(t *testing.T, prefix, subnet string, serverFlags ...string) *secMesh {
	t.Helper()
	requireNetns(t)
	buildMesh(t)
	m := &secMesh{hosts: map[string]string{"cp": subnet + ".1", "a": subnet + ".2", "b": subnet + ".3", "d": subnet + ".4"}}
	m.ns = bridgeNet(t, prefix, m.hosts)
	var data string
	data, m.weft = controlPlane(t, m.ns["cp"], append([]string{"--tls-san", m.hosts["cp"], "--xds-listen", "0.0.0.0:15012",
		"--xds-plaintext-listen", ""}, serverFlags...)...)
	if _, err := m.weft(fmt.Sprintf(secConfig, m.hosts["b"]), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	bg(t, "app-b", m.ns["b"], appBin, "echo", "-http", "0.0.0.0:9080", "-tcp", "0.0.0.0:9090", "-name", "reviews-v1")
	m.certDirs = startMTLSSidecars(t, m.ns, m.hosts, data, m.weft, productpageReviews)
	eventually(t, "meshed HTTP and TCP through both sidecars", func() error {
		out, err := m.asApp("a", "get", "-url", "http://240.240.0.10:9080/", "-n", "5")
		if err != nil || !strings.Contains(out, "reviews-v1 5") {
			return fmt.Errorf("http: %v: %s", err, out)
		}
		if out, err := m.asApp("a", "tcp", "-addr", "240.240.0.10:9090", "-msg", "meshed"); err != nil || out != "meshed\n" {
			return fmt.Errorf("tcp: %v: %q", err, out)
		}
		return nil
	})
	return m
}

// asApp runs the app binary on host h as the unprivileged app user (so
// its traffic is captured).
func (m *secMesh) asApp(h string, args ...string) (string, error) { return asApp(m.ns[h], args...) }

// conns is how many connections b's app has accepted so far.
func (m *secMesh) conns(t *testing.T) int {
	t.Helper()
	out, err := in(m.ns["b"], appBin, "fetch", "-url", "http://127.0.0.1:9999/")
	if err != nil {
		t.Fatalf("reading the app's connection count: %v %s", err, out)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("connection count %q: %v", out, err)
	}
	return n
}

// TestMeshSecurity: with STRICT mTLS, plaintext HTTP and TCP from a host
// without a sidecar, and TLS with a certificate from another root or a
// self-signed one claiming a mesh identity, are all refused before b's
// app accepts a connection. Adding the other root to the trust bundle
// (`weft ca roots add`) makes the sidecar trust it over SDS; removing it
// withdraws that. After switching to PERMISSIVE, plaintext is accepted on
// both ports while the mesh keeps working.
func TestMeshSecurity(t *testing.T) {
	m := startSecMesh(t, "weft-sec", "10.81.0")
	b := m.hosts["b"]
	dir := worldDir(t)
	spiffe := "spiffe://cluster.local/ns/default/sa/productpage"
	foreignCA := newTestCA(t, "evil root", nil, "")
	foreign := newTestCA(t, "leaf", foreignCA, spiffe)
	selfSigned := newTestCA(t, "self", nil, spiffe)
	foreignCert, foreignKey := foreign.write(t, dir, "foreign", foreignCA)
	selfCert, selfKey := selfSigned.write(t, dir, "self", nil)

	before := m.conns(t)
	probes := []struct {
		name string
		args []string
	}{
		{"plaintext HTTP", []string{"fetch", "-url", "http://" + b + ":9080/"}},
		{"plaintext TCP", []string{"tcp", "-addr", b + ":9090"}},
		{"mesh identity from another root (HTTP port)", []string{"tlsprobe", "-addr", b + ":9080", "-cert", foreignCert, "-key", foreignKey}},
		{"mesh identity from another root (TCP port)", []string{"tlsprobe", "-addr", b + ":9090", "-cert", foreignCert, "-key", foreignKey}},
		{"self-signed forged SPIFFE ID", []string{"tlsprobe", "-addr", b + ":9080", "-cert", selfCert, "-key", selfKey}},
	}
	for _, p := range probes {
		out, err := in(m.ns["d"], append([]string{appBin}, p.args...)...)
		if err == nil {
			t.Errorf("STRICT: %s from a host without a sidecar got through: %q", p.name, out)
			continue
		}
		t.Logf("STRICT: %s refused: %s", p.name, strings.TrimSpace(out))
	}
	if after := m.conns(t); after != before {
		t.Errorf("b's app accepted %d connections during the refused probes, want 0", after-before)
	}

	// Root rotation: once the foreign root joins the trust bundle, the
	// sidecar learns it over SDS (ROOTCA) and accepts certificates chaining
	// to it; removing it withdraws that trust again.
	rootFile := filepath.Join(dir, "new-root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: foreignCA.cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := m.weft("", "ca", "roots", "add", rootFile); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("weft ca roots add: %s", strings.TrimSpace(out))
	}
	eventually(t, "a certificate of the added root accepted", func() error {
		out, err := in(m.ns["d"], appBin, "tlsprobe", "-addr", b+":9080", "-cert", foreignCert, "-key", foreignKey)
		if err != nil || !strings.Contains(out, "reviews-v1") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	sum := sha256.Sum256(foreignCA.cert.Raw)
	if _, err := m.weft("", "ca", "roots", "remove", hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removed root refused again", func() error {
		if out, err := in(m.ns["d"], appBin, "tlsprobe", "-addr", b+":9080", "-cert", foreignCert, "-key", foreignKey); err == nil {
			return fmt.Errorf("still accepted: %s", out)
		}
		return nil
	})

	if _, err := m.weft(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: PERMISSIVE}
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "PERMISSIVE: plaintext HTTP and TCP accepted", func() error {
		if out, err := in(m.ns["d"], appBin, "fetch", "-url", "http://"+b+":9080/"); err != nil || out != "reviews-v1" {
			return fmt.Errorf("http: %v %q", err, out)
		}
		if out, err := in(m.ns["d"], appBin, "tcp", "-addr", b+":9090", "-msg", "plain"); err != nil || out != "plain\n" {
			return fmt.Errorf("tcp: %v %q", err, out)
		}
		return nil
	})
	// The forged identities stay refused: PERMISSIVE accepts plaintext,
	// not bad certificates.
	if out, err := in(m.ns["d"], appBin, "tlsprobe", "-addr", b+":9080", "-cert", selfCert, "-key", selfKey); err == nil {
		t.Errorf("PERMISSIVE: a self-signed forged SPIFFE ID got through: %q", out)
	}
	if out, err := m.asApp("a", "get", "-url", "http://240.240.0.10:9080/", "-n", "10"); err != nil || !strings.Contains(out, "reviews-v1 10") {
		t.Errorf("PERMISSIVE: meshed HTTP: %v %s", err, out)
	}
}

// TestCertRotationUnderLoad: the CA issues 2-minute certificates; both
// sidecars renew theirs at about half-life, at least twice each, while
// HTTP requests and new TCP connections (each a new mTLS handshake) run
// through them — with zero failed requests.
func TestCertRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 2.5 minutes")
	}
	m := startSecMesh(t, "weft-rot", "10.82.0", "--workload-cert-ttl", "2m", "--max-workload-cert-ttl", "2m")
	const load = 150 * time.Second
	type result struct {
		out string
		err error
	}
	var wg sync.WaitGroup
	results := make([]result, 2)
	for i, args := range [][]string{
		{"load", "-url", "http://240.240.0.10:9080/", "-c", "4", "-qps", "25", "-d", load.String()},
		{"load", "-tcp", "240.240.0.10:9090", "-c", "2", "-qps", "10", "-d", load.String()},
	} {
		wg.Go(func() {
			// in() bounds commands to 20s; the load runs longer.
			out, err := inFor(m.ns["a"], load+30*time.Second, append([]string{"setpriv", "--reuid=" + appUID, "--regid=" + appUID,
				"--clear-groups", appBin}, args...)...)
			results[i] = result{out, err}
		})
	}
	serials := map[string][]string{}
	lifetimes := map[string]time.Duration{}
	deadline := time.Now().Add(load)
	for time.Now().Before(deadline) {
		for _, h := range []string{"a", "b"} {
			leaf, err := readLeaf(filepath.Join(m.certDirs[h], "cert-chain.pem"))
			if err != nil {
				continue // being replaced
			}
			s := leaf.SerialNumber.String()
			if l := serials[h]; len(l) == 0 || l[len(l)-1] != s {
				serials[h] = append(l, s)
				t.Logf("%s: certificate %d, serial …%s, valid %s – %s", h, len(serials[h]), s[max(0, len(s)-6):],
					leaf.NotBefore.Format(time.TimeOnly), leaf.NotAfter.Format(time.TimeOnly))
			}
			lifetimes[h] = leaf.NotAfter.Sub(leaf.NotBefore)
		}
		time.Sleep(time.Second) // sampling files another process rewrites
	}
	wg.Wait()
	for i, r := range results {
		t.Logf("load %d: %s", i, strings.TrimSpace(r.out))
		if r.err != nil || !strings.Contains(r.out, "failed 0\n") {
			t.Errorf("load %d: %v\n%s", i, r.err, r.out)
		}
		if !strings.Contains(r.out, "ok ") || strings.Contains(r.out, "ok 0\n") {
			t.Errorf("load %d made no successful requests", i)
		}
	}
	for _, h := range []string{"a", "b"} {
		if n := len(serials[h]); n < 3 {
			t.Errorf("sidecar %s held %d certificates in %v, want at least 3 (two rotations)", h, n, load)
		}
		// The CA backdates NotBefore by a minute for clock skew.
		if l := lifetimes[h]; l != 3*time.Minute {
			t.Errorf("sidecar %s certificate lifetime %v, want 2m (+1m backdating)", h, l)
		}
	}
}

func readLeaf(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// testCA is a certificate and key made up by the test: a CA, or a leaf
// with a SPIFFE URI.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, cn string, parent *testCA, spiffe string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
	if spiffe != "" {
		u, _ := url.Parse(spiffe)
		tmpl.URIs = []*url.URL{u}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key}
}

// write stores the certificate (followed by its issuer's, if any) and key
// as PEM files and returns their paths.
func (c *testCA) write(t *testing.T, dir, name string, issuer *testCA) (certPath, keyPath string) {
	t.Helper()
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
	if issuer != nil {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issuer.cert.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// worldDir is a directory the sidecars' unprivileged UID can reach (the
// test's own temp dirs sit under a private parent).
func worldDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "weft-mtls-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// meshedHost is the workload on a host with an mTLS sidecar: WorkloadGroup
// group (labels app=<group>, service account <group>) in namespace.
type meshedHost struct{ group, namespace string }

// productpageReviews: host a runs productpage, host b reviews.
var productpageReviews = map[string]meshedHost{"a": {"productpage", "default"}, "b": {"reviews", "default"}}

// startMTLSSidecars onboards the hosts of workloads: it creates their
// WorkloadGroups and a bootstrap token each, installs capture rules and
// starts their sidecars (with the extra sidecar flags) with certificate dirs
// (returned by host), and waits until all are ready.
func startMTLSSidecars(t *testing.T, ns, hosts map[string]string, data string, weft func(string, ...string) (string, error),
	workloads map[string]meshedHost, extra ...string) (certDirs map[string]string) {
	t.Helper()
	rootCert := filepath.Join(worldDir(t), "root-cert.pem")
	caPEM, err := os.ReadFile(filepath.Join(data, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootCert, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	order := slices.Sorted(maps.Keys(workloads))
	var groups []string
	for _, h := range order {
		w := workloads[h]
		groups = append(groups, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: %s, namespace: %s}
spec:
  metadata: {labels: {app: %[1]s}}
  template: {serviceAccount: %[1]s}
`, w.group, w.namespace))
	}
	if _, err := weft(strings.Join(groups, "---\n"), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	certDirs = map[string]string{}
	for _, h := range order {
		w := workloads[h]
		tok, err := weft("", "-n", w.namespace, "workload", "token", "create", "--group", w.group, "--ttl", "1h")
		if err != nil {
			t.Fatal(err)
		}
		certDir := worldDir(t)
		if err := os.Chmod(certDir, 0o777); err != nil {
			t.Fatal(err)
		}
		certDirs[h] = certDir
		if out, err := in(ns[h], proxyBin, "iptables", "-u", proxyUID, "--owner", "host-"+h); err != nil {
			t.Fatalf("iptables on %s: %v\n%s", h, err, out)
		}
		bg(t, "sidecar-"+h, ns[h], append([]string{"setpriv", "--reuid=" + proxyUID, "--regid=" + proxyUID, "--clear-groups",
			proxyBin, "sidecar", "--ip", hosts[h], "--name", w.group + "-1", "-n", w.namespace, "--labels", "app=" + w.group,
			"--service-account", w.group, "--discovery-address", hosts["cp"] + ":15012", "--ca-root-file", rootCert,
			"--bootstrap-token", strings.TrimSpace(tok), "--cert-dir", certDir}, extra...)...)
	}
	waitSidecarsReady(t, ns, order...)
	return certDirs
}
