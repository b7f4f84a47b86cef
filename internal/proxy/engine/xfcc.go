package engine

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// x-forwarded-client-cert (XFCC), as Envoy's connection manager sets it
// by forward_client_cert_details: Istio's sidecars APPEND_FORWARD on
// inbound, with the client certificate's Subject, URI and DNS SANs, so an
// application learns its caller's SPIFFE identity from the header; every
// other connection manager sanitises the header (Envoy's default), so an
// application cannot pass a forged one on to the next hop.

const xfccHeader = "X-Forwarded-Client-Cert"

// xfccConfig is a connection manager's forward_client_cert_details and
// set_current_client_cert_details.
type xfccConfig struct {
	mode                           hcmv3.HttpConnectionManager_ForwardClientCertDetails
	cert, chain, subject, uri, dns bool
}

func compileXFCC(h *hcmv3.HttpConnectionManager) (xfccConfig, error) {
	c := xfccConfig{mode: h.GetForwardClientCertDetails()}
	if _, ok := hcmv3.HttpConnectionManager_ForwardClientCertDetails_name[int32(c.mode)]; !ok {
		return c, fmt.Errorf("forward_client_cert_details: unknown value %d", c.mode)
	}
	s := h.GetSetCurrentClientCertDetails()
	if s == nil {
		return c, nil
	}
	if s.GetIssuer() {
		return c, fmt.Errorf("set_current_client_cert_details: issuer is not supported (cert, chain, subject, uri and dns are)")
	}
	if s.GetFormat() != hcmv3.HttpConnectionManager_TEXT {
		return c, fmt.Errorf("set_current_client_cert_details: format %v is not supported (TEXT is)", s.GetFormat())
	}
	c.cert, c.chain, c.subject, c.uri, c.dns = s.GetCert(), s.GetChain(), s.GetSubject().GetValue(), s.GetUri(), s.GetDns()
	return c, nil
}

// clientCertHeader applies the chain's forward_client_cert_details to
// r's XFCC header. With a client certificate (mutual TLS downstream):
// FORWARD_ONLY keeps the header, APPEND_FORWARD appends this hop's
// element, SANITIZE_SET replaces the header with it. Without one, those
// three remove the header, as SANITIZE (the default) always does;
// ALWAYS_FORWARD_ONLY never touches it.
func clientCertHeader(r *http.Request, cc *chainConn) {
	c := cc.chain.xfcc
	switch c.mode {
	case hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY:
		return
	case hcmv3.HttpConnectionManager_SANITIZE:
		delete(r.Header, xfccHeader)
		return
	}
	x := cc.xfccElement(c)
	if x.elem == "" {
		delete(r.Header, xfccHeader)
		return
	}
	switch c.mode {
	case hcmv3.HttpConnectionManager_FORWARD_ONLY:
		return
	case hcmv3.HttpConnectionManager_APPEND_FORWARD:
		if prior := r.Header[xfccHeader]; len(prior) > 0 {
			r.Header[xfccHeader] = []string{strings.Join(prior, ",") + "," + x.elem}
			return
		}
	}
	r.Header[xfccHeader] = x.vals[:1:1]
}

// xfccCache is a connection's XFCC element, made once per configuration
// of the connection manager (the client and this proxy keep their
// certificates for the connection's life).
type xfccCache struct {
	p atomic.Pointer[xfccElem]
}

type xfccElem struct {
	cfg  xfccConfig
	elem string
	// vals is the header's value when it is only this element; the
	// header map of every request on the connection shares it (header
	// operations replace values, they never write into them).
	vals []string
}

// xfccElement is this hop's XFCC element for the connection's client
// certificate ("" without one): By (the URI SANs of the certificate this
// proxy presented on the connection), Hash (the SHA-256 of the client
// certificate, hex), then Cert (the client certificate, URL-encoded
// PEM), Chain (every certificate the client sent, leaf first, the same
// way), Subject, URI and DNS as configured, in Envoy's order and
// spelling.
func (cc *chainConn) xfccElement(c xfccConfig) *xfccElem {
	if x := cc.xfcc.p.Load(); x != nil && x.cfg == c {
		return x
	}
	x := &xfccElem{cfg: c}
	x.elem = clientCertElement(cc.Conn, cc.local, c)
	if x.elem != "" {
		x.vals = []string{x.elem}
	}
	cc.xfcc.p.Store(x)
	return x
}

// clientCertElement makes the element xfccElement describes.
func clientCertElement(conn net.Conn, local *tls.Certificate, c xfccConfig) string {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return ""
	}
	peers := tc.ConnectionState().PeerCertificates
	if len(peers) == 0 {
		return ""
	}
	client := peers[0]
	var parts []string
	if leaf := leafOf(local); leaf != nil {
		for _, u := range leaf.URIs {
			parts = append(parts, "By="+u.String())
		}
	}
	sum := sha256.Sum256(client.Raw)
	parts = append(parts, "Hash="+hex.EncodeToString(sum[:]))
	if c.cert {
		parts = append(parts, `Cert="`+urlEncodedPEM(peers[:1])+`"`)
	}
	if c.chain {
		parts = append(parts, `Chain="`+urlEncodedPEM(peers)+`"`)
	}
	if c.subject {
		parts = append(parts, `Subject="`+strings.ReplaceAll(client.Subject.String(), `"`, `\"`)+`"`)
	}
	if c.uri {
		for _, u := range client.URIs {
			parts = append(parts, "URI="+u.String())
		}
	}
	if c.dns {
		for _, d := range client.DNSNames {
			parts = append(parts, "DNS="+d)
		}
	}
	return strings.Join(parts, ";")
}

// pemURLEncoder escapes PEM text as Envoy does for XFCC's Cert and Chain.
var pemURLEncoder = strings.NewReplacer("\n", "%0A", " ", "%20", "+", "%2B", "/", "%2F", "=", "%3D")

// urlEncodedPEM is certs as concatenated PEM blocks, URL-encoded.
func urlEncodedPEM(certs []*x509.Certificate) string {
	var b strings.Builder
	for _, c := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return pemURLEncoder.Replace(b.String())
}
