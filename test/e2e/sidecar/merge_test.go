package sidecar

import (
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// TestMetricsMerging: a sidecar started with --app-metrics serves the
// application's metrics after its own on :15020/stats/prometheus (Istio's
// metrics merging), its own runtime metrics under Istio's agent names so
// the application's go_* stay the application's; when the application
// stops answering, the scrape still serves the proxy's metrics and counts
// the failure.
func TestMetricsMerging(t *testing.T) {
	var down atomic.Bool
	app := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() || r.URL.Path != "/metrics" {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, "# HELP app_orders_total Orders.\n# TYPE app_orders_total counter\napp_orders_total 42\n"+
			"# HELP go_goroutines The app's goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 4242\n")
	})})
	m := startMesh(t)
	m.apply(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: c}
spec:
  metadata: {labels: {app: c}}
  template: {serviceAccount: c}
`)
	c := m.sidecar("c", "127.0.0.4", "--app-metrics", "http://127.0.0.1:"+strconv.Itoa(app)+"/metrics")
	if n := metricSum(t, c.stats, "app_orders_total"); n != 42 {
		t.Errorf("app_orders_total %d on the sidecar's :15020, want the application's 42", n)
	}
	if n := metricSum(t, c.stats, "go_goroutines"); n != 4242 {
		t.Errorf("go_goroutines %d, want the application's 4242 only", n)
	}
	if n := metricSum(t, c.stats, "istio_agent_go_goroutines"); n <= 0 {
		t.Errorf("the sidecar's own istio_agent_go_goroutines is missing")
	}
	down.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for metricSum(t, c.stats, "weft_app_metrics_scrape_failures_total") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a failed application scrape was not counted")
		}
		time.Sleep(100 * time.Millisecond) // another process's scrape
	}
	if metricSum(t, c.stats, "istio_agent_process_resident_memory_bytes") == 0 {
		t.Errorf("with the application down, the proxy's metrics are missing")
	}
	if n := metricSum(t, c.stats, "app_orders_total"); n != 0 {
		t.Errorf("app_orders_total %d while the application answers 503", n)
	}
}
