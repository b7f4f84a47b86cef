package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	meshOnce        sync.Once
	weftBin, appBin string
	meshBuildErr    error
)

// buildMesh builds the weft server and the sample app (once).
func buildMesh(t *testing.T) {
	t.Helper()
	meshOnce.Do(func() {
		dir := filepath.Dir(proxyBin)
		weftBin, appBin = filepath.Join(dir, "weft"), filepath.Join(dir, "app")
		for bin, pkg := range map[string]string{weftBin: "cmd/weft", appBin: "test/e2e/capture/app"} {
			out, err := exec.Command("go", "build", "-o", bin, "github.com/weftmesh/weft/"+pkg).CombinedOutput()
			if err != nil {
				meshBuildErr = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if meshBuildErr != nil {
		t.Fatal(meshBuildErr)
	}
}

// bg runs a command in a namespace until the test ends, logging to a file
// that is printed if the test fails.
func bg(t *testing.T, name, ns string, args ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s log:\n%s", name, b)
		}
	})
}

// in runs a command in a namespace, bounded, returning its output.
func in(ns string, args ...string) (string, error) {
	return inFor(ns, 20*time.Second, args...)
}

// inFor is in with a longer bound.
func inFor(ns string, d time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

// eventually retries f (bounded) until it succeeds.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond) // polling processes in other namespaces
	}
}

const proxyUID = "1337"

// asApp runs the app binary in ns as the unprivileged app user (so that
// its traffic is captured).
func asApp(ns string, args ...string) (string, error) {
	return in(ns, append([]string{"setpriv", "--reuid=" + appUID, "--regid=" + appUID, "--clear-groups", appBin}, args...)...)
}

// getAll has the app on ns make n requests to url (retrying, bounded, until
// backend answered all of them) and returns the app's summary.
func getAll(t *testing.T, what, ns, url, backend string, n int) string {
	t.Helper()
	var out string
	eventually(t, what, func() error {
		var err error
		out, err = asApp(ns, "get", "-url", url, "-n", strconv.Itoa(n))
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if !strings.Contains(out, fmt.Sprintf("%s %d", backend, n)) || !strings.Contains(out, "failed 0") {
			return fmt.Errorf("answers: %s", out)
		}
		return nil
	})
	return out
}

// startSidecars installs capture rules on hosts a and b (with the extra
// iptables flags given for a host), starts their sidecars as
// productpage-1 and reviews-1 (reviews v1) against the control plane's
// plaintext xDS port 15010, and waits until both are ready.
func startSidecars(t *testing.T, ns, hosts map[string]string, iptablesFlags map[string][]string) {
	t.Helper()
	for _, h := range []string{"a", "b"} {
		args := append([]string{proxyBin, "iptables", "-u", proxyUID, "--owner", "host-" + h}, iptablesFlags[h]...)
		if out, err := in(ns[h], args...); err != nil {
			t.Fatalf("iptables on %s: %v\n%s", h, err, out)
		}
		bg(t, "sidecar-"+h, ns[h], "setpriv", "--reuid="+proxyUID, "--regid="+proxyUID, "--clear-groups",
			proxyBin, "sidecar", "--ip", hosts[h], "--name", map[string]string{"a": "productpage-1", "b": "reviews-1"}[h],
			"--labels", map[string]string{"a": "app=productpage", "b": "app=reviews,version=v1"}[h],
			"--discovery-address", hosts["cp"]+":15010")
	}
	waitSidecarsReady(t, ns, "a", "b")
}

// waitSidecarsReady waits until the sidecars on hosts report ready.
func waitSidecarsReady(t *testing.T, ns map[string]string, hosts ...string) {
	t.Helper()
	for _, h := range hosts {
		eventually(t, "sidecar on "+h+" ready", func() error {
			_, err := in(ns[h], appBin, "fetch", "-url", "http://127.0.0.1:15021/healthz/ready")
			return err
		})
	}
}

