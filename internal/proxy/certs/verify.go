package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// VerifyPeer returns a tls.Config.VerifyPeerCertificate function for mesh
// mTLS (secure naming): the peer's chain must verify against Roots() at
// the Manager's current time, and its certificate must carry exactly one
// URI SAN, a SPIFFE ID that is one of expected. An empty expected accepts
// any identity the trust bundle vouches for (an inbound listener, whose
// authorization policy decides later).
//
// Go skips VerifyPeerCertificate on resumed sessions; the configs of
// ClientTLS and ServerTLS rule resumption out.
func (m *Manager) VerifyPeer(expected []string) func(rawCerts [][]byte, verifiedChains [][]*x509.Certificate) error {
	expected = slices.Clone(expected)
	return func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return errors.New("certs: the peer presented no certificate")
		}
		certs := make([]*x509.Certificate, len(rawCerts))
		for i, raw := range rawCerts {
			c, err := x509.ParseCertificate(raw)
			if err != nil {
				return fmt.Errorf("certs: peer certificate %d does not parse: %w", i, err)
			}
			certs[i] = c
		}
		s := m.cur.Load()
		if s == nil {
			return fmt.Errorf("certs: cannot verify the peer: %w (no trust bundle)", ErrNoCertificate)
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		leaf := certs[0]
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: s.roots, Intermediates: inter, CurrentTime: m.clock.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		}); err != nil {
			return fmt.Errorf("certs: the peer certificate is not from this mesh's trust bundle: %w", err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
			return fmt.Errorf("certs: the peer certificate has %d URI SANs, want exactly one SPIFFE ID", len(leaf.URIs))
		}
		id := leaf.URIs[0].String()
		if len(expected) > 0 && !slices.Contains(expected, id) {
			return fmt.Errorf("certs: the peer is %s, want one of %v", id, expected)
		}
		return nil
	}
}

// ClientTLS returns a client config for mesh mTLS: it presents the current
// certificate and accepts a server whose identity is one of expected (see
// VerifyPeer). Host names are not checked — workload certificates carry
// only a SPIFFE ID, which VerifyPeer checks instead.
func (m *Manager) ClientTLS(expected []string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: m.GetClientCertificate,
		// Verification is VerifyPeerCertificate's: chain to Roots() and
		// the SPIFFE ID. No ClientSessionCache, so never resumed.
		InsecureSkipVerify:    true, //nolint:gosec // verified by VerifyPeer
		VerifyPeerCertificate: m.VerifyPeer(expected),
	}
}

// ServerTLS returns a server config for mesh mTLS: it serves the current
// certificate, requires a client certificate and accepts a client whose
// identity is one of expected (any mesh identity when empty).
func (m *Manager) ServerTLS(expected []string) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS12,
		GetCertificate:         m.GetCertificate,
		ClientAuth:             tls.RequireAnyClientCert,
		VerifyPeerCertificate:  m.VerifyPeer(expected),
		SessionTicketsDisabled: true, // resumption would skip VerifyPeerCertificate
	}
}
