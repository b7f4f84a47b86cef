// Package sidecar runs the real weft and weft-proxy binaries: an app calls
// its sidecar (explicit mode, no iptables) and the sidecar routes to
// backends by the VirtualService and DestinationRule in the control plane.
package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil/freeport"
)

var weftBin, proxyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-sidecar-e2e")
	if err == nil {
		err = os.Chmod(dir, 0o755) // the sidecar may run as nobody
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	weftBin, proxyBin = filepath.Join(dir, "weft"), filepath.Join(dir, "weft-proxy")
	for bin, pkg := range map[string]string{weftBin: "./cmd/weft", proxyBin: "./cmd/weft-proxy"} {
		cmd := exec.Command("go", "build", "-o", bin, "github.com/weftmesh/weft/"+strings.TrimPrefix(pkg, "./"))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	return freeport.Get(t)
}

// process runs a binary for the test's lifetime, logging to a file.
func process(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), filepath.Base(name)+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("%s log:\n%s", filepath.Base(name), b)
		}
	})
	return cmd
}

// waitHTTP polls url until it answers 200 (a process we do not control).
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within 30s (last: %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backend is an HTTP app that says who it is; fail makes it answer 503 to
// the first n requests.
func backend(t *testing.T, id string, fail *atomic.Int64) int {
	t.Helper()
	return serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail != nil && fail.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, id)
	})})
}

