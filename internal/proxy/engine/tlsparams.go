package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/tlsnames"
)

// tlsParams is a compiled TlsParameters of a downstream TLS context. Zero
// values keep crypto/tls's defaults, except the minimum version, which
// is TLS 1.2 as Envoy's for servers.
type tlsParams struct {
	// minVersion and maxVersion are crypto/tls versions (0: default).
	minVersion, maxVersion uint16
	// cipherSuites are the TLS 1.0–1.2 suites enabled (nil: Go's
	// defaults). crypto/tls chooses among them by its own preference:
	// their order, and prefer_client_ciphers, change nothing. TLS 1.3
	// suites are not configurable in Go; naming them is accepted and
	// changes nothing.
	cipherSuites []uint16
	// curves are the key exchanges enabled (nil: Go's defaults).
	curves []tls.CurveID
}

// tlsVersions maps Envoy's protocol versions to crypto/tls's (TLS_AUTO:
// the default).
var tlsVersions = map[tlsv3.TlsParameters_TlsProtocol]uint16{
	tlsv3.TlsParameters_TLS_AUTO: 0,
	tlsv3.TlsParameters_TLSv1_0:  tls.VersionTLS10,
	tlsv3.TlsParameters_TLSv1_1:  tls.VersionTLS11,
	tlsv3.TlsParameters_TLSv1_2:  tls.VersionTLS12,
	tlsv3.TlsParameters_TLSv1_3:  tls.VersionTLS13,
}

// compileTLSParams reads tls_params: protocol versions, cipher suites
// (BoringSSL's names, as Envoy takes them, or the standard ones;
// "[a|b]" equal-preference groups are flattened) and ECDH curves.
// signature_algorithms and compliance_policies are refused.
func compileTLSParams(p *tlsv3.TlsParameters) (tlsParams, error) {
	var out tlsParams
	if p == nil {
		return out, nil
	}
	if len(p.GetSignatureAlgorithms()) > 0 || len(p.GetCompliancePolicies()) > 0 {
		return out, errors.New("signature_algorithms and compliance_policies are not supported (tls_minimum_protocol_version, tls_maximum_protocol_version, cipher_suites and ecdh_curves are)")
	}
	var ok bool
	if out.minVersion, ok = tlsVersions[p.GetTlsMinimumProtocolVersion()]; !ok {
		return out, fmt.Errorf("tls_minimum_protocol_version %v is not supported", p.GetTlsMinimumProtocolVersion())
	}
	if out.maxVersion, ok = tlsVersions[p.GetTlsMaximumProtocolVersion()]; !ok {
		return out, fmt.Errorf("tls_maximum_protocol_version %v is not supported", p.GetTlsMaximumProtocolVersion())
	}
	lo := out.minVersion
	if lo == 0 {
		lo = tls.VersionTLS12
	}
	if out.maxVersion != 0 && out.maxVersion < lo {
		return out, fmt.Errorf("tls_maximum_protocol_version %v is below the minimum %s (TLS_AUTO is TLSv1_2): set tls_minimum_protocol_version too",
			p.GetTlsMaximumProtocolVersion(), tls.VersionName(lo))
	}
	for _, entry := range p.GetCipherSuites() {
		for _, name := range strings.Split(strings.Trim(entry, "[]"), "|") {
			id, ok := tlsnames.CipherSuite(strings.TrimSpace(name))
			if !ok {
				return out, fmt.Errorf("cipher suite %q is not known (names such as ECDHE-ECDSA-AES128-GCM-SHA256 or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)", name)
			}
			if id != 0 && !slices.Contains(out.cipherSuites, id) {
				out.cipherSuites = append(out.cipherSuites, id)
			}
		}
	}
	for _, name := range p.GetEcdhCurves() {
		id, ok := curveIDs[name]
		if !ok {
			return out, fmt.Errorf("ecdh curve %q is not supported (X25519, P-256, P-384, P-521 or X25519MLKEM768)", name)
		}
		if !slices.Contains(out.curves, id) {
			out.curves = append(out.curves, id)
		}
	}
	return out, nil
}

// curveIDs maps BoringSSL's group names (and their OpenSSL aliases) to
// crypto/tls's.
var curveIDs = map[string]tls.CurveID{
	"X25519":         tls.X25519,
	"P-256":          tls.CurveP256,
	"prime256v1":     tls.CurveP256,
	"P-384":          tls.CurveP384,
	"secp384r1":      tls.CurveP384,
	"P-521":          tls.CurveP521,
	"secp521r1":      tls.CurveP521,
	"X25519MLKEM768": tls.X25519MLKEM768,
}
