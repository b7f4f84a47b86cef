package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// TestRedactKey: /debug/config_dump never shows a gateway credential's
// private key, and leaves the pushed secret as it is.
func TestRedactKey(t *testing.T) {
	key := &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "-----BEGIN EC PRIVATE KEY-----"}}
	sec := &tlsv3.Secret{Name: "kubernetes://cred", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "CERT"}}, PrivateKey: key}}}
	got := redactKey(sec).(*tlsv3.Secret)
	if k := got.GetTlsCertificate().GetPrivateKey().GetInlineString(); k != "[redacted]" {
		t.Errorf("private key in the dump: %q", k)
	}
	if got.GetTlsCertificate().GetCertificateChain().GetInlineString() != "CERT" {
		t.Errorf("the certificate chain was redacted too")
	}
	if sec.GetTlsCertificate().GetPrivateKey() != key {
		t.Errorf("redacting changed the secret pilot pushes")
	}
	root := &tlsv3.Secret{Name: "ROOTCA"}
	if redactKey(root) != root {
		t.Errorf("a secret without a private key was copied")
	}
}
