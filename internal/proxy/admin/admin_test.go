package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestClustersAndStatsFormats: /clusters?format=json is Envoy's
// admin.v3.Clusters; /stats takes Envoy's regex filter and JSON format.
func TestClustersAndStatsFormats(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "h"}, []string{"response_code"})
	c.WithLabelValues("200").Add(3)
	reg.MustRegister(c, prometheus.NewGauge(prometheus.GaugeOpts{Name: "istio_build", Help: "h"}))
	p := &stubProxy{eps: []EndpointStatus{
		{Cluster: "outbound|80||b", Address: "10.0.0.2:80", Healthy: true, Ejected: true, ActiveRequests: 2,
			Region: "eu-west", Zone: "eu-west-1a", Priority: 1},
		{Cluster: "outbound|80||a", Address: "10.0.0.1:80", Healthy: false},
		{Cluster: "outbound|80||b", Address: "10.0.0.3:80", Healthy: true},
	}}
	srv := httptest.NewServer(New(p, reg, new(slog.LevelVar)).AdminHandler())
	defer srv.Close()

	code, body := get(t, srv.URL+"/clusters?format=json")
	var cs adminv3.Clusters
	if code != 200 || protojson.Unmarshal([]byte(body), &cs) != nil {
		t.Fatalf("/clusters?format=json: %d %s", code, body)
	}
	if len(cs.GetClusterStatuses()) != 2 || cs.ClusterStatuses[0].GetName() != "outbound|80||a" || len(cs.ClusterStatuses[1].GetHostStatuses()) != 2 {
		t.Fatalf("clusters: %v", &cs)
	}
	a, b := cs.ClusterStatuses[0].HostStatuses[0], cs.ClusterStatuses[1].HostStatuses[0]
	if a.GetHealthStatus().GetEdsHealthStatus().String() != "UNHEALTHY" || a.GetAddress().GetSocketAddress().GetPortValue() != 80 ||
		!b.GetHealthStatus().GetFailedOutlierCheck() || b.GetStats()[0].GetValue() != 2 || b.GetAddress().GetSocketAddress().GetAddress() != "10.0.0.2" ||
		b.GetLocality().GetZone() != "eu-west-1a" || b.GetPriority() != 1 {
		t.Fatalf("host statuses: %v / %v", a, b)
	}
	if code, body := get(t, srv.URL+"/clusters"); code != 200 || !strings.Contains(body, "outbound|80||b::10.0.0.2:80::health_flags::/failed_outlier_check\n") ||
		!strings.Contains(body, "outbound|80||b::10.0.0.2:80::zone::eu-west-1a\n") || !strings.Contains(body, "outbound|80||b::10.0.0.2:80::priority::1\n") {
		t.Fatalf("/clusters: %d %s", code, body)
	}

	if code, body := get(t, srv.URL+"/stats?filter=^istio_.*_total$"); code != 200 || body != "istio_requests_total{response_code=200}: 3\n" {
		t.Fatalf("/stats?filter=^istio_.*_total$: %d %q", code, body)
	}
	code, body = get(t, srv.URL+"/stats?filter=istio_&format=json")
	var js struct {
		Stats []struct {
			Name  string
			Value float64
		}
	}
	if code != 200 || json.Unmarshal([]byte(body), &js) != nil || len(js.Stats) != 2 {
		t.Fatalf("/stats?format=json: %d %s", code, body)
	}
	if code, body := get(t, srv.URL+"/stats?filter=istio_(("); code != http.StatusBadRequest || !strings.Contains(body, "invalid filter regex") {
		t.Fatalf("a bad regex: %d %s", code, body)
	}
}

type stubProxy struct {
	drained, quit bool
	eps           []EndpointStatus
	cfg           *Config
}

func (p *stubProxy) Config() *Config             { return p.cfg }
func (p *stubProxy) Endpoints() []EndpointStatus { return p.eps }
func (p *stubProxy) Ready() (bool, string)       { return true, "" }
func (p *stubProxy) Drain()                      { p.drained = true }
func (p *stubProxy) Quit()                       { p.quit = true }

