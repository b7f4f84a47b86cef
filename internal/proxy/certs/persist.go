package certs

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names in Config.KeyDir (Istio's names for its output certificates).
const (
	KeyFile   = "key.pem"        // PKCS#8 private key
	ChainFile = "cert-chain.pem" // workload certificate, its chain, root last
)

// loadPersisted installs the certificate kept in KeyDir if it is valid
// and matches the key; anything else is logged and ignored (the bootstrap
// token is used instead).
func (m *Manager) loadPersisted() {
	keyPEM, kerr := os.ReadFile(filepath.Join(m.cfg.KeyDir, KeyFile))
	chainPEM, cerr := os.ReadFile(filepath.Join(m.cfg.KeyDir, ChainFile))
	if errors.Is(kerr, fs.ErrNotExist) && errors.Is(cerr, fs.ErrNotExist) {
		return
	}
	if err := errors.Join(kerr, cerr); err != nil {
		m.log.Warn("ignoring the key directory", "key_dir", m.cfg.KeyDir, "error", err)
		return
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		m.log.Warn("ignoring the key directory: no PEM key", "file", filepath.Join(m.cfg.KeyDir, KeyFile))
		return
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	key, ok := k.(*ecdsa.PrivateKey)
	if err != nil || !ok {
		m.log.Warn("ignoring the key directory: not a PKCS#8 ECDSA key", "file", filepath.Join(m.cfg.KeyDir, KeyFile), "error", err)
		return
	}
	// One PEM string holding every block: parse splits it.
	next, err := m.parse([]string{string(chainPEM)}, key, m.clock.Now())
	if err != nil {
		m.log.Warn("ignoring the certificate in the key directory", "key_dir", m.cfg.KeyDir, "error", err)
		return
	}
	// Its receipt time is unknown: schedule from the start of its validity.
	leaf := next.cert.Leaf
	next.renewAt = leaf.NotBefore.Add(renewDelay(leaf.NotBefore, leaf.NotAfter))
	m.install(next, nil, "key_dir")
}

// persist writes s's chain and key to KeyDir, each file replaced
// atomically with mode 0600.
func (m *Manager) persist(s *state, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(m.cfg.KeyDir, 0o700); err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	var chain []byte
	for _, c := range s.chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	// Chain first: a crash between the two leaves a mismatched pair, which
	// loadPersisted ignores, never a key paired with a stale certificate
	// that verifies.
	if err := writeFile(filepath.Join(m.cfg.KeyDir, ChainFile), chain); err != nil {
		return err
	}
	return writeFile(filepath.Join(m.cfg.KeyDir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// writeFile replaces path atomically with a 0600 file holding data.
func writeFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
