package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/pki"
)

// testCA signs server certificates for the gateway tests.
type testCA struct {
	ca   *pki.CA
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca, _, err := pki.LoadOrCreateCA(t.TempDir(), "gateway test CA", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca: ca, pool: ca.Pool()}
}

// certName is the common name of the n-th certificate issued for host:
// what tells a served certificate from the one it replaced.
func certName(host string, n int) string { return fmt.Sprintf("%s-%d", host, n) }

// issue signs certificate n for host and writes it and its key, PEM, to
// certPath and keyPath (unless ""), by rename as a secret volume or a
// deploy tool replaces them, readable by the proxy's user.
func (ca *testCA) issue(t *testing.T, host string, n int, certPath, keyPath string) tls.Certificate {
	t.Helper()
	c, err := ca.ca.Issue(certName(host, n), nil, []string{host}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if certPath != "" {
		certPEM, keyPEM := encodePEM(t, c)
		for path, data := range map[string][]byte{certPath: certPEM, keyPath: keyPEM} {
			if err := pki.WriteFileAtomic(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

func encodePEM(t *testing.T, c tls.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := pki.EncodePEM(c)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// TestIngressGateway: weft-proxy as an ingress gateway, configured by a
// Gateway and VirtualServices applied through the API server. Plain HTTP is
// routed by host and path to a service behind a sidecar with STRICT mTLS
// (so the gateway speaks mesh mTLS upstream); its hosts under httpsRedirect
// are answered 301; HTTPS is terminated with a credentialName certificate
// (from --credential-dir) and with file certificates, each chosen by SNI,
// and a replaced certificate is served without a config change; TLS
// passthrough reaches a TLS backend unopened.
func TestIngressGateway(t *testing.T) {
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) { testIngressGateway(t, mode == "delta") })
	}
}

// testIngressGateway runs TestIngressGateway with the gateway on state of
// the world or delta xDS.
func testIngressGateway(t *testing.T, delta bool) {
	type seen struct{ host, path, xff string }
	hits := make(chan seen, 64)
	web := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- seen{r.Host, r.URL.Path, r.Header.Get("X-Forwarded-For")}
		fmt.Fprintf(w, "web %s %s", r.Host, r.URL.Path)
	})})
	ca := newTestCA(t)
	backendCert := ca.issue(t, "tls.example.com", 10, "", "")
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{backendCert}})
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := tlsLn.Addr().(*net.TCPAddr).Port
	go func() {
		_ = http.Serve(tlsLn, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "passthrough") }))
	}()
	t.Cleanup(func() { tlsLn.Close() })

	svcPort := freePort(t)
	p := startMeshPairArgs(t, nil, []appPort{{"http", web, freePort(t)}}, webService(svcPort))
	m := p.m
	m.prepare()
	creds := filepath.Join(m.shared, "credentials")
	for _, d := range []string{creds, filepath.Join(creds, "secure-cred"), filepath.Join(m.shared, "files")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		mustChmod(t, d, 0o755)
	}
	credCert, credKey := filepath.Join(creds, "secure-cred", "tls.crt"), filepath.Join(creds, "secure-cred", "tls.key")
	ca.issue(t, "secure.example.com", 20, credCert, credKey)
	fileCert, fileKey := filepath.Join(m.shared, "files", "cert.pem"), filepath.Join(m.shared, "files", "key.pem")
	ca.issue(t, "files.example.com", 30, fileCert, fileKey)

	httpPort, httpsPort := freePort(t), freePort(t)
	m.apply(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ingress}
spec:
  metadata: {labels: {istio: ingressgateway}}
  template: {serviceAccount: istio-ingressgateway}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls-backend}
spec:
  hosts: [tls.backend.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: %[3]d, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: %[1]d, name: http, protocol: HTTP}
    hosts: [web.example.com]
  - port: {number: %[1]d, name: http-redirect, protocol: HTTP}
    hosts: [secure.example.com]
    tls: {httpsRedirect: true}
  - port: {number: %[2]d, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: secure-cred}
  - port: {number: %[2]d, name: https-files, protocol: HTTPS}
    hosts: [files.example.com]
    tls: {mode: SIMPLE, serverCertificate: %[5]s, privateKey: %[6]s}
  - port: {number: %[2]d, name: https-api, protocol: HTTPS}
    hosts: [api.example.com]
    tls: {mode: SIMPLE, credentialName: api-cred}
  - port: {number: %[2]d, name: tls-passthrough, protocol: TLS}
    hosts: [tls.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-ingress}
