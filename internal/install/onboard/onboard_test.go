package onboard

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/proxy/bootstrap"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if d := cmp.Diff(got, string(want)); d != "" {
		t.Errorf("%s mismatch (-got +want):\n%s", path, d)
	}
}

const testRoot = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAPMQ0wCwYDVQQDEwR3ZWZ0MB4X\n-----END CERTIFICATE-----"

func base() Params {
	return Params{
		Namespace: "bookinfo", Group: "ratings", ServiceAccount: "ratings",
		Labels:           map[string]string{"version": "v1", "app": "ratings"},
		DiscoveryAddress: "weft.example.com:15012",
		Token:            "wbt_abc123.s3cr3t-_x",
		TokenExpires:     time.Date(2026, 5, 2, 10, 0, 0, 0, time.UTC),
		RootCertPEM:      []byte(testRoot),
	}
}

func TestRenderGolden(t *testing.T) {
	cases := map[string]func(p *Params){
		"capture": func(p *Params) { p.DiscoveryIP = "192.0.2.10" },
		"explicit": func(p *Params) {
			p.Explicit = true
			p.InstanceIP = "10.0.0.7"
			p.InboundPorts = "9443=15443, 9080=15080"
			p.DiscoveryAddress = "192.0.2.10:15012"
		},
		// Paths of the host's own layout; a second proxy's state directory.
		"tproxy": func(p *Params) { p.InboundCaptureMode = "tproxy" },
		"paths": func(p *Params) {
			p.Binary, p.User, p.ConfigDir, p.StateDirectory = "/opt/weft/bin/weft-proxy", "1337", "/opt/weft/etc", "weft-proxy-ratings"
		},
		// A name without a known address, every default.
		"defaults": func(p *Params) {
			p.ServiceAccount, p.Labels, p.TokenExpires = "", nil, time.Time{}
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			p := base()
			mod(&p)
			files, err := Render(p)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, f := range files {
				names = append(names, f.Name)
				switch f.Name {
				case RootCertFile:
					if !strings.HasSuffix(string(f.Data), "-----END CERTIFICATE-----\n") {
						t.Errorf("root-cert.pem does not end in a newline: %q", f.Data)
					}
				case TokenFile:
					if string(f.Data) != p.Token+"\n" || f.Mode != 0o600 {
						t.Errorf("bootstrap-token %q mode %o, want the token and 0600", f.Data, f.Mode)
					}
				default:
					if f.Mode != 0o644 {
						t.Errorf("%s mode %o, want 0644", f.Name, f.Mode)
					}
					golden(t, name+"."+f.Name, string(f.Data))
				}
			}
			want := []string{RootCertFile, TokenFile, EnvFile, MeshFile, HostsFile, UnitFile}
			if d := cmp.Diff(names, want); d != "" {
				t.Errorf("files (-got +want):\n%s", d)
			}
		})
	}
}

// TestWeftProxyReadsTheFiles checks that weft-proxy's own bootstrap code
// understands cluster.env and mesh.yaml.
func TestWeftProxyReadsTheFiles(t *testing.T) {
	p := base()
	p.InstanceIP = "10.0.0.7"
	files, err := Render(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "out"), files); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"WEFT_WORKLOAD_NAME": "vm1"}
	raw, _ := os.ReadFile(filepath.Join(dir, "out", EnvFile))
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	var b bootstrap.Config
	if err := b.FromEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if got, want := b.NodeID(), "sidecar~10.0.0.7~vm1.bookinfo~bookinfo.svc.cluster.local"; got != want {
		t.Errorf("node id %q, want %q", got, want)
	}
	if b.WorkloadGroup != "ratings" || b.ServiceAccount != "ratings" || b.Labels["app"] != "ratings" || b.Discovery != "weft.example.com:15012" || b.Explicit {
		t.Errorf("bootstrap from cluster.env: %+v", b)
	}
	mesh, err := bootstrap.LoadFile(filepath.Join(dir, "out", MeshFile))
	if err != nil {
		t.Fatal(err)
	}
	if mesh.Discovery != "weft.example.com:15012" || mesh.TrustDomain != "cluster.local" {
		t.Errorf("mesh.yaml: %+v", mesh)
	}
	for _, f := range files {
		st, err := os.Stat(filepath.Join(dir, "out", f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != f.Mode {
			t.Errorf("%s written with mode %o, want %o", f.Name, st.Mode().Perm(), f.Mode)
		}
	}
}

func TestRenderRefusesBadInput(t *testing.T) {
	cases := map[string]struct {
		mod  func(p *Params)
		want string
	}{
		"no token":        {func(p *Params) { p.Token = "" }, "a bootstrap token is required"},
		"no group":        {func(p *Params) { p.Group = "" }, "namespace and name are required"},
		"bad root":        {func(p *Params) { p.RootCertPEM = []byte("nope") }, "no PEM CERTIFICATE"},
		"no port":         {func(p *Params) { p.DiscoveryAddress = "weft.example.com" }, "want host:port"},
		"bad ip":          {func(p *Params) { p.InstanceIP = "10.0.0" }, `instance IP "10.0.0"`},
		"tproxy explicit": {func(p *Params) { p.Explicit, p.InboundCaptureMode = true, "TPROXY" }, "explicit mode captures nothing"},
		"capture mode":    {func(p *Params) { p.InboundCaptureMode = "NAT" }, `inbound capture mode "NAT"`},
		"relative proxy":  {func(p *Params) { p.Binary = "bin/weft-proxy" }, "must be absolute paths"},
		"state path":      {func(p *Params) { p.StateDirectory = "../etc" }, `state directory "../etc"`},
		"inbound capture": {func(p *Params) { p.InboundPorts = "9080=15080" }, "inbound ports need explicit mode"},
		"inbound bad":     {func(p *Params) { p.Explicit, p.InboundPorts = true, "9080" }, "want <app port>=<sidecar port>"},
		"label injected":  {func(p *Params) { p.Labels = map[string]string{"app": "x\nWEFT_EXPLICIT=true"} }, "may not contain whitespace"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := base()
			c.mod(&p)
			if _, err := Render(p); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Render: %v, want an error containing %q", err, c.want)
			}
		})
	}
}
