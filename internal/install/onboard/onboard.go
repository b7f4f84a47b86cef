// Package onboard renders the files a VM or bare-metal host needs to join
// the mesh through a WorkloadGroup (Istio's `istioctl x workload entry
// configure`): the control plane's root certificate, a bootstrap token, the
// weft-proxy environment file, a mesh settings file, an /etc/hosts fragment
// and a systemd unit for weft-proxy.
//
// Render is pure: the same Params always give the same bytes, so the files
// are checked with golden tests. Write puts them on disk.
package onboard

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/weftmesh/weft/internal/pki"
	"github.com/weftmesh/weft/internal/registry"
)

// Names of the rendered files, as the unit and the docs refer to them.
const (
	RootCertFile  = "root-cert.pem"
	TokenFile     = "bootstrap-token"
	EnvFile       = "cluster.env"
	MeshFile      = "mesh.yaml"
	HostsFile     = "hosts"
	UnitFile      = "weft-proxy.service"
	secretMode    = 0o600
	publicMode    = 0o644
	defaultUser   = "weft-proxy"
	defaultBin    = "/usr/local/bin/weft-proxy"
	defaultConfig = "/etc/weft"
	// CertDir is where weft-proxy keeps the workload key and certificate
	// on the host by default: the unit's StateDirectory, /var/lib/weft-proxy.
	CertDir       = "/var/lib/" + defaultState
	defaultState  = "weft-proxy"
	defaultDomain = "cluster.local"
)

// Params is everything the files are rendered from.
type Params struct {
	// Namespace and Group name the WorkloadGroup the host joins. Required.
	Namespace string
	Group     string
	// ServiceAccount is the group's identity. Default "default" (Istio's).
	ServiceAccount string
	// Labels are the workload labels weft-proxy announces (the group's
	// metadata and template labels).
	Labels map[string]string
	// TrustDomain of the mesh. Default "cluster.local".
	TrustDomain string
	// DiscoveryAddress is the control plane's xDS and CA TLS port as the
	// host reaches it, host:port (normally :15012). Required.
	DiscoveryAddress string
	// DiscoveryIP is the address the discovery host name maps to in the
	// hosts fragment; empty leaves a placeholder. Unused when
	// DiscoveryAddress already holds an IP address.
	DiscoveryIP string
	// InstanceIP is the host's address in the mesh. Empty leaves
	// WEFT_INSTANCE_IP for the operator to fill in.
	InstanceIP string
	// Token is the bootstrap token (wbt_…). Required.
	Token string
	// TokenExpires is when Token stops working (shown in cluster.env).
	TokenExpires time.Time
	// RootCertPEM signs the control plane's serving certificate. Required.
	RootCertPEM []byte
	// Explicit renders explicit mode: no iptables steps, weft-proxy
	// --explicit.
	Explicit bool
	// User runs weft-proxy; its traffic is exempt from capture. Default
	// "weft-proxy".
	User string
	// Binary is weft-proxy's path on the host. Default
	// /usr/local/bin/weft-proxy.
	Binary string
	// ConfigDir is where the files are installed on the host. Default
	// /etc/weft.
	ConfigDir string
	// StateDirectory is the unit's StateDirectory= name: weft-proxy keeps
	// its key and certificate in /var/lib/<StateDirectory>. Default
	// "weft-proxy"; give each proxy its own when several share a host.
	StateDirectory string
	// InboundCaptureMode is REDIRECT (default) or TPROXY: with TPROXY the
	// capture rules keep client addresses on inbound connections, the
	// proxy is told so (WEFT_INTERCEPTION_MODE=TPROXY) and the unit grants
	// it CAP_NET_ADMIN. Capture mode only.
	InboundCaptureMode string
	// InboundPorts (explicit mode only) is weft-proxy's --inbound-ports,
	// "<app port>=<sidecar port>,…", written as WEFT_INBOUND_PORTS.
	InboundPorts string
}

// File is one rendered file.
type File struct {
	// Name is the file's base name.
	Name string
	// Mode is 0600 for secrets, 0644 otherwise.
	Mode fs.FileMode
	Data []byte
}

// envSafe is what a value in cluster.env or on the unit's command line may
// hold: no whitespace, quotes, '$', '%', '\' or '#', so neither systemd nor a
// shell reading the file reinterprets it.
var envSafe = regexp.MustCompile(`^[A-Za-z0-9._:/=,@+\[\]-]*$`)