func TestExplicitSidecarRoutes(t *testing.T) {
	dataDir := t.TempDir()
	apiPort, xdsPort := freePort(t), freePort(t)
	serverArgs := []string{"server", "--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--monitoring-listen", "", "--xds-listen", "127.0.0.1:0", "--xds-plaintext-listen", fmt.Sprintf("127.0.0.1:%d", xdsPort),
		"--debounce", "20ms"}
	server := process(t, weftBin, serverArgs...)
	kc := filepath.Join(dataDir, "kubeconfig")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(kc); err == nil {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", apiPort)); err == nil {
				c.Close()
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("weft server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var flaky atomic.Int64
	v1, v2 := backend(t, "v1", nil), backend(t, "v2", &flaky)
	svcPort := freePort(t)
	config := func(w1, w2 int) string {
		return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: %d}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: %d}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo.mesh
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  http:
  - match: [{uri: {prefix: /broken}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: echo.mesh, subset: v1}}]
  - route:
    - {destination: {host: echo.mesh, subset: v1}, weight: %d}
    - {destination: {host: echo.mesh, subset: v2}, weight: %d}
    retries: {attempts: 3, retryOn: 5xx}
`, svcPort, v1, v2, w1, w2)
	}
	apply := func(doc string) {
		t.Helper()
		cmd := exec.Command(weftBin, "--kubeconfig", kc, "apply", "-f", "-")
		cmd.Stdin = strings.NewReader(doc)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("weft apply: %v\n%s", err, out)
		}
	}
	apply(config(80, 20))

	admin, stats, ready := freePort(t), freePort(t), freePort(t)
	// Explicit mode needs no privileges: when the test runs as root, the
	// sidecar runs as nobody.
	bin, pre := asNobody()
	proxyArgs := append(pre, proxyBin, "sidecar", "--explicit", "--ip", "127.0.0.10", "--name", "client", "--namespace", "default",
		"--labels", "app=client,version=v1,istio-locality=us-east.zone-a", "--discovery-address", fmt.Sprintf("127.0.0.1:%d", xdsPort),
		"--admin-port", fmt.Sprint(admin), "--stats-port", fmt.Sprint(stats), "--ready-port", fmt.Sprint(ready), "--log-level", "debug",
		"--access-log", "/dev/stdout")
	if bin == "" {
		bin, proxyArgs = proxyArgs[0], proxyArgs[1:]
	}
	proxyCmd := process(t, bin, proxyArgs...)
	waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", ready))

	client := &http.Client{Timeout: 10 * time.Second}
	call := func(path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", svcPort, path), nil)
		req.Host = "echo.mesh"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s through the sidecar: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	call2 := func(port int, host, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s%s through the sidecar: %v", host, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	share := func(n int) float64 {
		v1n := 0
		for i := 0; i < n; i++ {
			code, body := call("/")
			if code != 200 {
				t.Fatalf("request %d: %d %s", i, code, body)
			}
			if body == "v1" {
				v1n++
			}
		}
		return float64(v1n) / float64(n)
	}
	// The listener may come up a moment before routes settle: wait for a 200.
	deadline = time.Now().Add(10 * time.Second)
	for {
		if code, _ := call("/"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never routed a request")
		}
	}
	got := share(1000)
	t.Logf("80/20: v1 answered %.1f%% of 1000 requests", got*100)
	if got < 0.75 || got > 0.85 {
		t.Fatalf("v1 share %.3f, want 0.80 ± 0.05", got)
	}

	// Fault injection on /broken.
	if code, _ := call("/broken"); code != 418 {
		t.Fatalf("fault abort: got %d, want 418", code)
	}
	// The access log (the sidecar's stdout, written asynchronously) has it.
	aborted := regexp.MustCompile(`\] "GET /broken HTTP/1\.1" 418 FI 0 18 \d+ - "[^"]*" "Go-http-client/1\.1" "[0-9a-f-]{36}" "echo\.mesh" "-"\n`)
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, _ := os.ReadFile(proxyCmd.Stdout.(*os.File).Name())
		if aborted.Match(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the access log has no line for the aborted request; want %s", aborted)
		}
		time.Sleep(50 * time.Millisecond) // the sidecar is a process we poll
	}

	// Retries recover a flaky backend: all traffic to v2, which fails its
	// next two requests.
	apply(config(0, 100))
	deadline = time.Now().Add(10 * time.Second)
	for streak := 0; streak < 50; {
		// 50 v2 answers in a row: the 0/100 weights are in force (under
		// 80/20 that happens with probability 0.2^50).
		if _, body := call("/"); body == "v2" {
			streak++
		} else {
			streak = 0
		}
		if time.Now().After(deadline) {
			t.Fatal("the weight change never reached the sidecar")
		}
	}
	flaky.Store(2)
	if code, body := call("/"); code != 200 || body != "v2" {
		t.Fatalf("with retries the flaky backend should recover: %d %s", code, body)
	}
	if flaky.Load() >= 0 {
		t.Fatalf("the backend was not retried (failures left: %d)", flaky.Load())
	}

	// Istio's metrics and Envoy's config dump shape.
	_, metrics := get(t, fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", stats))
	if !strings.Contains(metrics, `istio_requests_total{`) || !strings.Contains(metrics, `response_code="418"`) {
		t.Fatalf("stats lack istio_requests_total with the 418:\n%.2000s", metrics)
	}
	_, dump := get(t, fmt.Sprintf("http://127.0.0.1:%d/config_dump", admin))
	for _, want := range []string{"type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "outbound|" + fmt.Sprint(svcPort) + "|v2|echo.mesh"} {
		if !strings.Contains(dump, want) {
			t.Fatalf("config_dump lacks %q:\n%.1500s", want, dump)
		}
	}

	checkProxyConfig(t, kc, fmt.Sprintf("http://127.0.0.1:%d", admin), svcPort, v1, v2)

	// gRPC (unary, over h2c between app, sidecar and backend) and raw TCP
	// through the same sidecar.
	grpcPort, tcpPort, wsPort := startGRPCBackend(t), startEchoTCP(t), startUpgradeBackend(t)
	grpcSvc, tcpSvc, wsSvc := freePort(t), freePort(t), freePort(t)
	apply(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: greeter}
spec:
  hosts: [greeter.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, ports: {grpc: %d}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.mesh]
  addresses: [240.0.0.7]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1, ports: {tcp: %d}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: chat}
spec:
  hosts: [chat.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: %d}}]
