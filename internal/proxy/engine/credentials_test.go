package engine

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// compileTLS compiles ctx as a filter chain's transport socket.
func compileTLS(tb testing.TB, ctx *tlsv3.DownstreamTlsContext) (*downstreamTLS, error) {
	tb.Helper()
	a, err := anypb.New(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return compileDownstreamTLS(&corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}})
}

// TestDownstreamTLSNames: the SDS names a chain may use, and the reasons
// others are refused (NACK) when the config is compiled.
func TestDownstreamTLSNames(t *testing.T) {
	for _, tc := range []struct {
		cert, root string
		require    bool
		kinds      [2]secretKind
	}{
		{"default", "ROOTCA", true, [2]secretKind{secretMesh, secretMesh}},
		{"file-cert:/etc/gw/tls.crt~/etc/gw/tls.key", "", false, [2]secretKind{secretFiles, secretNone}},
		{"file-cert:/etc/gw/tls.crt~/etc/gw/tls.key", "file-root:/etc/gw/ca.crt", true, [2]secretKind{secretFiles, secretFiles}},
		{"kubernetes://gw-cred", "kubernetes://gw-cred-cacert", true, [2]secretKind{secretCredential, secretCredential}},
		{"kubernetes://gw-cred", "ROOTCA", true, [2]secretKind{secretCredential, secretMesh}},
		{"default", "file-root:/etc/gw/ca.crt", false, [2]secretKind{secretMesh, secretFiles}},
	} {
		d, err := compileTLS(t, gatewayTLS(tc.cert, tc.root, tc.require))
		if err != nil {
			t.Errorf("%s / %s: %v", tc.cert, tc.root, err)
			continue
		}
		if d.cert.kind != tc.kinds[0] || d.root.kind != tc.kinds[1] {
			t.Errorf("%s / %s: kinds %d %d, want %v", tc.cert, tc.root, d.cert.kind, d.root.kind, tc.kinds)
		}
	}
	d, _ := compileTLS(t, gatewayTLS("file-cert:/a/c.pem~/a/k.pem", "", false))
	if d.cert.cert != "/a/c.pem" || d.cert.key != "/a/k.pem" {
		t.Errorf("file-cert paths %q %q", d.cert.cert, d.cert.key)
	}

	withCtx := func(edit func(*tlsv3.DownstreamTlsContext)) *tlsv3.DownstreamTlsContext {
		ctx := gatewayTLS("kubernetes://gw-cred", "kubernetes://gw-cred-cacert", true)
		edit(ctx)
		return ctx
	}
	for _, tc := range []struct {
		name string
		ctx  *tlsv3.DownstreamTlsContext
		want string
	}{
		{"spiffe name", gatewayTLS("spiffe://cluster.local/ns/a/sa/b", "", false), `use "default" (the workload certificate), "file-cert:`},
		{"gateway api name", gatewayTLS("kubernetes-gateway://ns/cred", "", false), "kubernetes://<credential name>"},
		{"relative cert", gatewayTLS("file-cert:certs/tls.crt~/etc/tls.key", "", false), `path "certs/tls.crt" is not absolute`},
		{"no key", gatewayTLS("file-cert:/etc/tls.crt", "", false), "want file-cert:<cert path>~<key path>"},
		{"relative root", gatewayTLS("default", "file-root:ca.crt", true), `path "ca.crt" is not absolute`},
		{"crl", gatewayTLS("default", "file-root:/etc/ca.crt~/etc/crl.pem", true), "revocation lists"},
		{"unknown root", gatewayTLS("default", "my-roots", true), `use "ROOTCA" (the mesh roots), "file-root:`},
		{"empty credential", gatewayTLS("kubernetes://", "", false), "the credential name is empty"},
		{"other namespace", gatewayTLS("kubernetes://ns/cred", "", false), "another namespace"},
		{"dot dot", gatewayTLS("kubernetes://..", "", false), "not a valid secret name"},
		{"client cert without roots", gatewayTLS("kubernetes://gw-cred", "", true), "require_client_certificate needs a validation context"},
		{"two certificates", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsCertificateSdsSecretConfigs = append(c.CommonTlsContext.TlsCertificateSdsSecretConfigs, sdsConfig("default"))
		}), "exactly one SDS certificate"},
		{"inline certificate", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{}}
		}), "exactly one SDS certificate"},
		{"static validation context", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}
		}), "validation context *tlsv3.CommonTlsContext_ValidationContext is not supported"},
		{"client check weft-proxy does not make", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.OnlyVerifyLeafCertCrl = true
		}), "default_validation_context: only_verify_leaf_cert_crl is not supported"},
		{"SAN type", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_OTHER_NAME, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "client"}}}}
		}), "san_type OTHER_NAME is not supported"},
		{"SPKI pin", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.VerifyCertificateSpki = []string{"not a pin"}
		}), `verify_certificate_spki "not a pin"`},
		{"hash pin", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.VerifyCertificateHash = []string{"ab:cd"}
		}), `verify_certificate_hash "ab:cd"`},
		{"certificate provider", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsCertificateProviderInstance = &tlsv3.CertificateProviderPluginInstance{InstanceName: "x"}
		}), "certificate providers"},
		{"must staple", withCtx(func(c *tlsv3.DownstreamTlsContext) { c.OcspStaplePolicy = tlsv3.DownstreamTlsContext_MUST_STAPLE }), "MUST_STAPLE"},
		{"signature algorithms", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{SignatureAlgorithms: []string{"ecdsa_secp256r1_sha256"}}
		}), "signature_algorithms and compliance_policies are not supported"},
		{"unknown cipher", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{CipherSuites: []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "PSK-AES128-CBC-SHA"}}
		}), `cipher suite "PSK-AES128-CBC-SHA" is not known`},
		{"unknown curve", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{EcdhCurves: []string{"brainpoolP256r1"}}
		}), `ecdh curve "brainpoolP256r1" is not supported`},
		{"max below min", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_2}
		}), "tls_maximum_protocol_version TLSv1_2 is below the minimum TLS 1.3"},
		{"max below default min", withCtx(func(c *tlsv3.DownstreamTlsContext) {
			c.CommonTlsContext.TlsParams = &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_1}
		}), "below the minimum TLS 1.2 (TLS_AUTO is TLSv1_2)"},
	} {
		_, err := compileTLS(t, tc.ctx)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// TestCredentialDirLayout: where a kubernetes:// credential's files are
// found: a TLS secret's tls.crt/tls.key, a generic secret's cert/key; the
// CA bundle in the -cacert secret when it is mounted, else beside the
// certificate, as ca.crt or cacert.
func TestCredentialDirLayout(t *testing.T) {
	dir := t.TempDir()
	touch := func(rel string) {
		t.Helper()
		replaceFile(t, filepath.Join(dir, rel), []byte("x"))
	}
	touch("tls/tls.crt")
	touch("generic/cert")
	touch("split/ca.crt") // ignored: split-cacert exists
	touch("split-cacert/cacert")
	touch("joined/ca.crt")
	for name, want := range map[string]string{"tls": "tls/tls.crt tls/tls.key", "generic": "generic/cert generic/key", "absent": "absent/tls.crt absent/tls.key"} {
		ref, err := parseCertName("kubernetes://" + name)
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := ref.certFiles(dir)
		if got, _ := filepath.Rel(dir, c); err != nil || got+" "+strings.TrimPrefix(k, dir+"/") != want {
			t.Errorf("%s: %s %s %v, want %s", name, c, k, err, want)
		}
	}
	for name, want := range map[string]string{"split-cacert": "split-cacert/cacert", "joined-cacert": "joined/ca.crt", "joined": "joined/ca.crt"} {
		ref, err := parseRootName("kubernetes://" + name)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := ref.caFile(dir)
		if got, _ := filepath.Rel(dir, ca); err != nil || got != want {
			t.Errorf("%s: %s %v, want %s", name, ca, err, want)
		}
	}
	ref, _ := parseCertName("kubernetes://tls")
	if _, _, err := ref.certFiles(""); !errors.Is(err, errNoCredentialDir) {
		t.Errorf("without a credential dir: %v", err)
	}
}

// handshake runs one TLS handshake between cfg's server and client over a
// pipe, returning the client's view and the server's error.
func handshake(t *testing.T, srv, cli *tls.Config) (tls.ConnectionState, error, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srvErr := make(chan error, 1)
	go func() {
		s := tls.Server(b, srv)
		err := s.Handshake()
		if err == nil {
			// TLS 1.3 clients learn of a refused certificate on their
			// first read.
			_, err = s.Write([]byte{1})
		}
		srvErr <- err
		b.Close()
	}()
	c := tls.Client(a, cli)
	err := c.Handshake()
	if err == nil {
		_, err = c.Read(make([]byte, 1))
	}
	return c.ConnectionState(), err, <-srvErr
}

// serverTLSFor compiles ctx and returns the engine's server config for it.
func serverTLSFor(t *testing.T, e *Engine, ctx *tlsv3.DownstreamTlsContext) *tls.Config {
	t.Helper()
	d, err := compileTLS(t, ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := e.serverTLS(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestGatewayTLSParams: tls_params versions and cipher suites reach the
// handshake; require_sni refuses clients without a server name.
func TestGatewayTLSParams(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	c, k := ca.issue(t, "gw", x509.ExtKeyUsageServerAuth, "gw.example.com")
	replaceFile(t, filepath.Join(dir, "tls.crt"), c)
	replaceFile(t, filepath.Join(dir, "tls.key"), k)
	e := New(slog.New(slog.DiscardHandler), Options{CredentialDir: dir})
	ctx := func(p *tlsv3.TlsParameters, sni bool) *tlsv3.DownstreamTlsContext {
		c := gatewayTLS("file-cert:"+filepath.Join(dir, "tls.crt")+"~"+filepath.Join(dir, "tls.key"), "", false)
		c.CommonTlsContext.TlsParams = p
		if sni {
			c.RequireSni = wrapperspb.Bool(true)
		}
		return c
	}
	client := &tls.Config{ServerName: "gw.example.com", RootCAs: ca.pool()}

	st, err, _ := handshake(t, serverTLSFor(t, e, ctx(nil, false)), client)
	if err != nil || st.Version != tls.VersionTLS13 {
		t.Fatalf("defaults: %v, version %x", err, st.Version)
	}
	tls12 := &tlsv3.TlsParameters{TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
		CipherSuites: []string{"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]"}}
	st, err, _ = handshake(t, serverTLSFor(t, e, ctx(tls12, false)), client)
	if err != nil || st.Version != tls.VersionTLS12 || (st.CipherSuite != tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 && st.CipherSuite != tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305) {
		t.Fatalf("TLS 1.2 with two suites: %v, version %x, suite %s", err, st.Version, tls.CipherSuiteName(st.CipherSuite))
	}
	only13 := serverTLSFor(t, e, ctx(&tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3}, false))
	old := client.Clone()
	old.MaxVersion = tls.VersionTLS12
	if _, err, _ := handshake(t, only13, old); err == nil {
		t.Error("a TLS 1.2 client was served by a TLSv1_3 minimum")
	}
	noSNI := client.Clone()
	noSNI.ServerName, noSNI.InsecureSkipVerify = "", true //nolint:gosec // test
	if _, _, srvErr := handshake(t, serverTLSFor(t, e, ctx(nil, true)), noSNI); !errors.Is(srvErr, errNoSNI) {
		t.Errorf("require_sni without SNI: server error %v", srvErr)
	}
}

// TestGatewayOptionalMutual: a credential CA bundle without
// require_client_certificate (Istio's OPTIONAL_MUTUAL) asks for a client
// certificate and verifies the one sent, but serves clients without one.
func TestGatewayOptionalMutual(t *testing.T) {
	serverCA, clientCA, otherCA := newTestCA(t, "server"), newTestCA(t, "client"), newTestCA(t, "other")
	e, dir := gwCredentialEngine(t, serverCA, clientCA)
	srv := serverTLSFor(t, e, gatewayTLS("kubernetes://gw", "kubernetes://gw-cacert", false))
	with := func(cert tls.Certificate) *tls.Config {
		return &tls.Config{ServerName: "gw.example.com", RootCAs: serverCA.pool(),
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
	}
	if _, err, srvErr := handshake(t, srv, &tls.Config{ServerName: "gw.example.com", RootCAs: serverCA.pool()}); err != nil || srvErr != nil {
		t.Errorf("without a client certificate: %v / %v", err, srvErr)
	}
	if _, err, srvErr := handshake(t, srv, with(clientCA.clientCert(t, "c"))); err != nil || srvErr != nil {
		t.Errorf("with a trusted client certificate: %v / %v", err, srvErr)
	}
	if _, _, srvErr := handshake(t, srv, with(otherCA.clientCert(t, "x"))); srvErr == nil {
		t.Error("a client certificate of another CA was accepted")
	}
	// A server certificate is not a client certificate.
	sc, sk := clientCA.issue(t, "srv", x509.ExtKeyUsageServerAuth)
	serverOnly, _ := tls.X509KeyPair(sc, sk)
	if _, _, srvErr := handshake(t, srv, with(serverOnly)); srvErr == nil {
		t.Error("a certificate without client authentication usage was accepted")
	}
	// The CA bundle is read at handshake time too: gone, nothing is
	// served.
	if err := os.Remove(filepath.Join(dir, "gw", "ca.crt")); err != nil {
		t.Fatal(err)
	}
	var ce *credentialError
	if _, _, srvErr := handshake(t, srv, &tls.Config{ServerName: "gw.example.com", RootCAs: serverCA.pool()}); !errors.As(srvErr, &ce) ||
		!strings.Contains(srvErr.Error(), "ca.crt") {
		t.Errorf("without its CA bundle: server error %v, want a credential error naming ca.crt", srvErr)
	}
}

// FuzzSecretNames: any SDS name is either refused or parsed into
// something that stays inside what it names: absolute files, or one
// directory under the credential directory.
func FuzzSecretNames(f *testing.F) {
	for _, s := range []string{"default", "ROOTCA", "file-cert:/a/b~/a/c", "file-root:/ca.pem", "kubernetes://gw", "kubernetes://gw-cacert",
		"kubernetes://../x", "file-cert:a~b~c", "kubernetes://ns/name"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		for _, parse := range []func(string) (secretRef, error){parseCertName, parseRootName} {
			ref, err := parse(name)
			if err != nil {
				continue
			}
			switch ref.kind {
			case secretFiles:
				if !filepath.IsAbs(ref.cert) || (ref.key != "" && !filepath.IsAbs(ref.key)) {
					t.Fatalf("%q: relative paths %q %q", name, ref.cert, ref.key)
				}
			case secretCredential:
				dir := "/creds"
				if c, k, _ := ref.certFiles(dir); filepath.Dir(filepath.Dir(c)) != dir || filepath.Dir(filepath.Dir(k)) != dir {
					t.Fatalf("%q: files %q %q outside %s", name, c, k, dir)
				}
				if ca, _ := ref.caFile(dir); filepath.Dir(filepath.Dir(ca)) != dir {
					t.Fatalf("%q: CA %q outside %s", name, ca, dir)
				}
			}
		}
	})
}

// TestCredCacheConcurrent: handshakes load a credential while it is
// rotated; each gets a whole certificate, and once the rotation is over
// the new one (run with -race).
func TestCredCacheConcurrent(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	write := func(cn string) {
		c, k := ca.issue(t, cn, x509.ExtKeyUsageServerAuth)
		replaceFile(t, keyPath, k)
		replaceFile(t, certPath, c)
	}
	write("v0")
	ref, err := parseCertName("file-cert:" + certPath + "~" + keyPath)
	if err != nil {
		t.Fatal(err)
	}
	cache := newCredCache()
	done := make(chan struct{})
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				// Between the two renames the pair does not match: an
				// error then, never a torn certificate.
				if cert, err := cache.certificate(&ref, ""); err == nil && (cert.Leaf == nil || cert.Leaf.Subject.CommonName == "") {
					errs <- errors.New("a certificate without its leaf")
					return
				}
			}
		}()
	}
	for i := 1; i <= 20; i++ {
		write("v" + string(rune('0'+i%10)))
	}
	write("final")
	close(done)
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	cert, err := cache.certificate(&ref, "")
	if err != nil || cert.Leaf.Subject.CommonName != "final" {
		t.Fatalf("after the rotation: %v, %v", err, cert)
	}
}

