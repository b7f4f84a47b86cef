package sidecar

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// span is the part of a Zipkin v2 span the test reads.
type span struct {
	TraceID       string                       `json:"traceId"`
	ID            string                       `json:"id"`
	ParentID      string                       `json:"parentId"`
	Name          string                       `json:"name"`
	Kind          string                       `json:"kind"`
	LocalEndpoint struct{ ServiceName string } `json:"localEndpoint"`
	Tags          map[string]string            `json:"tags"`
}

// TestTracingSpans: tracing set up the way the installation guide does
// (meshConfig.enableTracing with defaultConfig.tracing.sampling: 100) and
// a Zipkin collector registered as Istio's add-on names it
// (zipkin.istio-system:9411). Requests from app A cross both sidecars;
// sidecar A reports one CLIENT span per request, as Zipkin v2 JSON, to the
// collector, and app B receives the same trace with A's span as its
// parent. (Sidecar B calls nothing in this pair, so it sees no collector
// and only propagates; the engine tests cover SERVER spans.)
func TestTracingSpans(t *testing.T) {
	var mu sync.Mutex
	var spans []span
	collector := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var got []span
		if r.URL.Path != "/api/v2/spans" || json.NewDecoder(r.Body).Decode(&got) != nil {
			http.Error(w, "want Zipkin v2 JSON on /api/v2/spans", http.StatusBadRequest)
			return
		}
		mu.Lock()
		spans = append(spans, got...)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})})
	type seen struct{ trace, sampled, parent, traceparent string }
	appSaw := make(chan seen, 16)
	backend := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		appSaw <- seen{r.Header.Get("X-B3-Traceid"), r.Header.Get("X-B3-Sampled"), r.Header.Get("X-B3-Parentspanid"), r.Header.Get("Traceparent")}
		_, _ = io.WriteString(w, "ok")
	})})
	meshConfig := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(meshConfig, []byte(`enableTracing: true
defaultConfig:
  tracing:
    sampling: 100.0
`), 0o644); err != nil {
		t.Fatal(err)
	}
	svcPort := freePort(t)
	startMeshPairArgs(t, []string{"--mesh-config", meshConfig}, []appPort{{"http", backend, freePort(t)}},
		webService(svcPort)+fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zipkin}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 9411, name: http-query, protocol: HTTP, targetPort: %d}]
  endpoints: [{address: 127.0.0.1}]
`, collector))
	client := &http.Client{Timeout: 10 * time.Second}
	call := func() error {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/traced", svcPort), nil)
		req.Host = "web.b.mesh"
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	eventually(t, "a request through both sidecars", call)
	// Sidecar A may have got its tracing config after the first request:
	// five more fill a batch, which is sent at once.
	for range 5 {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	var last seen
	for len(appSaw) > 0 {
		last = <-appSaw
	}
	// Istio's Zipkin tracer by default (traceContextOption USE_B3):
	// B3 headers only.
	if len(last.trace) != 32 || last.sampled != "1" || last.traceparent != "" {
		t.Fatalf("app B saw %+v: want a sampled 128-bit B3 trace and no traceparent", last)
	}
	var mine []span
	eventually(t, "sidecar A's spans at the collector", func() error {
		mu.Lock()
		defer mu.Unlock()
		mine = mine[:0]
		for _, s := range spans {
			if s.TraceID == last.trace {
				mine = append(mine, s)
			}
		}
		if len(mine) == 0 {
			return fmt.Errorf("%d spans, none of trace %s", len(spans), last.trace)
		}
		return nil
	})
	s := mine[0]
	if len(mine) != 1 || s.Kind != "CLIENT" || s.ID != last.parent || s.ParentID != "" {
		t.Errorf("spans of the last trace: %+v; want one root CLIENT span whose id (%s) app B sees as its parent", mine, last.parent)
	}
	wantName := "web.b.mesh:" + fmt.Sprint(svcPort) + "/*"
	if s.Name != wantName || s.LocalEndpoint.ServiceName != "a.default" || s.Tags["http.status_code"] != "200" ||
		s.Tags["istio.canonical_service"] != "a" || s.Tags["upstream_cluster"] != "outbound|"+fmt.Sprint(svcPort)+"||web.b.mesh" {
		t.Errorf("span %+v: want name %s, service a.default, status 200, Istio's tags", s, wantName)
	}
}
