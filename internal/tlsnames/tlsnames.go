// Package tlsnames maps the TLS cipher suite names operators write
// (Istio's Gateway cipherSuites, Envoy's tls_params) to crypto/tls's:
// discovery drops the names weft-proxy cannot honour, as istiod drops the
// ones Envoy does not know, and weft-proxy compiles the rest.
package tlsnames

import (
	"crypto/tls"
	"slices"
)

// CipherSuite is the crypto/tls ID of a cipher suite name, BoringSSL's
// (OpenSSL's, as Envoy and Istio take them) or the standard one; 0 for a
// TLS 1.3 suite (accepted, not configurable in crypto/tls); false for a
// name weft-proxy does not know.
func CipherSuite(name string) (uint16, bool) {
	id, ok := cipherSuiteIDs[name]
	return id, ok
}

// cipherSuiteIDs maps cipher suite names to crypto/tls's IDs: the
// standard names Go uses, and BoringSSL's (OpenSSL's), which Envoy and
// Istio's Gateway cipherSuites use. TLS 1.3 suites map to 0: accepted,
// not configurable.
var cipherSuiteIDs = func() map[string]uint16 {
	m := map[string]uint16{}
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		m[s.Name] = s.ID
		if slices.Equal(s.SupportedVersions, []uint16{tls.VersionTLS13}) {
			m[s.Name] = 0
		}
	}
	for openssl, std := range map[string]string{
		"ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
		"ECDHE-RSA-AES128-GCM-SHA256":   "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
		"ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
		"ECDHE-RSA-AES256-GCM-SHA384":   "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
		"ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
		"ECDHE-RSA-CHACHA20-POLY1305":   "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
		"ECDHE-ECDSA-AES128-SHA":        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
		"ECDHE-RSA-AES128-SHA":          "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
		"ECDHE-ECDSA-AES256-SHA":        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
		"ECDHE-RSA-AES256-SHA":          "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
		"ECDHE-ECDSA-AES128-SHA256":     "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
		"ECDHE-RSA-AES128-SHA256":       "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
		"ECDHE-RSA-DES-CBC3-SHA":        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
		"AES128-GCM-SHA256":             "TLS_RSA_WITH_AES_128_GCM_SHA256",
		"AES256-GCM-SHA384":             "TLS_RSA_WITH_AES_256_GCM_SHA384",
		"AES128-SHA":                    "TLS_RSA_WITH_AES_128_CBC_SHA",
		"AES256-SHA":                    "TLS_RSA_WITH_AES_256_CBC_SHA",
		"AES128-SHA256":                 "TLS_RSA_WITH_AES_128_CBC_SHA256",
		"DES-CBC3-SHA":                  "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
	} {
		if id, ok := m[std]; ok {
			m[openssl] = id
		}
	}
	return m
}()
