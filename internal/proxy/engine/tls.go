package engine

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/listener"
)

// Certs is the workload identity the engine terminates and originates
// mesh TLS with (the certs.Manager). SDS secret "default" is its
// certificate, "ROOTCA" its trust bundle.
type Certs interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	Roots() *x509.CertPool
}

// SDS secret names pilot uses for the workload certificate and trust
// bundle.
const (
	sdsCert = "default"
	sdsRoot = "ROOTCA"
)

// errNoIdentity fails mesh TLS closed when the proxy has no certificate.
var errNoIdentity = errors.New("no workload certificate: mesh TLS needs --bootstrap-token or --cert-dir; refusing to fall back to plaintext")

// downstreamTLS is a compiled DownstreamTlsContext.
type downstreamTLS struct {
	requireClientCert bool
	// requireSNI refuses clients that send no server name.
	requireSNI bool
	alpn       []string
	// cert is the certificate presented; root what verifies client
	// certificates (secretNone: nothing). The zero value of both is the
	// mesh identity's config (serverConfig).
	cert, root secretRef
	// params are the tls_params.
	params tlsParams
	// check is what a verified client certificate must also pass (nil:
	// nothing; clientcheck.go).
	check *clientCheck
}

// compileDownstreamTLS reads a filter chain's DownstreamTlsContext. The
// certificate is SDS "default" (the workload identity) or a gateway
// credential, the validation context SDS "ROOTCA" (the mesh roots), a
// credential's CA bundle, or none (see credentials.go). No file is read
// here: credentials are loaded at handshake time.
//
// Accepted and ignored, because weft-proxy never resumes a TLS session
// (every handshake is full and verified) and presents one certificate per
// chain: session_ticket_keys (and their SDS secret), session_timeout,
// disable_stateless/stateful_session_resumption,
// full_scan_certs_on_sni_mismatch; also prefer_client_ciphers (crypto/tls
// picks the suite by its own preference) and an OCSP staple policy other
// than MUST_STAPLE (no staple is sent). The combined validation
// context's default_validation_context may ask for client certificate
// SAN, SPKI and hash checks (clientcheck.go), whatever the CA.
func compileDownstreamTLS(ts *corev3.TransportSocket) (*downstreamTLS, error) {
	ctx := &tlsv3.DownstreamTlsContext{}
	if tc := ts.GetTypedConfig(); tc == nil || tc.UnmarshalTo(ctx) != nil {
		return nil, fmt.Errorf("transport_socket %s: only a DownstreamTlsContext is supported", ts.GetName())
	}
	common := ctx.GetCommonTlsContext()
	//lint:ignore SA1019 refused, not used
	if common.GetTlsCertificateProviderInstance() != nil || common.GetCustomTlsCertificateSelector() != nil || common.GetTlsCertificateCertificateProvider() != nil ||
		//lint:ignore SA1019 refused, not used
		common.GetTlsCertificateCertificateProviderInstance() != nil || common.GetCustomHandshaker() != nil || common.GetKeyLog() != nil {
		return nil, errors.New("downstream TLS: certificate providers, selectors, custom handshakers and key_log are not supported (name the certificate in tls_certificate_sds_secret_configs)")
	}
	if ctx.GetOcspStaplePolicy() == tlsv3.DownstreamTlsContext_MUST_STAPLE {
		return nil, errors.New("downstream TLS: ocsp_staple_policy MUST_STAPLE is not supported (weft-proxy staples no OCSP response)")
	}
	certs := common.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 || len(common.GetTlsCertificates()) > 0 {
		return nil, fmt.Errorf("downstream TLS: exactly one SDS certificate (tls_certificate_sds_secret_configs) is supported: %w", errCertName)
	}
	d := &downstreamTLS{requireClientCert: ctx.GetRequireClientCertificate().GetValue(), requireSNI: ctx.GetRequireSni().GetValue(),
		alpn: common.GetAlpnProtocols()}
	var err error
	if d.cert, err = parseCertName(certs[0].GetName()); err != nil {
		return nil, fmt.Errorf("downstream TLS: %w", err)
	}
	var rootName string
	switch v := common.GetValidationContextType().(type) {
	case nil:
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		rootName = v.ValidationContextSdsSecretConfig.GetName()
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		cv := v.CombinedValidationContext
		//lint:ignore SA1019 refused, not used
		if cv.GetValidationContextCertificateProvider() != nil || cv.GetValidationContextCertificateProviderInstance() != nil {
			return nil, errors.New("downstream TLS: validation context certificate providers are not supported")
		}
		rootName = cv.GetValidationContextSdsSecretConfig().GetName()
		// Istio's Gateway tls.subjectAltNames, verifyCertificateSpki and
		// verifyCertificateHash land here.
		if d.check, err = compileClientCheck(cv.GetDefaultValidationContext()); err != nil {
			return nil, fmt.Errorf("downstream TLS: %q: %w", rootName, err)
		}
	default:
		return nil, fmt.Errorf("downstream TLS: validation context %T is not supported: %w", v, errRootName)
	}
	if d.root, err = parseRootName(rootName); err != nil {
		return nil, fmt.Errorf("downstream TLS: %w", err)
	}
	if d.check != nil && d.root.kind == secretNone {
		return nil, errors.New("downstream TLS: client certificate checks (default_validation_context) need a validation context to verify the chain first")
	}
	if d.requireClientCert && d.root.kind == secretNone {
		return nil, fmt.Errorf("downstream TLS: require_client_certificate needs a validation context: %w", errRootName)
	}
	if d.params, err = compileTLSParams(common.GetTlsParams()); err != nil {
		return nil, fmt.Errorf("downstream TLS: tls_params: %w", err)
	}
	return d, nil
}

