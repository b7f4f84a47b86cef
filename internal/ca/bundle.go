package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

// bundle is an immutable snapshot of the trust bundle: the signing CA's
// roots followed by the extra roots from the store, without duplicates.
type bundle struct {
	certs []*x509.Certificate
	pem   []string
	// pool holds the roots.
	pool *x509.CertPool
	// tls is the server TLS config derived from ServerTLS's base with
	// ClientCAs for this bundle; nil until ServerTLS is called.
	tls *tls.Config
	// extraRev is the ModRevision of ExtraRootsKey (0: absent).
	extraRev int64
}

// extraRoots is the JSON value at ExtraRootsKey.
type extraRoots struct {
	// Roots are PEM certificates.
	Roots []string `json:"roots"`
}

// Roots returns the trust bundle as PEM certificates: the roots the
// signing CA chains to, then the extra roots (rotation). Proxies trust
// peers whose certificates chain to any of them.
func (a *Authority) Roots() []string {
	return append([]string(nil), a.bundle.Load().pem...)
}

// BundleUpdates receives a value after the trust bundle changes (roots
// added or removed, here or by another replica). Values coalesce; read
// Roots for the current bundle. One consumer.
func (a *Authority) BundleUpdates() <-chan struct{} { return a.bundleUpdates }

// RootCertificates returns the trust bundle as parsed certificates.
func (a *Authority) RootCertificates() []*x509.Certificate {
	return append([]*x509.Certificate(nil), a.bundle.Load().certs...)
}

// reloadBundle reads the extra roots and swaps in a new bundle. It returns
// the store revision the read is consistent with.
func (a *Authority) reloadBundle(ctx context.Context) (int64, error) {
	kvs, rev, err := a.st.List(ctx, ExtraRootsKey)
	if err != nil {
		return 0, fmt.Errorf("ca: reading extra roots: %w", err)
	}
	var extra []*x509.Certificate
	var extraRev int64
	for _, kv := range kvs {
		if kv.Key != ExtraRootsKey {
			continue
		}
		extraRev = kv.ModRevision
		if extra, err = decodeExtraRoots(kv.Value); err != nil {
			return 0, err
		}
	}
	a.swapBundle(extra, extraRev)
	return rev, nil
}

func decodeExtraRoots(val []byte) ([]*x509.Certificate, error) {
	var er extraRoots
	if err := json.Unmarshal(val, &er); err != nil {
		return nil, fmt.Errorf("ca: decoding %s: %w", ExtraRootsKey, err)
	}
	var out []*x509.Certificate
	for i, p := range er.Roots {
		cs, err := parseCerts([]byte(p), fmt.Sprintf("%s[%d]", ExtraRootsKey, i))
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		out = append(out, cs...)
	}
	return out, nil
}

func (a *Authority) swapBundle(extra []*x509.Certificate, extraRev int64) {
	for {
		old := a.bundle.Load()
		if old != nil && old.extraRev > extraRev {
			return // a newer bundle is already in place
		}
		b := &bundle{pool: x509.NewCertPool(), extraRev: extraRev}
		seen := map[string]bool{}
		for _, c := range append(append([]*x509.Certificate(nil), a.ca.roots...), extra...) {
			if seen[string(c.Raw)] {
				continue
			}
			seen[string(c.Raw)] = true
			b.certs = append(b.certs, c)
			b.pem = append(b.pem, certPEM(c.Raw))
			b.pool.AddCert(c)
		}
		if old != nil && old.tls != nil {
			b.tls = a.deriveTLS(old.tls, b)
		}
		if a.bundle.CompareAndSwap(old, b) {
			if old != nil && !slices.Equal(old.pem, b.pem) {
				select {
				case a.bundleUpdates <- struct{}{}:
				default:
				}
			}
			return
		}
	}
}

// AddRoot adds the CA certificates in pemData to the extra roots of the
// trust bundle (kept in the store, shared by all replicas). Use it to
// distribute a new root before switching the signing CA to it, or to keep
// an old root trusted after switching away from it. Adding a root already
// present changes nothing.
func (a *Authority) AddRoot(ctx context.Context, pemData []byte) error {
	certs, err := parseCerts(pemData, "root")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRoot, err)
	}
	for _, c := range certs {
		if !c.IsCA {
			return fmt.Errorf("%w: %s is not a CA certificate", ErrInvalidRoot, c.Subject)
		}
	}
	return a.updateExtra(ctx, func(cur []*x509.Certificate) ([]*x509.Certificate, error) {
		for _, c := range certs {
			dup := false
			for _, e := range cur {
				dup = dup || string(e.Raw) == string(c.Raw)
			}
			if !dup {
				cur = append(cur, c)
			}
		}
		return cur, nil
	})
}

// ErrInvalidRoot is returned when AddRoot is given something other than
// PEM CA certificates.
var ErrInvalidRoot = errors.New("invalid root")

