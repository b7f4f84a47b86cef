package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/install/onboard"
	"github.com/weftmesh/weft/internal/proxy/bootstrap"
	"github.com/weftmesh/weft/internal/proxy/sidecar"
	"github.com/weftmesh/weft/internal/registry/workload"
	"github.com/weftmesh/weft/internal/testutil/wefttest"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer runs an in-process weft server and returns its kubeconfig
// path and TLS xDS address.
func startServer(t *testing.T) (kubeconfigPath, xdsAddr string) {
	t.Helper()
	srv := wefttest.Start(t, nil)
	return srv.Kubeconfig(), srv.XDSTLS
}

// weftCmd runs the weft command line with args.
func weftCmd(t *testing.T, kc string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := NewRoot(strings.NewReader(""), &out, &errb)
	root.SetArgs(append([]string{"--kubeconfig", kc}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestWorkloadGroupCreatePrintsYAML(t *testing.T) {
	out, _, err := weftCmd(t, filepath.Join(t.TempDir(), "none"), "workload", "group", "create", "--name", "ratings", "-n", "bookinfo",
		"--labels", "app=ratings,version=v1", "--service-account", "ratings", "--port", "http=9080", "--port", "grpc=9090", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ratings
  namespace: bookinfo
spec:
  metadata:
    labels:
      app: ratings
      version: v1
  template:
    ports:
      grpc: 9090
      http: 9080
    serviceAccount: ratings
`
	if out != want {
		t.Errorf("group create -o yaml:\n%s\nwant:\n%s", out, want)
	}
	if _, _, err := weftCmd(t, "x", "workload", "group", "create", "--name", "a", "--port", "http=0", "-o", "yaml"); err == nil ||
		!strings.Contains(err.Error(), `--port "http=0"`) {
		t.Errorf("bad port: %v", err)
	}
}

// TestOnboardVM creates a group and a host's files through the real CLI
// and a real server, then runs weft-proxy's sidecar from those files: it
// gets its certificate with the token, auto-registers a WorkloadEntry, and
// the entry goes away after the proxy stops.
func TestOnboardVM(t *testing.T) {
	kc, xdsAddr := startServer(t)
	out, _, err := weftCmd(t, kc, "workload", "group", "create", "--name", "ratings", "-n", "default",
		"--labels", "app=ratings", "--service-account", "ratings", "--port", "http=9080")
	if err != nil || out != "workloadgroup.networking.istio.io/ratings created\n" {
		t.Fatalf("group create: %q %v", out, err)
	}
	if out, _, err = weftCmd(t, kc, "workload", "group", "create", "--name", "ratings",
		"--labels", "app=ratings", "--service-account", "ratings", "--port", "http=9080"); err != nil || !strings.HasSuffix(out, " unchanged\n") {
		t.Fatalf("group create again: %q %v", out, err)
	}

	if _, _, err := weftCmd(t, kc, "workload", "entry", "configure", "--group", "nope", "-o", t.TempDir()); err == nil ||
		!strings.Contains(err.Error(), "WorkloadGroup default/nope does not exist") {
		t.Fatalf("configure for a missing group: %v", err)
	}

	dir := filepath.Join(t.TempDir(), "vm")
	_, stderr, err := weftCmd(t, kc, "workload", "entry", "configure", "--group", "ratings", "-o", dir,
		"--ttl", "1h", "--discovery-address", xdsAddr, "--ip", "127.0.0.1")
	if err != nil {
		t.Fatalf("entry configure: %v\n%s", err, stderr)
	}
	read := func(name string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %o, want %o", name, st.Mode().Perm(), mode)
		}
		b, _ := os.ReadFile(p)
		return string(b)
	}
	token := strings.TrimSpace(read(onboard.TokenFile, 0o600))
	if !strings.HasPrefix(token, "wbt_") {
		t.Errorf("bootstrap-token %q does not start with wbt_", token)
	}
	blk, _ := pem.Decode([]byte(read(onboard.RootCertFile, 0o644)))
	if blk == nil {
		t.Fatal("root-cert.pem holds no PEM block")
	}
	if cert, err := x509.ParseCertificate(blk.Bytes); err != nil || !cert.IsCA {
		t.Errorf("root-cert.pem: %v (CA %v)", err, err == nil && cert.IsCA)
	}
	env := read(onboard.EnvFile, 0o644)
	for _, want := range []string{"WEFT_DISCOVERY_ADDRESS=" + xdsAddr + "\n", "WEFT_NAMESPACE=default\n", "WEFT_WORKLOAD_GROUP=ratings\n",
		"WEFT_SERVICE_ACCOUNT=ratings\n", "WEFT_LABELS=app=ratings\n", "WEFT_INSTANCE_IP=127.0.0.1\n", "WEFT_TRUST_DOMAIN=cluster.local\n"} {
		if !strings.Contains(env, want) {
			t.Errorf("cluster.env lacks %q:\n%s", want, env)
		}
	}
	unit := read(onboard.UnitFile, 0o644)
	for _, want := range []string{"User=weft-proxy\n", "EnvironmentFile=/etc/weft/cluster.env\n", "Restart=always\n",
		"ExecStartPre=+/usr/local/bin/weft-proxy iptables --proxy-uid weft-proxy --owner %H ",
		"ExecStopPost=+/usr/local/bin/weft-proxy iptables --cleanup --owner %H\n",
		"--ca-root-file /etc/weft/root-cert.pem --cert-dir /var/lib/weft-proxy"} {
		if !strings.Contains(unit, want) {
			t.Errorf("weft-proxy.service lacks %q:\n%s", want, unit)
		}
	}
	if strings.Contains(unit, token) {
		t.Error("the unit holds the bootstrap token")
	}
	read(onboard.MeshFile, 0o644)
	if hosts := read(onboard.HostsFile, 0o644); !strings.Contains(hosts, "is an IP address") {
		t.Errorf("hosts for an IP discovery address:\n%s", hosts)
	}

	// weft-proxy on the "VM": the environment weft-proxy.service gives it.
	vars := map[string]string{"WEFT_WORKLOAD_NAME": "vm1"}
	for _, line := range strings.Split(env, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			vars[k] = v
		}
	}
	var b bootstrap.Config
	if err := b.FromEnv(func(k string) string { return vars[k] }); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	proxyDone := make(chan error, 1)
	go func() {
		proxyDone <- sidecar.Run(ctx, sidecar.Config{Bootstrap: b, AdminAddr: "127.0.0.1:0", StatsAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0",
			DrainDuration: 10 * time.Millisecond,
			Identity:      sidecar.Identity{RootFile: filepath.Join(dir, onboard.RootCertFile), BootstrapToken: token, CertDir: t.TempDir()}}, quietLog())
	}()
	entry := workload.EntryName("ratings", "127.0.0.1")
	waitFor(t, 20*time.Second, proxyDone, func() bool {
		_, _, err := weftCmd(t, kc, "get", "workloadentries", entry, "-o", "json")
		return err == nil
	}, "auto-registered WorkloadEntry "+entry)
	out, _, _ = weftCmd(t, kc, "get", "workloadentries", entry, "-o", "yaml")
	for _, want := range []string{"address: 127.0.0.1", "serviceAccount: ratings", "app: ratings", "istio.io/autoRegistrationGroup: ratings"} {
		if !strings.Contains(out, want) {
			t.Errorf("WorkloadEntry lacks %q:\n%s", want, out)
		}
	}
	stop()
	if err := <-proxyDone; err != nil {
		t.Fatalf("sidecar: %v", err)
	}
	waitFor(t, 30*time.Second, nil, func() bool {
		_, _, err := weftCmd(t, kc, "get", "workloadentries", entry)
		return err != nil && strings.Contains(err.Error(), "not found")
	}, "WorkloadEntry removed after the proxy stopped")
}

// waitFor polls cond until it holds, failing after d or when failed
// delivers (a component that stopped early).
func waitFor(t *testing.T, d time.Duration, failed <-chan error, cond func() bool, what string) {
	t.Helper()
	deadline := time.After(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case err := <-failed:
			t.Fatalf("waiting for %s: stopped: %v", what, err)
		case <-deadline:
			t.Fatalf("no %s within %s", what, d)
		case <-tick.C:
		}
	}
}
