package engine

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

// Gateway credentials: the certificates a TLS filter chain presents, and
// the CAs it verifies client certificates with, when they are not the
// mesh identity. The chain names them by SDS secret name, as istiod does
// for a Gateway server's tls settings:
//
//   - "file-cert:<cert path>~<key path>" and "file-root:<CA path>":
//     serverCertificate, privateKey and caCertificates, PEM files on the
//     proxy's host;
//   - "kubernetes://<name>" and "kubernetes://<name>-cacert":
//     credentialName, a Kubernetes TLS (or generic) secret mounted under
//     the proxy's credential directory (Options.CredentialDir) as
//     <dir>/<name>/tls.crt and tls.key (generic secrets: cert and key),
//     with ca.crt (or cacert) in <dir>/<name>-cacert/ when that exists,
//     else in <dir>/<name>/.
//
// Nothing is read when a config is compiled: files are read at handshake
// time through credCache, which re-reads a file set whenever one of its
// files changed, so that replacing the files (or Kubernetes updating the
// mounted secret) rotates the certificate without a config push. A file
// that is missing, unreadable or does not match fails the handshake:
// never another certificate, never plaintext.

// SDS name prefixes of gateway credentials (Istio's).
const (
	fileCertPrefix   = "file-cert:"
	fileRootPrefix   = "file-root:"
	credentialPrefix = xdsclient.CredentialPrefix
	// caCertSuffix ends the name of a credential's CA bundle.
	caCertSuffix = "-cacert"
)

// secretKind is where a chain's certificate or trusted CAs come from.
type secretKind uint8

const (
	// secretNone: no validation context (client certificates are not
	// verified).
	secretNone secretKind = iota
	// secretMesh: the workload identity, SDS "default" or "ROOTCA".
	secretMesh
	// secretFiles: PEM files named in the SDS name (file-cert:, file-root:).
	secretFiles
	// secretCredential: a credential in the credential directory
	// (kubernetes://).
	secretCredential
)

// secretRef is a parsed SDS secret name of a downstream TLS context.
type secretRef struct {
	kind secretKind
	// name is the SDS name as configured (for errors).
	name string
	// cert and key are the file-cert: paths; cert is the file-root: CA
	// bundle's path.
	cert, key string
	// credential is the kubernetes:// credential's name.
	credential string
}

// errCertName and errRootName list the SDS names a chain may use.
var (
	errCertName = errors.New(`use "default" (the workload certificate), "file-cert:<cert path>~<key path>" or "kubernetes://<credential name>"`)
	errRootName = errors.New(`use "ROOTCA" (the mesh roots), "file-root:<CA path>" or "kubernetes://<credential name>-cacert"`)
)

// parseCertName reads the SDS name of a chain's certificate.
func parseCertName(name string) (secretRef, error) {
	ref := secretRef{name: name}
	switch {
	case name == sdsCert:
		ref.kind = secretMesh
	case strings.HasPrefix(name, fileCertPrefix):
		cert, key, ok := strings.Cut(strings.TrimPrefix(name, fileCertPrefix), "~")
		if !ok || strings.Contains(key, "~") {
			return ref, fmt.Errorf("SDS certificate %q: want file-cert:<cert path>~<key path>", name)
		}
		for _, p := range []string{cert, key} {
			if err := checkAbs(p); err != nil {
				return ref, fmt.Errorf("SDS certificate %q: %w", name, err)
			}
		}
		ref.kind, ref.cert, ref.key = secretFiles, cert, key
	case strings.HasPrefix(name, credentialPrefix):
		cred := strings.TrimPrefix(name, credentialPrefix)
		if err := checkCredentialName(cred); err != nil {
			return ref, fmt.Errorf("SDS certificate %q: %w", name, err)
		}
		ref.kind, ref.credential = secretCredential, cred
	default:
		return ref, fmt.Errorf("SDS certificate %q is not supported: %w", name, errCertName)
	}
	return ref, nil
}

// parseRootName reads the SDS name of a chain's validation context ("":
// none).
func parseRootName(name string) (secretRef, error) {
	ref := secretRef{name: name}
	switch {
	case name == "":
	case name == sdsRoot:
		ref.kind = secretMesh
	case strings.HasPrefix(name, fileRootPrefix):
		ca := strings.TrimPrefix(name, fileRootPrefix)
		if strings.Contains(ca, "~") {
			return ref, fmt.Errorf("SDS validation context %q: certificate revocation lists (caCrl) are not supported; want file-root:<CA path>", name)
		}
		if err := checkAbs(ca); err != nil {
			return ref, fmt.Errorf("SDS validation context %q: %w", name, err)
		}
		ref.kind, ref.cert = secretFiles, ca
	case strings.HasPrefix(name, credentialPrefix):
		cred := strings.TrimPrefix(name, credentialPrefix)
		if err := checkCredentialName(cred); err != nil {
			return ref, fmt.Errorf("SDS validation context %q: %w", name, err)
		}
		ref.kind, ref.credential = secretCredential, cred
	default:
		return ref, fmt.Errorf("SDS validation context %q is not supported: %w", name, errRootName)
	}
	return ref, nil
}

