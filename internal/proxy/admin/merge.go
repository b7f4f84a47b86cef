package admin

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Istio's metrics merging: the sidecar's /stats/prometheus serves the
// proxy's metrics and the application's, so that one scrape target per
// workload (the sidecar's :15020, which Istio's injector points the
// prometheus.io annotations at) gets both. The application's metrics are
// scraped from AppMetrics.URL at each scrape of the sidecar, parsed, and
// appended; families the proxy already exposes are left out of the
// application's part (a scrape with two families of one name is
// refused whole by Prometheus), and an application that does not answer,
// or answers with something that is not Prometheus's text format, costs
// only its own part.

// AppMetrics says where the application's metrics are.
type AppMetrics struct {
	// URL is the application's metrics endpoint (http only).
	URL string
	// Timeout bounds one scrape of the application, unless Prometheus's
	// X-Prometheus-Scrape-Timeout-Seconds asks for less. Default 5s.
	Timeout time.Duration
	// Client scrapes it (nil: a client of its own).
	Client *http.Client
	// Log reports the first failure of each kind (nil: none).
	Log *slog.Logger
}

// ParseAppMetricsURL checks an --app-metrics URL: http, a host, a port.
func ParseAppMetricsURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("application metrics URL %q: %w", raw, err)
	}
	if u.Scheme != "http" || u.Host == "" || u.Port() == "" {
		return "", fmt.Errorf("application metrics URL %q: want http://<host>:<port>/<path>, e.g. http://127.0.0.1:9090/metrics", raw)
	}
	if u.Path == "" {
		u.Path = "/metrics"
	}
	return u.String(), nil
}

// AppMetricsFromAnnotations reads Istio's ISTIO_PROMETHEUS_ANNOTATIONS
// (the injector's copy of the workload's prometheus.io annotations, as
// JSON: scrape, port, path): the application's metrics URL on localhost,
// "" when it asks for no scrape. An unreadable value is an error.
func AppMetricsFromAnnotations(v string) (string, error) {
	var a struct{ Scrape, Port, Path string }
	if err := json.Unmarshal([]byte(v), &a); err != nil {
		return "", fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS %q: %w", v, err)
	}
	if a.Scrape != "true" || a.Port == "" {
		return "", nil
	}
	if _, err := strconv.ParseUint(a.Port, 10, 16); err != nil {
		return "", fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS: port %q is not a port number", a.Port)
	}
	path := a.Path
	if path == "" {
		path = "/metrics"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return ParseAppMetricsURL("http://127.0.0.1:" + a.Port + path)
}

// mergeStats counts the application scrapes that failed.
type mergeStats struct {
	failures prometheus.Counter
	warned   sync.Map // failure kind -> struct{}
}

// MergedPrometheus serves /stats/prometheus with the application's
// metrics after the proxy's (app nil: the proxy's alone). It registers
// weft_app_metrics_scrape_failures_total.
func (s *Server) MergedPrometheus(app *AppMetrics) http.Handler {
	if app == nil || app.URL == "" {
		return s.Prometheus()
	}
	if app.Timeout <= 0 {
		app.Timeout = 5 * time.Second
	}
	if app.Client == nil {
		app.Client = &http.Client{}
	}
	st := &mergeStats{failures: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "weft_app_metrics_scrape_failures_total",
		Help: "Scrapes of the application's metrics (merged into /stats/prometheus) that failed or were not Prometheus's text format.",
	})}
	s.reg.MustRegister(st.failures)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The application first, so that a failure is counted in this
		// very answer.
		appFams, aerr := app.scrape(r)
		if aerr != nil {
			st.failures.Inc()
			if _, seen := st.warned.LoadOrStore(kindOf(aerr), struct{}{}); !seen && app.Log != nil {
				app.Log.Warn("application metrics not merged into /stats/prometheus (reported once per kind of failure; weft_app_metrics_scrape_failures_total counts them)",
					"url", app.URL, "error", aerr)
			}
		}
		own, err := s.reg.Gather()
		if err != nil && len(own) == 0 {
			http.Error(w, "gathering the proxy's metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		mine := map[string]bool{}
		for _, mf := range own {
			mine[mf.GetName()] = true
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		var out io.Writer = w
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			defer gz.Close()
			out = gz
		}
		enc := expfmt.NewEncoder(out, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range own {
			if err := enc.Encode(mf); err != nil {
				return
			}
		}
		for _, mf := range appFams {
			if mine[mf.GetName()] {
				continue // the proxy's family of that name stays; a second would void the scrape
			}
			if err := enc.Encode(mf); err != nil {
				return
			}
		}
	})
}

// appError is a failed application scrape, by kind (for logging once).
type appError struct {
	kind string
	err  error
}

func (e *appError) Error() string { return e.err.Error() }
func (e *appError) Unwrap() error { return e.err }

func kindOf(err error) string {
	var ae *appError
	if errors.As(err, &ae) {
		return ae.kind
	}
	return "other"
}

// maxAppMetrics bounds the application's answer.
const maxAppMetrics = 32 << 20

// scrape fetches and parses the application's metrics, within the time
// Prometheus gives the scrape (less a margin for the proxy's own part).
func (a *AppMetrics) scrape(r *http.Request) ([]*dto.MetricFamily, error) {
	timeout := a.Timeout
	if v, err := strconv.ParseFloat(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), 64); err == nil && v > 0 {
		timeout = min(timeout, time.Duration(v*0.8*float64(time.Second)))
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL, nil)
	if err != nil {
		return nil, &appError{"request", err}
	}
	// Prometheus's text format, which the merged answer is written in.
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
	resp, err := a.Client.Do(req)
	if err != nil {
		return nil, &appError{"unreachable", err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &appError{"status", fmt.Errorf("%s answered %s", a.URL, resp.Status)}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		mt, params, _ := mime.ParseMediaType(ct)
		if mt != "text/plain" || (params["version"] != "" && params["version"] != "0.0.4") {
			return nil, &appError{"format", fmt.Errorf("%s answered %q; only Prometheus's text format (text/plain; version=0.0.4) is merged", a.URL, ct)}
		}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, maxAppMetrics))
	if err != nil {
		return nil, &appError{"parse", fmt.Errorf("%s: not Prometheus's text format: %w", a.URL, err)}
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, n := range slices.Sorted(maps.Keys(fams)) {
		out = append(out, fams[n])
	}
	return out, nil
}
