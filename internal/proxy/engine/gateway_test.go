package engine

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// testCA issues the gateway tests' certificates (ECDSA P-256).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var testSerial atomic.Int64

func newTestCA(tb testing.TB, cn string) *testCA {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(testSerial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate (for the usage, with the DNS names)
// and its PEM key.
func (ca *testCA) issue(tb testing.TB, cn string, usage x509.ExtKeyUsage, dns ...string) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(testSerial.Add(1)), Subject: pkix.Name{CommonName: cn}, DNSNames: dns,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// clientCert is a client certificate for tls.Config.Certificates, with
// the DNS SAN <cn>.client.test.
func (ca *testCA) clientCert(tb testing.TB, cn string) tls.Certificate {
	tb.Helper()
	c, k := ca.issue(tb, cn, x509.ExtKeyUsageClientAuth, cn+".client.test")
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// replaceFile writes data to path the way certificates are rotated: a
// new file renamed over the old one.
func replaceFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// mountSecret writes a Kubernetes secret's files into dir/name as the
// kubelet mounts a secret volume: files in a timestamped directory,
// "..data" pointing at it, and each key a symlink through "..data". A
// second call swaps "..data" atomically, as an update does.
func mountSecret(tb testing.TB, dir, name string, files map[string][]byte) {
	tb.Helper()
	vol := filepath.Join(dir, name)
	ts := fmt.Sprintf("..%d", testSerial.Add(1))
	if err := os.MkdirAll(filepath.Join(vol, ts), 0o755); err != nil {
		tb.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(vol, ts, k), v, 0o600); err != nil {
			tb.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(vol, k)); err != nil && !os.IsExist(err) {
			tb.Fatal(err)
		}
	}
	if err := os.Symlink(ts, filepath.Join(vol, "..data_tmp")); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		tb.Fatal(err)
	}
}

// gatewayTLS is a filter chain's TLS context as istiod writes it for a
// Gateway server: the certificate and, when root is set, the combined
// validation context, both by SDS name.
func gatewayTLS(cert, root string, require bool) *tlsv3.DownstreamTlsContext {
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"h2", "http/1.1"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsConfig(cert)},
	}}
	if require {
		ctx.RequireClientCertificate = wrapperspb.Bool(true)
	}
	if root != "" {
		ctx.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{}, ValidationContextSdsSecretConfig: sdsConfig(root)}}
	}
	return ctx
}

// gatewayChain is a filter chain routing every request to cluster,
// terminating TLS with tlsCtx for the server names, or plaintext
// (transport_protocol raw_buffer) without tlsCtx.
func gatewayChain(name, cluster string, tlsCtx *tlsv3.DownstreamTlsContext, serverNames ...string) *listenerv3.FilterChain {
	fc := httpListener(name, netip.AddrPort{}, cluster, tlsCtx).FilterChains[0]
	if tlsCtx == nil {
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer"}
	}
	fc.FilterChainMatch.ServerNames = serverNames
	return fc
}

// editChainHCM edits a filter chain's connection manager.
func editChainHCM(tb testing.TB, fc *listenerv3.FilterChain, edit func(*hcmv3.HttpConnectionManager)) *listenerv3.FilterChain {
	tb.Helper()
	l := &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{fc}}
	withHCM(tb, l, edit)
	return fc
}

// logRecords keeps the engine's log records.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
	// added is signalled (without blocking) after each record.
	added chan struct{}
}

func newLogRecords() *logRecords { return &logRecords{added: make(chan struct{}, 1)} }

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	select {
	case l.added <- struct{}{}:
	default:
	}
	return nil
}

// waitFor waits until n records at level mention s: the engine logs a
// failed handshake after the client has seen it fail.
func (l *logRecords) waitFor(tb testing.TB, level slog.Level, s string, n int) {
	tb.Helper()
	deadline := time.After(10 * time.Second)
	for l.count(level, s) < n {
		select {
		case <-l.added:
		case <-deadline:
			tb.Fatalf("%d %v records mention %q, want %d", l.count(level, s), level, s, n)
		}
	}
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// count returns how many records at level mention s (message or
// attributes).
func (l *logRecords) count(level slog.Level, s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		text := r.Message
		r.Attrs(func(a slog.Attr) bool {
			text += " " + a.Value.String()
			return true
		})
		if r.Level == level && strings.Contains(text, s) {
			n++
		}
	}
	return n
}

