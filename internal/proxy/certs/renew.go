package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securitypb "istio.io/api/security/v1alpha1"
)

// Run obtains the first certificate (from KeyDir if it holds a valid one,
// else from the CA with the bootstrap token), then renews it at about half
// of its remaining lifetime until ctx is done, and returns nil then.
//
// Failures are retried with jittered backoff while a valid certificate is
// held (and, without one, while the CA is unreachable or unavailable). Run
// returns an error when nothing more can succeed: the CA refused the
// bootstrap token (ErrRefused), or there is no valid certificate and no
// bootstrap token (ErrExpired once a certificate has expired). Run may be
// called only once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("certs: Run called twice")
	}
	if m.cfg.KeyDir != "" {
		m.loadPersisted()
	}
	failures := 0
	for {
		if s := m.cur.Load(); s != nil {
			if !m.waitUntil(ctx, s.renewAt) {
				return nil
			}
		}
		err := m.obtain(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			failures = 0
			continue
		}
		s := m.cur.Load()
		valid := s != nil && m.clock.Now().Before(s.cert.Leaf.NotAfter)
		if !valid && (errors.Is(err, ErrRefused) || errors.Is(err, ErrExpired) || errors.Is(err, errNoCredential)) {
			return err
		}
		wait := backoff(failures)
		failures++
		attrs := []any{"error", err, "retry_in", wait, "attempt", failures}
		if valid {
			// Retry at expiry at the latest, to fall back on the token.
			wait = min(wait, max(s.cert.Leaf.NotAfter.Sub(m.clock.Now()), 0))
			attrs = append(attrs, "expires", s.cert.Leaf.NotAfter)
		}
		m.log.Warn("workload certificate request failed; retrying", attrs...)
		if !m.wait(ctx, wait) {
			return nil
		}
	}
}

// errNoCredential: neither a valid certificate nor a bootstrap token.
var errNoCredential = errors.New("certs: no bootstrap token and no valid certificate to authenticate to the CA (set a bootstrap token, or a KeyDir holding a valid certificate)")

// waitUntil waits until the clock reaches t; false if ctx ended first.
func (m *Manager) waitUntil(ctx context.Context, t time.Time) bool {
	return m.wait(ctx, t.Sub(m.clock.Now()))
}

func (m *Manager) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-m.clock.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// obtain requests a new certificate for a fresh key, authenticated by the
// held certificate while it is valid, else by the bootstrap token, and
// installs it.
func (m *Manager) obtain(ctx context.Context) error {
	s := m.cur.Load()
	renew := s != nil && m.clock.Now().Before(s.cert.Leaf.NotAfter)
	if !renew && m.cfg.BootstrapToken == "" {
		if s != nil {
			return fmt.Errorf("certs: %w at %s and there is no bootstrap token to get a new one",
				ErrExpired, s.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		return errNoCredential
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs: generating a key: %w", err)
	}
	// No subject or SANs: the CA assigns the identity from the credential.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("certs: creating the CSR: %w", err)
	}
	var chain []string
	if renew {
		chain, err = m.request(ctx, csr, s.cert, "")
	} else {
		chain, err = m.request(ctx, csr, nil, m.cfg.BootstrapToken)
	}
	if err != nil {
		return err
	}
	next, err := m.parse(chain, key, m.clock.Now())
	if err != nil {
		return err
	}
	// Kept on disk before it is announced, so Updates readers find it there.
	if m.cfg.KeyDir != "" {
		if err := m.persist(next, key); err != nil {
			m.log.Warn("cannot keep the workload certificate in the key directory; a restart will need the bootstrap token", "key_dir", m.cfg.KeyDir, "error", err)
		}
	}
	m.install(next, s, "ca")
	return nil
}

// request calls CreateCertificate on a new connection, presenting cert as
// the TLS client certificate or token as bearer metadata. A connection per
// request makes the CA see the certificate held now, never the one an
// older connection was made with.
func (m *Manager) request(ctx context.Context, csrDER []byte, cert *tls.Certificate, token string) ([]string, error) {
	tc := &tls.Config{RootCAs: m.cfg.CARoots, ServerName: m.cfg.ServerName, MinVersion: tls.VersionTLS12}
	how := "bootstrap token"
	if cert != nil {
		how = "workload certificate"
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	conn, err := grpc.NewClient(m.cfg.CAAddress, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, fmt.Errorf("certs: connecting to the CA at %s: %w", m.cfg.CAAddress, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := securitypb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &securitypb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		ValidityDuration: int64(m.cfg.TTL / time.Second),
	})
	if err != nil {
		st := status.Convert(err)
		switch st.Code() {
		case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument:
			return nil, fmt.Errorf("certs: %w (authenticated by %s, CA at %s): %s", ErrRefused, how, m.cfg.CAAddress, st.Message())
		}
		return nil, fmt.Errorf("certs: requesting a certificate from the CA at %s (authenticated by %s): %w", m.cfg.CAAddress, how, err)
	}
	return resp.GetCertChain(), nil
}

// parse checks a chain from the CA (leaf first, root last, PEM) against
// key and builds the state to hold; issued is when it was received.
func (m *Manager) parse(chainPEM []string, key *ecdsa.PrivateKey, issued time.Time) (*state, error) {
	var chain []*x509.Certificate
	for _, p := range chainPEM {
		rest := []byte(p)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certs: the CA returned a certificate that does not parse: %w", err)
			}
			chain = append(chain, c)
		}
	}
	if len(chain) < 2 {
		return nil, fmt.Errorf("certs: the CA returned %d certificates, want the workload certificate and its chain up to the root", len(chain))
	}
	leaf, root := chain[0], chain[len(chain)-1]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("certs: the CA returned a certificate for another key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return nil, fmt.Errorf("certs: the CA returned a certificate with %d URI SANs, want exactly one SPIFFE ID", len(leaf.URIs))
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	now := m.clock.Now()
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("certs: the certificate from the CA does not verify against its own root: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain[:len(chain)-1] { // the root is not sent
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return &state{
		cert: cert, chain: chain, roots: roots, identity: leaf.URIs[0].String(),
		renewAt: issued.Add(renewDelay(issued, leaf.NotAfter)),
	}, nil
}

// install swaps in next (obtained from: "ca" or "key_dir") and signals
// the change.
func (m *Manager) install(next, prev *state, from string) {
	m.cur.Store(next)
	leaf := next.cert.Leaf
	attrs := []any{"identity", next.identity, "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter, "renew_at", next.renewAt, "from", from}
	if prev != nil && prev.identity != next.identity {
		attrs = append(attrs, "previous_identity", prev.identity)
	}
	m.log.Info("new workload certificate", attrs...)
	m.once.Do(func() { close(m.ready) })
	select {
	case m.updates <- struct{}{}:
	default:
	}
}
