package capture

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/testutil/fakeconsul"
	"golang.org/x/sys/unix"
)

// TestMeshDNSByName: as TestMeshThroughTwoSidecars, but host A captures
// DNS too (--capture-dns) and its app calls the ServiceEntry host by NAME.
// A's resolv.conf names a resolver that does not exist; the capture rules
// send the app's query to A's sidecar on 15053, which answers reviews.mesh
// with the VIP from its xDS config, and the request goes through both
// sidecars. The control plane also reads a (fake) Consul catalog: the
// Consul service "ratings" gets an auto-allocated VIP, so A's app resolves
// ratings.service.consul through its sidecar and reaches the instance.
func TestMeshDNSByName(t *testing.T) {
	requireNetns(t)
	buildMesh(t)
	hosts := map[string]string{"cp": "10.81.0.1", "a": "10.81.0.2", "b": "10.81.0.3"}
	ns := bridgeNet(t, "weft-dns", hosts)
	// `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over
	// /etc/resolv.conf: A's resolver is the control plane host, where no
	// DNS server runs. Only the capture makes names resolve.
	etc := filepath.Join("/etc/netns", ns["a"])
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"),
		[]byte("nameserver "+hosts["cp"]+"\nsearch corp.example\noptions timeout:1 attempts:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A Consul agent on the control plane host's loopback: its catalog has
	// ratings on B, port 9081 (no address: the control plane allocates one).
	consul := fakeconsul.New()
	t.Cleanup(consul.Close)
	consul.Stop()
	inNetns(t, ns["cp"], func() error { return consul.Start() })
	consul.Register(fakeconsul.Instance{Node: "b", NodeAddress: hosts["b"], Service: "ratings", Port: 9081})

	_, weftCLI := controlPlane(t, ns["cp"], "--xds-listen", "127.0.0.1:15012", "--xds-plaintext-listen", hosts["cp"]+":15010",
		"--registry", "consul="+consul.Addr())
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
  endpoints: [{address: 10.81.0.3, labels: {app: reviews, version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9082, name: http, protocol: HTTP}]
  endpoints: [{address: 10.81.0.3, labels: {app: details}}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}

	bg(t, "app-b", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9080", "-name", "reviews-v1")
	bg(t, "ratings-b", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9081", "-name", "ratings-consul")
	bg(t, "details-b", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9082", "-name", "details")
	for _, h := range []string{"a", "b"} {
		t.Cleanup(func() { _, _ = in(ns[h], proxyBin, "iptables", "--cleanup", "--owner", "host-"+h) })
	}
	startSidecars(t, ns, hosts, map[string][]string{"a": {"--capture-dns"}})

	// The app on A (an ordinary user) calls the service by name.
	out := getAll(t, "requests by name through both sidecars", ns["a"], "http://reviews.mesh:9080/", "reviews-v1", 20)
	t.Logf("app on A, 20 requests to http://reviews.mesh:9080/:\n%s", out)

	// A plain short name, as on a Kubernetes node: "details" is
	// details.<the proxy's namespace>.svc.cluster.local (auto-allocated VIP).
	getAll(t, "requests by short name", ns["a"], "http://details:9082/", "details", 5)

	// The name came from A's DNS proxy, and both sidecars carried the
	// requests.
	metric := func(h, prefix string, contains ...string) string {
		t.Helper()
		m, err := in(ns[h], appBin, "fetch", "-url", "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			t.Fatalf("stats on %s: %v", h, err)
		}
		for _, line := range strings.Split(m, "\n") {
			ok := strings.HasPrefix(line, prefix)
			for _, c := range contains {
				ok = ok && strings.Contains(line, c)
			}
			if ok {
				return line
			}
		}
		return ""
	}
	if line := metric("a", "dns_table_answers_total "); line == "" || strings.HasSuffix(line, " 0") {
		t.Fatalf("sidecar on A answered no DNS query from its table: %q", line)
	} else {
		t.Logf("a: %s", line)
	}
	for h, reporter := range map[string]string{"a": `reporter="source"`, "b": `reporter="destination"`} {
		line := metric(h, "istio_requests_total{", reporter, `response_code="200"`)
		if line == "" {
			t.Fatalf("sidecar on %s has no istio_requests_total with %s and 200: %q", h, reporter, line)
		}
		t.Logf("%s: %s", h, line)
	}

	// The Consul name: answered by A's DNS proxy with a VIP from
	// 240.240.0.0/16, not forwarded (A's resolver does not exist).
	getAll(t, "ratings.service.consul by name through A's sidecar", ns["a"], "http://ratings.service.consul:9081/", "ratings-consul", 10)
	if out, err := in(ns["a"], "getent", "ahostsv4", "ratings.service.consul"); err != nil || !strings.HasPrefix(out, "240.240.") {
		t.Fatalf("ratings.service.consul resolves to %q (%v), want a VIP in 240.240.0.0/16", out, err)
	} else {
		t.Logf("ratings.service.consul: %s", strings.Fields(out)[0])
	}

	// Without the sidecar's answer the name does not resolve: B has no
	// DNS capture and no resolver, so the same call by name fails there.
	if out, err := asApp(ns["b"], "fetch", "-url", "http://reviews.mesh:9080/"); err == nil {
		t.Fatalf("B resolved reviews.mesh without DNS capture: %s", out)
	}
}

// inNetns runs f on a thread that has entered network namespace ns (as `ip
// netns exec` does), so that sockets f creates live there, and returns the
// thread to the test's namespace.
func inNetns(t *testing.T, ns string, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine
			// rather than serve others from the wrong namespace.
			errc <- fmt.Errorf("leaving %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
