package translate

import (
	"maps"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"google.golang.org/protobuf/types/known/structpb"
)

// Gateway credentials from Secrets, as istiod serves them: a Gateway
// server's credentialName is the Secret of that name in the gateway's own
// namespace (not the Gateway's), sent by SDS as
//   - kubernetes://<name>: its certificate chain and private key (tls.crt
//     and tls.key, or a generic secret's cert and key);
//   - kubernetes://<name>-cacert: the CA bundle MUTUAL servers check
//     clients with: ca.crt (or cacert) of the Secret <name>-cacert when it
//     exists, else of <name>.
//
// Private keys go only to gateways whose xDS stream proved that namespace
// with a workload credential (model.Proxy.Verified), never over the
// plaintext port and never to sidecars. A credential no Secret holds (or
// one a gateway may not get) is left to the gateway, which reads it from
// its --credential-dir.

// SDS name prefix and suffix of credentialName certificates and CAs
// (Istio's).
const (
	credentialPrefix   = "kubernetes://"
	credentialCASuffix = "-cacert"
)

// credentialSecrets builds the SDS secrets of the credentials the
// gateway's servers use, in name order.
func (b *builder) credentialSecrets() []*tlsv3.Secret {
	if b.p.Type != model.Router || len(b.credentials) == 0 {
		return nil
	}
	var out []*tlsv3.Secret
	for _, name := range slices.Sorted(maps.Keys(b.credentials)) {
		cred := strings.TrimPrefix(name, credentialPrefix)
		if base, ok := strings.CutSuffix(cred, credentialCASuffix); ok {
			ca := secretEntry(b.secret(cred), "ca.crt", "cacert")
			if ca == "" {
				ca = secretEntry(b.secret(base), "ca.crt", "cacert")
			}
			if ca == "" {
				continue
			}
			if !b.p.Verified {
				b.warn("credentialName %s: the CA in Secret %s/%s is not sent over an unauthenticated xDS stream; the gateway reads %s from its --credential-dir", base, b.p.Namespace, base, name)
				continue
			}
			out = append(out, &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: inlineString(ca)}}})
			continue
		}
		sec := b.secret(cred)
		cert, key := secretEntry(sec, "tls.crt", "cert"), secretEntry(sec, "tls.key", "key")
		switch {
		case sec == nil:
			continue
		case cert == "" || key == "":
			b.warn("credentialName %s: Secret %s/%s has no tls.crt and tls.key (or cert and key); the gateway reads %s from its --credential-dir", cred, b.p.Namespace, cred, name)
			continue
		case !b.p.Verified:
			b.warn("credentialName %s: the private key in Secret %s/%s is not sent over an unauthenticated xDS stream; the gateway reads %s from its --credential-dir", cred, b.p.Namespace, cred, name)
			continue
		}
		out = append(out, &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineString(cert), PrivateKey: inlineString(key)}}})
	}
	return out
}

// secret returns the credential entries of Secret name in the proxy's
// namespace; nil when there is none.
func (b *builder) secret(name string) *structpb.Struct {
	for _, c := range b.s.Configs(model.SecretKind) {
		if c.Namespace == b.p.Namespace && c.Name == name {
			st, _ := c.Spec.(*structpb.Struct)
			return st
		}
	}
	return nil
}

// secretEntry returns the first of keys that s holds, "" when none.
func secretEntry(s *structpb.Struct, keys ...string) string {
	for _, k := range keys {
		if v := s.GetFields()[k].GetStringValue(); v != "" {
			return v
		}
	}
	return ""
}

// inlineString is an inline data source.
func inlineString(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}
