package capture

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	ipt "github.com/weftmesh/weft/internal/capture"
)

// TestThreeVMs is issue 6's suite: a control-plane host and three "VM"
// hosts on a bridge, each VM with its app and the weft-proxy.service unit
// that `weft workload entry configure` generated, run by the test's unit
// runner (systemd_test.go): ExecStartPre= installs the capture rules (DNS
// included), ExecStart= runs the sidecar, which gets its certificate with
// the generated bootstrap token. VM c captures inbound with TPROXY, so its
// app sees the caller's address. The app on VM a
// calls reviews by plain hostname; the calls cross both sidecars over mTLS
// (STRICT), follow an 80/20 VirtualService across VMs b and c, a plaintext
// probe from a fourth host without a sidecar is refused, and stopping VM a's
// unit (SIGTERM, then ExecStopPost=) restores its ruleset exactly.
func TestThreeVMs(t *testing.T) {
	requireNetns(t)
	buildMesh(t)
	hosts := map[string]string{"cp": "10.81.0.1", "a": "10.81.0.2", "b": "10.81.0.3", "c": "10.81.0.4", "d": "10.81.0.5"}
	ns := bridgeNet(t, "weft-vms", hosts)
	for _, n := range ns {
		// The host's resolver is the control plane, where no DNS server
		// runs: mesh names resolve only through the sidecar's DNS proxy.
		etc := filepath.Join("/etc/netns", n)
		if err := os.MkdirAll(etc, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(etc) })
		if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+hosts["cp"]+"\noptions timeout:1 attempts:2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, weft := controlPlane(t, ns["cp"], "--tls-san", hosts["cp"], "--xds-listen", "0.0.0.0:15012", "--xds-plaintext-listen", "")
	if _, err := weft(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: productpage}
spec: {metadata: {labels: {app: productpage}}, template: {serviceAccount: productpage}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews}
spec: {metadata: {labels: {app: reviews}}, template: {serviceAccount: reviews}}
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
  - {address: 10.81.0.3, serviceAccount: reviews, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
  - {address: 10.81.0.4, serviceAccount: reviews, labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.mesh]          # no address: the control plane allocates one
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.81.0.4, serviceAccount: reviews, labels: {app: reviews, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.mesh
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.mesh]
  http:
  - route:
    - {destination: {host: reviews.mesh, subset: v1}, weight: 80}
    - {destination: {host: reviews.mesh, subset: v2}, weight: 20}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	runnerA := &ipt.ExecRunner{NetNS: ns["a"]}
	before := saved(t, runnerA, false)
	bg(t, "app-b", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9080", "-name", "reviews-v1")
	bg(t, "app-c", ns["c"], appBin, "serve", "-addr", "0.0.0.0:9080", "-name", "reviews-v2")
	group := map[string]string{"a": "productpage", "b": "reviews", "c": "reviews"}
	// VM c captures inbound with TPROXY (its unit grants the proxy
	// CAP_NET_ADMIN): its app sees callers' addresses.
	mode := map[string]string{"a": "REDIRECT", "b": "REDIRECT", "c": "TPROXY"}
	units := map[string]*service{}
	for _, h := range []string{"a", "b", "c"} {
		// The host's files as `weft workload entry configure` writes them,
		// "installed" where the unit expects them: the directory itself is
		// the config dir, the binary is the test's build, the proxy user is
		// proxyUID, and each VM keeps its certificate in its own state
		// directory (they share this machine's /var/lib).
		dir := worldDir(t)
		if _, err := weft("", "workload", "entry", "configure", "--group", group[h], "-o", dir, "--ttl", "1h",
			"--discovery-address", hosts["cp"]+":15012", "--ip", hosts[h],
			"--proxy-path", proxyBin, "--proxy-user", proxyUID, "--config-dir", dir,
			"--state-directory", "weft-e2e-vm-"+h, "--inbound-capture-mode", mode[h]); err != nil {
			t.Fatal(err)
		}
		// install -m 0600 -o weft-proxy bootstrap-token (docs/onboarding-vm.md).
		uid, _ := strconv.Atoi(proxyUID)
		if err := os.Chown(filepath.Join(dir, "bootstrap-token"), uid, uid); err != nil {
			t.Fatal(err)
		}
		units[h] = startUnit(t, filepath.Join(dir, "weft-proxy.service"), ns[h], "vm-"+h)
	}
	for _, h := range []string{"a", "b", "c"} {
		eventually(t, "sidecar on "+h+" ready", func() error {
			_, err := in(ns[h], appBin, "fetch", "-url", "http://127.0.0.1:15021/healthz/ready")
			return err
		})
	}
	var out string
	eventually(t, "calls by hostname through the mesh", func() error {
		var err error
		out, err = in(ns["a"], "setpriv", "--reuid="+appUID, "--regid="+appUID, "--clear-groups",
			appBin, "get", "-url", "http://reviews.mesh:9080/", "-n", "400")
		if err != nil || !strings.Contains(out, "failed 0") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	t.Logf("app on VM a, 400 calls to http://reviews.mesh:9080/:\n%s", out)
	v1 := 0
	for _, line := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(line, "reviews-v1 "); ok {
			v1, _ = strconv.Atoi(n)
		}
	}
	if share := float64(v1) / 400; share < 0.72 || share > 0.88 {
		t.Fatalf("reviews-v1 answered %.1f%% of 400 calls, want 80%% ± 8", share*100)
	}
	// A ServiceEntry host without an address resolves to the VIP the
	// control plane allocated (240.240.0.0/16).
	if out, err := in(ns["a"], "setpriv", "--reuid="+appUID, "--regid="+appUID, "--clear-groups",
		appBin, "get", "-url", "http://ratings.mesh:9080/", "-n", "10"); err != nil || !strings.Contains(out, "reviews-v2 10") {
		t.Fatalf("calls to ratings.mesh (auto-allocated VIP): %v\n%s", err, out)
	}
	// ratings.mesh is VM c only: through both sidecars and mTLS, c's app
	// sees VM a as the caller (TPROXY), not its own sidecar.
	if out, err := in(ns["a"], "setpriv", "--reuid="+appUID, "--regid="+appUID, "--clear-groups",
		appBin, "fetch", "-url", "http://ratings.mesh:9080/peer"); err != nil || strings.TrimSpace(out) != hosts["a"] {
		t.Fatalf("VM c's app saw the call from %q (%v), want VM a's %s (TPROXY keeps the source)", out, err, hosts["a"])
	}
	for _, h := range []string{"a", "b"} {
		metrics, err := in(ns[h], appBin, "fetch", "-url", "http://127.0.0.1:15020/stats/prometheus")
		if err != nil || !strings.Contains(metrics, "istio_requests_total{") {
			t.Fatalf("sidecar on %s shows no requests: %v", h, err)
		}
	}
	if probe, err := in(ns["d"], appBin, "fetch", "-url", "http://10.81.0.3:9080/"); err == nil {
		t.Fatalf("a plaintext request from a host without a sidecar reached VM b: %q", probe)
	}
	// systemctl stop: SIGTERM to the proxy, then ExecStopPost= removes
	// exactly the rules ExecStartPre= installed.
	units["a"].stop()
	if after := saved(t, runnerA, false); after != before {
		t.Fatalf("VM a's rules after the unit stopped differ from before:\n--- before\n%s\n--- after\n%s", before, after)
	}
}
