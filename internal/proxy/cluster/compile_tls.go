package cluster

import (
	"crypto/tls"
	"fmt"
	"regexp"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// UpstreamTLS is the cluster's UpstreamTlsContext as plain settings for
// the proxy's TLS layer, which implements them. Unsupported settings of
// the context (rejected by Compile): custom handshakers, certificate
// selectors and validators, the deprecated certificate_provider fields,
// SPKI/hash pinning, signed certificate timestamps, accepting expired or
// untrusted chains, PKCS#12 and private key providers, environment
// variable data sources, SDS from a source other than ADS, OTHER_NAME SAN
// matchers and custom string matchers.
type UpstreamTLS struct {
	// SNI is the server name sent; empty sends none (unless
	// HTTPOptions.AutoSNI).
	SNI string
	// ALPN lists the protocols offered, in order.
	ALPN []string
	// AllowRenegotiation permits server-initiated renegotiation.
	AllowRenegotiation bool
	// MinVersion and MaxVersion are crypto/tls versions; 0 means the
	// default (TLS 1.2 and TLS 1.3).
	MinVersion, MaxVersion uint16
	// CipherSuites and ECDHCurves are OpenSSL-style names; empty means
	// the defaults.
	CipherSuites, ECDHCurves []string

	// CertSDS names the SDS secret with the client certificate and key
	// (on the ADS stream); empty when none.
	CertSDS string
	// CertProvider is the certificate provider instance of the client
	// certificate (gRPC style); nil when none.
	CertProvider *CertProvider
	// CertChain and PrivateKey are a client certificate from files or
	// inline; nil when none.
	CertChain, PrivateKey *DataSource

	// Verify reports whether the server certificate is verified; false
	// when the context has no validation context (insecure).
	Verify bool
	// CASDS names the SDS secret with the trusted CAs; empty when none.
	CASDS string
	// CAProvider is the certificate provider instance of the trusted
	// CAs; nil when none.
	CAProvider *CertProvider
	// CA and CRL are trusted CAs and a revocation list from a file or
	// inline; nil when none.
	CA, CRL *DataSource
	// SystemRoots adds the system's trusted roots.
	SystemRoots bool
	// SANs lists the accepted server identities: the certificate must
	// have a SAN matching one of them. Empty accepts any.
	SANs []SANMatcher
}

// CertProvider names a certificate of a certificate provider instance.
type CertProvider struct {
	Instance, Certificate string
}

// DataSource is a file name or inline bytes.
type DataSource struct {
	Filename string
	Inline   []byte
}

// SANType is the kind of subject alternative name a matcher applies to.
type SANType int

const (
	// SANAny matches DNS, URI, email and IP SANs (Envoy's deprecated
	// untyped match_subject_alt_names).
	SANAny SANType = iota
	SANDNS
	SANURI
	SANEmail
	SANIP
)

// SANMatcher matches one kind of SAN with a string matcher.
type SANMatcher struct {
	Type SANType
	StringMatcher
}

// StringMatcher is Envoy's StringMatcher: exactly one of the patterns.
type StringMatcher struct {
	Exact, Prefix, Suffix, Contains string
	Regex                           *regexp.Regexp
	IgnoreCase                      bool
	kind                            int // 0 exact, 1 prefix, 2 suffix, 3 contains, 4 regex
}

// Match reports whether s matches.
func (m *StringMatcher) Match(s string) bool {
	if m.IgnoreCase && m.kind != 4 {
		s = strings.ToLower(s)
	}
	switch m.kind {
	case 1:
		return strings.HasPrefix(s, m.Prefix)
	case 2:
		return strings.HasSuffix(s, m.Suffix)
	case 3:
		return strings.Contains(s, m.Contains)
	case 4:
		return m.Regex.MatchString(s)
	}
	return s == m.Exact
}

func (k *compiler) stringMatcher(f string, m *matcherv3.StringMatcher) StringMatcher {
	out := StringMatcher{IgnoreCase: m.GetIgnoreCase()}
	low := func(s string) string {
		if out.IgnoreCase {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Exact = low(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		out.Prefix, out.kind = low(p.Prefix), 1
	case *matcherv3.StringMatcher_Suffix:
		out.Suffix, out.kind = low(p.Suffix), 2
	case *matcherv3.StringMatcher_Contains:
		out.Contains, out.kind = low(p.Contains), 3
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		if err != nil {
			k.invalid(f+".safe_regex", "%v", err)
		}
		out.Regex, out.kind = re, 4
	default:
		k.unsupported(f + " (custom or empty string matcher)")
	}
	return out
}

// transportSocket reads the TLS transport socket; nil means plaintext.
func (k *compiler) transportSocket(ts *corev3.TransportSocket) *UpstreamTLS {
	if ts == nil {
		return nil
	}
	const f = "transport_socket"
	a := ts.GetTypedConfig()
	switch {
	case a == nil && (ts.GetName() == "envoy.transport_sockets.raw_buffer" || ts.GetName() == "raw_buffer"):
		return nil
	case a == nil:
		k.unsupported(f + " " + ts.GetName())
		return nil
	case strings.HasSuffix(a.GetTypeUrl(), "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"):
		return nil
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := a.UnmarshalTo(ctx); err != nil {
		k.unsupported(fmt.Sprintf("%s %s (%s)", f, ts.GetName(), a.GetTypeUrl()))
		return nil
	}
	out := &UpstreamTLS{SNI: ctx.GetSni(), AllowRenegotiation: ctx.GetAllowRenegotiation()}
	if ctx.GetAutoHostSni() || ctx.GetAutoSniSanValidation() {
		k.unsupported(f + ".auto_host_sni (use upstream_http_protocol_options.auto_sni)")
	}
	cc := ctx.GetCommonTlsContext()
	out.ALPN = cc.GetAlpnProtocols()
	if p := cc.GetTlsParams(); p != nil {
		out.MinVersion = tlsVersion(p.GetTlsMinimumProtocolVersion())
		out.MaxVersion = tlsVersion(p.GetTlsMaximumProtocolVersion())
		out.CipherSuites, out.ECDHCurves = p.GetCipherSuites(), p.GetEcdhCurves()
		if len(p.GetSignatureAlgorithms()) > 0 || len(p.GetCompliancePolicies()) > 0 {
			k.unsupported(f + ".common_tls_context.tls_params.signature_algorithms")
		}
	}
	//lint:ignore SA1019 rejected, not used
	if cc.GetCustomHandshaker() != nil || cc.GetCustomTlsCertificateSelector() != nil || cc.GetTlsCertificateCertificateProvider() != nil || cc.GetTlsCertificateCertificateProviderInstance() != nil {
		k.unsupported(f + ".common_tls_context (custom handshaker, selector or deprecated certificate provider)")
	}
	switch certs := cc.GetTlsCertificates(); {
	case len(certs) > 1:
		k.unsupported(f + ".common_tls_context.tls_certificates (more than one)")
	case len(certs) == 1:
		c := certs[0]
		if c.GetPkcs12() != nil || c.GetPrivateKeyProvider() != nil || c.GetPassword() != nil {
			k.unsupported(f + ".common_tls_context.tls_certificates (pkcs12, password, private key provider)")
		}
		out.CertChain = k.dataSource(f+".common_tls_context.tls_certificates.certificate_chain", c.GetCertificateChain())
		out.PrivateKey = k.dataSource(f+".common_tls_context.tls_certificates.private_key", c.GetPrivateKey())
	}
	switch sds := cc.GetTlsCertificateSdsSecretConfigs(); {
	case len(sds) > 1:
		k.unsupported(f + ".common_tls_context.tls_certificate_sds_secret_configs (more than one)")
	case len(sds) == 1:
		out.CertSDS = k.sds(f+".common_tls_context.tls_certificate_sds_secret_configs", sds[0])
	}
	if p := cc.GetTlsCertificateProviderInstance(); p != nil {
		out.CertProvider = &CertProvider{Instance: p.GetInstanceName(), Certificate: p.GetCertificateName()}
	}
	switch v := cc.GetValidationContextType().(type) {
	case nil:
	case *tlsv3.CommonTlsContext_ValidationContext:
		k.validation(f+".common_tls_context.validation_context", v.ValidationContext, out)
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		out.Verify = true
		out.CASDS = k.sds(f+".common_tls_context.validation_context_sds_secret_config", v.ValidationContextSdsSecretConfig)
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		cv := v.CombinedValidationContext
		const cf = f + ".common_tls_context.combined_validation_context"
		//lint:ignore SA1019 rejected, not used
		if cv.GetValidationContextCertificateProvider() != nil || cv.GetValidationContextCertificateProviderInstance() != nil {
			k.unsupported(cf + ".validation_context_certificate_provider")
		}
		k.validation(cf+".default_validation_context", cv.GetDefaultValidationContext(), out)
		out.Verify = true
		out.CASDS = k.sds(cf+".validation_context_sds_secret_config", cv.GetValidationContextSdsSecretConfig())
	default:
		k.unsupported(fmt.Sprintf("%s.common_tls_context validation context %T", f, v))
	}
	return out
}

// validation reads a CertificateValidationContext into out.
func (k *compiler) validation(f string, vc *tlsv3.CertificateValidationContext, out *UpstreamTLS) {
	if vc == nil {
		return
	}
	out.Verify = true
	switch {
	case len(vc.GetVerifyCertificateSpki()) > 0 || len(vc.GetVerifyCertificateHash()) > 0:
		k.unsupported(f + ".verify_certificate_spki/hash")
	case vc.GetRequireSignedCertificateTimestamp().GetValue():
		k.unsupported(f + ".require_signed_certificate_timestamp")
	case vc.GetAllowExpiredCertificate():
		k.unsupported(f + ".allow_expired_certificate")
	case vc.GetTrustChainVerification() != tlsv3.CertificateValidationContext_VERIFY_TRUST_CHAIN:
		k.unsupported(f + ".trust_chain_verification " + vc.GetTrustChainVerification().String())
	case vc.GetCustomValidatorConfig() != nil:
		k.unsupported(f + ".custom_validator_config")
	}
	out.CA = k.dataSource(f+".trusted_ca", vc.GetTrustedCa())
	out.CRL = k.dataSource(f+".crl", vc.GetCrl())
	out.SystemRoots = vc.GetSystemRootCerts() != nil
	if p := vc.GetCaCertificateProviderInstance(); p != nil {
		out.CAProvider = &CertProvider{Instance: p.GetInstanceName(), Certificate: p.GetCertificateName()}
	}
	for i, m := range vc.GetMatchTypedSubjectAltNames() {
		mf := fmt.Sprintf("%s.match_typed_subject_alt_names[%d]", f, i)
		var t SANType
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_DNS:
			t = SANDNS
		case tlsv3.SubjectAltNameMatcher_URI:
			t = SANURI
		case tlsv3.SubjectAltNameMatcher_EMAIL:
			t = SANEmail
		case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
			t = SANIP
		default:
			k.unsupported(mf + ".san_type " + m.GetSanType().String())
		}
		out.SANs = append(out.SANs, SANMatcher{Type: t, StringMatcher: k.stringMatcher(mf+".matcher", m.GetMatcher())})
	}
	//lint:ignore SA1019 the deprecated field is what gRPC reads; honoured
	for i, m := range vc.GetMatchSubjectAltNames() {
		mf := fmt.Sprintf("%s.match_subject_alt_names[%d]", f, i)
		out.SANs = append(out.SANs, SANMatcher{Type: SANAny, StringMatcher: k.stringMatcher(mf, m)})
	}
}

// sds returns the secret name of an SDS config served over ADS.
func (k *compiler) sds(f string, s *tlsv3.SdsSecretConfig) string {
	if s == nil {
		return ""
	}
	if s.GetName() == "" {
		k.invalid(f+".name", "empty")
	}
	if src := s.GetSdsConfig(); src != nil && src.GetAds() == nil {
		k.unsupported(f + ".sds_config (only ADS)")
	}
	return s.GetName()
}

func (k *compiler) dataSource(f string, d *corev3.DataSource) *DataSource {
	switch s := d.GetSpecifier().(type) {
	case nil:
		return nil
	case *corev3.DataSource_Filename:
		return &DataSource{Filename: s.Filename}
	case *corev3.DataSource_InlineBytes:
		return &DataSource{Inline: s.InlineBytes}
	case *corev3.DataSource_InlineString:
		return &DataSource{Inline: []byte(s.InlineString)}
	default:
		k.unsupported(fmt.Sprintf("%s (%T)", f, s))
		return nil
	}
}

func tlsVersion(v tlsv3.TlsParameters_TlsProtocol) uint16 {
	switch v {
	case tlsv3.TlsParameters_TLSv1_0:
		return tls.VersionTLS10
	case tlsv3.TlsParameters_TLSv1_1:
		return tls.VersionTLS11
	case tlsv3.TlsParameters_TLSv1_2:
		return tls.VersionTLS12
	case tlsv3.TlsParameters_TLSv1_3:
		return tls.VersionTLS13
	}
	return 0
}

// httpProtocolOptionsKey is the typed_extension_protocol_options key of
// upstream HTTP options.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// httpOptions reads the upstream HTTP options: the typed
// HttpProtocolOptions, else the deprecated cluster fields.
func (k *compiler) httpOptions(c *clusterv3.Cluster) HTTPOptions {
	var out HTTPOptions
	//lint:ignore SA1019 the deprecated fields are still honoured
	common, h2 := c.GetCommonHttpProtocolOptions(), c.GetHttp2ProtocolOptions()
	//lint:ignore SA1019 the deprecated fields are still honoured
	upstream := c.GetUpstreamHttpProtocolOptions()
	if h2 != nil {
		out.Protocol = HTTP2
	}
	//lint:ignore SA1019 the deprecated fields are still honoured
	if c.GetProtocolSelection() == clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL {
		out.Protocol = DownstreamProtocol
	}
	//lint:ignore SA1019 the deprecated fields are still honoured
	if v := c.GetMaxRequestsPerConnection(); v != nil {
		out.MaxRequestsPerConnection = v.GetValue()
	}
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		f := "typed_extension_protocol_options[" + key + "]"
		if key != httpProtocolOptionsKey {
			k.unsupported(f)
			continue
		}
		o := &httpv3.HttpProtocolOptions{}
		if err := a.UnmarshalTo(o); err != nil {
			k.invalid(f, "%v", err)
			continue
		}
		if len(o.GetHttpFilters()) > 0 || o.GetHashPolicy() != nil || o.GetRetryPolicy() != nil ||
			o.GetOutlierDetection() != nil || len(o.GetRequestMirrorPolicies()) > 0 {
			k.unsupported(f + " (http_filters, hash_policy, retry_policy, outlier_detection, request_mirror_policies)")
		}
		if o.GetCommonHttpProtocolOptions() != nil {
			common = o.GetCommonHttpProtocolOptions()
		}
		if o.GetUpstreamHttpProtocolOptions() != nil {
			upstream = o.GetUpstreamHttpProtocolOptions()
		}
		switch p := o.GetUpstreamProtocolOptions().(type) {
		case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
			switch {
			case p.ExplicitHttpConfig.GetHttp3ProtocolOptions() != nil:
				k.unsupported(f + ".explicit_http_config.http3_protocol_options")
			case p.ExplicitHttpConfig.GetHttp2ProtocolOptions() != nil:
				out.Protocol, h2 = HTTP2, p.ExplicitHttpConfig.GetHttp2ProtocolOptions()
			default:
				out.Protocol = HTTP1
			}
		case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
			if p.UseDownstreamProtocolConfig.GetHttp3ProtocolOptions() != nil {
				k.unsupported(f + ".use_downstream_protocol_config.http3_protocol_options")
			}
			out.Protocol, h2 = DownstreamProtocol, p.UseDownstreamProtocolConfig.GetHttp2ProtocolOptions()
		case *httpv3.HttpProtocolOptions_AutoConfig:
			if p.AutoConfig.GetHttp3ProtocolOptions() != nil {
				k.unsupported(f + ".auto_config.http3_protocol_options")
			}
			out.Protocol, h2 = AutoProtocol, p.AutoConfig.GetHttp2ProtocolOptions()
		}
	}
	if common != nil {
		if d := common.GetIdleTimeout(); d != nil {
			out.IdleTimeout, out.IdleTimeoutSet = dur(d), true
		}
		out.MaxConnectionDuration = dur(common.GetMaxConnectionDuration())
		out.MaxStreamDuration = dur(common.GetMaxStreamDuration())
		out.MaxHeadersCount = common.GetMaxHeadersCount().GetValue()
		if v := common.GetMaxRequestsPerConnection(); v != nil {
			out.MaxRequestsPerConnection = v.GetValue()
		}
	}
	if h2 != nil {
		out.MaxConcurrentStreams = h2.GetMaxConcurrentStreams().GetValue()
		out.InitialStreamWindowSize = h2.GetInitialStreamWindowSize().GetValue()
		out.InitialConnectionWindowSize = h2.GetInitialConnectionWindowSize().GetValue()
	}
	out.AutoSNI, out.AutoSANValidation = upstream.GetAutoSni(), upstream.GetAutoSanValidation()
	return out
}