// needsIdentity reports whether the chain presents or verifies with the
// workload identity.
func (d *downstreamTLS) needsIdentity() bool {
	return (d.cert.kind != secretFiles && d.cert.kind != secretCredential) || d.root.kind == secretMesh
}

// meshOnly reports whether the chain uses nothing but the workload
// identity (serverConfig).
func (d *downstreamTLS) meshOnly() bool {
	return d.cert.kind != secretFiles && d.cert.kind != secretCredential && d.root.kind != secretFiles && d.root.kind != secretCredential
}

// serverTLS returns the tls.Config a chain terminates TLS with. With
// served, the certificate the handshake presents is stored there.
func (e *Engine) serverTLS(d *downstreamTLS, served **tls.Certificate) (*tls.Config, error) {
	if d.needsIdentity() && e.opts.Certs == nil {
		return nil, errNoIdentity
	}
	if d.meshOnly() {
		return d.serverConfig(e.meshCerts(), served), nil
	}
	var mesh Certs
	if e.opts.Certs != nil {
		mesh = e.meshCerts()
	}
	return d.credentialConfig(mesh, e.sdsCredential, e.creds, e.opts.CredentialDir, served), nil
}

// baseConfig is the config every handshake of the chain starts from.
func (d *downstreamTLS) baseConfig() *tls.Config {
	alpn := d.alpn
	if len(alpn) == 0 {
		alpn = []string{"h2", "http/1.1"}
	}
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS12,
		MaxVersion:             d.params.maxVersion,
		CipherSuites:           d.params.cipherSuites,
		CurvePreferences:       d.params.curves,
		NextProtos:             alpn,
		SessionTicketsDisabled: true, // verification must run on every handshake
	}
	if d.params.minVersion != 0 {
		cfg.MinVersion = d.params.minVersion
	}
	return cfg
}

// errNoSNI fails handshakes without a server name on require_sni chains.
var errNoSNI = errors.New("downstream TLS: the client sent no server name (SNI), which the filter chain requires")

// serverConfig builds the tls.Config for a TLS filter chain that uses the
// workload identity c only: its certificate, and with
// require_client_certificate, its roots to verify clients with. With
// served, the certificate the handshake presents is stored there.
func (d *downstreamTLS) serverConfig(c Certs, served **tls.Certificate) *tls.Config {
	cfg := d.baseConfig()
	cfg.GetCertificate = c.GetCertificate
	if served != nil || d.requireSNI {
		cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if d.requireSNI && h.ServerName == "" {
				return nil, errNoSNI
			}
			cert, err := c.GetCertificate(h)
			if served != nil {
				*served = cert
			}
			return cert, err
		}
	}
	if d.requireClientCert {
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return d.verifyClient(raw, c.Roots())
		}
	}
	return cfg
}

