package ca

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

// storedRoot is the JSON value at RootKey. The private key is never stored
// in the clear: Key is AES-256-GCM(KEK, PKCS#8 DER) with the SHA-256 of the
// certificate as additional data, so a key cannot be swapped under another
// certificate.
type storedRoot struct {
	// Cert is the root certificate, PEM.
	Cert string `json:"cert"`
	// Key is base64(nonce || ciphertext).
	Key string `json:"key"`
	// Alg names the encryption ("AES-256-GCM").
	Alg string `json:"alg"`
	// KEKID is the first 8 bytes, hex, of the SHA-256 of the key-encryption
	// key, to tell a wrong ca-kek file from a corrupt record.
	KEKID   string    `json:"kekID"`
	Created time.Time `json:"created"`
}

const kekAlg = "AES-256-GCM"

// loadOrCreateRoot returns the self-signed root from the store, creating
// it (and the key-encryption key file) on first start. Racing replicas
// converge on the first root written: Create fails for the others, which
// then load the winner's.
func (a *Authority) loadOrCreateRoot(ctx context.Context) (*signingCA, error) {
	if a.opts.KEKFile == "" {
		return nil, errors.New("ca: no key-encryption key file configured (Options.KEKFile) and no plugged-in CA")
	}
	kv, err := a.st.Get(ctx, RootKey)
	switch {
	case err == nil:
		kek, err := loadKEK(a.opts.KEKFile, false)
		if err != nil {
			return nil, err
		}
		return a.decodeRoot(kv.Value, kek)
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("ca: reading root: %w", err)
	}
	kek, err := loadKEK(a.opts.KEKFile, true)
	if err != nil {
		return nil, err
	}
	val, err := a.newRoot(kek)
	if err != nil {
		return nil, err
	}
	if _, err := a.st.Create(ctx, RootKey, val); err != nil {
		if !errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("ca: storing root: %w", err)
		}
		// Another replica won the race: use its root.
		if kv, err = a.st.Get(ctx, RootKey); err != nil {
			return nil, fmt.Errorf("ca: reading root: %w", err)
		}
		return a.decodeRoot(kv.Value, kek)
	}
	sca, err := a.decodeRoot(val, kek)
	if err == nil {
		a.log.Info("created self-signed mesh root", "trust_domain", a.opts.TrustDomain,
			"expires", sca.cert.NotAfter, "fingerprint", Fingerprint(sca.cert))
	}
	return sca, err
}

// newRoot generates a self-signed root and returns its storedRoot JSON.
func (a *Authority) newRoot(kek []byte) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generating root key: %w", err)
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := a.opts.Clock()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "weft mesh root CA", Organization: []string{a.opts.TrustDomain}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(a.opts.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("ca: self-signing root: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: encoding root key: %w", err)
	}
	sealed, err := seal(kek, keyDER, der)
	if err != nil {
		return nil, err
	}
	return json.Marshal(storedRoot{Cert: certPEM(der), Key: sealed, Alg: kekAlg, KEKID: kekID(kek), Created: now.UTC()})
}

// decodeRoot decrypts and checks a storedRoot.
func (a *Authority) decodeRoot(val, kek []byte) (*signingCA, error) {
	var sr storedRoot
	if err := json.Unmarshal(val, &sr); err != nil {
		return nil, fmt.Errorf("ca: decoding root at %s: %w", RootKey, err)
	}
	b, _ := pem.Decode([]byte(sr.Cert))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("ca: root at %s has no PEM certificate", RootKey)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing root at %s: %w", RootKey, err)
	}
	if sr.Alg != kekAlg {
		return nil, fmt.Errorf("ca: root at %s is encrypted with %q, want %s", RootKey, sr.Alg, kekAlg)
	}
	if id := kekID(kek); sr.KEKID != id {
		return nil, fmt.Errorf("ca: the root in the store was encrypted with another key-encryption key (id %s; %s has id %s): "+
			"copy %s from the replica that created the root — every replica sharing a store needs the same file", sr.KEKID, a.opts.KEKFile, id, KEKFileName)
	}
	keyDER, err := open(kek, sr.Key, cert.Raw)
	if err != nil {
		return nil, fmt.Errorf("ca: decrypting root key at %s: %w", RootKey, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing root key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("ca: root key at %s does not match its certificate", RootKey)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("ca: root at %s is not a CA certificate", RootKey)
	}
	if now := a.opts.Clock(); !now.Before(cert.NotAfter) {
		return nil, fmt.Errorf("ca: the self-signed root expired at %s: plug in a new CA (Options.CACertsDir)", cert.NotAfter.Format(time.RFC3339))
	}
	return newSigningCA([]*x509.Certificate{cert}, key, []*x509.Certificate{cert}, false), nil
}

func kekID(kek []byte) string {
	sum := sha256.Sum256(kek)
	return hex.EncodeToString(sum[:8])
}

func seal(kek, plaintext, certDER []byte) (string, error) {
	gcm, err := newGCM(kek)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	aad := sha256.Sum256(certDER)
	return base64.StdEncoding.EncodeToString(gcm.Seal(nonce, nonce, plaintext, aad[:])), nil
}

func open(kek []byte, sealed string, certDER []byte) ([]byte, error) {
	gcm, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(raw) < gcm.NonceSize()+gcm.Overhead() {
		return nil, errors.New("malformed ciphertext")
	}
	aad := sha256.Sum256(certDER)
	pt, err := gcm.Open(nil, raw[:gcm.NonceSize()], raw[gcm.NonceSize():], aad[:])
	if err != nil {
		return nil, errors.New("authentication failed (wrong key-encryption key or tampered record)")
	}
	return pt, nil
}

func newGCM(kek []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	return cipher.NewGCM(blk)
}

// loadKEK reads the key-encryption key file (base64 of 32 bytes), or
// creates it with mode 0600 when create is set and it does not exist.
// Creation goes through a temporary file and a hard link, so it never
// replaces an existing file and never leaves half a key.
func loadKEK(path string, create bool) ([]byte, error) {
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		kek, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
		if err != nil || len(kek) != 32 {
			return nil, fmt.Errorf("ca: %s is not a key-encryption key (want 32 bytes, base64)", path)
		}
		return kek, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("ca: reading key-encryption key: %w", err)
	case !create:
		return nil, fmt.Errorf("ca: the mesh root in the store is encrypted but %s does not exist: copy %s from the replica that created the root (every replica sharing a store needs the same file), or plug in a CA", path, KEKFileName)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	if err := createExclusive(path, []byte(base64.StdEncoding.EncodeToString(kek)+"\n")); err != nil {
		if errors.Is(err, os.ErrExist) {
			return loadKEK(path, false)
		}
		return nil, fmt.Errorf("ca: creating key-encryption key: %w", err)
	}
	return kek, nil
}

// createExclusive writes data to path with mode 0600 unless path exists
// (os.ErrExist).
func createExclusive(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}

// Fingerprint returns the lowercase hex SHA-256 of a certificate's DER, the
// name by which RemoveRoot takes a root.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
