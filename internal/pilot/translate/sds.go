package translate

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
)

// RootCASecret is the SDS secret name of the mesh trust bundle, the name
// Istio uses ("ROOTCA"). The workload certificate ("default") is never
// sent over xDS: its key stays with the proxy that generated it.
const RootCASecret = "ROOTCA"

// trustBundleSecret is the trust bundle as an SDS validation context for
// sidecars (proxyless gRPC clients use their certificate providers
// instead). A bundle holding old and new roots lets proxies accept peers
// of either while the CA's root rotates.
func trustBundleSecret(s *model.Snapshot, p *model.Proxy) *tlsv3.Secret {
	if len(s.TrustBundle) == 0 || p.Type != model.Sidecar {
		return nil
	}
	var b strings.Builder
	for _, pem := range s.TrustBundle {
		b.WriteString(strings.TrimSpace(pem))
		b.WriteString("\n")
	}
	return &tlsv3.Secret{Name: RootCASecret, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(b.String())}},
	}}}
}
