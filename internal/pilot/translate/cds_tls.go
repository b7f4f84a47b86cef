package translate

import (
	"fmt"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	networking "istio.io/api/networking/v1alpha3"
)

const (
	// tlsTransportSocket names the upstream TLS transport socket.
	tlsTransportSocket = "envoy.transport_sockets.tls"
	// SDSDefaultCert is the SDS secret (and gRPC certificate provider
	// certificate) holding the workload's own certificate and key.
	SDSDefaultCert = "default"
	// SDSRootCA is the SDS secret holding the mesh's trust bundle.
	SDSRootCA = "ROOTCA"
	// CACertSecretSuffix is appended to a DestinationRule credentialName to
	// name the SDS secret of its CA certificates, as Istio does.
	CACertSecretSuffix = "-cacert"
	// certProviderInstance is the certificate provider instance gRPC's
	// bootstrap file declares for mesh certificates (Istio's name).
	certProviderInstance = "default"
)

// istioALPN is offered on ISTIO_MUTUAL connections so that the peer's
// inbound listener can tell mesh mTLS traffic apart, as Istio does.
var istioALPN = []string{"istio-peer-exchange", "istio"}

// applyTLS sets the upstream transport socket a DestinationRule's tls
// settings ask for. It returns false when the cluster must be dropped
// rather than sent in plaintext (settings this proxy cannot honour).
func (r *cdsRun) applyTLS(c *clusterv3.Cluster, svc *registry.Service, port registry.Port, subset string,
	all []registry.Endpoint, tls *networking.ClientTLSSettings, dr *destRule) bool {
	if tls == nil || tls.GetMode() == networking.ClientTLSSettings_DISABLE {
		return true
	}
	var ctx *tlsv3.UpstreamTlsContext
	switch tls.GetMode() {
	case networking.ClientTLSSettings_ISTIO_MUTUAL:
		ctx = r.istioMutualTLS(svc, port, subset, all)
	case networking.ClientTLSSettings_SIMPLE, networking.ClientTLSSettings_MUTUAL:
		if r.p.Type == model.Proxyless {
			r.warnOnce("%s: tls mode %s is not supported for proxyless clients (file certificates); no cluster %s",
				dr.key(), tls.GetMode(), c.GetName())
			return false
		}
		var ok bool
		if ctx, ok = r.originationTLS(c.GetName(), svc, tls, dr); !ok {
			return false
		}
	default:
		r.warnOnce("%s: unknown tls mode %d; no cluster %s", dr.key(), tls.GetMode(), c.GetName())
		return false
	}
	c.TransportSocket = &corev3.TransportSocket{Name: tlsTransportSocket,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
	return true
}

// istioMutualTLS uses the mesh certificate ("default") and trust bundle
// ("ROOTCA") over SDS on the ADS stream (gRPC certificate providers for
// proxyless clients), checks the server's identity against the service's
// SubjectAltNames or its endpoints' SPIFFE IDs, and sends Istio's SNI
// "outbound_.<port>_.<subset>_.<host>".
func (r *cdsRun) istioMutualTLS(svc *registry.Service, port registry.Port, subset string, all []registry.Endpoint) *tlsv3.UpstreamTlsContext {
	sans := r.istioSANs(svc, all)
	sni := fmt.Sprintf("outbound_.%d_.%s_.%s", port.Number, subset, svc.Hostname)
	if r.p.Type == model.Proxyless {
		var m []*matcherv3.StringMatcher
		for _, s := range sans {
			m = append(m, exactMatcher(s))
		}
		return &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
				InstanceName: certProviderInstance, CertificateName: SDSDefaultCert},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
					InstanceName: certProviderInstance, CertificateName: SDSRootCA},
				// gRPC reads the untyped matchers only.
				//lint:ignore SA1019 deprecated in Envoy, still what gRPC reads
				MatchSubjectAltNames: m,
			}},
		}}
	}
	alpn := append([]string(nil), istioALPN...)
	if isH2(port.Protocol) {
		alpn = append(alpn, "h2")
	}
	return &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  alpn,
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SDSDefaultCert, SdsConfig: adsConfigSource()}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sanMatchers(sans)},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SDSRootCA, SdsConfig: adsConfigSource()},
			}},
	}}
}

