package sidecar

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestProxyHeaders: the headers a pair of real sidecars adds, as Istio's
// do, and defaultConfig.proxyHeaders turning them off. By default app B
// gets x-request-id, x-envoy-attempt-count, x-forwarded-proto and
// x-forwarded-client-cert, and no trace headers (no tracer is
// configured); app A's answer says "server: istio-envoy" in place of app
// B's own and carries x-envoy-upstream-service-time. With proxyHeaders
// set, the Server header is the configured one and the rest is left out.
func TestProxyHeaders(t *testing.T) {
	for _, tc := range []struct {
		name, mesh    string
		server        string
		debug, ids    bool
		attemptHeader bool
	}{
		{name: "istio defaults", server: "istio-envoy", debug: true, ids: true, attemptHeader: true},
		{name: "proxyHeaders", mesh: `defaultConfig:
  proxyHeaders:
    server: {value: edge}
    requestId: {disabled: true}
    attemptCount: {disabled: true}
    envoyDebugHeaders: {disabled: true}
`, server: "edge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := make(chan http.Header, 16)
			backend := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Clone()
				w.Header().Set("Server", "app-b/1.0")
				_, _ = io.WriteString(w, "ok")
			})})
			var args []string
			if tc.mesh != "" {
				f := filepath.Join(t.TempDir(), "mesh.yaml")
				if err := os.WriteFile(f, []byte(tc.mesh), 0o644); err != nil {
					t.Fatal(err)
				}
				args = []string{"--mesh-config", f}
			}
			svcPort := freePort(t)
			startMeshPairArgs(t, args, []appPort{{"http", backend, freePort(t)}}, webService(svcPort))
			c := &http.Client{Timeout: 5 * time.Second}
			var resp *http.Response
			eventually(t, "a request through both sidecars", func() (err error) {
				resp, err = getWeb(c, svcPort, "/h")
				return err
			})
			var h http.Header
			for len(seen) > 0 {
				h = <-seen
			}
			if got := resp.Header.Values("Server"); len(got) != 1 || got[0] != tc.server {
				t.Errorf("server %q, want %q", got, tc.server)
			}
			if st := resp.Header.Get("X-Envoy-Upstream-Service-Time"); (st != "") != tc.debug {
				t.Errorf("x-envoy-upstream-service-time %q (want one: %v)", st, tc.debug)
			}
			if id := h.Get("X-Request-Id"); (len(id) == 36) != tc.ids || !tc.ids && id != "" {
				t.Errorf("app B's x-request-id %q (want a UUID: %v)", id, tc.ids)
			}
			if n := h.Get("X-Envoy-Attempt-Count"); (n == "1") != tc.attemptHeader || !tc.attemptHeader && n != "" {
				t.Errorf("app B's x-envoy-attempt-count %q (want 1: %v)", n, tc.attemptHeader)
			}
			if h.Get("X-Forwarded-Proto") != "http" || h.Get("X-Forwarded-Client-Cert") == "" {
				t.Errorf("app B's x-forwarded-proto %q, x-forwarded-client-cert %q", h.Get("X-Forwarded-Proto"), h.Get("X-Forwarded-Client-Cert"))
			}
			for k := range h {
				if k == "X-B3-Traceid" || k == "X-B3-Spanid" || k == "X-B3-Sampled" || k == "Traceparent" {
					t.Errorf("app B got trace header %s without a tracer", k)
				}
			}
			// The sidecars' metadata exchange stays between them.
			for _, k := range []string{"X-Envoy-Peer-Metadata", "X-Envoy-Peer-Metadata-Id"} {
				if h.Get(k) != "" || resp.Header.Get(k) != "" {
					t.Errorf("%s reached an application (app B's request: %q, app A's response: %q)", k, h.Get(k), resp.Header.Get(k))
				}
			}
		})
	}
}