// startGateway serves one listener to one cluster with opts, logging
// into the returned records.
func startGateway(tb testing.TB, opts Options, l *listenerv3.Listener, c *clusterv3.Cluster) *logRecords {
	tb.Helper()
	logs := newLogRecords()
	e := New(slog.New(logs), opts)
	s := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{l.GetName(): l}, Clusters: map[string]*clusterv3.Cluster{c.GetName(): c}}
	if err := e.Apply(s); err != nil {
		e.shutdown()
		tb.Fatal(err)
	}
	tb.Cleanup(e.shutdown)
	return logs
}

// countingBackend answers 200 "ok" and counts requests.
func countingBackend(tb testing.TB) (netip.AddrPort, *atomic.Int64) {
	tb.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	tb.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), &n
}

// httpsGet requests https://<sni>/ from the listener at addr on a new
// connection, returning the certificate the server presented.
func httpsGet(addr netip.AddrPort, sni string, cfg *tls.Config) (*x509.Certificate, error) {
	cfg = cfg.Clone()
	cfg.ServerName = sni
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
		}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + sni + "/")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		return nil, fmt.Errorf("status %d %q", resp.StatusCode, body)
	}
	return resp.TLS.PeerCertificates[0], nil
}

// TestGatewayCredentials: an ingress gateway's listener on a real port,
// as istiod writes it for a Gateway with several servers: TLS chains
// told apart by SNI, each with its own credential, and a plaintext chain.
// A file-cert credential (a), a Kubernetes secret with MUTUAL client
// verification (b), a credential whose files are missing (c); rotation
// by replacing files; a missing file fails only its own chain, with a
// warning naming the file.
func TestGatewayCredentials(t *testing.T) {
	backend, hits := countingBackend(t)
	const svc = "outbound|8080||web.default.svc.cluster.local"
	serverCA, clientCA, otherCA := newTestCA(t, "server ca"), newTestCA(t, "client ca"), newTestCA(t, "other ca")
	files, creds := t.TempDir(), t.TempDir()

	aCert, aKey := filepath.Join(files, "a", "tls.crt"), filepath.Join(files, "a", "tls.key")
	c, k := serverCA.issue(t, "a-v1", x509.ExtKeyUsageServerAuth, "a.example.com")
	replaceFile(t, aCert, c)
	replaceFile(t, aKey, k)
	c, k = serverCA.issue(t, "b-v1", x509.ExtKeyUsageServerAuth, "b.example.com")
	mountSecret(t, creds, "b-cred", map[string][]byte{"tls.crt": c, "tls.key": k})
	mountSecret(t, creds, "b-cred-cacert", map[string][]byte{"ca.crt": clientCA.pem})
	missing := filepath.Join(files, "c", "tls.crt")

	addr := freeAddr(t)
	l := &listenerv3.Listener{Name: "0.0.0.0_8443", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{
		gatewayChain("a", svc, gatewayTLS("file-cert:"+aCert+"~"+aKey, "", false), "a.example.com"),
		gatewayChain("b", svc, gatewayTLS("kubernetes://b-cred", "kubernetes://b-cred-cacert", true), "b.example.com"),
		gatewayChain("c", svc, gatewayTLS("file-cert:"+missing+"~"+filepath.Join(files, "c", "tls.key"), "", false), "c.example.com"),
		gatewayChain("plaintext", svc, nil),
	}}
	logs := startGateway(t, Options{CredentialDir: creds}, l, staticCluster(svc, backend, false))

	// (a) file-cert, no client certificate asked for.
	asked := false
	client := &tls.Config{RootCAs: serverCA.pool(), GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		asked = true
		return &tls.Certificate{}, nil
	}}
	if got, err := httpsGet(addr, "a.example.com", client); err != nil || got.Subject.CommonName != "a-v1" {
		t.Fatalf("a.example.com: %v, served %v", err, got)
	}
	if asked {
		t.Error("a chain without a validation context asked for a client certificate")
	}

	// (b) kubernetes:// credential, MUTUAL against its -cacert bundle.
	mutual := &tls.Config{RootCAs: serverCA.pool(), Certificates: []tls.Certificate{clientCA.clientCert(t, "client")}}
	if got, err := httpsGet(addr, "b.example.com", mutual); err != nil || got.Subject.CommonName != "b-v1" {
		t.Fatalf("b.example.com with a client certificate: %v, served %v", err, got)
	}
	if _, err := httpsGet(addr, "b.example.com", &tls.Config{RootCAs: serverCA.pool()}); err == nil {
		t.Error("b.example.com (MUTUAL) answered a client without a certificate")
	}
	// (Sent whatever CAs the server names: crypto/tls's client would
	// otherwise keep it.)
	intruder := otherCA.clientCert(t, "intruder")
	untrusted := &tls.Config{RootCAs: serverCA.pool(), GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &intruder, nil
	}}
	if _, err := httpsGet(addr, "b.example.com", untrusted); err == nil {
		t.Error("b.example.com (MUTUAL) answered a client certificate of another CA")
	}

	// The plaintext chain on the same port; a TLS server name no chain
	// has is closed (the plaintext chain is raw_buffer only).
	resp, err := http.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("plaintext: status %d", resp.StatusCode)
	}
	if _, err := httpsGet(addr, "d.example.com", &tls.Config{InsecureSkipVerify: true}); err == nil { //nolint:gosec // test
		t.Error("a server name no chain has was served")
	}

	// (d) missing files: that chain fails, with one warning naming the
	// file (the next failure is at Debug); the others keep working.
	for range 2 {
		if _, err := httpsGet(addr, "c.example.com", &tls.Config{InsecureSkipVerify: true}); err == nil { //nolint:gosec // test
			t.Fatal("c.example.com was served without its certificate")
		}
	}
	logs.waitFor(t, slog.LevelWarn, missing, 1)
	logs.waitFor(t, slog.LevelDebug, missing, 1)
	if n := logs.count(slog.LevelWarn, missing); n != 1 {
		t.Errorf("%d warnings naming %s, want 1 (the repeated failure at Debug)", n, missing)
	}
	if _, err := httpsGet(addr, "a.example.com", client); err != nil {
		t.Fatalf("a.example.com after c failed: %v", err)
	}

	// (c) rotation: new files are served on the next handshake, with no
	// config push.
	c, k = serverCA.issue(t, "a-v2", x509.ExtKeyUsageServerAuth, "a.example.com")
	replaceFile(t, aCert, c)
	replaceFile(t, aKey, k)
	if got, err := httpsGet(addr, "a.example.com", client); err != nil || got.Subject.CommonName != "a-v2" {
		t.Fatalf("a.example.com after rotation: %v, served %v, want a-v2", err, got)
	}
	c, k = serverCA.issue(t, "b-v2", x509.ExtKeyUsageServerAuth, "b.example.com")
	mountSecret(t, creds, "b-cred", map[string][]byte{"tls.crt": c, "tls.key": k})
	if got, err := httpsGet(addr, "b.example.com", mutual); err != nil || got.Subject.CommonName != "b-v2" {
		t.Fatalf("b.example.com after the secret's update: %v, served %v, want b-v2", err, got)
	}
	// A half-written rotation (a key that does not match) fails the
	// handshake rather than serving anything else.
	c, _ = serverCA.issue(t, "a-v3", x509.ExtKeyUsageServerAuth, "a.example.com")
	replaceFile(t, aCert, c)
	if _, err := httpsGet(addr, "a.example.com", client); err == nil {
		t.Error("a.example.com was served with a certificate and a key that do not match")
	}
	logs.waitFor(t, slog.LevelWarn, "private key does not match", 1)
	if hits.Load() == 0 {
		t.Fatal("the backend saw no request")
	}
}

