package sidecar

import (
	"bufio"
	"errors"
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
)

// TestExplicitInboundMTLS: two explicit-mode sidecars on one host, each with
// its own loopback address. App A calls 127.0.0.1:<service port>; sidecar A
// originates mesh mTLS to the endpoint EDS gives it, which is sidecar B's
// inbound port (weft-proxy --inbound-ports, advertised by auto-registration);
// sidecar B terminates mTLS under STRICT PeerAuthentication and forwards to
// app B on 127.0.0.1:<app port>. Both sidecars count the request (reporter
// source and destination), and a plaintext connection straight to B's
// inbound port is refused.
func TestExplicitInboundMTLS(t *testing.T) {
	dataDir := t.TempDir()
	apiPort, tlsPort := freePort(t), freePort(t)
	process(t, weftBin, "server", "--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--monitoring-listen", "", "--xds-listen", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--xds-plaintext-listen", "", "--debounce", "20ms")
	kc := filepath.Join(dataDir, "kubeconfig")
	weft := func(stdin string, args ...string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			cmd := exec.Command(weftBin, append([]string{"--kubeconfig", kc}, args...)...)
			cmd.Stdin = strings.NewReader(stdin)
			out, err := cmd.Output()
			if err == nil {
				return string(out)
			}
			if time.Now().After(deadline) {
				t.Fatalf("weft %v: %v\n%s", args, err, out)
			}
			time.Sleep(100 * time.Millisecond) // the server is starting
		}
	}

	// App B: plain HTTP on loopback, counting what reaches it.
	var hits atomic.Int64
	appB := backendCounting(t, "b", &hits)
	svcPort, sidecarB := freePort(t), freePort(t)
	weft(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: b}
spec:
  metadata: {labels: {app: b}}
  template: {serviceAccount: b, ports: {http: %d}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: a}
spec:
  metadata: {labels: {app: a}}
  template: {serviceAccount: a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec:
  hosts: [b.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: b}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
# B calls nothing: no upstream listener of its own on 127.0.0.1:<service
# port>, which sidecar A binds on this shared host.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: b}
spec:
  workloadSelector: {labels: {app: b}}
  egress: [{hosts: ["~/*"]}]
`, appB, svcPort), "apply", "-f", "-")

	// The sidecars run as nobody when the test runs as root: their files
	// must be reachable for that user.
	shared, err := os.MkdirTemp("", "weft-inbound-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	mustChmod(t, shared, 0o755)
	caFile := filepath.Join(shared, "ca.crt")
	ca, err := os.ReadFile(filepath.Join(dataDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	type sidecar struct{ admin, stats, ready int }
	start := func(name, ip string, extra ...string) sidecar {
		t.Helper()
		token := strings.TrimSpace(weft("", "workload", "token", "create", "--group", name, "--ttl", "1h"))
		certDir := filepath.Join(shared, name)
		if err := os.Mkdir(certDir, 0o700); err != nil {
			t.Fatal(err)
		}
		bin, pre := asNobody()
		if bin != "" {
			if err := os.Chown(certDir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
		s := sidecar{freePort(t), freePort(t), freePort(t)}
		args := append(pre, proxyBin, "sidecar", "--explicit", "--ip", ip, "--name", name, "--workload-group", name,
			"--service-account", name, "--labels", "app="+name,
			"--discovery-address", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--ca-root-file", caFile,
			"--bootstrap-token", token, "--cert-dir", certDir,
			"--admin-port", fmt.Sprint(s.admin), "--stats-port", fmt.Sprint(s.stats), "--ready-port", fmt.Sprint(s.ready))
		args = append(args, extra...)
		if bin == "" {
			bin, args = args[0], args[1:]
		}
		process(t, bin, args...)
		waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", s.ready))
		return s
	}
	b := start("b", "127.0.0.3", "--inbound-ports", fmt.Sprintf("%d=%d", appB, sidecarB))
	a := start("a", "127.0.0.2")

	client := &http.Client{Timeout: 5 * time.Second}
	call := func() (int, string, error) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/hello", svcPort), nil)
		req.Host = "b.mesh"
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	// Registration and the pushes that follow take a moment: wait for the
	// first answer from app B through both sidecars.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, err := call()
		if err == nil && code == 200 && body == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app A never reached app B through the sidecars: %d %q %v", code, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	const n = 20
	for i := 0; i < n; i++ {
		if code, body, err := call(); err != nil || code != 200 || body != "b" {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}

	// Both ends counted the requests: source on A, destination on B.
	reqs := func(stats int, reporter string) int {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", stats))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		re := regexp.MustCompile(`^istio_requests_total\{(.*)\} (\d+)`)
		total := 0
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			m := re.FindStringSubmatch(sc.Text())
			if m == nil || !strings.Contains(m[1], `reporter="`+reporter+`"`) || !strings.Contains(m[1], `response_code="200"`) {
				continue
			}
			var v int
			fmt.Sscan(m[2], &v)
			total += v
		}
		return total
	}
	if got := reqs(a.stats, "source"); got < n {
		t.Errorf("sidecar A: istio_requests_total{reporter=source,response_code=200} = %d, want >= %d", got, n)
	}
	if got := reqs(b.stats, "destination"); got < n {
		t.Errorf("sidecar B: istio_requests_total{reporter=destination,response_code=200} = %d, want >= %d", got, n)
	}
	t.Logf("%d requests: sidecar A reporter=source %d, sidecar B reporter=destination %d, app B saw %d",
		n, reqs(a.stats, "source"), reqs(b.stats, "destination"), hits.Load())

	// STRICT: plaintext straight to B's inbound port gets no answer and
	// never reaches app B.
	before := hits.Load()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.3:%d", sidecarB), 5*time.Second)
	if err != nil {
		t.Fatalf("sidecar B's inbound port 127.0.0.3:%d is not listening: %v", sidecarB, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /hello HTTP/1.1\r\nHost: b.mesh\r\nConnection: close\r\n\r\n")
	got, err := io.ReadAll(c)
	if len(got) > 0 {
		t.Errorf("plaintext to a STRICT inbound port was answered: %q", got)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("plaintext to a STRICT inbound port was left hanging, want it closed")
	}
	if hits.Load() != before {
		t.Errorf("plaintext request reached app B")
	}
	// The application port itself is not where peers are sent.
	if strings.Contains(weft("", "get", "workloadentries", "b-127-0-0-3", "-o", "yaml"), fmt.Sprintf("weft.io/inbound-ports: %d=%d", appB, sidecarB)) == false {
		t.Errorf("the auto-registered WorkloadEntry does not advertise weft.io/inbound-ports %d=%d", appB, sidecarB)
	}
}

// backendCounting is backend (sidecar_test.go) counting requests in hits.
func backendCounting(t *testing.T, id string, hits *atomic.Int64) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, id)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func mustChmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