spec:
  hosts: [web.example.com, secure.example.com, files.example.com, api.example.com]
  gateways: [ingress]
  http:
  - match: [{uri: {prefix: /web}}]
    route: [{destination: {host: web.b.mesh, port: {number: %[4]d}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls-ingress}
spec:
  hosts: [tls.example.com]
  gateways: [ingress]
  tls:
  - match: [{sniHosts: [tls.example.com]}]
    route: [{destination: {host: tls.backend.example, port: {number: %[3]d}}}]
---
%[7]s`, httpPort, httpsPort, tlsPort, svcPort, fileCert, fileKey, apiSecret(ca, t, 40)))
	gwArgs := []string{"router", "--labels", "istio=ingressgateway", "--service-account", "istio-ingressgateway", "--credential-dir", creds}
	if delta {
		gwArgs = append(gwArgs, "--delta")
	}
	gw := m.proxy("ingress", "127.0.0.1", gwArgs...)

	noRedirect := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	plain := func(host, path string) (*http.Response, string, error) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path), nil)
		req.Host = host
		resp, err := noRedirect.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}
	eventually(t, "plain HTTP through the gateway and sidecar B", func() error {
		resp, body, err := plain("web.example.com", "/web/a")
		if err == nil && (resp.StatusCode != 200 || body != "web web.example.com /web/a") {
			err = fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return err
	})
	if h := <-hits; !strings.Contains(h.xff, "127.0.0.1") {
		t.Errorf("the app saw x-forwarded-for %q; the gateway should add the client's address", h.xff)
	}
	if resp, _, err := plain("web.example.com", "/other"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("a path no route matches: %v %v, want 404", resp, err)
	}
	if resp, _, err := plain("unknown.example.com", "/web/a"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("a host no server has: %v %v, want 404", resp, err)
	}
	resp, _, err := plain("secure.example.com", "/web/a?x=1")
	if err != nil || resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "https://secure.example.com/web/a?x=1" {
		t.Errorf("httpsRedirect: %v %v, want 301 to https://secure.example.com/web/a?x=1", resp, err)
	}

	// HTTPS, by SNI: the credential's certificate, then the files'.
	tlsGet := func(sni, path string) (*x509.Certificate, string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: sni, RootCAs: ca.pool},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", httpsPort))
			}}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + sni + path)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return resp.TLS.PeerCertificates[0], string(b), err
	}
	for _, tc := range []struct {
		sni  string
		n    int
		body string
	}{
		{"secure.example.com", 20, "web secure.example.com /web/s"},
		{"files.example.com", 30, "web files.example.com /web/s"},
		{"api.example.com", 40, "web api.example.com /web/s"},
		{"tls.example.com", 10, "passthrough"},
	} {
		var cert *x509.Certificate
		var body string
		eventually(t, "https to "+tc.sni, func() (err error) {
			cert, body, err = tlsGet(tc.sni, "/web/s")
			return err
		})
		if cert.Subject.CommonName != certName(tc.sni, tc.n) || body != tc.body {
			t.Errorf("%s: certificate %s, body %q; want %s, %q", tc.sni, cert.Subject.CommonName, body, certName(tc.sni, tc.n), tc.body)
		}
	}

	// Rotation: new files, no config change.
	ca.issue(t, "secure.example.com", 21, credCert, credKey)
	eventually(t, "the replaced credential served", func() error {
		cert, _, err := tlsGet("secure.example.com", "/web/s")
		if err == nil && cert.Subject.CommonName != certName("secure.example.com", 21) {
			err = fmt.Errorf("served %s", cert.Subject.CommonName)
		}
		return err
	})
	// A Secret applied through the API server: discovery sends it to the
	// gateway (its namespace, over its authenticated stream), and an
	// update is served without touching the gateway's files.
	m.apply(apiSecret(ca, t, 41))
	eventually(t, "the updated Secret served", func() error {
		cert, _, err := tlsGet("api.example.com", "/web/s")
		if err == nil && cert.Subject.CommonName != certName("api.example.com", 41) {
			err = fmt.Errorf("served %s", cert.Subject.CommonName)
		}
		return err
	})
	if dump := configDump(t, gw.admin); !strings.Contains(dump, "kubernetes://api-cred") || strings.Contains(dump, "PRIVATE KEY") {
		t.Errorf("the gateway's /config_dump lacks the credential from discovery, or shows its private key")
	}
	if dump := configDump(t, p.a.admin); strings.Contains(dump, "api-cred") {
		t.Errorf("a sidecar got the gateway's credential")
	}
	// The gateway reports its requests as a client, as Istio's gateways do.
	if n := metricSum(t, gw.stats, "istio_requests_total", `reporter="source"`, `response_code="200"`); n < 4 {
		t.Errorf("the gateway counted %d successful requests (reporter=source), want at least 4", n)
	}
	admin := fmt.Sprintf("http://127.0.0.1:%d", gw.admin)
	if out := m.weft("", "proxy-config", "secret", "--admin", admin); !strings.Contains(out, "kubernetes://api-cred") || strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("weft proxy-config secret on the gateway:\n%s", out)
	}
	if out := m.weft("", "proxy-config", "listener", "--admin", admin); !strings.Contains(out, fmt.Sprint(httpsPort)) {
		t.Errorf("weft proxy-config listener on the gateway lacks port %d:\n%s", httpsPort, out)
	}
	if out := m.weft("", "proxy-status"); !strings.Contains(out, "router~127.0.0.1~ingress") {
		t.Errorf("proxy-status does not list the gateway:\n%s", out)
	}
	if dump := configDump(t, gw.admin); !strings.Contains(dump, fmt.Sprintf("0.0.0.0_%d", httpsPort)) {
		t.Errorf("the gateway's /config_dump lacks its HTTPS listener")
	}
}

// apiSecret is a Kubernetes TLS Secret api-cred holding a certificate for
// api.example.com, the n-th.
func apiSecret(ca *testCA, t *testing.T, n int) string {
	cert, key := encodePEM(t, ca.issue(t, "api.example.com", n, "", ""))
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: api-cred}
type: kubernetes.io/tls
stringData: {"tls.crt": %q, "tls.key": %q}
`, cert, key)
}