// ErrUnknownRoot is returned when RemoveRoot is given a fingerprint that
// is not an extra root.
var ErrUnknownRoot = errors.New("no such extra root")

// RemoveRoot removes the extra root with the given SHA-256 fingerprint
// (see Fingerprint) from the trust bundle. The signing CA's own roots
// cannot be removed this way.
func (a *Authority) RemoveRoot(ctx context.Context, fingerprint string) error {
	return a.updateExtra(ctx, func(cur []*x509.Certificate) ([]*x509.Certificate, error) {
		out := cur[:0:0]
		for _, c := range cur {
			if Fingerprint(c) != fingerprint {
				out = append(out, c)
			}
		}
		if len(out) == len(cur) {
			for _, r := range a.ca.roots {
				if Fingerprint(r) == fingerprint {
					return nil, fmt.Errorf("%w: %s is a root of the signing CA, not an extra root", ErrUnknownRoot, fingerprint)
				}
			}
			return nil, fmt.Errorf("%w: %s", ErrUnknownRoot, fingerprint)
		}
		return out, nil
	})
}

// updateExtra applies fn to the extra roots with compare-and-swap,
// retrying on conflicts, then refreshes the local bundle.
func (a *Authority) updateExtra(ctx context.Context, fn func([]*x509.Certificate) ([]*x509.Certificate, error)) error {
	for range 10 {
		kv, err := a.st.Get(ctx, ExtraRootsKey)
		exists := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("ca: reading extra roots: %w", err)
		}
		var cur []*x509.Certificate
		if exists {
			if cur, err = decodeExtraRoots(kv.Value); err != nil {
				return err
			}
		}
		next, err := fn(cur)
		if err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		er := extraRoots{Roots: []string{}}
		for _, c := range next {
			er.Roots = append(er.Roots, certPEM(c.Raw))
		}
		val, _ := json.Marshal(er)
		var out store.KV
		if exists {
			out, err = a.st.Update(ctx, ExtraRootsKey, val, kv.ModRevision)
		} else {
			out, err = a.st.Create(ctx, ExtraRootsKey, val)
		}
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("ca: writing extra roots: %w", err)
		}
		a.swapBundle(next, out.ModRevision)
		a.log.Info("trust bundle changed", "roots", len(a.bundle.Load().certs))
		return nil
	}
	return errors.New("ca: extra roots keep changing concurrently; try again")
}

// Run follows changes to the extra roots made by other replicas until ctx
// ends. Roots and ServerTLS reflect them without a restart.
func (a *Authority) Run(ctx context.Context) {
	rev, err := a.reloadBundle(ctx)
	for ctx.Err() == nil {
		if err == nil {
			err = a.follow(ctx, rev)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.log.Warn("following trust bundle changes", "error", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		rev, err = a.reloadBundle(ctx)
	}
}

// follow applies watch events from rev until the watch ends.
func (a *Authority) follow(ctx context.Context, rev int64) error {
	ch, err := a.st.Watch(ctx, ExtraRootsKey, rev)
	if err != nil {
		return err
	}
	for ev := range ch {
		switch {
		case ev.Type == store.EventError:
			return ev.Err
		case ev.KV.Key != ExtraRootsKey:
		case ev.Type == store.EventPut:
			extra, err := decodeExtraRoots(ev.KV.Value)
			if err != nil {
				return err
			}
			a.swapBundle(extra, ev.KV.ModRevision)
		case ev.Type == store.EventDelete:
			a.swapBundle(nil, ev.Revision)
		}
	}
	return nil
}

// ServerTLS returns a TLS config for the CA's gRPC listener (:15012) built
// from base (certificates, minimum version, ALPN): it requests but does not
// require a client certificate, and verifies one if given against the
// current trust bundle plus the signing CA's intermediates
// (tls.VerifyClientCertIfGiven), following bundle changes without a
// restart. Callers with a bootstrap token connect without a certificate;
// workloads renewing present their current one.
func (a *Authority) ServerTLS(base *tls.Config) *tls.Config {
	for {
		old := a.bundle.Load()
		b := *old
		b.tls = a.deriveTLS(base, &b)
		if a.bundle.CompareAndSwap(old, &b) {
			break
		}
	}
	return &tls.Config{
		MinVersion: base.MinVersion,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return a.bundle.Load().tls, nil
		},
	}
}

func (a *Authority) deriveTLS(base *tls.Config, b *bundle) *tls.Config {
	c := base.Clone()
	c.GetConfigForClient = nil
	c.ClientAuth = tls.VerifyClientCertIfGiven
	pool := b.pool.Clone()
	for _, i := range a.ca.intermediates {
		pool.AddCert(i)
	}
	c.ClientCAs = pool
	if !slices.Contains(c.NextProtos, "h2") {
		c.NextProtos = append(c.NextProtos, "h2") // gRPC clients require ALPN h2
	}
	return c
}
