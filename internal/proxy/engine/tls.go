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
	alpn              []string
}

func compileDownstreamTLS(ts *corev3.TransportSocket) (*downstreamTLS, error) {
	ctx := &tlsv3.DownstreamTlsContext{}
	if tc := ts.GetTypedConfig(); tc == nil || tc.UnmarshalTo(ctx) != nil {
		return nil, fmt.Errorf("transport_socket %s: only a DownstreamTlsContext is supported", ts.GetName())
	}
	common := ctx.GetCommonTlsContext()
	certs := common.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 || certs[0].GetName() != sdsCert || len(common.GetTlsCertificates()) > 0 {
		return nil, fmt.Errorf("downstream TLS: only the SDS certificate %q (the workload certificate) is supported", sdsCert)
	}
	root := common.GetValidationContextSdsSecretConfig().GetName()
	if cv := common.GetCombinedValidationContext(); cv != nil {
		root = cv.GetValidationContextSdsSecretConfig().GetName()
	}
	req := ctx.GetRequireClientCertificate().GetValue()
	if req && root != sdsRoot {
		return nil, fmt.Errorf("downstream TLS: client certificates are verified only against SDS %q", sdsRoot)
	}
	return &downstreamTLS{requireClientCert: req, alpn: common.GetAlpnProtocols()}, nil
}

// serverConfig builds the tls.Config for a TLS filter chain. With served,
// the certificate the handshake presents is stored there.
func (d *downstreamTLS) serverConfig(c Certs, served **tls.Certificate) *tls.Config {
	alpn := d.alpn
	if len(alpn) == 0 {
		alpn = []string{"h2", "http/1.1"}
	}
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS12,
		GetCertificate:         c.GetCertificate,
		NextProtos:             alpn,
		SessionTicketsDisabled: true, // verification must run on every handshake
	}
	if served != nil {
		cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, err := c.GetCertificate(h)
			*served = cert
			return cert, err
		}
	}
	if d.requireClientCert {
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := verifyChain(raw, c.Roots())
			return err
		}
	}
	return cfg
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