// TestMeshThroughTwoSidecars: a control plane and two "VM" hosts in
// network namespaces on a bridge. The app on host A calls the service's
// VIP; iptables sends it through A's sidecar (15001), which routes it to
// host B, where iptables sends it through B's sidecar (15006) to the app.
// Both sidecars report the request in their metrics.
func TestMeshThroughTwoSidecars(t *testing.T) {
	requireNetns(t)
	buildMesh(t)
	hosts := map[string]string{"cp": "10.78.0.1", "a": "10.78.0.2", "b": "10.78.0.3"}
	ns := bridgeNet(t, "weft-mesh", hosts)
	_, weftCLI := controlPlane(t, ns["cp"], "--xds-listen", "127.0.0.1:15012", "--xds-plaintext-listen", hosts["cp"]+":15010")
	weft := func(stdin string, args ...string) error { _, err := weftCLI(stdin, args...); return err }
	if err := weft(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.mesh]
  addresses: [240.240.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.78.0.3, labels: {app: reviews, version: v1}}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}

	// Host B: the app, capture rules, then the sidecar as the exempt UID.
	bg(t, "app-b", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9080", "-name", "reviews-v1")
	startSidecars(t, ns, hosts, nil)

	// The app on A (an ordinary user) calls the VIP; capture does the rest.
	out := getAll(t, "requests through both sidecars", ns["a"], "http://240.240.0.10:9080/", "reviews-v1", 50)
	t.Logf("app on A, 50 requests to the VIP:\n%s", out)

	// Both sidecars saw the requests: A as the source, B as the destination.
	for h, reporter := range map[string]string{"a": `reporter="source"`, "b": `reporter="destination"`} {
		metrics, err := in(ns[h], appBin, "fetch", "-url", "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			t.Fatalf("stats on %s: %v", h, err)
		}
		found := false
		for _, line := range strings.Split(metrics, "\n") {
			if strings.HasPrefix(line, "istio_requests_total{") && strings.Contains(line, reporter) && strings.Contains(line, `response_code="200"`) {
				found = true
				t.Logf("%s: %s", h, line)
			}
		}
		if !found {
			t.Fatalf("sidecar on %s has no istio_requests_total with %s", h, reporter)
		}
	}

	// Removing the capture rules restores direct traffic (and the rules'
	// exact removal is proven by TestRedirectCaptureWithCLI).
	for _, h := range []string{"a", "b"} {
		if out, err := in(ns[h], proxyBin, "iptables", "--cleanup", "--owner", "host-"+h); err != nil {
			t.Fatalf("cleanup on %s: %v\n%s", h, err, out)
		}
	}
	if out, err := in(ns["a"], appBin, "fetch", "-url", "http://10.78.0.3:9080/"); err != nil || out != "reviews-v1" {
		t.Fatalf("direct call after cleanup: %q, %v", out, err)
	}
}

// bridgeNet creates a hub namespace holding a bridge and one namespace per
// host attached to it (lo up, the host's address in its /24, a route to
// the VIP range 240.240.0.0/16 so connects reach the capture rules). It
// returns the namespace name of each host; everything is removed when the
// test ends.
func bridgeNet(t *testing.T, prefix string, hosts map[string]string) map[string]string {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	hub := prefix + "-" + id + "-hub"
	run(t, "ip", "netns", "add", hub)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", hub).Run() })
	run(t, "ip", "-n", hub, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", hub, "link", "set", "br0", "up")
	ns := map[string]string{}
	names := make([]string, 0, len(hosts))
	for h := range hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, h := range names {
		n := prefix + "-" + id + "-" + h
		ns[h] = n
		run(t, "ip", "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		run(t, "ip", "-n", n, "link", "set", "lo", "up")
		v, p := "v"+id+h, "p"+id+h
		run(t, "ip", "link", "add", v, "netns", n, "type", "veth", "peer", "name", p, "netns", hub)
		run(t, "ip", "-n", hub, "link", "set", p, "master", "br0")
		run(t, "ip", "-n", hub, "link", "set", p, "up")
		run(t, "ip", "-n", n, "addr", "add", hosts[h]+"/24", "dev", v)
		run(t, "ip", "-n", n, "link", "set", v, "up")
		run(t, "ip", "-n", n, "route", "add", "240.240.0.0/16", "dev", v)
	}
	return ns
}

// controlPlane runs `weft server` in ns with the given listen flags and
// returns its data dir and a function running the weft CLI against it
// (stdout returned; stderr in the error).
func controlPlane(t *testing.T, ns string, flags ...string) (string, func(stdin string, args ...string) (string, error)) {
	t.Helper()
	data := t.TempDir()
	bg(t, "weft-server", ns, append([]string{weftBin, "server", "--data-dir", data, "--listen", "127.0.0.1:15443",
		"--monitoring-listen", "", "--debounce", "20ms"}, flags...)...)
	kc := filepath.Join(data, "kubeconfig")
	weft := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, weftBin, "--kubeconfig", kc}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("weft %v: %v: %s", args, err, stderr.String())
		}
		return string(out), nil
	}
	eventually(t, "weft server answering", func() error { _, err := weft("", "get", "ns"); return err })
	return data, weft
}