// stateName is a StateDirectory= name: one path component.
var stateName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// withDefaults fills defaults and checks p.
func (p Params) withDefaults() (Params, error) {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&p.ServiceAccount, "default")
	def(&p.TrustDomain, defaultDomain)
	def(&p.User, defaultUser)
	def(&p.Binary, defaultBin)
	def(&p.ConfigDir, defaultConfig)
	def(&p.StateDirectory, defaultState)
	var errs []error
	if !strings.HasPrefix(p.Binary, "/") || !strings.HasPrefix(p.ConfigDir, "/") {
		errs = append(errs, fmt.Errorf("proxy path %q and config dir %q must be absolute paths (systemd requires them)", p.Binary, p.ConfigDir))
	}
	if !stateName.MatchString(p.StateDirectory) {
		errs = append(errs, fmt.Errorf("state directory %q: want a name under /var/lib such as weft-proxy-ratings (letters, digits, '.', '_', '-')", p.StateDirectory))
	}
	switch p.InboundCaptureMode = strings.ToUpper(p.InboundCaptureMode); p.InboundCaptureMode {
	case "", "REDIRECT":
		p.InboundCaptureMode = "REDIRECT"
	case "TPROXY":
		if p.Explicit {
			errs = append(errs, errors.New("inbound capture mode TPROXY needs capture: explicit mode captures nothing"))
		}
	default:
		errs = append(errs, fmt.Errorf("inbound capture mode %q: use REDIRECT or TPROXY", p.InboundCaptureMode))
	}
	if p.InboundPorts != "" {
		ports, err := registry.ParseInboundPorts(p.InboundPorts)
		switch {
		case err != nil:
			errs = append(errs, err)
		case !p.Explicit:
			errs = append(errs, errors.New("inbound ports need explicit mode: with capture, inbound traffic arrives on 15006"))
		default:
			p.InboundPorts = registry.FormatInboundPorts(ports)
		}
	}
	if p.Namespace == "" || p.Group == "" {
		errs = append(errs, errors.New("the WorkloadGroup's namespace and name are required"))
	}
	if p.Token == "" {
		errs = append(errs, errors.New("a bootstrap token is required"))
	}
	if b, _ := pem.Decode(p.RootCertPEM); b == nil || b.Type != "CERTIFICATE" {
		errs = append(errs, errors.New("the root certificate holds no PEM CERTIFICATE block"))
	}
	if _, port, err := net.SplitHostPort(p.DiscoveryAddress); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("discovery address %q: want host:port, e.g. weft.example.com:15012", p.DiscoveryAddress))
	}
	if p.DiscoveryIP != "" {
		if _, err := netip.ParseAddr(p.DiscoveryIP); err != nil {
			errs = append(errs, fmt.Errorf("discovery IP %q is not an IP address", p.DiscoveryIP))
		}
	}
	if p.InstanceIP != "" {
		if _, err := netip.ParseAddr(p.InstanceIP); err != nil {
			errs = append(errs, fmt.Errorf("instance IP %q is not an IP address", p.InstanceIP))
		}
	}
	for name, v := range map[string]string{
		"namespace": p.Namespace, "group": p.Group, "service account": p.ServiceAccount,
		"trust domain": p.TrustDomain, "discovery address": p.DiscoveryAddress, "labels": p.labels(),
		"user": p.User, "binary": p.Binary, "config dir": p.ConfigDir, "token": p.Token,
	} {
		if !envSafe.MatchString(v) {
			errs = append(errs, fmt.Errorf("%s %q: may not contain whitespace, quotes, '$', '%%', '\\' or '#'", name, v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("onboard: %w", err)
	}
	return p, nil
}

// labels renders Labels as "k=v,k2=v2", sorted by key.
func (p Params) labels() string {
	keys := make([]string, 0, len(p.Labels))
	for k := range p.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + p.Labels[k]
	}
	return strings.Join(parts, ",")
}

// discoveryHost is the host part of DiscoveryAddress and whether it is a
// name (not an IP address).
func (p Params) discoveryHost() (string, bool) {
	host, _, _ := net.SplitHostPort(p.DiscoveryAddress)
	_, err := netip.ParseAddr(host)
	return host, err != nil
}

// Render returns the files for p, in a fixed order: root-cert.pem,
// bootstrap-token, cluster.env, mesh.yaml, hosts, weft-proxy.service.
func Render(p Params) ([]File, error) {
	p, err := p.withDefaults()
	if err != nil {
		return nil, err
	}
	host, isName := p.discoveryHost()
	data := tmplData{
		Params:        p,
		LabelList:     p.labels(),
		Expires:       "",
		DiscoveryHost: host,
		HostIsName:    isName,
		CertDir:       "/var/lib/" + p.StateDirectory,
	}
	if !p.TokenExpires.IsZero() {
		data.Expires = p.TokenExpires.UTC().Format(time.RFC3339)
	}
	out := []File{
		{Name: RootCertFile, Mode: publicMode, Data: ensureNewline(p.RootCertPEM)},
		{Name: TokenFile, Mode: secretMode, Data: []byte(p.Token + "\n")},
	}
	for _, f := range []struct {
		name string
		t    *template.Template
	}{{EnvFile, envTmpl}, {MeshFile, meshTmpl}, {HostsFile, hostsTmpl}, {UnitFile, unitTmpl}} {
		var b bytes.Buffer
		if err := f.t.Execute(&b, data); err != nil {
			return nil, fmt.Errorf("onboard: rendering %s: %w", f.name, err)
		}
		out = append(out, File{Name: f.name, Mode: publicMode, Data: b.Bytes()})
	}
	return out, nil
}

func ensureNewline(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return append(append([]byte(nil), b...), '\n')
	}
	return b
}

// Write creates dir (0700 when new) and writes files into it, each replaced
// atomically with its mode.
func Write(dir string, files []File) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("onboard: %w", err)
	}
	for _, f := range files {
		if err := pki.WriteFileAtomic(filepath.Join(dir, f.Name), f.Data, f.Mode); err != nil {
			return fmt.Errorf("onboard: %w", err)
		}
	}
	return nil
}