// checkAbs refuses a file path that is not absolute: the proxy's working
// directory is no place a control plane can know.
func checkAbs(p string) error {
	if p == "" || !filepath.IsAbs(p) {
		return fmt.Errorf("path %q is not absolute", p)
	}
	return nil
}

// checkCredentialName refuses credential names that are not one
// directory name under the credential directory.
func checkCredentialName(n string) error {
	switch {
	case n == "":
		return errors.New("the credential name is empty")
	case strings.Contains(n, "/"):
		return fmt.Errorf("credential %q: credentials of another namespace (<namespace>/<name>) are not supported; use a secret in the gateway's namespace", n)
	case n == "." || n == ".." || strings.ContainsAny(n, "\x00\\"):
		return fmt.Errorf("credential %q is not a valid secret name", n)
	}
	return nil
}

// errNoCredentialDir fails handshakes of chains that name a Kubernetes
// credential when the proxy was not told where credentials are.
var errNoCredentialDir = errors.New("gateway credentials (kubernetes://<name>) need --credential-dir (WEFT_CREDENTIAL_DIR): the directory the Kubernetes TLS secrets are mounted in")

// certFiles returns the certificate and key files of a file-cert: or
// kubernetes:// certificate: in a credential's directory tls.crt and
// tls.key, else (generic secrets) cert and key.
func (r *secretRef) certFiles(dir string) (cert, key string, err error) {
	if r.kind == secretFiles {
		return r.cert, r.key, nil
	}
	if dir == "" {
		return "", "", errNoCredentialDir
	}
	d := filepath.Join(dir, r.credential)
	if !exists(filepath.Join(d, "tls.crt")) && exists(filepath.Join(d, "cert")) {
		return filepath.Join(d, "cert"), filepath.Join(d, "key"), nil
	}
	return filepath.Join(d, "tls.crt"), filepath.Join(d, "tls.key"), nil
}

// caFile returns the CA bundle of a file-root: or kubernetes:// validation
// context: ca.crt (or cacert) in <dir>/<name>-cacert when that directory
// exists, else in <dir>/<name>.
func (r *secretRef) caFile(dir string) (string, error) {
	if r.kind == secretFiles {
		return r.cert, nil
	}
	if dir == "" {
		return "", errNoCredentialDir
	}
	d := filepath.Join(dir, r.credential)
	if base, ok := strings.CutSuffix(r.credential, caCertSuffix); ok && base != "" && !exists(d) {
		d = filepath.Join(dir, base)
	}
	if !exists(filepath.Join(d, "ca.crt")) && exists(filepath.Join(d, "cacert")) {
		return filepath.Join(d, "cacert"), nil
	}
	return filepath.Join(d, "ca.crt"), nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// credentialError is a handshake that failed because a credential could
// not be loaded (as opposed to a client that failed it): serveConn warns.
type credentialError struct{ err error }

func (e *credentialError) Error() string { return e.err.Error() }
func (e *credentialError) Unwrap() error { return e.err }

// credCache holds the credentials read from files, by file set. Each
// handshake stats the files; a set is read again when one of them is no
// longer the same file, or its size or modification time changed.
type credCache struct {
	mu      sync.Mutex
	entries map[credKey]*credEntry
	// warned is when each distinct load error was last logged at Warn.
	warned map[string]time.Time
}

// credKey is a certificate's and key's paths, or a CA bundle's path and "".
type credKey struct{ a, b string }

// credEntry is one file set's last load.
type credEntry struct {
	mu sync.Mutex
	// files are the stats the load was made from (nil: never loaded).
	files []os.FileInfo
	// val is what the last load made (*tls.Certificate, *x509.CertPool),
	// err its error: the files are not read again until they change.
	val any
	err error
	// used is when a handshake last asked for the entry (under
	// credCache.mu).
	used time.Time
}

// credCacheMax is the number of file sets above which entries unused for
// credCacheIdle are dropped.
const (
	credCacheMax  = 64
	credCacheIdle = 10 * time.Minute
)

// credWarnEvery is how often one credential error is logged at Warn; in
// between it goes to Debug.
const credWarnEvery = time.Minute

func newCredCache() *credCache {
	return &credCache{entries: map[credKey]*credEntry{}, warned: map[string]time.Time{}}
}

// entry returns the entry of a file set, dropping long unused ones when
// there are many.
func (c *credCache) entry(k credKey) *credEntry {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil {
		if len(c.entries) >= credCacheMax {
			for k, old := range c.entries {
				if now.Sub(old.used) > credCacheIdle {
					delete(c.entries, k)
				}
			}
		}
		e = &credEntry{}
		c.entries[k] = e
	}
	e.used = now
	return e
}

// certificate returns the certificate and key of ref.
func (c *credCache) certificate(ref *secretRef, dir string) (*tls.Certificate, error) {
	certPath, keyPath, err := ref.certFiles(dir)
	if err != nil {
		return nil, &credentialError{fmt.Errorf("SDS certificate %q: %w", ref.name, err)}
	}
	v, err := c.entry(credKey{certPath, keyPath}).load(func() (any, error) {
		certPEM, err := os.ReadFile(certPath)
		if err != nil {
			return nil, err
		}
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, err
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("certificate %s with key %s: %w", certPath, keyPath, err)
		}
		return &cert, nil
	}, certPath, keyPath)
	if err != nil {
		return nil, &credentialError{fmt.Errorf("SDS certificate %q: %w", ref.name, err)}
	}
	return v.(*tls.Certificate), nil
}