// BenchmarkCredentialLookup measures what a gateway handshake adds to
// find its certificate when the files did not change: the credential
// directory lookup and a stat of the certificate and key.
func BenchmarkCredentialLookup(b *testing.B) {
	ca := newTestCA(b, "ca")
	dir := b.TempDir()
	c, k := ca.issue(b, "gw", x509.ExtKeyUsageServerAuth)
	replaceFile(b, filepath.Join(dir, "gw", "tls.crt"), c)
	replaceFile(b, filepath.Join(dir, "gw", "tls.key"), k)
	ref, err := parseCertName("kubernetes://gw")
	if err != nil {
		b.Fatal(err)
	}
	cache := newCredCache()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cache.certificate(&ref, dir); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGatewayClientChecks: Istio's Gateway subjectAltNames,
// verifyCertificateSpki and verifyCertificateHash, as istiod writes them
// into default_validation_context: a client certificate the CA verified
// must also pass them, or the handshake fails.
func TestGatewayClientChecks(t *testing.T) {
	serverCA, clientCA := newTestCA(t, "server"), newTestCA(t, "client")
	e, _ := gwCredentialEngine(t, serverCA, clientCA)
	good, other := clientCA.clientCert(t, "good"), clientCA.clientCert(t, "other")
	goodLeaf, _ := x509.ParseCertificate(good.Certificate[0])
	spki := sha256.Sum256(goodLeaf.RawSubjectPublicKeyInfo)
	hash := sha256.Sum256(goodLeaf.Raw)
	hexHash := strings.ToUpper(hex.EncodeToString(hash[:]))
	var colons []string
	for i := 0; i < len(hexHash); i += 2 {
		colons = append(colons, hexHash[i:i+2])
	}
	for _, tc := range []struct {
		name  string
		check *tlsv3.CertificateValidationContext
	}{
		// clientCert's certificates carry DNS SAN <cn>.client.test.
		//lint:ignore SA1019 the form istiod writes
		{"subjectAltNames", &tlsv3.CertificateValidationContext{MatchSubjectAltNames: []*matcherv3.StringMatcher{
			{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "nobody.client.test"}},
			{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "good.client.test"}}}}},
		{"typed SAN", &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "good."}}}}}},
		{"SPKI pin", &tlsv3.CertificateValidationContext{VerifyCertificateSpki: []string{base64.StdEncoding.EncodeToString(spki[:])}}},
		{"hash pin", &tlsv3.CertificateValidationContext{VerifyCertificateHash: []string{strings.Join(colons, ":")}}},
	} {
		ctx := gatewayTLS("kubernetes://gw", "kubernetes://gw-cacert", true)
		ctx.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext = tc.check
		srv := serverTLSFor(t, e, ctx)
		with := func(cert tls.Certificate) *tls.Config {
			return &tls.Config{ServerName: "gw.example.com", RootCAs: serverCA.pool(),
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
		}
		if _, err, srvErr := handshake(t, srv, with(good)); err != nil || srvErr != nil {
			t.Errorf("%s: the certificate that passes: %v / %v", tc.name, err, srvErr)
		}
		if _, _, srvErr := handshake(t, srv, with(other)); srvErr == nil {
			t.Errorf("%s: a certificate of the same CA that does not pass was accepted", tc.name)
		}
	}
}

// gwCredentialEngine is an engine whose credential directory holds the
// credential "gw": a certificate for gw.example.com from serverCA, and
// clientCA's bundle to verify clients with.
func gwCredentialEngine(t *testing.T, serverCA, clientCA *testCA) (*Engine, string) {
	t.Helper()
	dir := t.TempDir()
	c, k := serverCA.issue(t, "gw", x509.ExtKeyUsageServerAuth, "gw.example.com")
	replaceFile(t, filepath.Join(dir, "gw", "tls.crt"), c)
	replaceFile(t, filepath.Join(dir, "gw", "tls.key"), k)
	replaceFile(t, filepath.Join(dir, "gw", "ca.crt"), clientCA.pem)
	return New(slog.New(slog.DiscardHandler), Options{CredentialDir: dir}), dir
}
