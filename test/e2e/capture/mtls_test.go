package capture

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMeshMTLS: two VM hosts whose sidecars get workload certificates with
// bootstrap tokens and talk mutual TLS; with a STRICT PeerAuthentication a
// host without a sidecar cannot reach the app, while the meshed app can.
func TestMeshMTLS(t *testing.T) {
	requireNetns(t)
	buildMesh(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	hub := "weft-mtls-" + id + "-hub"
	run(t, "ip", "netns", "add", hub)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", hub).Run() })
	run(t, "ip", "-n", hub, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", hub, "link", "set", "br0", "up")
	hosts := map[string]string{"cp": "10.79.0.1", "a": "10.79.0.2", "b": "10.79.0.3", "d": "10.79.0.4"}
	ns := map[string]string{}
	for _, h := range []string{"cp", "a", "b", "d"} {
		n := "weft-mtls-" + id + "-" + h
		ns[h] = n
		run(t, "ip", "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		run(t, "ip", "-n", n, "link", "set", "lo", "up")
		v, p := "t"+id+h, "g"+id+h
		run(t, "ip", "link", "add", v, "netns", n, "type", "veth", "peer", "name", p, "netns", hub)
		run(t, "ip", "-n", hub, "link", "set", p, "master", "br0")
		run(t, "ip", "-n", hub, "link", "set", p, "up")
		run(t, "ip", "-n", n, "addr", "add", hosts[h]+"/24", "dev", v)
		run(t, "ip", "-n", n, "link", "set", v, "up")
		if h == "a" {
			run(t, "ip", "-n", n, "route", "add", "240.240.0.0/16", "dev", v)
		}
	}
	data := t.TempDir()
	bg(t, "weft-server", ns["cp"], weftBin, "server", "--data-dir", data, "--listen", "127.0.0.1:15443", "--tls-san", hosts["cp"],
		"--monitoring-listen", "", "--xds-listen", "0.0.0.0:15012", "--xds-plaintext-listen", "", "--debounce", "20ms")
	kc := filepath.Join(data, "kubeconfig")
	weft := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns["cp"], weftBin, "--kubeconfig", kc}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("weft %v: %v", args, err)
		}
		return string(out), nil
	}
	eventually(t, "weft server answering", func() error { _, err := weft("", "get", "ns"); return err })
	if _, err := weft(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: productpage}
spec:
  metadata: {labels: {app: productpage}}
  template: {serviceAccount: productpage}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews}
spec:
  metadata: {labels: {app: reviews}}
  template: {serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.mesh]
  addresses: [240.240.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.79.0.3, serviceAccount: reviews, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	bg(t, "app-b", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9080", "-name", "reviews-v1")
	// The hosts get the control plane's CA as onboarding hands it out (the
	// server's data dir is private).
	rootDir := worldDir(t)
	rootCert := filepath.Join(rootDir, "root-cert.pem")
	caPEM, err := os.ReadFile(filepath.Join(data, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootCert, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"a", "b"} {
		group := map[string]string{"a": "productpage", "b": "reviews"}[h]
		tok, err := weft("", "workload", "token", "create", "--group", group, "--ttl", "1h")
		if err != nil {
			t.Fatal(err)
		}
		certDir := worldDir(t)
		if err := os.Chmod(certDir, 0o777); err != nil {
			t.Fatal(err)
		}
		if out, err := in(ns[h], proxyBin, "iptables", "-u", proxyUID, "--owner", "host-"+h); err != nil {
			t.Fatalf("iptables on %s: %v\n%s", h, err, out)
		}
		bg(t, "sidecar-"+h, ns[h], "setpriv", "--reuid="+proxyUID, "--regid="+proxyUID, "--clear-groups",
			proxyBin, "sidecar", "--ip", hosts[h], "--name", group+"-1", "--labels", "app="+group, "--service-account", group,
			"--discovery-address", hosts["cp"]+":15012", "--ca-root-file", rootCert,
			"--bootstrap-token", strings.TrimSpace(tok), "--cert-dir", certDir)
	}
	for _, h := range []string{"a", "b"} {
		eventually(t, "sidecar on "+h+" ready", func() error {
			_, err := in(ns[h], appBin, "fetch", "-url", "http://127.0.0.1:15021/healthz/ready")
			return err
		})
	}
	var out string
	eventually(t, "mTLS requests through both sidecars", func() error {
		var err error
		out, err = in(ns["a"], "setpriv", "--reuid="+appUID, "--regid="+appUID, "--clear-groups",
			appBin, "get", "-url", "http://240.240.0.10:9080/", "-n", "20")
		if err != nil || !strings.Contains(out, "reviews-v1 20") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	t.Logf("meshed app, 20 requests over mTLS:\n%s", out)

	// A host without a sidecar: its plaintext request is refused before
	// the app sees a byte.
	probe, err := in(ns["d"], appBin, "fetch", "-url", "http://10.79.0.3:9080/")
	if err == nil {
		t.Fatalf("a plaintext request from a host without a sidecar got through STRICT mTLS: %q", probe)
	}
	t.Logf("plaintext probe refused: %v %s", err, strings.TrimSpace(probe))
}

// worldDir is a directory the sidecars' unprivileged UID can reach (the
// test's own temp dirs sit under a private parent).
func worldDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "weft-mtls-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
