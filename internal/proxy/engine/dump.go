package engine

import (
	"encoding/pem"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
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

// tcpLabels are the TCP metric labels for a connection to cluster name.
func (e *Engine) tcpLabels(name string) prometheus.Labels {
	svc := ""
	reporter := "source"
	if parts := splitCluster(name); len(parts) == 4 {
		svc = parts[3]
		if parts[0] == "inbound" {
			reporter = "destination"
		}
	}
	l := prometheus.Labels{"reporter": reporter, "response_flags": "-", "connection_security_policy": "none",
		"destination_service": orUnknown(svc), "destination_service_name": orUnknown(svc), "destination_service_namespace": "unknown"}
	src, dst := e.opts.Workload, e.opts.Workload
	if reporter == "source" {
		dst = noPeer
	} else {
		src = noPeer
	}
	for k, v := range map[string]string{
		"source_workload": src.Workload, "source_workload_namespace": src.Namespace, "source_principal": src.Principal,
		"source_app": src.App, "source_version": src.Version,
		"destination_workload": dst.Workload, "destination_workload_namespace": dst.Namespace,
		"destination_principal": dst.Principal, "destination_app": dst.App, "destination_version": dst.Version,
	} {
		l[k] = orUnknown(v)
	}
	return l
}

var noPeer = struct{ Workload, Namespace, Principal, App, Version string }{}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func splitCluster(name string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(name); i++ {
		if name[i] == '|' {
			parts = append(parts, name[start:i])
			start = i + 1
		}
	}
	return append(parts, name[start:])
}