// credentialConfig builds the tls.Config for a chain that uses a gateway
// credential. Each handshake loads the credential files (credCache, from
// dir for kubernetes:// names) when it reads the ClientHello; a file that
// cannot be loaded fails the handshake with a *credentialError. Client
// certificates are verified against a credential CA bundle as crypto/tls
// does (chain to the bundle, extended key usage client authentication or
// any), required with require_client_certificate and verified when sent
// otherwise (Istio's MUTUAL and OPTIONAL_MUTUAL); against the mesh roots
// as serverConfig does with ROOTCA; not asked for without a validation
// context. mesh is the workload identity (nil without one: then the chain
// uses none of it).
func (d *downstreamTLS) credentialConfig(mesh Certs, sds func(string) any, cache *credCache, dir string, served **tls.Certificate) *tls.Config {
	cfg := d.baseConfig()
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		if d.requireSNI && h.ServerName == "" {
			return nil, errNoSNI
		}
		out := d.baseConfig()
		if d.cert.kind == secretMesh {
			out.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				cert, err := mesh.GetCertificate(h)
				if served != nil {
					*served = cert
				}
				return cert, err
			}
		} else {
			cert, ok := sds(d.cert.name).(*tls.Certificate)
			if !ok || d.cert.kind != secretCredential {
				var err error
				if cert, err = cache.certificate(&d.cert, dir); err != nil {
					return nil, err
				}
			}
			out.Certificates = []tls.Certificate{*cert}
			if served != nil {
				*served = cert
			}
		}
		switch d.root.kind {
		case secretMesh:
			if d.requireClientCert {
				out.ClientAuth = tls.RequireAnyClientCert
				out.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
					return d.verifyClient(raw, mesh.Roots())
				}
			}
		case secretFiles, secretCredential:
			pool, ok := sds(d.root.name).(*x509.CertPool)
			if !ok || d.root.kind != secretCredential {
				var err error
				if pool, err = cache.roots(&d.root, dir); err != nil {
					return nil, err
				}
			}
			out.ClientCAs = pool
			out.ClientAuth = tls.VerifyClientCertIfGiven
			if d.requireClientCert {
				out.ClientAuth = tls.RequireAndVerifyClientCert
			}
			if d.check != nil {
				// After crypto/tls verified the chain against pool.
				out.VerifyConnection = func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 {
						return nil // optional, and none sent
					}
					return d.check.verify(cs.PeerCertificates[0])
				}
			}
		}
		return out, nil
	}
	return cfg
}

// verifyClient verifies a client's chain against the mesh roots, then
// the chain's client checks.
func (d *downstreamTLS) verifyClient(raw [][]byte, roots *x509.CertPool) error {
	leaf, err := verifyChain(raw, roots)
	if err == nil && d.check != nil {
		err = d.check.verify(leaf)
	}
	return err
}

// verifyChain checks a peer chain against roots and returns the leaf.
func verifyChain(raw [][]byte, roots *x509.CertPool) (*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, errors.New("mesh TLS: the peer sent no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, fmt.Errorf("mesh TLS: peer certificate: %w", err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("mesh TLS: peer certificate not issued by the mesh CA: %w", err)
	}
	return certs[0], nil
}

// upstreamConfig builds the client tls.Config for a cluster that uses the
// workload identity (SDS "default"/"ROOTCA"), checking the server's SPIFFE
// identity against the cluster's SANs (secure naming).
func (e *Engine) upstreamConfig(c *cluster.Cluster, alpn []string) (*tls.Config, error) {
	t := c.TLS
	if t.CertSDS != sdsCert || (t.Verify && t.CASDS != sdsRoot) {
		return nil, fmt.Errorf("cluster %s: only mesh TLS (SDS %q / %q) is supported upstream", c.Name, sdsCert, sdsRoot)
	}
	if e.opts.Certs == nil {
		return nil, errNoIdentity
	}
	certs := e.meshCerts()
	if len(t.ALPN) > 0 {
		alpn = append(append([]string{}, alpn...), t.ALPN...)
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		ServerName:           t.SNI,
		NextProtos:           alpn,
		GetClientCertificate: certs.GetClientCertificate,
		InsecureSkipVerify:   true, //nolint:gosec // verified below against the mesh roots and SANs
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := verifyChain(raw, certs.Roots())
			if err != nil {
				return err
			}
			if len(t.SANs) == 0 {
				return nil
			}
			for _, u := range leaf.URIs {
				for _, m := range t.SANs {
					if m.Match(u.String()) {
						return nil
					}
				}
			}
			return fmt.Errorf("mesh TLS: server identity %v is not one allowed for %s (secure naming)", leaf.URIs, c.Name)
		},
	}, nil
}

// dialUpstream connects to an endpoint, with mesh TLS when the cluster asks
// for it (fail closed: never plaintext instead).
func (e *Engine) dialUpstream(ctx context.Context, c *cluster.Cluster, addr string, alpn []string, src source) (net.Conn, error) {
	d := dialer(c, src)
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || c.TLS == nil {
		return conn, err
	}
	cfg, err := e.upstreamConfig(c, alpn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("mesh TLS handshake with %s: %w", addr, err)
	}
	if toSidecar(c) {
		e.upstreams.handshake(addr, tc, e.localPrincipal())
	}
	return tc, nil
}

// dialer connects to a cluster's endpoints, from src's address when it is
// set (original_src: IP_TRANSPARENT and SO_MARK).
func dialer(c *cluster.Cluster, src source) *net.Dialer {
	d := &net.Dialer{Timeout: c.ConnectTimeout, KeepAlive: 30 * time.Second}
	if src.addr.IsValid() {
		d.LocalAddr = listener.SourceAddr(src.addr)
		d.Control = listener.SourceControl(src.mark)
	}
	return d
}

// peekedConn is a connection whose first bytes were read to detect the
// transport protocol; reads replay them.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }
