// Package certs keeps weft-proxy's workload certificate: the identity a
// sidecar or gateway proves in mutual TLS.
//
// A Manager generates an ECDSA P-256 key locally (the private key never
// leaves the process, or KeyDir when persistence is asked for), sends a
// certificate signing request to the mesh CA on :15012 (Istio's
// IstioCertificateService/CreateCertificate) and holds the returned
// certificate. The first request is authenticated with a bootstrap token;
// renewals present the current certificate as the TLS client certificate,
// so the token is needed only once. The certificate is renewed at about
// half of its lifetime (with jitter, so that many proxies started together
// do not renew together) with a fresh key each time; a failed renewal is
// retried with jittered backoff while the current certificate is still
// valid.
//
// Connections pick up the newest certificate on their next handshake
// through GetCertificate and GetClientCertificate; established connections
// keep the certificate they were made with and are never dropped by a
// rotation. An expired certificate is never served: Current, and therefore
// every handshake, fails closed with ErrExpired.
//
// The package must stay lean: it talks to the CA over gRPC and never links
// the CA, the store or the control plane.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinel errors, tested with errors.Is.
var (
	// ErrNoCertificate: no certificate has been obtained yet.
	ErrNoCertificate = errors.New("no workload certificate yet")
	// ErrExpired: the held certificate has expired and could not be
	// renewed in time. Nothing is served with it (fail closed).
	ErrExpired = errors.New("workload certificate expired")
	// ErrRefused: the CA refused the request (invalid, revoked or expired
	// bootstrap token, a certificate it does not accept, a bad CSR). Run
	// returns it when there is no valid certificate to fall back on.
	ErrRefused = errors.New("certificate request refused by the CA")
)

// Clock is the Manager's time source: the current time for expiry and
// scheduling, and timers for renewal and backoff.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config configures a Manager.
type Config struct {
	// CAAddress is the mesh CA's host:port (weft server's TLS port, 15012).
	// Required.
	CAAddress string
	// CARoots verifies the CA's serving certificate. Required: the CA is
	// never reached without verifying it.
	CARoots *x509.CertPool
	// ServerName is the name expected in the CA's serving certificate.
	// Default: the host part of CAAddress.
	ServerName string
	// BootstrapToken (wbt_…) authenticates the first request, and any
	// request made while no valid certificate is held. Optional when
	// KeyDir holds a valid certificate.
	BootstrapToken string
	// TTL is the certificate lifetime to ask for; 0 (the default) takes
	// the CA's default (24h for weft). The CA clamps it to its maximum.
	// Whole seconds; anything shorter than a second asks for the default.
	TTL time.Duration
	// Clock is the time source. Default: the system clock.
	Clock Clock
	// KeyDir, if set, is where the key and certificate are kept (key.pem,
	// cert-chain.pem with the root last; files 0600, the directory created
	// 0700), so a restarted proxy renews with its certificate instead of
	// needing the bootstrap token again. Default: nothing is written.
	KeyDir string
}

// Renewal and retry pacing.
const (
	// renewFraction of the remaining lifetime at issue is when a
	// certificate is renewed, ± renewJitter of it.
	renewFraction = 0.5
	renewJitter   = 0.1
	// Failed requests are retried after a random wait in [d/2, d], d
	// doubling from backoffInitial up to backoffMax, never past expiry.
	backoffInitial = time.Second
	backoffMax     = time.Minute
	// requestTimeout bounds one CreateCertificate call (real time).
	requestTimeout = 30 * time.Second
)

// state is one held certificate; replaced whole, never mutated.
type state struct {
	cert     *tls.Certificate // Leaf set; chain without the root
	chain    []*x509.Certificate
	roots    *x509.CertPool
	identity string
	renewAt  time.Time
}

// Manager obtains, holds and rotates one workload certificate. Its methods
// are safe for concurrent use.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	clock Clock

	cur     atomic.Pointer[state]
	running atomic.Bool
	updates chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// New checks cfg and returns a Manager; Run obtains the certificate.
func New(cfg Config, log *slog.Logger) (*Manager, error) {
	if cfg.CAAddress == "" {
		return nil, errors.New("certs: CAAddress is required (the CA's host:port, usually :15012)")
	}
	host, _, err := net.SplitHostPort(cfg.CAAddress)
	if err != nil {
		return nil, fmt.Errorf("certs: CAAddress %q: %w", cfg.CAAddress, err)
	}
	if cfg.CARoots == nil {
		return nil, errors.New("certs: CARoots is required to verify the CA's serving certificate")
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("certs: negative TTL %v (0 asks for the CA's default)", cfg.TTL)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		cfg: cfg, log: log, clock: cfg.Clock,
		updates: make(chan struct{}, 1),
		ready:   make(chan struct{}),
	}, nil
}

// Current returns the certificate to present now. It fails with
// ErrNoCertificate before the first one and with ErrExpired once the held
// one has expired: nothing is ever served with an expired certificate.
// The result is shared: do not modify it.
func (m *Manager) Current() (*tls.Certificate, error) {
	s := m.cur.Load()
	if s == nil {
		return nil, ErrNoCertificate
	}
	if now := m.clock.Now(); !now.Before(s.cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("certs: %w: the certificate for %s expired at %s", ErrExpired, s.identity, s.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return s.cert, nil
}

// GetCertificate has the signature of tls.Config.GetCertificate: each new
// server handshake gets the current certificate (or fails closed).
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.Current()
}

// GetClientCertificate has the signature of
// tls.Config.GetClientCertificate: each new client handshake presents the
// current certificate (or fails closed).
func (m *Manager) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return m.Current()
}

// Roots returns the trust bundle for verifying peers: the root of the
// held certificate's chain (the last certificate the CA returned). It is
// empty before the first certificate, so verification fails closed. The
// pool is shared: do not modify it.
func (m *Manager) Roots() *x509.CertPool {
	if s := m.cur.Load(); s != nil {
		return s.roots
	}
	return x509.NewCertPool()
}

// Identity returns the SPIFFE ID of the held certificate
// (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), or ""
// before the first one. The CA assigns it from the credential used.
func (m *Manager) Identity() string {
	if s := m.cur.Load(); s != nil {
		return s.identity
	}
	return ""
}

// Updates receives a value after each new certificate, the first one
// included. Signals coalesce: one value may stand for several rotations.
func (m *Manager) Updates() <-chan struct{} { return m.updates }

// Ready is closed once the first certificate is held.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// renewDelay is how long after now a certificate expiring at notAfter is
// renewed: half of the remaining lifetime ± 10% of it.
func renewDelay(now, notAfter time.Time) time.Duration {
	life := notAfter.Sub(now)
	if life <= 0 {
		return 0
	}
	f := renewFraction + renewJitter*(2*rand.Float64()-1)
	return time.Duration(float64(life) * f)
}

// backoff is the wait before retry number n (from 0): uniform in [d/2, d]
// with d = min(backoffMax, backoffInitial·2ⁿ).
func backoff(n int) time.Duration {
	d := backoffMax
	if n < 6 {
		d = min(backoffMax, backoffInitial<<n)
	}
	return d/2 + rand.N(d/2+1)
}
