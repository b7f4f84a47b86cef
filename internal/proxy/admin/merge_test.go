package admin

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMerged gets h's merged answer and parses it as Prometheus would:
// a second family of one name fails the parse.
func scrapeMerged(t *testing.T, h http.Handler, hdr ...string) (map[string]*dto.MetricFamily, *http.Response) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/stats/prometheus", nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultTransport.RoundTrip(req) // no transparent gunzip
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = gz
	}
	raw, _ := io.ReadAll(body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("merged answer does not parse: %v\n%s", err, raw)
	}
	// The text parser merges repeated families silently; count HELP
	// lines to catch a second family of one name.
	seen := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ = strings.Cut(name, " ")
			if seen[name] {
				t.Fatalf("family %s twice in the merged answer", name)
			}
			seen[name] = true
		}
	}
	return fams, resp
}

const appText = `# HELP app_orders_total Orders taken.
# TYPE app_orders_total counter
app_orders_total{shop="a"} 7
# HELP shared_total A name the proxy has too.
# TYPE shared_total counter
shared_total 99
# HELP go_goroutines Goroutines of the app.
# TYPE go_goroutines gauge
go_goroutines 12
`

func mergeServer(t *testing.T) (*Server, prometheus.Counter) {
	reg := prometheus.NewRegistry()
	shared := prometheus.NewCounter(prometheus.CounterOpts{Name: "shared_total", Help: "The proxy's."})
	shared.Add(3)
	reg.MustRegister(shared)
	return New(nil, reg, nil), shared
}

// TestMergedPrometheus: the application's metrics follow the proxy's in
// one valid answer; a family the proxy has keeps the proxy's values;
// gzip when asked.
func TestMergedPrometheus(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Accept"), "text/plain") {
			t.Errorf("the application was asked for %q, want Prometheus's text format first", r.Header.Get("Accept"))
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = io.WriteString(w, appText)
	}))
	defer app.Close()
	s, _ := mergeServer(t)
	h := s.MergedPrometheus(&AppMetrics{URL: app.URL + "/metrics"})
	for _, enc := range []string{"", "gzip"} {
		fams, resp := scrapeMerged(t, h, "Accept-Encoding", enc)
		if enc == "gzip" && resp.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("gzip asked, answer not gzipped")
		}
		if got := fams["app_orders_total"].GetMetric(); len(got) != 1 || got[0].GetCounter().GetValue() != 7 {
			t.Errorf("app_orders_total %v, want the application's 7", got)
		}
		if got := fams["go_goroutines"].GetMetric(); len(got) != 1 || got[0].GetGauge().GetValue() != 12 {
			t.Errorf("go_goroutines %v, want the application's", got)
		}
		if got := fams["shared_total"].GetMetric(); len(got) != 1 || got[0].GetCounter().GetValue() != 3 {
			t.Errorf("shared_total %v, want only the proxy's 3", got)
		}
		if fams["weft_app_metrics_scrape_failures_total"].GetMetric()[0].GetCounter().GetValue() != 0 {
			t.Errorf("failures counted on a good scrape")
		}
	}
}

// TestMergedPrometheusAppFailures: whatever the application does, the
// proxy's metrics are served, valid, and the failure counted.
func TestMergedPrometheusAppFailures(t *testing.T) {
	cases := []struct {
		name string
		h    http.HandlerFunc
	}{
		{"status 500", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) }},
		{"not the text format", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = io.WriteString(w, "this is { not metrics\n")
		}},
		{"OpenMetrics", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/openmetrics-text; version=1.0.0")
			_, _ = io.WriteString(w, "# TYPE a counter\na_total 1\n# EOF\n")
		}},
		{"too slow for the scrape", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}},
	}
	s, _ := mergeServer(t)
	want := 0.0
	for _, c := range cases {
		app := httptest.NewServer(c.h)
		h := s.MergedPrometheus(&AppMetrics{URL: app.URL + "/metrics", Timeout: 10 * time.Second})
		start := time.Now()
		fams, _ := scrapeMerged(t, h, "X-Prometheus-Scrape-Timeout-Seconds", "0.5")
		app.Close()
		want++
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%s: the scrape took %v; Prometheus's 0.5 s timeout was not honoured", c.name, took)
		}
		if fams["shared_total"] == nil {
			t.Errorf("%s: the proxy's metrics are missing", c.name)
		}
		if fams["a_total"] != nil || fams["a"] != nil {
			t.Errorf("%s: the application's answer was merged", c.name)
		}
		if got := fams["weft_app_metrics_scrape_failures_total"].GetMetric()[0].GetCounter().GetValue(); got != want {
			t.Errorf("%s: failures %v, want %v", c.name, got, want)
		}
		// Each handler registers its counter: a fresh registry per case.
		s, _ = mergeServer(t)
		want = 0
	}
	// Unreachable: nothing listens.
	h := s.MergedPrometheus(&AppMetrics{URL: "http://127.0.0.1:1/metrics"})
	if fams, _ := scrapeMerged(t, h); fams["shared_total"] == nil {
		t.Errorf("unreachable application: the proxy's metrics are missing")
	}
}

// TestAppMetricsURL: --app-metrics and Istio's annotations, good and bad.
func TestAppMetricsURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:9090/metrics": "http://127.0.0.1:9090/metrics",
		"http://localhost:8080":         "http://localhost:8080/metrics",
	} {
		if got, err := ParseAppMetricsURL(in); err != nil || got != want {
			t.Errorf("ParseAppMetricsURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"https://127.0.0.1:9090/metrics", "127.0.0.1:9090", "http://127.0.0.1/metrics", "http://[::1"} {
		if _, err := ParseAppMetricsURL(bad); err == nil {
			t.Errorf("ParseAppMetricsURL(%q): no error", bad)
		}
	}
	for in, want := range map[string]string{
		`{"scrape":"true","port":"9090","path":"/stats"}`: "http://127.0.0.1:9090/stats",
		`{"scrape":"true","port":"9090"}`:                 "http://127.0.0.1:9090/metrics",
		`{"scrape":"false","port":"9090"}`:                "",
	} {
		if got, err := AppMetricsFromAnnotations(in); err != nil || got != want {
			t.Errorf("AppMetricsFromAnnotations(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`{"scrape":"true","port":"http"}`, `not json`} {
		if _, err := AppMetricsFromAnnotations(bad); err == nil {
			t.Errorf("AppMetricsFromAnnotations(%s): no error", bad)
		}
	}
}