// TestGatewayNoCredentialDir: a chain naming a Kubernetes credential
// compiles without --credential-dir, but its handshakes fail with an
// error (logged) saying what is missing.
func TestGatewayNoCredentialDir(t *testing.T) {
	backend, _ := countingBackend(t)
	const svc = "outbound|8080||web.default.svc.cluster.local"
	addr := freeAddr(t)
	l := &listenerv3.Listener{Name: "0.0.0.0_8443", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{
		gatewayChain("k", svc, gatewayTLS("kubernetes://k-cred", "", false), "k.example.com")}}
	logs := startGateway(t, Options{}, l, staticCluster(svc, backend, false))
	if _, err := httpsGet(addr, "k.example.com", &tls.Config{InsecureSkipVerify: true}); err == nil { //nolint:gosec // test
		t.Fatal("served without a credential directory")
	}
	logs.waitFor(t, slog.LevelWarn, "--credential-dir", 1)
}

// TestGatewayRequireTLS: Istio's httpsRedirect (require_tls ALL on the
// virtual host) answers plaintext requests with a 301 to https, Host and
// target as received, without calling the upstream; requests over TLS,
// or whose trusted x-forwarded-proto says https, are routed.
func TestGatewayRequireTLS(t *testing.T) {
	backend, hits := countingBackend(t)
	const svc = "outbound|8080||web.default.svc.cluster.local"
	ca := newTestCA(t, "server ca")
	dir := t.TempDir()
	c, k := ca.issue(t, "gw", x509.ExtKeyUsageServerAuth, "gw.example.com")
	replaceFile(t, filepath.Join(dir, "cert.pem"), c)
	replaceFile(t, filepath.Join(dir, "key.pem"), k)
	requireTLS := func(edge bool) func(*hcmv3.HttpConnectionManager) {
		return func(h *hcmv3.HttpConnectionManager) {
			h.UseRemoteAddress = wrapperspb.Bool(edge)
			h.GetRouteConfig().VirtualHosts[0].RequireTls = routev3.VirtualHost_ALL
		}
	}
	for _, edge := range []bool{false, true} {
		addr := freeAddr(t)
		l := &listenerv3.Listener{Name: "0.0.0.0_8443", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{
			editChainHCM(t, gatewayChain("tls", svc, gatewayTLS("file-cert:"+filepath.Join(dir, "cert.pem")+"~"+filepath.Join(dir, "key.pem"), "", false),
				"gw.example.com"), requireTLS(edge)),
			editChainHCM(t, gatewayChain("plaintext", svc, nil), requireTLS(edge)),
		}}
		startGateway(t, Options{}, l, staticCluster(svc, backend, false))
		noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		get := func(xfp string) *http.Response {
			t.Helper()
			req, _ := http.NewRequest("GET", "http://"+addr.String()+"/a/b?c=d&e", nil)
			req.Host = "gw.example.com:8080"
			if xfp != "" {
				req.Header.Set("X-Forwarded-Proto", xfp)
			}
			resp, err := noFollow.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		before := hits.Load()
		resp := get("")
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "https://gw.example.com:8080/a/b?c=d&e" {
			t.Fatalf("edge %v: plaintext got %d Location %q, want 301 to https://gw.example.com:8080/a/b?c=d&e", edge, resp.StatusCode, resp.Header.Get("Location"))
		}
		if hits.Load() != before {
			t.Fatalf("edge %v: the redirect called the upstream", edge)
		}
		// x-forwarded-proto is the client's only where the connection
		// manager trusts it (not use_remote_address).
		if resp := get("https"); (resp.StatusCode == http.StatusOK) != !edge {
			t.Errorf("edge %v: plaintext claiming https got %d", edge, resp.StatusCode)
		}
		if _, err := httpsGet(addr, "gw.example.com", &tls.Config{RootCAs: ca.pool()}); err != nil {
			t.Errorf("edge %v: over TLS: %v", edge, err)
		}
	}
}

// TestMatchServerNames: chains told apart by SNI pick as Envoy does —
// exact name, else the longest wildcard, else a chain without server
// names — whatever their order.
func TestMatchServerNames(t *testing.T) {
	ls := &listenerSpec{chains: []*chain{
		{name: "wild", serverNames: []string{"*.example.com"}},
		{name: "wild-long", serverNames: []string{"*.b.example.com"}},
		{name: "exact", serverNames: []string{"other.test", "a.example.com"}},
		{name: "any"},
	}}
	for sni, want := range map[string]string{
		"a.example.com": "exact", "x.example.com": "wild", "x.b.example.com": "wild-long", "a.b.example.com": "wild-long",
		"example.com": "any", "": "any", "other.test": "exact",
	} {
		if ch := ls.match(netip.MustParseAddrPort("10.0.0.1:443"), sni, "tls"); ch == nil || ch.name != want {
			t.Errorf("match(%q) = %v, want %s", sni, ch, want)
		}
	}
}

// TestGatewaySDSCredentials: credentials discovery sends (SDS secrets
// kubernetes://…) are served, ahead of the --credential-dir files of the
// same name, and replaced by the next config; a secret that does not
// parse fails the config; the config dump redacts their private keys.
func TestGatewaySDSCredentials(t *testing.T) {
	backend, _ := countingBackend(t)
	const svc = "outbound|8080||web.default.svc.cluster.local"
	serverCA, clientCA := newTestCA(t, "server ca"), newTestCA(t, "client ca")
	creds := t.TempDir()
	c, k := serverCA.issue(t, "from-files", x509.ExtKeyUsageServerAuth, "s.example.com")
	mountSecret(t, creds, "s-cred", map[string][]byte{"tls.crt": c, "tls.key": k})

	addr := freeAddr(t)
	l := &listenerv3.Listener{Name: "0.0.0.0_8443", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{
		gatewayChain("s", svc, gatewayTLS("kubernetes://s-cred", "kubernetes://s-cred-cacert", true), "s.example.com")}}
	cl := staticCluster(svc, backend, false)
	e := New(slog.New(newLogRecords()), Options{CredentialDir: creds})
	t.Cleanup(e.shutdown)
	apply := func(cn string, ca []byte) error {
		cert, key := serverCA.issue(t, cn, x509.ExtKeyUsageServerAuth, "s.example.com")
		inline := func(b []byte) *corev3.DataSource {
			return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
		}
		return e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{l.GetName(): l},
			Clusters: map[string]*clusterv3.Cluster{cl.GetName(): cl},
			Secrets: map[string]*tlsv3.Secret{
				"kubernetes://s-cred": {Name: "kubernetes://s-cred", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: inline(cert), PrivateKey: inline(key)}}},
				"kubernetes://s-cred-cacert": {Name: "kubernetes://s-cred-cacert", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: inline(ca)}}},
			}})
	}
	if err := apply("from-sds-1", clientCA.pem); err != nil {
		t.Fatal(err)
	}
	mutual := &tls.Config{RootCAs: serverCA.pool(), Certificates: []tls.Certificate{clientCA.clientCert(t, "client")}}
	if got, err := httpsGet(addr, "s.example.com", mutual); err != nil || got.Subject.CommonName != "from-sds-1" {
		t.Fatalf("served %v (%v), want the certificate discovery sent", got, err)
	}
	if err := apply("from-sds-2", clientCA.pem); err != nil {
		t.Fatal(err)
	}
	if got, err := httpsGet(addr, "s.example.com", mutual); err != nil || got.Subject.CommonName != "from-sds-2" {
		t.Fatalf("served %v (%v) after the update, want from-sds-2", got, err)
	}
	if err := apply("from-sds-3", []byte("not PEM")); err == nil || !strings.Contains(err.Error(), "kubernetes://s-cred-cacert") {
		t.Fatalf("a CA bundle without certificates: %v, want the config refused naming the secret", err)
	}
	if got, err := httpsGet(addr, "s.example.com", mutual); err != nil || got.Subject.CommonName != "from-sds-2" {
		t.Fatalf("served %v (%v) after a refused update, want the last good from-sds-2", got, err)
	}
	for _, sec := range snapshotConfig(e.cur.Load().snap, nil).Secrets {
		if k := sec.GetTlsCertificate().GetPrivateKey(); k != nil && k.GetInlineString() != "[redacted]" {
			t.Errorf("the config dump shows secret %s's private key: %v", sec.GetName(), k)
		}
	}
	if e.cur.Load().snap.Secrets["kubernetes://s-cred"].GetTlsCertificate().GetPrivateKey().GetInlineBytes() == nil {
		t.Errorf("redacting the dump changed the applied secret")
	}
}
