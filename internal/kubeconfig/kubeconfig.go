// Package kubeconfig reads and writes the subset of the kubeconfig format
// weft uses: one file that both `weft` and `kubectl` can use to reach a weft
// API server (server URL, CA, bearer token or client certificate).
package kubeconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/weftmesh/weft/internal/pki"
	"sigs.k8s.io/yaml"
)

// Config is a kubeconfig file.
type Config struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []NamedCluster `json:"clusters"`
	Users          []NamedUser    `json:"users"`
	Contexts       []NamedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

// NamedCluster is a cluster entry.
type NamedCluster struct {
	Name    string  `json:"name"`
	Cluster Cluster `json:"cluster"`
}

// Cluster says where the server is and which CA signs its certificate.
type Cluster struct {
	Server                   string `json:"server"`
	CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
	CertificateAuthority     string `json:"certificate-authority,omitempty"`
	InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify,omitempty"`
}

// NamedUser is a user entry.
type NamedUser struct {
	Name string `json:"name"`
	User User   `json:"user"`
}

// User holds credentials: a bearer token or a client certificate.
type User struct {
	Token                 string `json:"token,omitempty"`
	ClientCertificateData []byte `json:"client-certificate-data,omitempty"`
	ClientKeyData         []byte `json:"client-key-data,omitempty"`
	ClientCertificate     string `json:"client-certificate,omitempty"`
	ClientKey             string `json:"client-key,omitempty"`
}

// NamedContext is a context entry.
type NamedContext struct {
	Name    string  `json:"name"`
	Context Context `json:"context"`
}

// Context binds a cluster, a user and a default namespace.
type Context struct {
	Cluster   string `json:"cluster"`
	User      string `json:"user"`
	Namespace string `json:"namespace,omitempty"`
}

// New returns a single-context kubeconfig.
func New(server string, caPEM []byte, user string, creds User) *Config {
	return &Config{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []NamedCluster{{Name: "weft", Cluster: Cluster{Server: server, CertificateAuthorityData: caPEM}}},
		Users:          []NamedUser{{Name: user, User: creds}},
		Contexts:       []NamedContext{{Name: "weft", Context: Context{Cluster: "weft", User: user, Namespace: "default"}}},
		CurrentContext: "weft",
	}
}

// Write saves c to path with mode 0600 (it holds credentials).
func (c *Config) Write(path string) error {
	raw, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	return pki.WriteFileAtomic(path, raw, 0o600)
}

// Load reads a kubeconfig file.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("kubeconfig %s does not exist: start `weft server` (it writes one into its data dir) or pass --kubeconfig", path)
		}
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		// Tolerate fields weft does not use (kubectl writes many).
		if err2 := yaml.Unmarshal(raw, &c); err2 != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err2)
		}
	}
	c.resolvePaths(filepath.Dir(path))
	return &c, nil
}

func (c *Config) resolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	for i := range c.Clusters {
		c.Clusters[i].Cluster.CertificateAuthority = abs(c.Clusters[i].Cluster.CertificateAuthority)
	}
	for i := range c.Users {
		c.Users[i].User.ClientCertificate = abs(c.Users[i].User.ClientCertificate)
		c.Users[i].User.ClientKey = abs(c.Users[i].User.ClientKey)
	}
}

// Resolved is the current context, ready to dial.
type Resolved struct {
	Server    string
	Namespace string
	Token     string
	TLS       *tls.Config
}

// Resolve picks the current context (or contextName) and builds its TLS
// configuration.
func (c *Config) Resolve(contextName string) (*Resolved, error) {
	if contextName == "" {
		contextName = c.CurrentContext
	}
	var ctx *Context
	for i := range c.Contexts {
		if c.Contexts[i].Name == contextName {
			ctx = &c.Contexts[i].Context
		}
	}
	if ctx == nil {
		return nil, fmt.Errorf("kubeconfig: context %q not found", contextName)
	}
	var cl *Cluster
	for i := range c.Clusters {
		if c.Clusters[i].Name == ctx.Cluster {
			cl = &c.Clusters[i].Cluster
		}
	}
	if cl == nil {
		return nil, fmt.Errorf("kubeconfig: cluster %q of context %q not found", ctx.Cluster, contextName)
	}
	var u User
	for i := range c.Users {
		if c.Users[i].Name == ctx.User {
			u = c.Users[i].User
		}
	}
	ns := ctx.Namespace
	if ns == "" {
		ns = "default"
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cl.InsecureSkipTLSVerify} //nolint:gosec // only when the kubeconfig asks for it
	caPEM := cl.CertificateAuthorityData
	if len(caPEM) == 0 && cl.CertificateAuthority != "" {
		b, err := os.ReadFile(cl.CertificateAuthority)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		caPEM = b
	}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("kubeconfig: cluster %q: certificate-authority holds no PEM certificate", ctx.Cluster)
		}
		tc.RootCAs = pool
	}
	certPEM, keyPEM := u.ClientCertificateData, u.ClientKeyData
	if len(certPEM) == 0 && u.ClientCertificate != "" {
		var err error
		if certPEM, err = os.ReadFile(u.ClientCertificate); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		if keyPEM, err = os.ReadFile(u.ClientKey); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
	}
	if len(certPEM) > 0 {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: user %q: client certificate: %w", ctx.User, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return &Resolved{Server: cl.Server, Namespace: ns, Token: u.Token, TLS: tc}, nil
}