// istioSANs are the identities allowed to serve svc: its SubjectAltNames,
// else spiffe://<trustDomain>/ns/<ns>/sa/<sa> of its endpoints' service
// accounts ("default" for endpoints without one), each SPIFFE ID also in
// the mesh's trust domain aliases; sorted, without duplicates. Empty (no
// endpoints) means any mesh identity.
func (r *cdsRun) istioSANs(svc *registry.Service, all []registry.Endpoint) []string {
	set := map[string]bool{}
	if len(svc.SubjectAltNames) > 0 {
		for _, s := range svc.SubjectAltNames {
			set[s] = true
		}
	} else {
		td := r.s.Mesh.TrustDomain
		if td == "" {
			td = "cluster.local"
		}
		for _, ep := range all {
			switch sa := ep.ServiceAccount; {
			case sa == "":
				// weft's CA issues workloads without a service account the
				// identity of "default", as Kubernetes does.
				set[fmt.Sprintf("spiffe://%s/ns/%s/sa/default", td, ep.Namespace)] = true
			case strings.HasPrefix(sa, "spiffe://"):
				set[sa] = true
			default:
				set[fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", td, ep.Namespace, sa)] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	return spiffeInTrustDomains(out, r.s.Mesh.TrustDomainAliases)
}

// originationTLS is TLS origination (SIMPLE, MUTUAL) with certificates
// from files on the proxy's host, or from SDS secrets "<credentialName>"
// and "<credentialName>-cacert" when credentialName is set. Without sni,
// the service hostname is sent (unless it is a wildcard). Without
// caCertificates (or credentialName) the server certificate is not
// verified: subjectAltNames then cannot be checked and are reported.
func (r *cdsRun) originationTLS(name string, svc *registry.Service, tls *networking.ClientTLSSettings, dr *destRule) (*tlsv3.UpstreamTlsContext, bool) {
	common := &tlsv3.CommonTlsContext{}
	cred := tls.GetCredentialName()
	if tls.GetMode() == networking.ClientTLSSettings_MUTUAL {
		switch {
		case cred != "":
			common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: cred, SdsConfig: adsConfigSource()}}
		case tls.GetClientCertificate() != "" && tls.GetPrivateKey() != "":
			common.TlsCertificates = []*tlsv3.TlsCertificate{{
				CertificateChain: fileSource(tls.GetClientCertificate()),
				PrivateKey:       fileSource(tls.GetPrivateKey()),
			}}
		default:
			r.warnOnce("%s: tls mode MUTUAL needs clientCertificate and privateKey, or credentialName; no cluster %s", dr.key(), name)
			return nil, false
		}
	}
	if !tls.GetInsecureSkipVerify().GetValue() {
		vc := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sanMatchers(tls.GetSubjectAltNames())}
		if tls.GetCaCrl() != "" {
			vc.Crl = fileSource(tls.GetCaCrl())
		}
		switch {
		case cred != "":
			common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         vc,
					ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: cred + CACertSecretSuffix, SdsConfig: adsConfigSource()},
				}}
		case tls.GetCaCertificates() != "":
			vc.TrustedCa = fileSource(tls.GetCaCertificates())
			common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
		case len(tls.GetSubjectAltNames()) > 0:
			r.warnOnce("%s: subjectAltNames without caCertificates cannot be verified; ignored", dr.key())
		}
	}
	sni := tls.GetSni()
	if sni == "" && !strings.Contains(svc.Hostname, "*") {
		sni = svc.Hostname
	}
	return &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: common}, true
}

// sanMatchers matches SANs exactly: URI SANs (SPIFFE IDs) for names with a
// scheme, DNS SANs otherwise.
func sanMatchers(sans []string) []*tlsv3.SubjectAltNameMatcher {
	var out []*tlsv3.SubjectAltNameMatcher
	for _, s := range sans {
		t := tlsv3.SubjectAltNameMatcher_DNS
		if strings.Contains(s, "://") {
			t = tlsv3.SubjectAltNameMatcher_URI
		}
		out = append(out, &tlsv3.SubjectAltNameMatcher{SanType: t, Matcher: exactMatcher(s)})
	}
	return out
}

func exactMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func fileSource(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
}
