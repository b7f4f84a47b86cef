package capture

import (
	"fmt"
	"os"
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
	hosts := map[string]string{"cp": "10.79.0.1", "a": "10.79.0.2", "b": "10.79.0.3", "d": "10.79.0.4"}
	ns := bridgeNet(t, "weft-mtls", hosts)
	data, weft := controlPlane(t, ns["cp"], "--tls-san", hosts["cp"], "--xds-listen", "0.0.0.0:15012", "--xds-plaintext-listen", "")
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