// TestConfigDumpSections: /config_dump's sections come in Envoy's order,
// and, as Envoy's, the endpoints only with ?include_eds.
func TestConfigDumpSections(t *testing.T) {
	p := &stubProxy{cfg: &Config{
		Clusters:  []*clusterv3.Cluster{{Name: "outbound|80||b"}},
		Endpoints: []*endpointv3.ClusterLoadAssignment{{ClusterName: "outbound|80||b"}},
		Listeners: []*listenerv3.Listener{{Name: "virtualOutbound"}},
	}}
	srv := httptest.NewServer(New(p, prometheus.NewRegistry(), new(slog.LevelVar)).AdminHandler())
	defer srv.Close()
	sections := func(path string) string {
		t.Helper()
		code, body := get(t, srv.URL+path)
		var d adminv3.ConfigDump
		if code != 200 || protojson.Unmarshal([]byte(body), &d) != nil {
			t.Fatalf("%s: %d %s", path, code, body)
		}
		var names []string
		for _, c := range d.GetConfigs() {
			names = append(names, strings.TrimPrefix(c.GetTypeUrl(), "type.googleapis.com/envoy.admin.v3."))
		}
		return strings.Join(names, " ")
	}
	if got, want := sections("/config_dump"), "ClustersConfigDump ListenersConfigDump RoutesConfigDump SecretsConfigDump"; got != want {
		t.Errorf("/config_dump sections: %s, want %s", got, want)
	}
	if got, want := sections("/config_dump?include_eds"), "ClustersConfigDump EndpointsConfigDump ListenersConfigDump RoutesConfigDump SecretsConfigDump"; got != want {
		t.Errorf("/config_dump?include_eds sections: %s, want %s", got, want)
	}
	// resource: one config per element of that repeated field;
	// name_regex: whole names, RE2.
	for path, want := range map[string]string{
		"/config_dump?resource=dynamic_active_clusters":                                   "ClustersConfigDump.DynamicCluster",
		"/config_dump?resource=dynamic_listeners":                                         "ListenersConfigDump.DynamicListener",
		"/config_dump?resource=dynamic_endpoint_configs&include_eds":                      "EndpointsConfigDump.DynamicEndpointConfig",
		"/config_dump?resource=dynamic_active_clusters&name_regex=outbound.*":             "ClustersConfigDump.DynamicCluster",
		"/config_dump?resource=dynamic_active_clusters&name_regex=outbound":               "",
		"/config_dump?resource=dynamic_listeners&name_regex=outbound.*":                   "",
		"/config_dump?resource=dynamic_endpoint_configs&include_eds&name_regex=.*%7C%7Cb": "EndpointsConfigDump.DynamicEndpointConfig",
	} {
		if got := sections(path); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
	for path, want := range map[string]int{
		"/config_dump?resource=dynamic_endpoint_configs": 404, // only with include_eds, as Envoy's
		"/config_dump?resource=version_info":             404, // not a repeated field
		"/config_dump?resource=nope":                     404,
		"/config_dump?name_regex=(":                      400,
		"/config_dump?mask=dynamic_active_clusters":      400,
	} {
		if code, body := get(t, srv.URL+path); code != want {
			t.Errorf("%s: %d %s, want %d", path, code, body, want)
		}
	}
}

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

// TestLoggingLevels: /logging takes Envoy's level names, as istioctl
// proxy-config log sends them, and refuses others.
func TestLoggingLevels(t *testing.T) {
	lv := new(slog.LevelVar)
	srv := httptest.NewServer(New(&stubProxy{}, prometheus.NewRegistry(), lv).AdminHandler())
	defer srv.Close()
	post := func(level string) (int, string) {
		resp, err := http.Post(srv.URL+"/logging?level="+level, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for level, want := range map[string]slog.Level{"trace": slog.LevelDebug, "warning": slog.LevelWarn, "critical": slog.LevelError,
		"off": levelOff, "WARN": slog.LevelWarn, "info": slog.LevelInfo} {
		if code, body := post(level); code != 200 || lv.Level() != want {
			t.Errorf("level %s: %d %s, level now %v", level, code, body, lv.Level())
		}
	}
	post("warning")
	if code, body := get(t, srv.URL+"/logging"); code != 200 || !strings.Contains(body, "weft-proxy: warning") {
		t.Errorf("GET /logging: %d %s", code, body)
	}
	if code, body := post("verbose"); code != http.StatusBadRequest || !strings.Contains(body, "critical") || lv.Level() != slog.LevelWarn {
		t.Errorf("an unknown level: %d %s (level %v)", code, body, lv.Level())
	}
}