// TestTelemetryMetrics: a Telemetry's metrics overrides, applied through
// the API server, change what real sidecars record. On the client side
// (sidecar A) istio_requests_total takes destination_version from a
// request header, gains a request_host label and drops source_principal; request durations are not
// recorded on either side; sidecar B's request count keeps Istio's
// standard labels.
func TestTelemetryMetrics(t *testing.T) {
	backend := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })})
	svcPort := freePort(t)
	p := startMeshPair(t, []appPort{{"http", backend, freePort(t)}}, webService(svcPort)+`---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        destination_version: {value: "request.headers['x-version']"}
        request_host: {value: "request.host"}
        source_principal: {operation: REMOVE}
    - match: {metric: REQUEST_DURATION}
      disabled: true
`)
	c := &http.Client{Timeout: 5 * time.Second}
	eventually(t, "a request counted with the header's version", func() error {
		if _, err := getWeb(c, svcPort, "/m", "X-Version", "v7"); err != nil {
			return err
		}
		if n := metricSum(t, p.a.stats, "istio_requests_total", `reporter="source"`, `destination_version="v7"`, `source_principal=""`,
			`request_host="web.b.mesh"`); n == 0 {
			return fmt.Errorf("sidecar A has no istio_requests_total with destination_version v7, request_host web.b.mesh and no source_principal")
		}
		return nil
	})
	if n := metricSum(t, p.b.stats, "istio_requests_total", `reporter="destination"`, `destination_version="unknown"`); n == 0 {
		t.Error("sidecar B's istio_requests_total lost its standard labels")
	}
	// Identities from the mTLS connection, and Istio's canonical service
	// and cluster labels, on both sides; only the destination knows the
	// connection's security policy.
	if n := metricSum(t, p.b.stats, "istio_requests_total", `reporter="destination"`, `connection_security_policy="mutual_tls"`,
		`source_principal="spiffe://cluster.local/ns/default/sa/a"`, `destination_principal="spiffe://cluster.local/ns/default/sa/b"`,
		`source_canonical_service="a"`, `source_canonical_revision="latest"`, `source_cluster="Kubernetes"`,
		`destination_canonical_service="b"`, `destination_cluster="Kubernetes"`, `destination_service="web.b.mesh"`,
		`destination_service_namespace="default"`); n == 0 {
		t.Errorf("sidecar B's requests lack the mTLS identities, mutual_tls, the canonical and cluster labels or the service:\n%s",
			metricSeries(t, p.b.stats, "istio_requests_total"))
	}
	if n := metricSum(t, p.a.stats, "istio_request_bytes_count", `reporter="source"`, `connection_security_policy="unknown"`,
		`source_principal="spiffe://cluster.local/ns/default/sa/a"`, `destination_principal="spiffe://cluster.local/ns/default/sa/b"`,
		`destination_canonical_service="b"`, `destination_cluster="Kubernetes"`, `source_canonical_service="a"`); n == 0 {
		t.Error("sidecar A's requests lack the mTLS identities, the source's unknown policy, or the canonical and cluster labels")
	}
	if n := metricSum(t, p.b.stats, "istio_requests_total", `destination_version="v7"`); n != 0 {
		t.Error("sidecar B took the client side's dimension")
	}
	// Istio's metadata exchange: each sidecar names the other.
	if n := metricSum(t, p.b.stats, "istio_requests_total", `reporter="destination"`, `source_workload="a"`, `source_app="a"`,
		`source_workload_namespace="default"`, `destination_workload="b"`); n == 0 {
		t.Error("sidecar B does not name its caller (source_workload a, from the metadata exchange)")
	}
	if n := metricSum(t, p.a.stats, "istio_requests_total", `reporter="source"`, `source_workload="a"`, `destination_workload="b"`,
		`destination_app="b"`, `destination_workload_namespace="default"`); n == 0 {
		t.Error("sidecar A does not name its server (destination_workload b, from the metadata exchange)")
	}
	for name, stats := range map[string]int{"A": p.a.stats, "B": p.b.stats} {
		if n := metricSum(t, stats, "istio_request_duration_milliseconds_count"); n != 0 {
			t.Errorf("sidecar %s recorded %d request durations; the metric is disabled", name, n)
		}
		if n := metricSum(t, stats, "istio_request_bytes_count"); n == 0 {
			t.Errorf("sidecar %s recorded no request sizes", name)
		}
	}
}

