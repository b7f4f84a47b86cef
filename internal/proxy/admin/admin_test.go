package admin

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

type stubProxy struct{ drained, quit bool }

func (p *stubProxy) Config() *Config             { return nil }
func (p *stubProxy) Endpoints() []EndpointStatus { return nil }
func (p *stubProxy) Ready() (bool, string)       { return true, "" }
func (p *stubProxy) Drain()                      { p.drained = true }
func (p *stubProxy) Quit()                       { p.quit = true }

// TestAdminProfiles: Go's profiles are on the admin port, as Envoy's
// /cpuprofiler and /heapprofiler are on its.
func TestAdminProfiles(t *testing.T) {
	srv := httptest.NewServer(New(&stubProxy{}, prometheus.NewRegistry(), new(slog.LevelVar)).AdminHandler())
	defer srv.Close()
	for path, want := range map[string]string{
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/heap?debug=1":      "heap profile:",
		"/debug/pprof/goroutine?debug=1": "goroutine profile:",
		"/debug/pprof/cmdline":           "admin.test",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body without %q: %.200s", path, resp.StatusCode, want, body)
		}
	}
	// POST-only endpoints still refuse GET.
	resp, err := http.Get(srv.URL + "/quitquitquit")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit: %d, want 405", resp.StatusCode)
	}
}
