package sidecar

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAccessLogs: access logs configured the way Istio operators do.
// weft server runs with a MeshConfig setting accessLogFile (Istio's demo
// profile) and an envoyFileAccessLog provider writing JSON. Requests from
// app A through sidecar A and sidecar B (mTLS) are logged by both
// sidecars in Istio's TEXT format (A outbound, B inbound); a Telemetry
// with disabled: true for workload b stops B's lines while A's go on; a
// Telemetry naming the JSON provider with a filter makes B log only its
// errors, as parseable JSON lines.
func TestAccessLogs(t *testing.T) {
	// The sidecars may run as nobody: they create the log files here.
	dir, err := os.MkdirTemp("", "weft-alog-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mustChmod(t, dir, 0o777)
	meshLog, jsonLog := filepath.Join(dir, "mesh.log"), filepath.Join(dir, "json.log")
	meshConfig := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(meshConfig, []byte(fmt.Sprintf(`accessLogFile: %s
extensionProviders:
- name: json-file
  envoyFileAccessLog:
    path: %s
    logFormat:
      labels:
        start_time: "%%START_TIME%%"
        method: "%%REQ(:METHOD)%%"
        path: "%%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%%"
        response_code: "%%RESPONSE_CODE%%"
        upstream_cluster: "%%UPSTREAM_CLUSTER%%"
        duration: "%%DURATION%%"
`, meshLog, jsonLog)), 0o644); err != nil {
		t.Fatal(err)
	}
	backend := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/missing") {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})})
	svcPort := freePort(t)
	pair := startMeshPairArgs(t, []string{"--mesh-config", meshConfig}, []appPort{{"http", backend, freePort(t)}}, webService(svcPort))
	client := &http.Client{Timeout: 10 * time.Second}
	call := func(path string) (int, error) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", svcPort, path), nil)
		req.Host = "web.b.mesh"
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	mustCall := func(path string, want int) {
		t.Helper()
		if code, err := call(path); err != nil || code != want {
			t.Fatalf("GET %s: %d %v, want %d", path, code, err, want)
		}
	}
	eventually(t, "a request through both sidecars", func() error {
		if code, err := call("/warmup"); err != nil || code != 200 {
			return fmt.Errorf("status %d, %v", code, err)
		}
		return nil
	})

	// 1. accessLogFile: both sidecars write Istio's TEXT lines to it.
	for i := range 3 {
		mustCall(fmt.Sprintf("/one-%d", i), 200)
	}
	mustCall("/missing-1", 404)
	for _, r := range []struct {
		path string
		code int
	}{{"/one-0", 200}, {"/one-1", 200}, {"/one-2", 200}, {"/missing-1", 404}} {
		for _, side := range []string{"outbound|", "inbound|"} {
			eventually(t, fmt.Sprintf("%s line for GET %s in %s", side, r.path, meshLog), func() error {
				if n := countText(t, meshLog, side, r.path, r.code); n != 1 {
					return fmt.Errorf("%d lines", n)
				}
				return nil
			})
		}
	}
	inboundBefore := countText(t, meshLog, "inbound|", "", 0)
	t.Logf("%s:\n%s", meshLog, readFile(t, meshLog))

	// 2. Telemetry disabled: true for workload b: B stops logging, A goes on.
	pair.m.apply(`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: b-logs}
spec:
  selector: {matchLabels: {app: b}}
  accessLogging: [{disabled: true}]
`)
	eventually(t, "B's listeners without access logs, A's with", func() error {
		if strings.Contains(configDump(t, pair.b.admin), "envoy.access_loggers.file") {
			return fmt.Errorf("sidecar b still has access logs")
		}
		if !strings.Contains(configDump(t, pair.a.admin), "envoy.access_loggers.file") {
			return fmt.Errorf("sidecar a lost its access logs")
		}
		return nil
	})
	served := metricSum(t, pair.b.stats, "istio_requests_total", `reporter="destination"`)
	for i := range 5 {
		mustCall(fmt.Sprintf("/two-%d", i), 200)
	}
	for i := range 5 {
		eventually(t, fmt.Sprintf("A's line for /two-%d", i), func() error {
			if n := countText(t, meshLog, "outbound|", fmt.Sprintf("/two-%d", i), 200); n != 1 {
				return fmt.Errorf("%d lines", n)
			}
			return nil
		})
	}
	eventually(t, "B served the requests", func() error {
		if n := metricSum(t, pair.b.stats, "istio_requests_total", `reporter="destination"`); n < served+5 {
			return fmt.Errorf("%d requests, want %d", n, served+5)
		}
		return nil
	})
	if n := countText(t, meshLog, "inbound|", "", 0); n != inboundBefore {
		t.Fatalf("B wrote %d inbound lines after its Telemetry disabled access logs:\n%s", n-inboundBefore, readFile(t, meshLog))
	}

	// 3. Telemetry naming the JSON provider with a filter: B logs its
	// errors only, as JSON; A still writes TEXT to accessLogFile.
	pair.m.apply(`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: b-logs}
spec:
  selector: {matchLabels: {app: b}}
  accessLogging:
  - providers: [{name: json-file}]
    filter: {expression: "response.code >= 400"}
`)
	eventually(t, "B's JSON access log", func() error {
		if !strings.Contains(configDump(t, pair.b.admin), "response.code >= 400") {
			return fmt.Errorf("sidecar b has no filtered access log yet")
		}
		return nil
	})
	mustCall("/three-ok", 200)
	mustCall("/missing-3", 404)
	// One logger writes B's lines in order: once the 404 is there, the
	// 200 before it would be too.
	var entries []map[string]any
	eventually(t, "B's JSON line for /missing-3", func() error {
		entries = jsonLines(t, jsonLog)
		for _, e := range entries {
			if e["path"] == "/missing-3" {
				return nil
			}
		}
		return fmt.Errorf("%d lines", len(entries))
	})
	if len(entries) != 1 {
		t.Fatalf("JSON log, want the 404 only:\n%s", readFile(t, jsonLog))
	}
	e := entries[0]
	t.Logf("%s:\n%s", jsonLog, readFile(t, jsonLog))
	for k, want := range map[string]any{"method": "GET", "path": "/missing-3", "response_code": 404.0} {
		if e[k] != want {
			t.Errorf("JSON %s = %v, want %v (%v)", k, e[k], want, e)
		}
	}
	if c, _ := e["upstream_cluster"].(string); !strings.HasPrefix(c, "inbound|") {
		t.Errorf("JSON upstream_cluster %q, want inbound|...", c)
	}
	if _, ok := e["duration"].(float64); !ok {
		t.Errorf("JSON duration %v, want a number", e["duration"])
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000Z", fmt.Sprint(e["start_time"])); err != nil {
		t.Errorf("JSON start_time: %v", err)
	}
	eventually(t, "A's TEXT line for /missing-3", func() error {
		if n := countText(t, meshLog, "outbound|", "/missing-3", 404); n != 1 {
			return fmt.Errorf("%d lines", n)
		}
		return nil
	})
}

// countText counts the TEXT access log lines of one side (the upstream
// cluster prefix "outbound|" or "inbound|") for GET path answered with
// code (path "": every line of the side).
func countText(t *testing.T, path, side, reqPath string, code int) int {
	t.Helper()
	n := 0
	for _, l := range strings.Split(readFile(t, path), "\n") {
		if !strings.Contains(l, " "+side) {
			continue
		}
		if reqPath == "" || strings.Contains(l, fmt.Sprintf(`"GET %s HTTP/1.1" %d `, reqPath, code)) {
			n++
		}
	}
	return n
}

// jsonLines parses a JSON access log; every line must be an object.
func jsonLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(readFile(t, path)), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%s: line %q: %v", path, l, err)
		}
		out = append(out, m)
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// webService is the ServiceEntry web.b.mesh: app B's HTTP port, called on
// port.
func webService(port int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.b.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: b}}
`, port)
}