// getWeb sends app A's GET for path to web.b.mesh (the webService on
// svcPort) with headers hdr (name, value, …), reads the answer and
// returns it; a status other than 200 is an error.
func getWeb(c *http.Client, svcPort int, path string, hdr ...string) (*http.Response, error) {
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", svcPort, path), nil)
	req.Host = "web.b.mesh"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, r.Body)
	r.Body.Close()
	if r.StatusCode != 200 {
		return nil, fmt.Errorf("status %d", r.StatusCode)
	}
	return r, nil
}

// TestTCPMetricsWhileOpen: with a Telemetry reportingInterval, both
// sidecars count the bytes of a TCP connection that stays open, as Istio's
// sidecars do, not only once it closes; the connection's labels name both
// workloads, from Istio's TCP metadata exchange.
func TestTCPMetricsWhileOpen(t *testing.T) {
	svcPort := freePort(t)
	p := startMeshPair(t, []appPort{{"tcp", startEchoTCP(t), freePort(t)}}, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp}
spec:
  hosts: [tcp.b.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: b}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - reportingInterval: 200ms
`, svcPort))
	var c net.Conn
	eventually(t, "a TCP connection through both sidecars", func() error {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", svcPort), 5*time.Second)
		if err != nil {
			return err
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 5)
		if _, err := io.WriteString(conn, "hello"); err != nil {
			conn.Close()
			return err
		}
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
			conn.Close()
			return fmt.Errorf("echo: %q, %v", buf, err)
		}
		c = conn
		return nil
	})
	defer c.Close()
	// Within 5 s: well before the default interval's 15 s, so only the
	// Telemetry's 200 ms counts them in time.
	for deadline := time.Now().Add(5 * time.Second); ; {
		var missing []string
		for name, stats := range map[string]int{"A": p.a.stats, "B": p.b.stats} {
			sent, recv := metricSum(t, stats, "istio_tcp_sent_bytes_total"), metricSum(t, stats, "istio_tcp_received_bytes_total")
			if sent < 5 || recv < 5 {
				missing = append(missing, fmt.Sprintf("sidecar %s: sent %d, received %d bytes so far", name, sent, recv))
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the open connection's bytes were not counted within 5 s: %v", missing)
		}
		time.Sleep(50 * time.Millisecond) // the sidecars report on their own clock
	}
	// Still open: the counts came while it lasted.
	if _, err := io.WriteString(c, "again"); err != nil {
		t.Fatalf("the connection closed: %v", err)
	}
	// Istio's TCP metadata exchange: each sidecar names the other (the
	// echo above shows the frames never reach the applications), and the
	// identities come from the mTLS connection.
	if n := metricSum(t, p.b.stats, "istio_tcp_connections_opened_total", `reporter="destination"`, `request_protocol="tcp"`,
		`source_workload="a"`, `source_app="a"`, `source_workload_namespace="default"`, `source_canonical_service="a"`,
		`source_principal="spiffe://cluster.local/ns/default/sa/a"`, `destination_workload="b"`,
		`destination_principal="spiffe://cluster.local/ns/default/sa/b"`, `connection_security_policy="mutual_tls"`,
		`destination_service="tcp.b.mesh"`, `destination_service_name="tcp.b.mesh"`, `destination_service_namespace="default"`); n == 0 {
		t.Errorf("sidecar B's TCP connection does not name its caller, its identities or mutual_tls:\n%s",
			metricSeries(t, p.b.stats, "istio_tcp_connections_opened_total"))
	}
	if n := metricSum(t, p.a.stats, "istio_tcp_connections_opened_total", `reporter="source"`, `request_protocol="tcp"`,
		`source_workload="a"`, `destination_workload="b"`, `destination_app="b"`, `destination_canonical_service="b"`,
		`destination_cluster="Kubernetes"`, `destination_principal="spiffe://cluster.local/ns/default/sa/b"`,
		`connection_security_policy="unknown"`); n == 0 {
		t.Errorf("sidecar A's TCP connection does not name its server or its identity:\n%s",
			metricSeries(t, p.a.stats, "istio_tcp_connections_opened_total"))
	}
}
