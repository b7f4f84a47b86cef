package engine

import (
	"encoding/pem"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/proxy/admin"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/proto"
)

// snapshotConfig lists a snapshot's resources sorted by name for the admin
// API, and the workload certificate of certs (nil: none).
func snapshotConfig(s *xdsclient.Snapshot, certs Certs) *admin.Config {
	cfg := &admin.Config{Versions: map[string]string{}}
	for k, v := range s.Versions {
		cfg.Versions[k] = v
	}
	for _, n := range sortedKeys(s.Listeners) {
		cfg.Listeners = append(cfg.Listeners, s.Listeners[n])
	}
	for _, n := range sortedKeys(s.Routes) {
		cfg.Routes = append(cfg.Routes, s.Routes[n])
	}
	for _, n := range sortedKeys(s.Clusters) {
		cfg.Clusters = append(cfg.Clusters, s.Clusters[n])
	}
	for _, n := range sortedKeys(s.Endpoints) {
		cfg.Endpoints = append(cfg.Endpoints, s.Endpoints[n])
	}
	if sec := certSecret(certs); sec != nil {
		cfg.Secrets = append(cfg.Secrets, sec)
	}
	for _, n := range sortedKeys(s.Secrets) {
		cfg.Secrets = append(cfg.Secrets, redacted(s.Secrets[n]))
	}
	return cfg
}

// redacted is sec as Envoy's config dump shows it: a private key (of a
// gateway credential from discovery) replaced by "[redacted]".
func redacted(sec *tlsv3.Secret) *tlsv3.Secret {
	if sec.GetTlsCertificate().GetPrivateKey() == nil {
		return sec
	}
	out := proto.Clone(sec).(*tlsv3.Secret)
	out.GetTlsCertificate().PrivateKey = redactedKey()
	return out
}

// redactedKey is a private key as config dumps show it.
func redactedKey() *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "[redacted]"}}
}

// certSecret is the workload certificate as Envoy's config dump shows
// its SDS secret "default": the chain in PEM, the private key redacted.
func certSecret(c Certs) *tlsv3.Secret {
	if c == nil {
		return nil
	}
	cert, err := c.GetCertificate(nil)
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return nil
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return &tlsv3.Secret{Name: sdsCert, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: chain}},
		PrivateKey:       redactedKey(),
	}}}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
