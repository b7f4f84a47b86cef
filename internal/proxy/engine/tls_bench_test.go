package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/proxy/cluster"
)

// staticCerts is a fixed workload identity.
type staticCerts struct {
	cert  *tls.Certificate
	roots *x509.CertPool
}

func (s staticCerts) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert, nil
}
func (s staticCerts) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.cert, nil
}
func (s staticCerts) Roots() *x509.CertPool { return s.roots }

// meshIdentities makes a mesh CA (ECDSA P-256, as weft's) and workload
// certificates for the given SPIFFE IDs, shaped as the CA issues them.
func meshIdentities(tb testing.TB, ids ...string) []staticCerts {
	tb.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	var out []staticCerts
	for i, id := range ids {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(id)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), URIs: []*url.URL{u},
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			tb.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		out = append(out, staticCerts{cert: &tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key, Leaf: leaf}, roots: roots})
	}
	return out
}

// BenchmarkMeshTLSHandshake measures one mutual-TLS handshake between two
// sidecars with the configs the engine really uses: the inbound chain's
// server config (client certificate required and verified against the
// mesh roots) and the upstream client config (mesh roots plus secure
// naming against the cluster's SANs), ECDSA P-256 workload certificates,
// over loopback TCP. Both sides run in this process, so ns/op is the CPU
// of a client and a server handshake together, plus the loopback round
// trips; a 1-byte exchange confirms each connection works.
func BenchmarkMeshTLSHandshake(b *testing.B) {
	for _, version := range []struct {
		name string
		max  uint16
	}{{"TLS1.3", tls.VersionTLS13}, {"TLS1.2", tls.VersionTLS12}} {
		b.Run(version.name, func(b *testing.B) {
			ids := meshIdentities(b, "spiffe://cluster.local/ns/default/sa/client", "spiffe://cluster.local/ns/default/sa/server")
			client, server := ids[0], ids[1]
			srvCfg := (&downstreamTLS{requireClientCert: true, alpn: []string{"istio", "http/1.1"}}).serverConfig(server, nil)
			srvCfg.MaxVersion = version.max
			e := New(slog.New(slog.DiscardHandler), Options{Certs: client})
			c := &cluster.Cluster{Name: "outbound|80||server", TLS: &cluster.UpstreamTLS{CertSDS: sdsCert, CASDS: sdsRoot, Verify: true,
				SANs: []cluster.SANMatcher{{Type: cluster.SANURI, StringMatcher: cluster.StringMatcher{Exact: "spiffe://cluster.local/ns/default/sa/server"}}}}}
			cliCfg, err := e.upstreamConfig(c, []string{"istio"})
			if err != nil {
				b.Fatal(err)
			}
			cliCfg.MaxVersion = version.max

			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						tc := tls.Server(conn, srvCfg)
						defer tc.Close()
						buf := make([]byte, 1)
						if _, err := io.ReadFull(tc, buf); err == nil {
							_, _ = tc.Write(buf)
						}
					}()
				}
			}()
			b.ReportAllocs()
			cpu0 := processCPU()
			b.ResetTimer()
			for b.Loop() {
				conn, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				tc := tls.Client(conn, cliCfg)
				if err := tc.Handshake(); err != nil {
					b.Fatal(err)
				}
				buf := []byte{1}
				if _, err := tc.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(tc, buf); err != nil {
					b.Fatal(err)
				}
				tc.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
			// CPU per handshake (client and server side together) is what
			// a loaded machine distorts least.
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// TestMeshTLSSecureNaming: the benchmark's configs really authenticate —
// a server with an identity the cluster does not allow is refused.
func TestMeshTLSSecureNaming(t *testing.T) {
	ids := meshIdentities(t, "spiffe://cluster.local/ns/default/sa/client", "spiffe://cluster.local/ns/default/sa/impostor")
	srvCfg := (&downstreamTLS{requireClientCert: true}).serverConfig(ids[1], nil)
	e := New(slog.New(slog.DiscardHandler), Options{Certs: ids[0]})
	c := &cluster.Cluster{Name: "outbound|80||server", TLS: &cluster.UpstreamTLS{CertSDS: sdsCert, CASDS: sdsRoot, Verify: true,
		SANs: []cluster.SANMatcher{{Type: cluster.SANURI, StringMatcher: cluster.StringMatcher{Exact: "spiffe://cluster.local/ns/default/sa/server"}}}}}
	cliCfg, err := e.upstreamConfig(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	go func() { _ = tls.Server(b, srvCfg).Handshake(); b.Close() }()
	err = tls.Client(a, cliCfg).Handshake()
	if err == nil || !strings.Contains(err.Error(), "secure naming") {
		t.Fatalf("handshake with an impostor: %v, want a secure naming error", err)
	}
}