`, grpcSvc, grpcPort, tcpSvc, tcpPort, wsSvc, wsPort))
	waitPort(t, grpcSvc)
	waitPort(t, tcpSvc)
	checkGRPC(t, grpcSvc, "greeter.mesh")
	checkTCP(t, tcpSvc)
	waitPort(t, wsSvc)
	checkUpgrade(t, wsSvc, "chat.mesh")

	resilPort, ejected := checkResilience(t, apply, call2)
	checkLocalityFailover(t, apply, call2)
	checkWarmup(t, apply, call2)
	// The sidecar's live view: the ejected endpoint fails its outlier check.
	out, err := exec.Command(weftBin, "--kubeconfig", kc, "proxy-config", "endpoint", "--admin", fmt.Sprintf("http://127.0.0.1:%d", admin),
		"--port", fmt.Sprint(ejected)).CombinedOutput()
	if err != nil || !regexp.MustCompile(fmt.Sprintf(`(?m)^127\.0\.0\.1:%d +HEALTHY +FAILED +outbound\|%d\|\|resil\.mesh$`, ejected, resilPort)).Match(out) {
		t.Fatalf("proxy-config endpoint should show the ejected endpoint FAILED: %v\n%s", err, out)
	}

	// A NACK: a 5 KiB direct response is over the proxy's 4 KiB limit
	// (Envoy's too). weft-proxy rejects the route table, keeps routing with
	// the last good one, and proxy-status shows the rejection.
	big := strings.Repeat("x", 5000)
	apply(strings.Replace(config(0, 100), "  http:\n", "  http:\n  - match: [{uri: {exact: /big}}]\n    directResponse: {status: 200, body: {string: \""+big+"\"}}\n", 1))
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(weftBin, "--kubeconfig", kc, "proxy-status").CombinedOutput()
		if err != nil {
			t.Fatalf("weft proxy-status: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "NACKED") && strings.Contains(string(out), "direct") {
			t.Logf("proxy-status after the rejected update:\n%s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy-status never showed the NACK:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond) // polling another process's view
	}
	for i := 0; i < 20; i++ {
		if code, body := call("/"); code != 200 || body != "v2" {
			t.Fatalf("after the NACK, traffic changed: %d %q", code, body)
		}
	}
	if _, body := call("/big"); body != "v2" {
		t.Fatalf("/big should still follow the last good routes (v2), got %.40q", body)
	}
	apply(config(0, 100)) // back to a config the proxy accepts

	// The control plane goes away under steady load: the sidecar keeps
	// serving its last good config, and no request fails.
	stop := make(chan struct{})
	failures := make(chan string, 1000)
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", svcPort), nil)
			req.Host = "echo.mesh"
			resp, err := client.Do(req)
			sent.Add(1)
			if err != nil {
				failures <- err.Error()
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				failures <- resp.Status
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // load before the kill
	_ = server.Process.Kill()
	_, _ = server.Process.Wait()
	time.Sleep(time.Second) // load while discovery is gone
	close(stop)
	<-done
	close(failures)
	var msgs []string
	for f := range failures {
		msgs = append(msgs, f)
	}
	t.Logf("%d requests while the control plane was killed; %d failed", sent.Load(), len(msgs))
	if len(msgs) > 0 || sent.Load() < 50 {
		t.Fatalf("%d of %d requests failed with the control plane gone: %v", len(msgs), sent.Load(), msgs)
	}
	if code, _ := call("/"); code != 200 {
		t.Fatalf("after the control plane died: %d", code)
	}

	// The control plane comes back on its data: the sidecar reconnects and
	// converges on a change made after the restart, over a connection it
	// kept open the whole time.
	process(t, weftBin, serverArgs...)
	var dials atomic.Int64
	keep := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}}
	keepCall := func() string {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", svcPort), nil)
		req.Host = "echo.mesh"
		resp, err := keep.Do(req)
		if err != nil {
			t.Fatalf("request on the kept connection: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	keepCall()
	deadline = time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(kc); err == nil {
			cmd := exec.Command(weftBin, "--kubeconfig", kc, "apply", "-f", "-")
			cmd.Stdin = strings.NewReader(config(100, 0))
			if out, err := cmd.CombinedOutput(); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("weft apply after the restart: %v\n%s", err, out)
			}
		}
		time.Sleep(100 * time.Millisecond) // the restarted server is a process we wait for
	}
	deadline = time.Now().Add(30 * time.Second)
	for streak := 0; streak < 50; {
		if keepCall() == "v1" {
			streak++
		} else {
			streak = 0
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar did not converge on the change made after the control plane restarted")
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("the app's connection to its sidecar was re-dialled %d times across the restart", n-1)
	}
}

func waitPort(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar never listened on %d", port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// asNobody returns the command prefix that runs a process as nobody when
// the test runs as root (and setpriv exists), else nothing.
func asNobody() (string, []string) {
	if os.Geteuid() != 0 {
		return "", nil
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return "", nil
	}
	return setpriv, []string{"--reuid=65534", "--regid=65534", "--clear-groups"}
}

// checkProxyConfig reads the sidecar's config with weft proxy-config, from
// discovery (by the sidecar's name.namespace) and from the sidecar's admin
// endpoint, and finds the mesh's objects in istioctl's columns.
func checkProxyConfig(t *testing.T, kc, adminURL string, svcPort, v1, v2 int) {
	t.Helper()
	pc := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(weftBin, append([]string{"--kubeconfig", kc, "proxy-config"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("weft proxy-config %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	want := func(out string, res ...string) {
		t.Helper()
		for _, re := range res {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Fatalf("want a line matching %s in:\n%s", re, out)
			}
		}
	}
	port := fmt.Sprint(svcPort)
	for _, src := range [][]string{{"client.default"}, {"--admin", adminURL}} {
		want(pc(append([]string{"cluster"}, src...)...),
			`(?m)^SERVICE FQDN +PORT +SUBSET +DIRECTION +TYPE +DESTINATION RULE$`,
			`(?m)^echo\.mesh +`+port+` +v2 +outbound +EDS +echo\.default$`,
			`(?m)^echo\.mesh +`+port+` +- +outbound +EDS +echo\.default$`)
		want(pc(append([]string{"cluster", "--subset", "v1", "-o", "json"}, src...)...),
			`"name": "outbound\|`+port+`\|v1\|echo\.mesh"`)
		want(pc(append([]string{"route"}, src...)...),
			`(?m)^NAME +VHOST NAME +DOMAINS +MATCH +VIRTUAL SERVICE$`,
			`(?m) /broken\* +echo\.default$`)
		want(pc(append([]string{"listener", "--port", port}, src...)...),
			`(?m)^ADDRESSES +PORT +MATCH +DESTINATION$`,
			`(?m)^127\.0\.0\.1 +`+port+` +ALL +Route: `)
	}
	t.Logf("weft proxy-config all --admin %s:\n%s", adminURL, pc("all", "--admin", adminURL))
	// Endpoints: as discovery sent them, then as the sidecar sees them.
	want(pc("endpoint", "client.default", "--port", fmt.Sprint(v2)),
		`(?m)^127\.0\.0\.1:`+fmt.Sprint(v2)+` +HEALTHY +- +outbound\|`+port+`\|v2\|echo\.mesh$`)
	out := pc("endpoint", "--admin", adminURL, "--cluster", "outbound|"+port+"|v1|echo.mesh")
	want(out, `(?m)^127\.0\.0\.1:`+fmt.Sprint(v1)+` +HEALTHY +OK +outbound\|`+port+`\|v1\|echo\.mesh$`)
	if strings.Contains(out, fmt.Sprint(v2)) {
		t.Fatalf("--cluster v1 listed v2's endpoint:\n%s", out)
	}
	// Its bootstrap: the node discovery knows it by, its admin address and
	// the discovery server.
	want(pc("bootstrap", "--admin", adminURL),
		`(?m)^node\.id +sidecar~127\.0\.0\.10~client\.default~default\.svc\.cluster\.local$`,
		`(?m)^admin +`+regexp.QuoteMeta(strings.TrimPrefix(adminURL, "http://"))+`$`,
		`(?m)^static cluster +xds-grpc 127\.0\.0\.1:\d+$`)
	// The sidecar's log level, by Envoy's names.
	want(pc("log", "--admin", adminURL, "--level", "warning"), `weft-proxy: warning`)
	want(pc("log", "--admin", adminURL, "--level", "debug"), `weft-proxy: debug`)
	// Bad input names what to do.
	for args, msg := range map[string]string{
		"log --admin " + adminURL + " --level loud": `invalid level "loud"`,
		"log":                           "give its --admin URL",
		"cluster":                       "name exactly one source",
		"cluster nosuch.default":        `no proxy "nosuch.default" is connected`,
		"cluster client.default -o txt": `--output "txt"`,
	} {
		out, err := exec.Command(weftBin, append([]string{"--kubeconfig", kc, "proxy-config"}, strings.Fields(args)...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), msg) {
			t.Fatalf("weft proxy-config %s: %v, want an error with %q:\n%s", args, err, msg, out)
		}
	}
}
