// Package ca is weft's workload certificate authority (Istio's Citadel). It
// keeps a signing CA — a self-signed root created on first start and stored
// encrypted in the config store, or a plugged-in root or intermediate read
// from Istio's cacerts files — and issues short-lived X.509 workload
// certificates whose only identity is a SPIFFE URI,
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
//
// The identity in a certificate always comes from how the caller was
// authenticated (a bootstrap token scoped to a WorkloadGroup, or the
// caller's current workload certificate), never from the subject or SANs of
// its certificate signing request. Service serves Istio's
// IstioCertificateService over gRPC; TokenHandler serves the bootstrap token
// API mounted in the config API server.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// Store keys. Everything the CA keeps in the config store lives under
// KeyPrefix.
const (
	KeyPrefix = "/weft/ca/"
	// RootKey holds the self-signed root: its certificate and its private
	// key encrypted with the key-encryption key (see Options.KEKFile).
	RootKey = KeyPrefix + "root"
	// ExtraRootsKey holds extra trusted roots appended to the trust bundle
	// (root rotation).
	ExtraRootsKey = KeyPrefix + "roots-extra"
	// BootstrapKeyPrefix is where bootstrap token records live, at
	// BootstrapKeyPrefix + <id>.
	BootstrapKeyPrefix = KeyPrefix + "bootstrap/"
)

// Defaults of Options.
const (
	DefaultTrustDomain     = "cluster.local"
	DefaultWorkloadTTL     = 24 * time.Hour
	DefaultMaxWorkloadTTL  = 7 * 24 * time.Hour
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultMaxBootstrapTTL = 365 * 24 * time.Hour
	// KEKFileName is the key-encryption key's file name in the server's
	// data directory.
	KEKFileName = "ca-kek"
)

// Sentinel errors, tested with errors.Is.
var (
	// ErrInvalidCSR: the certificate signing request is malformed, its
	// signature does not verify or its key is unacceptable.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrInvalidIdentity: a namespace, service account or SPIFFE ID is
	// malformed.
	ErrInvalidIdentity = errors.New("invalid identity")
	// ErrInvalidTTL: a negative certificate or token lifetime.
	ErrInvalidTTL = errors.New("invalid ttl")
)

// Options configure an Authority. Zero fields take their defaults.
type Options struct {
	// TrustDomain is the SPIFFE trust domain. Default "cluster.local".
	TrustDomain string
	// TrustDomainAliases are earlier trust domains of the mesh
	// (meshConfig.trustDomainAliases): a workload certificate from one
	// of them still authenticates its workload — to renew it, in the
	// new trust domain, and to the discovery service — during a
	// migration.
	TrustDomainAliases []string
	// WorkloadTTL is the lifetime of a workload certificate when the
	// request names none. Default 24h.
	WorkloadTTL time.Duration
	// MaxWorkloadTTL clamps requested lifetimes. Default 7 days (168h):
	// workload certificates are renewed automatically, so a short maximum
	// bounds how long a stolen key stays useful.
	MaxWorkloadTTL time.Duration
	// RootTTL is the lifetime of a self-signed root created on first
	// start. Default 10 years.
	RootTTL time.Duration
	// MaxBootstrapTTL clamps bootstrap token lifetimes. Default 365 days.
	MaxBootstrapTTL time.Duration
	// CACertsDir is a directory holding a plugged-in CA in Istio's file
	// names (root-cert.pem, cert-chain.pem, ca-cert.pem, ca-key.pem). If it
	// is empty, does not exist or holds none of those files, the
	// self-signed root from the store is used; a partial set is an error.
	CACertsDir string
	// KEKFile is the key-encryption key that protects the self-signed
	// root's private key in the store: 32 random bytes, base64, created
	// with mode 0600 on first start. Every replica sharing a store must
	// have the same file. Required unless a plugged-in CA is used; the
	// server passes <data-dir>/ca-kek.
	KEKFile string
	// Clock returns the current time. Default time.Now.
	Clock func() time.Time
}

func (o Options) withDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.WorkloadTTL <= 0 {
		o.WorkloadTTL = DefaultWorkloadTTL
	}
	if o.MaxWorkloadTTL <= 0 {
		o.MaxWorkloadTTL = DefaultMaxWorkloadTTL
	}
	if o.WorkloadTTL > o.MaxWorkloadTTL {
		o.WorkloadTTL = o.MaxWorkloadTTL
	}
	if o.RootTTL <= 0 {
		o.RootTTL = DefaultRootTTL
	}
	if o.MaxBootstrapTTL <= 0 {
		o.MaxBootstrapTTL = DefaultMaxBootstrapTTL
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	return o
}

// Store is what the Authority needs from the config store.
type Store interface {
	store.Reader
	store.Writer
	store.Watcher
}

// Identity is who a workload certificate is for.
type Identity struct {
	Namespace      string
	ServiceAccount string
}

