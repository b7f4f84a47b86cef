package engine

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

// compileBundle reads the SDS secret ROOTCA, the mesh trust bundle
// discovery serves: every root a peer's certificate may chain to, old and
// new ones while the CA's root rotates. nil when the snapshot has none.
func compileBundle(s *xdsclient.Snapshot) ([]*x509.Certificate, error) {
	sec, ok := s.Secrets[sdsRoot]
	if !ok {
		return nil, nil
	}
	data, err := inlineData(sec.GetValidationContext().GetTrustedCa())
	if err != nil || len(data) == 0 {
		return nil, fmt.Errorf("secret %s: trusted_ca must hold inline PEM certificates", sdsRoot)
	}
	var out []*x509.Certificate
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("secret %s: unexpected PEM block %q", sdsRoot, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("secret %s: certificate %d: %w", sdsRoot, len(out), err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("secret %s: certificate %d (%s) is not a CA", sdsRoot, len(out), c.Subject)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("secret %s: no PEM certificate in trusted_ca", sdsRoot)
	}
	return out, nil
}

// bundleCerts is the engine's identity with the trust bundle widened by
// the SDS ROOTCA secret: peers are verified against the roots of the
// proxy's own chain and every root of the bundle.
type bundleCerts struct {
	Certs
	e *Engine
}

// meshCerts returns the identity mesh TLS uses.
func (e *Engine) meshCerts() Certs { return bundleCerts{Certs: e.opts.Certs, e: e} }

// mergedRoots caches one union of a base pool and a bundle.
type mergedRoots struct {
	base   *x509.CertPool
	bundle []*x509.Certificate
	pool   *x509.CertPool
}

func (b bundleCerts) Roots() *x509.CertPool {
	base := b.Certs.Roots()
	rt := b.e.cur.Load()
	if rt == nil || len(rt.bundle) == 0 {
		return base
	}
	if m := b.e.roots.Load(); m != nil && m.base == base && sameCerts(m.bundle, rt.bundle) {
		return m.pool
	}
	pool := base.Clone()
	for _, c := range rt.bundle {
		pool.AddCert(c)
	}
	b.e.roots.Store(&mergedRoots{base: base, bundle: rt.bundle, pool: pool})
	return pool
}

func sameCerts(a, b []*x509.Certificate) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
