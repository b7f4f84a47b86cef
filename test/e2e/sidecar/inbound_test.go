package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
	m := startMesh(t)
	weft := m.weft

	// App B: plain HTTP on loopback, counting what reaches it.
	var hits atomic.Int64
	var xfcc atomic.Value
	appB := backendRecording(t, "b", &hits, &xfcc)
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

	// A trims its binary's start-up pages 1 s after it is configured
	// (the default waits 5 s); B never does. The requests below run
	// through A's re-faulted code.
	b := m.sidecar("b", "127.0.0.3", "--inbound-ports", fmt.Sprintf("%d=%d", appB, sidecarB), "--trim-memory-after", "0")
	a := m.sidecar("a", "127.0.0.2", "--trim-memory-after", "1s")

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
		return metricSum(t, stats, "istio_requests_total", `reporter="`+reporter+`"`, `response_code="200"`)
	}
	if got := reqs(a.stats, "source"); got < n {
		t.Errorf("sidecar A: istio_requests_total{reporter=source,response_code=200} = %d, want >= %d", got, n)
	}
	if got := reqs(b.stats, "destination"); got < n {
		t.Errorf("sidecar B: istio_requests_total{reporter=destination,response_code=200} = %d, want >= %d", got, n)
	}
	t.Logf("%d requests: sidecar A reporter=source %d, sidecar B reporter=destination %d, app B saw %d",
		n, reqs(a.stats, "source"), reqs(b.stats, "destination"), hits.Load())
	// App B learns its caller from x-forwarded-client-cert, as behind
	// Istio's sidecars: B's identity, the hash of A's certificate, A's
	// SPIFFE ID. What app A sent in that header never gets there.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/hello", svcPort), nil)
	req.Host = "b.mesh"
	req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/default/sa/b;URI=spiffe://forged")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	seen, _ := xfcc.Load().(string)
	want := regexp.MustCompile(`^By=spiffe://cluster\.local/ns/default/sa/b;Hash=[0-9a-f]{64};Subject="[^"]*";URI=spiffe://cluster\.local/ns/default/sa/a$`)
	if !want.MatchString(seen) {
		t.Errorf("app B saw x-forwarded-client-cert %q, want one element matching %s", seen, want)
	}
	// The trimmed sidecar holds megabytes less than the untrimmed one
	// (about 21 MiB of the binary are resident after start-up, 3–7 MiB of
	// it in use); their heaps are alike.
	// Trimming runs in the background once A is configured: give it a
	// few seconds.
	var rssA, rssB int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		rssA = metricSum(t, a.stats, "istio_agent_process_resident_memory_bytes")
		rssB = metricSum(t, b.stats, "istio_agent_process_resident_memory_bytes")
		if rssA <= rssB-5<<20 || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("RSS: sidecar A (trimmed) %.1f MiB, sidecar B (not trimmed) %.1f MiB", float64(rssA)/(1<<20), float64(rssB)/(1<<20))
	if rssA > rssB-5<<20 {
		t.Errorf("trimmed sidecar A's RSS %d is not at least 5 MiB below untrimmed B's %d", rssA, rssB)
	}
	for i := 0; i < n; i++ {
		if code, body, err := call(); err != nil || code != 200 || body != "b" {
			t.Fatalf("request %d after trimming: %d %q %v", i, code, body, err)
		}
	}
	// Cold paths (a config dump, a goroutine dump, a heap profile,
	// scrapes) pull megabytes of binary pages back in (11–23 MiB resident
	// afterwards, measured). A drops them again (--trim-memory-growth)
	// within a second or two; with no traffic, what stays is a few MiB.
	// Its trim after its first configuration must be over first.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(readFile(t, a.log), "trimmed start-up pages"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("sidecar A never logged its trim after its first configuration")
		}
	}
	for _, u := range []string{
		fmt.Sprintf("http://127.0.0.1:%d/config_dump", a.admin),
		fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=2", a.admin),
		fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?debug=1", a.admin),
		fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", a.stats),
	} {
		if code, _ := get(t, u); code != 200 {
			t.Fatalf("GET %s: %d", u, code)
		}
	}
	after := statusKB(t, a.pid, "RssFile")
	var now int64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if now = statusKB(t, a.pid, "RssFile"); now <= 8<<10 || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("sidecar A's RssFile right after serving cold paths: %d kB; then %d kB", after, now)
	if now > 8<<10 {
		t.Errorf("sidecar A's binary pages stayed resident after cold paths: RssFile %d kB, then %d kB 10 s later", after, now)
	}
	if code, body, err := call(); err != nil || code != 200 || body != "b" {
		t.Fatalf("request after trimming again: %d %q %v", code, body, err)
	}

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

// backendRecording is backend (sidecar_test.go) counting requests in
// hits and keeping the x-forwarded-client-cert of the last one in xfcc.
func backendRecording(t *testing.T, id string, hits *atomic.Int64, xfcc *atomic.Value) int {
	t.Helper()
	return serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		xfcc.Store(strings.Join(r.Header.Values("X-Forwarded-Client-Cert"), "|"))
		fmt.Fprint(w, id)
	})})
}

func mustChmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