// TestEgressGateway: Istio's egress gateway pattern
// (service-entry-egress-gateway-routing.yaml): one VirtualService sends
// the sidecars' requests for an external host to the egress gateway
// (match gateways: mesh) and the gateway's on to the host (match
// gateways: the Gateway). The gateway's metrics show the request went
// through it.
func TestEgressGateway(t *testing.T) {
	hits := make(chan string, 16)
	external := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- r.Host
		_, _ = io.WriteString(w, "external")
	})})
	extPort, gwSvcPort, gwPort := freePort(t), freePort(t), freePort(t)
	web := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "web") })})
	p := startMeshPairArgs(t, nil, []appPort{{"http", web, freePort(t)}}, webService(freePort(t)))
	m := p.m
	m.apply(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: egress}
spec:
  metadata: {labels: {istio: egressgateway}}
  template: {serviceAccount: istio-egressgateway}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: %[1]d, name: http, protocol: HTTP, targetPort: %[4]d}]
  endpoints: [{address: 127.0.0.1}]
---
# The egress gateway's service: its port %[2]d, the gateway's listener %[3]d.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: egressgateway}
spec:
  hosts: [egressgateway.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %[2]d, name: http, protocol: HTTP, targetPort: %[3]d}]
  endpoints: [{address: 127.0.0.4}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: %[3]d, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: gateway-routing}
spec:
  hosts: [httpbin.example]
  gateways: [mesh, egress]
  http:
  - match: [{gateways: [mesh], port: %[1]d}]
    route: [{destination: {host: egressgateway.mesh, port: {number: %[2]d}}}]
  - match: [{gateways: [egress], port: %[3]d}]
    route: [{destination: {host: httpbin.example, port: {number: %[1]d}}}]
`, extPort, gwSvcPort, gwPort, external))
	gw := m.proxy("egress", "127.0.0.4", "router", "--labels", "istio=egressgateway", "--service-account", "istio-egressgateway")

	c := &http.Client{Timeout: 5 * time.Second}
	eventually(t, "sidecar A → egress gateway → the external host", func() error {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/get", extPort), nil)
		req.Host = "httpbin.example"
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "external" {
			return fmt.Errorf("%d %q", resp.StatusCode, b)
		}
		return nil
	})
	if h := <-hits; h != "httpbin.example" {
		t.Errorf("the external host saw Host %q", h)
	}
	if n := metricSum(t, gw.stats, "istio_requests_total", `reporter="source"`, `response_code="200"`); n < 1 {
		t.Errorf("the egress gateway counted no request: the sidecar went around it")
	}
}