// SPIFFEID returns spiffe://<trustDomain>/ns/<ns>/sa/<sa>.
func (id Identity) SPIFFEID(trustDomain string) string {
	return "spiffe://" + trustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// String returns "ns/sa".
func (id Identity) String() string { return id.Namespace + "/" + id.ServiceAccount }

// Validate checks that the namespace is a DNS label and the service
// account a DNS subdomain, as Kubernetes requires.
func (id Identity) Validate() error {
	if !dnsLabel(id.Namespace) {
		return fmt.Errorf("%w: namespace %q is not a DNS label (lowercase letters, digits and '-', at most 63)", ErrInvalidIdentity, id.Namespace)
	}
	if !dnsSubdomain(id.ServiceAccount) {
		return fmt.Errorf("%w: service account %q is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253)", ErrInvalidIdentity, id.ServiceAccount)
	}
	return nil
}

// ParseSPIFFEID parses spiffe://<td>/ns/<ns>/sa/<sa> and returns the trust
// domain and identity.
func ParseSPIFFEID(u *url.URL) (string, Identity, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", Identity{}, fmt.Errorf("%w: %q is not a SPIFFE ID", ErrInvalidIdentity, u)
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" {
		return "", Identity{}, fmt.Errorf("%w: SPIFFE ID %q is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", ErrInvalidIdentity, u)
	}
	id := Identity{Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return "", Identity{}, err
	}
	return u.Host, id, nil
}

func dnsLabel(s string) bool {
	return len(s) > 0 && len(s) <= 63 && dnsChars(s, false)
}

func dnsSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 || !dnsChars(s, true) {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel(l) {
			return false
		}
	}
	return true
}

func dnsChars(s string, dots bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		case c == '.' && dots:
		default:
			return false
		}
	}
	return true
}

// signingCA is the certificate and key that sign workload certificates,
// with the chain above it. It never changes after New.
type signingCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	// chainPEM is cert, its intermediates and the root, in that order: what
	// follows a leaf in a response (the root is last, as Istio's agent
	// expects).
	chainPEM []string
	// intermediates are the certificates between a leaf and a root (cert
	// itself unless it is a root).
	intermediates []*x509.Certificate
	// roots are the roots this CA chains to (root-cert.pem, or the
	// self-signed root).
	roots []*x509.Certificate
	// notAfter is the earliest expiry on the chain: no leaf outlives it.
	notAfter time.Time
	// plugged says the CA came from cacerts files.
	plugged bool
}

func newSigningCA(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate, plugged bool) *signingCA {
	s := &signingCA{cert: chain[0], key: key, roots: roots, plugged: plugged, notAfter: chain[0].NotAfter}
	for i, c := range chain {
		s.chainPEM = append(s.chainPEM, certPEM(c.Raw))
		if c.NotAfter.Before(s.notAfter) {
			s.notAfter = c.NotAfter
		}
		if i < len(chain)-1 || !selfSigned(c) {
			s.intermediates = append(s.intermediates, c)
		}
	}
	return s
}

func selfSigned(c *x509.Certificate) bool {
	return string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func certPEM(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// Authority signs workload certificates and manages the trust bundle and
// bootstrap tokens. It is safe for concurrent use.
type Authority struct {
	opts   Options
	st     Store
	log    *slog.Logger
	ca     *signingCA
	bundle atomic.Pointer[bundle]
	// bundleUpdates is signalled (coalescing, never blocking) after each
	// bundle change.
	bundleUpdates chan struct{}
}

// New loads the signing CA — plugged-in cacerts if Options.CACertsDir holds
// them, else the self-signed root from the store, creating it if absent —
// and the trust bundle. Call Run to follow bundle changes made by other
// replicas.
func New(ctx context.Context, st Store, opts Options, log *slog.Logger) (*Authority, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	if !resource.ValidTrustDomain(opts.TrustDomain) {
		return nil, fmt.Errorf("ca: invalid trust domain %q: use lowercase letters, digits, '.', '-' and '_'", opts.TrustDomain)
	}
	for _, td := range opts.TrustDomainAliases {
		if !resource.ValidTrustDomain(td) {
			return nil, fmt.Errorf("ca: invalid trust domain alias %q: use lowercase letters, digits, '.', '-' and '_'", td)
		}
	}
	a := &Authority{opts: opts, st: st, log: log, bundleUpdates: make(chan struct{}, 1)}
	sca, err := loadCACerts(opts.CACertsDir, opts.Clock())
	if err != nil {
		return nil, err
	}
	if sca != nil {
		log.Info("using plugged-in CA", "dir", opts.CACertsDir, "subject", sca.cert.Subject.String(), "expires", sca.notAfter)
	} else {
		if sca, err = a.loadOrCreateRoot(ctx); err != nil {
			return nil, err
		}
	}
	a.ca = sca
	if _, err := a.reloadBundle(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// TrustDomain returns the SPIFFE trust domain.
func (a *Authority) TrustDomain() string { return a.opts.TrustDomain }

// Plugged reports whether the signing CA came from cacerts files.
func (a *Authority) Plugged() bool { return a.ca.plugged }

// SigningCertificate returns the certificate that signs workload
// certificates.
func (a *Authority) SigningCertificate() *x509.Certificate { return a.ca.cert }

// ParseCSR decodes a PEM ("CERTIFICATE REQUEST" or "NEW CERTIFICATE
// REQUEST") or DER certificate signing request and verifies its
// self-signature. Errors wrap ErrInvalidCSR.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	der := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q, want CERTIFICATE REQUEST", ErrInvalidCSR, b.Type)
		}
		der = b.Bytes
	} else if len(data) > 0 && data[0] == '-' {
		return nil, fmt.Errorf("%w: malformed PEM", ErrInvalidCSR)
	}
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalidCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if n := k.Curve.Params().Name; n != "P-256" && n != "P-384" && n != "P-521" {
			return fmt.Errorf("%w: unsupported curve %s", ErrInvalidCSR, n)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA key of %d bits, need at least 2048", ErrInvalidCSR, k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%w: unsupported public key type %T", ErrInvalidCSR, pub)
	}
	return nil
}

