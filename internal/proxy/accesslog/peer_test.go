package accesslog

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// peerCert is a client certificate with a SPIFFE URI SAN, two DNS SANs
// and a subject and issuer that have more than one attribute.
func peerCert(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/cart")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		Subject: pkix.Name{CommonName: "cart", Organization: []string{"shop"}}, URIs: []*url.URL{u},
		DNSNames: []string{"cart.shop", "cart"}}
	issuer := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mesh CA", Organization: []string{"weft"}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPeerCertificate: the downstream TLS operators and CEL attributes,
// with a client certificate and without one (and %GRPC_STATUS_NUMBER%,
// with a gRPC status and without).
func TestPeerCertificate(t *testing.T) {
	cert := peerCert(t)
	sum := sha256.Sum256(cert.Raw)
	withCert := entry
	withCert.PeerCert, withCert.TLSVersion = cert, "TLSv1.3"
	plain := entry

	withCert.GRPCStatus = "5"
	f, err := ParseText("%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_PEER_DNS_SAN%|" +
		"%DOWNSTREAM_PEER_SUBJECT%|%DOWNSTREAM_PEER_ISSUER%|%DOWNSTREAM_PEER_FINGERPRINT_256%|%GRPC_STATUS_NUMBER%")
	if err != nil {
		t.Fatal(err)
	}
	want := "TLSv1.3|spiffe://cluster.local/ns/shop/sa/cart|cart.shop,cart|CN=cart,O=shop|CN=mesh CA,O=weft|" + hex.EncodeToString(sum[:]) + "|5"
	if got := string(f.Append(nil, &withCert)); got != want+"\n" {
		t.Errorf("with a client certificate:\n got %s\nwant %s", got, want)
	}
	if got := string(f.Append(nil, &plain)); got != "-|-|-|-|-|-|-\n" {
		t.Errorf("without TLS: %s", got)
	}

	for expr, want := range map[string][2]bool{ // with the certificate, without TLS
		"connection.mtls && connection.tls_version == 'TLSv1.3'":                                                {true, false},
		"connection.uri_san_peer_certificate == 'spiffe://cluster.local/ns/shop/sa/cart'":                       {true, false},
		"connection.dns_san_peer_certificate == 'cart.shop'":                                                    {true, false},
		"connection.subject_peer_certificate == 'CN=cart,O=shop'":                                               {true, false},
		"connection.sha256_peer_certificate_digest == '" + hex.EncodeToString(sum[:]) + "'":                     {true, false},
		"request.scheme == 'https'":                                                                             {true, false},
		"request.scheme == 'http' && !has(connection.tls_version)":                                              {false, true},
		"!has(connection.uri_san_peer_certificate) || connection.uri_san_peer_certificate.endsWith('/sa/cart')": {true, true},
	} {
		fl, err := ParseFilter(expr)
		if err != nil {
			t.Fatalf("%q: %v", expr, err)
		}
		if got := [2]bool{fl.Match(&withCert), fl.Match(&plain)}; got != want {
			t.Errorf("%q: %v, want %v", expr, got, want)
		}
	}
}

// TestUpstreamAttempts: %UPSTREAM_REQUEST_ATTEMPT_COUNT% is how many times
// the request went upstream — 0 when the proxy answered itself — as a
// number in JSON.
func TestUpstreamAttempts(t *testing.T) {
	f, err := ParseText("attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT%")
	if err != nil {
		t.Fatal(err)
	}
	retried, local := entry, entry
	retried.Attempts = 3
	if got := string(f.Append(nil, &retried)); got != "attempts=3\n" {
		t.Errorf("retried: %q", got)
	}
	if got := string(f.Append(nil, &local)); got != "attempts=0\n" {
		t.Errorf("never sent upstream: %q", got)
	}
	j, err := ParseJSONMap(map[string]string{"attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(j.Append(nil, &retried)); got != `{"attempts":3}`+"\n" {
		t.Errorf("JSON: %q", got)
	}
}

// TestTraceIDOperator: %TRACE_ID% is the traced request's trace id, and
// "-" (JSON null) for one that is not traced.
func TestTraceIDOperator(t *testing.T) {
	f, err := ParseText("trace=%TRACE_ID%")
	if err != nil {
		t.Fatal(err)
	}
	traced, untraced := entry, entry
	traced.TraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	if got := string(f.Append(nil, &traced)); got != "trace=4bf92f3577b34da6a3ce929d0e0e4736\n" {
		t.Errorf("traced: %q", got)
	}
	if got := string(f.Append(nil, &untraced)); got != "trace=-\n" {
		t.Errorf("not traced: %q", got)
	}
	j, err := ParseJSONMap(map[string]string{"trace": "%TRACE_ID%"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(j.Append(nil, &traced)); got != `{"trace":"4bf92f3577b34da6a3ce929d0e0e4736"}`+"\n" {
		t.Errorf("JSON: %q", got)
	}
	if got := string(j.Append(nil, &untraced)); got != `{"trace":null}`+"\n" {
		t.Errorf("JSON, not traced: %q", got)
	}
}

// TestDynamicMetadataOperator: %DYNAMIC_METADATA(NS:KEY...)% is the value
// the HTTP filters left (strings as they are, other values as JSON), "-"
// when absent; a namespace is required.
func TestDynamicMetadataOperator(t *testing.T) {
	f, err := ParseText("%DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_deny_shadow_engine_result)% " +
		"%DYNAMIC_METADATA(istio_authn:request.auth.claims:groups)% %DYNAMIC_METADATA(x:y)% %DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_deny_shadow_engine_result):3%")
	if err != nil {
		t.Fatal(err)
	}
	e := entry
	e.Metadata = map[string]map[string]any{
		"envoy.filters.http.rbac": {"istio_dry_run_deny_shadow_engine_result": "denied"},
		"istio_authn":             {"request.auth.claims": map[string]any{"groups": []any{"dev", "admins"}}},
	}
	if got := string(f.Append(nil, &e)); got != `denied ["dev","admins"] - den`+"\n" {
		t.Errorf("got %q", got)
	}
	if got := string(f.Append(nil, &entry)); got != "- - - -\n" {
		t.Errorf("without metadata: %q", got)
	}
	// In a JSON format a field that is one such operator holds the value
	// itself, as Envoy writes it; inside a longer string it is text.
	j, err := ParseJSONMap(map[string]string{"result": "%DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_deny_shadow_engine_result):3%",
		"groups": "%DYNAMIC_METADATA(istio_authn:request.auth.claims:groups)%", "exp": "%DYNAMIC_METADATA(istio_authn:request.auth.claims:exp)%",
		"missing": "%DYNAMIC_METADATA(x:y)%", "text": "g=%DYNAMIC_METADATA(istio_authn:request.auth.claims:groups)%"})
	if err != nil {
		t.Fatal(err)
	}
	e.Metadata["istio_authn"]["request.auth.claims"].(map[string]any)["exp"] = 1.7e9
	var got map[string]any
	if err := json.Unmarshal(j.Append(nil, &e), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, map[string]any{"result": "den", "groups": []any{"dev", "admins"}, "exp": 1.7e9, "missing": nil,
		"text": `g=["dev","admins"]`}); diff != "" {
		t.Errorf("JSON (-got +want)\n%s", diff)
	}
	for _, bad := range []string{"%DYNAMIC_METADATA%", "%DYNAMIC_METADATA()%", "%DYNAMIC_METADATA(ns:)%", "%DYNAMIC_METADATA(:k)%"} {
		if _, err := ParseText(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