// roots returns the CA bundle of ref.
func (c *credCache) roots(ref *secretRef, dir string) (*x509.CertPool, error) {
	caPath, err := ref.caFile(dir)
	if err != nil {
		return nil, &credentialError{fmt.Errorf("SDS validation context %q: %w", ref.name, err)}
	}
	v, err := c.entry(credKey{a: caPath}).load(func() (any, error) {
		data, err := os.ReadFile(caPath)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caPath)
		}
		return pool, nil
	}, caPath)
	if err != nil {
		return nil, &credentialError{fmt.Errorf("SDS validation context %q: %w", ref.name, err)}
	}
	return v.(*x509.CertPool), nil
}

// load returns what read makes of the files at paths, running it again
// only when they changed since the last load. The files are stated
// before they are read: a file replaced in between is read again on the
// next handshake, never kept stale.
func (e *credEntry) load(read func() (any, error), paths ...string) (any, error) {
	files := make([]os.FileInfo, len(paths))
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		files[i] = fi
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !sameFiles(e.files, files) {
		e.val, e.err = read()
		e.files = files
	}
	return e.val, e.err
}

// sameFiles reports whether two stats of a file set show the same files,
// unchanged.
func sameFiles(a, b []os.FileInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()) {
			return false
		}
	}
	return true
}

// warnNow reports whether a credential error should be logged at Warn:
// the first time, and once every credWarnEvery after that.
func (c *credCache) warnNow(msg string) bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if last, ok := c.warned[msg]; ok && now.Sub(last) < credWarnEvery {
		return false
	}
	if len(c.warned) >= credCacheMax {
		for m, t := range c.warned {
			if now.Sub(t) >= credWarnEvery {
				delete(c.warned, m)
			}
		}
	}
	c.warned[msg] = now
	return true
}

// SDS credentials: discovery serves a gateway the credentialName
// certificates of the Secrets in its namespace, as SDS secrets named
// kubernetes://<name> (certificate chain and private key) and
// kubernetes://<name>-cacert (CA bundle). They take precedence over the
// --credential-dir files of the same name, which serve what discovery
// does not send.

// compileSDSCredentials compiles the kubernetes:// secrets of s, by name:
// *tls.Certificate or *x509.CertPool. A secret that does not parse fails
// the config.
func compileSDSCredentials(s *xdsclient.Snapshot) (map[string]any, error) {
	var out map[string]any
	for name, sec := range s.Secrets {
		if !strings.HasPrefix(name, credentialPrefix) {
			continue
		}
		if out == nil {
			out = map[string]any{}
		}
		switch {
		case sec.GetTlsCertificate() != nil:
			tc := sec.GetTlsCertificate()
			chain, err := inlineData(tc.GetCertificateChain())
			if err != nil {
				return nil, fmt.Errorf("secret %s: certificate_chain: %w", name, err)
			}
			key, err := inlineData(tc.GetPrivateKey())
			if err != nil {
				return nil, fmt.Errorf("secret %s: private_key: %w", name, err)
			}
			pair, err := tls.X509KeyPair(chain, key)
			if err != nil {
				return nil, fmt.Errorf("secret %s: %w", name, err)
			}
			out[name] = &pair
		case sec.GetValidationContext() != nil:
			ca, err := inlineData(sec.GetValidationContext().GetTrustedCa())
			if err != nil {
				return nil, fmt.Errorf("secret %s: trusted_ca: %w", name, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, fmt.Errorf("secret %s: trusted_ca holds no PEM certificate", name)
			}
			out[name] = pool
		default:
			return nil, fmt.Errorf("secret %s: want a tls_certificate or a validation_context", name)
		}
	}
	return out, nil
}

// inlineData returns an inline data source's bytes (secrets from
// discovery carry no file names).
func inlineData(d *corev3.DataSource) ([]byte, error) {
	switch v := d.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return v.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(v.InlineString), nil
	}
	return nil, errors.New("only inline_bytes or inline_string are supported")
}

// sdsCredential returns the compiled SDS credential name of the applied
// config (*tls.Certificate or *x509.CertPool); nil when discovery sent
// none.
func (e *Engine) sdsCredential(name string) any {
	if rt := e.cur.Load(); rt != nil {
		return rt.sdsCreds[name]
	}
	return nil
}