// clampTTL turns a requested lifetime into the one to issue: 0 means
// Options.WorkloadTTL, anything above Options.MaxWorkloadTTL is clamped.
func (a *Authority) clampTTL(ttl time.Duration) (time.Duration, error) {
	switch {
	case ttl < 0:
		return 0, fmt.Errorf("%w: negative certificate lifetime %v", ErrInvalidTTL, ttl)
	case ttl == 0:
		return a.opts.WorkloadTTL, nil
	case ttl > a.opts.MaxWorkloadTTL:
		return a.opts.MaxWorkloadTTL, nil
	}
	return ttl, nil
}

// Sign issues a workload certificate for id from a DER (or PEM) CSR. The
// CSR proves possession of the key; its subject, SANs and extensions are
// ignored: the only identity in the certificate is id's SPIFFE URI. ttl 0
// means Options.WorkloadTTL; the lifetime is clamped to
// Options.MaxWorkloadTTL and to the expiry of the signing chain. The
// result is the leaf followed by the signing chain, root last, as PEM.
func (a *Authority) Sign(csrDER []byte, id Identity, ttl time.Duration) ([]string, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	leaf, err := a.issue(csr.PublicKey, id, ttl)
	if err != nil {
		return nil, err
	}
	return append([]string{certPEM(leaf)}, a.ca.chainPEM...), nil
}

// issue signs a workload certificate for pub.
func (a *Authority) issue(pub any, id Identity, ttl time.Duration) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	ttl, err := a.clampTTL(ttl)
	if err != nil {
		return nil, err
	}
	now := a.opts.Clock()
	notAfter := now.Add(ttl)
	if notAfter.After(a.ca.notAfter) {
		notAfter = a.ca.notAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("ca: the signing CA expired at %s: plug in a new CA", a.ca.notAfter.Format(time.RFC3339))
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	spiffe, err := url.Parse(id.SPIFFEID(a.opts.TrustDomain))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidIdentity, err)
	}
	ku := x509.KeyUsageDigitalSignature
	if _, isRSA := pub.(*rsa.PublicKey); isRSA {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		// The subject stays empty, as Istio's: the identity is the URI SAN
		// alone, and Go marks the SAN extension critical.
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{spiffe},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.ca.cert, pub, a.ca.key)
	if err != nil {
		return nil, fmt.Errorf("ca: signing certificate for %s: %w", id, err)
	}
	return der, nil
}

func serialNumber() (*big.Int, error) {
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("ca: serial number: %w", err)
	}
	return sn.Add(sn, big.NewInt(1)), nil
}

// IdentityFromCertificate verifies that chain (leaf first, as presented
// by a TLS peer) is a current workload certificate chaining to the trust
// bundle, and returns the identity of its SPIFFE URI. The trust domain
// must be this Authority's, or one of its aliases.
func (a *Authority) IdentityFromCertificate(chain []*x509.Certificate) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, errors.New("no client certificate")
	}
	b := a.bundle.Load()
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, c := range a.ca.intermediates {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: b.pool, Intermediates: inter, CurrentTime: a.opts.Clock(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return Identity{}, fmt.Errorf("client certificate not issued by this mesh's CA: %w", err)
	}
	if leaf.IsCA || len(leaf.URIs) != 1 {
		return Identity{}, fmt.Errorf("client certificate is not a workload certificate (want exactly one SPIFFE URI SAN, got %d)", len(leaf.URIs))
	}
	td, id, err := ParseSPIFFEID(leaf.URIs[0])
	if err != nil {
		return Identity{}, err
	}
	if td != a.opts.TrustDomain && !slices.Contains(a.opts.TrustDomainAliases, td) {
		if len(a.opts.TrustDomainAliases) > 0 {
			return Identity{}, fmt.Errorf("client certificate is for trust domain %q, this CA serves %q (aliases %s)", td, a.opts.TrustDomain,
				strings.Join(a.opts.TrustDomainAliases, ", "))
		}
		return Identity{}, fmt.Errorf("client certificate is for trust domain %q, this CA serves %q", td, a.opts.TrustDomain)
	}
	return id, nil
}
