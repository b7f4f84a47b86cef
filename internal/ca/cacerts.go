package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names of a plugged-in CA, as Istio's cacerts secret.
const (
	// RootCertFile holds the root certificate(s) the CA chains to. Several
	// roots may be listed (rotation); all go into the trust bundle.
	RootCertFile = "root-cert.pem"
	// CertChainFile holds the chain from CACertFile up to the root. It is
	// optional when CACertFile is signed directly by a root.
	CertChainFile = "cert-chain.pem"
	// CACertFile is the signing certificate (a root or an intermediate).
	CACertFile = "ca-cert.pem"
	// CAKeyFile is CACertFile's private key (PKCS#8, EC or PKCS#1 PEM).
	CAKeyFile = "ca-key.pem"
)

// loadCACerts loads and validates a plugged-in CA from dir. It returns
// nil, nil when dir is empty, missing or holds none of the files.
func loadCACerts(dir string, now time.Time) (*signingCA, error) {
	if dir == "" {
		return nil, nil
	}
	present := map[string]bool{}
	for _, f := range []string{RootCertFile, CertChainFile, CACertFile, CAKeyFile} {
		_, err := os.Stat(filepath.Join(dir, f))
		switch {
		case err == nil:
			present[f] = true
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("ca: plugged-in CA: %w", err)
		}
	}
	if len(present) == 0 {
		return nil, nil
	}
	var missing []string
	for _, f := range []string{CACertFile, CAKeyFile, RootCertFile} {
		if !present[f] {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("ca: plugged-in CA in %s is incomplete: missing %s (need %s, %s, %s and optionally %s)",
			dir, strings.Join(missing, ", "), CACertFile, CAKeyFile, RootCertFile, CertChainFile)
	}
	read := func(f string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, fmt.Errorf("ca: plugged-in CA: %w", err)
		}
		return b, nil
	}
	caPEM, err := read(CACertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(CAKeyFile)
	if err != nil {
		return nil, err
	}
	rootPEM, err := read(RootCertFile)
	if err != nil {
		return nil, err
	}
	var chainPEM []byte
	if present[CertChainFile] {
		if chainPEM, err = read(CertChainFile); err != nil {
			return nil, err
		}
	}
	sca, err := parseCACerts(caPEM, keyPEM, rootPEM, chainPEM, now)
	if err != nil {
		return nil, fmt.Errorf("ca: plugged-in CA in %s: %w", dir, err)
	}
	return sca, nil
}

// parseCACerts validates a plugged-in CA: the key matches ca-cert, ca-cert
// is a CA allowed to sign certificates, every root is a CA, and ca-cert
// chains up to one of the roots through cert-chain at now.
func parseCACerts(caPEM, keyPEM, rootPEM, chainPEM []byte, now time.Time) (*signingCA, error) {
	cas, err := parseCerts(caPEM, CACertFile)
	if err != nil {
		return nil, err
	}
	caCert := cas[0]
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(caCert.PublicKey) {
		return nil, fmt.Errorf("%s does not match the public key of %s", CAKeyFile, CACertFile)
	}
	if !caCert.BasicConstraintsValid || !caCert.IsCA {
		return nil, fmt.Errorf("%s (%s) is not a CA certificate: it lacks basic constraints CA:TRUE", CACertFile, caCert.Subject)
	}
	if caCert.KeyUsage != 0 && caCert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s (%s) may not sign certificates: its key usage lacks keyCertSign", CACertFile, caCert.Subject)
	}
	roots, err := parseCerts(rootPEM, RootCertFile)
	if err != nil {
		return nil, err
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		if !r.IsCA {
			return nil, fmt.Errorf("%s: %s is not a CA certificate", RootCertFile, r.Subject)
		}
		rootPool.AddCert(r)
	}
	inter := x509.NewCertPool()
	if len(chainPEM) > 0 {
		chain, err := parseCerts(chainPEM, CertChainFile)
		if err != nil {
			return nil, err
		}
		for _, c := range chain {
			inter.AddCert(c)
		}
	}
	chains, err := caCert.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%s does not chain up to %s (through %s): %w", CACertFile, RootCertFile, CertChainFile, err)
	}
	return newSigningCA(chains[0], key, roots, true), nil
}

// parseCerts parses every CERTIFICATE block of a PEM file; at least one.
func parseCerts(data []byte, name string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", name)
	}
	return out, nil
}

// parsePrivateKey reads a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) PEM key.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s holds no PEM private key", CAKeyFile)
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s is encrypted: weft needs the key unencrypted (protect the file with its permissions)", CAKeyFile)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
		}
		switch s := k.(type) {
		case *ecdsa.PrivateKey:
			return s, nil
		case *rsa.PrivateKey:
			return s, nil
		case ed25519.PrivateKey:
			return s, nil
		}
		return nil, fmt.Errorf("%s: unsupported key type %T", CAKeyFile, k)
	}
}
