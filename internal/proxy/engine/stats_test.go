package engine

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/types/known/durationpb"
	statspb "istio.io/api/envoy/extensions/stats"
)

// metricSeries is every series of the registry's metric name, each as
// its labels (name=value, sorted as gathered) joined by ",".
func metricSeries(t *testing.T, reg *prometheus.Registry, name string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			out = append(out, strings.Join(ls, ","))
		}
	}
	return out
}

// hasLabel reports whether a series (metricSeries) has label=value.
func hasLabel(series, label, value string) bool {
	return strings.Contains(","+series+",", ","+label+"="+value+",")
}

// TestStatsFilter: Istio's istio.stats filter, as istiod writes it for a
// Telemetry that customises metrics, changes the chain's standard
// metrics: a dimension sets a standard label from a CEL expression over
// the request, tags_to_remove empties labels (of one metric, or of every
// one without a name), drop leaves a metric out — for an HTTP connection
// manager (the filter before the router) and a TCP chain (before
// tcp_proxy). A chain without the filter keeps the standard metrics.
func TestStatsFilter(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer backend.Close()
	echo := tcpEcho(t)
	cfg := &statspb.PluginConfig{Metrics: []*statspb.MetricConfig{
		{Name: "requests_total", Dimensions: map[string]string{"destination_service": "request.host", "request_protocol": "request.headers['x-tenant']",
			"request_host": "request.host"}, TagsToRemove: []string{"source_principal"}},
		{Name: "request_duration_milliseconds", Drop: true},
		{TagsToRemove: []string{"response_flags"}},
		{Name: "tcp_connections_opened_total", Drop: true},
		{Name: "tcp_sent_bytes_total", Dimensions: map[string]string{"destination_service": "string(destination.port) + '/tcp'"}},
		{Dimensions: map[string]string{"tenant": "request.headers['x-tenant']"}}, // added to every metric...
		{Name: "response_bytes", TagsToRemove: []string{"tenant"}},               // ...and removed again from one
		{Name: "request_messages_total", Drop: true},                             // not recorded by weft: nothing to drop
	}}
	stats := &hcmv3.HttpFilter{Name: "istio.stats", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, cfg)}}
	addr, plain, tcpAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	custom := withHCM(t, httpListener("custom", addr, "backend", nil), func(h *hcmv3.HttpConnectionManager) {
		h.HttpFilters = append([]*hcmv3.HttpFilter{stats}, h.HttpFilters...)
	})
	tcpChain := tcpChainProto("echo", "echo", 0)
	tcpChain.Filters = append([]*listenerv3.Filter{{Name: "istio.stats", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, cfg)}}}, tcpChain.Filters...)
	reg := prometheus.NewRegistry()
	e := New(slog.New(slog.DiscardHandler), Options{Registerer: reg})
	t.Cleanup(e.shutdown)
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{
		"custom": custom, "plain": httpListener("plain", plain, "backend", nil),
		"echo": {Name: "echo", Address: socketAddr(tcpAddr), FilterChains: []*listenerv3.FilterChain{tcpChain}}},
		Clusters: map[string]*clusterv3.Cluster{"backend": staticCluster("backend", netip.MustParseAddrPort(backend.Listener.Addr().String()), false),
			"echo": staticCluster("echo", netip.MustParseAddrPort(echo.Addr().String()), false)}}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
	req.Host = "reviews.example:9080"
	req.Header.Set("X-Tenant", "t1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	getStatus(t, "http://"+plain.String()+"/", "Host", "plain.example")
	pingTCP(t, e, tcpAddr)

	var custReq, plainReq string
	for _, s := range metricSeries(t, reg, "istio_requests_total") {
		switch {
		case hasLabel(s, "destination_service", "reviews.example:9080"):
			custReq = s
		case hasLabel(s, "destination_service", "unknown"):
			plainReq = s
		}
	}
	if !hasLabel(custReq, "request_protocol", "t1") || !hasLabel(custReq, "source_principal", "") || !hasLabel(custReq, "response_flags", "") {
		t.Errorf("customised istio_requests_total %q: want destination_service from the Host, request_protocol from x-tenant, source_principal and response_flags empty", custReq)
	}
	respBytes := metricSeries(t, reg, "istio_response_bytes")
	// The customised chain's series are the ones with response_flags
	// emptied.
	if !slicesAny(respBytes, func(s string) bool { return hasLabel(s, "tenant", "") && hasLabel(s, "response_flags", "") }) ||
		!slicesAny(metricSeries(t, reg, "istio_request_bytes"), func(s string) bool { return hasLabel(s, "tenant", "t1") }) {
		t.Errorf("istio_response_bytes %q: want the added tenant label removed again for it, kept on istio_request_bytes", respBytes)
	}
	if !hasLabel(custReq, "request_host", "reviews.example:9080") {
		t.Errorf("customised istio_requests_total %q: want the added label request_host", custReq)
	}
	// A metric has one label set: the other chain records the added label
	// empty (which Prometheus stores as no label).
	if !hasLabel(plainReq, "request_protocol", "http") || !hasLabel(plainReq, "response_flags", "-") || !hasLabel(plainReq, "request_host", "") {
		t.Errorf("standard istio_requests_total %q", plainReq)
	}
	if got := metricSeries(t, reg, "istio_request_duration_milliseconds"); len(got) != 1 || !hasLabel(got[0], "response_flags", "-") {
		t.Errorf("istio_request_duration_milliseconds %q: want only the standard chain's (dropped on the customised one)", got)
	}
	bytes := metricSeries(t, reg, "istio_request_bytes")
	if len(bytes) != 2 || !slicesAny(bytes, func(s string) bool {
		return hasLabel(s, "response_flags", "") && hasLabel(s, "request_protocol", "http")
	}) {
		t.Errorf("istio_request_bytes %q: want the customised chain's with response_flags emptied (a nameless entry) and its own labels otherwise", bytes)
	}
	if got := metricSeries(t, reg, "istio_tcp_connections_opened_total"); len(got) != 0 {
		t.Errorf("istio_tcp_connections_opened_total %q: dropped", got)
	}
	sent := metricSeries(t, reg, "istio_tcp_sent_bytes_total")
	if len(sent) != 1 || !hasLabel(sent[0], "destination_service", tcpAddrPort(tcpAddr)+"/tcp") || !hasLabel(sent[0], "response_flags", "") {
		t.Errorf("istio_tcp_sent_bytes_total %q: want destination_service from the expression, response_flags emptied", sent)
	}
	if got := metricSeries(t, reg, "istio_tcp_connections_closed_total"); len(got) != 1 || !hasLabel(got[0], "destination_service", "unknown") {
		t.Errorf("istio_tcp_connections_closed_total %q", got)
	}

	// Without a filter that adds it, the label goes again: the metrics
	// start from zero with Istio's standard labels.
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"plain": httpListener("plain", plain, "backend", nil)},
		Clusters: map[string]*clusterv3.Cluster{"backend": staticCluster("backend", netip.MustParseAddrPort(backend.Listener.Addr().String()), false)}}); err != nil {
		t.Fatal(err)
	}
	getStatus(t, "http://"+plain.String()+"/", "Host", "plain.example")
	if got := metricSeries(t, reg, "istio_requests_total"); len(got) != 1 || strings.Contains(got[0], "request_host") {
		t.Errorf("istio_requests_total after the filter went %q: want one series, without request_host", got)
	}

	// Config weft cannot honour is refused with the reason.
	for _, bad := range []*statspb.PluginConfig{
		{Metrics: []*statspb.MetricConfig{{Name: "requests_total", Dimensions: map[string]string{"request-host": "request.host"}}}},
		{Metrics: []*statspb.MetricConfig{{Name: "requests_total", Dimensions: map[string]string{"destination_service": "request.nope("}}}},
	} {
		l := withHCM(t, httpListener("bad", freeAddr(t), "backend", nil), func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "istio.stats", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, bad)}}}, h.HttpFilters...)
		})
		if _, err := compileListener(l); err == nil || !strings.Contains(err.Error(), "istio.stats") {
			t.Errorf("%v: err %v", bad, err)
		}
	}
}

func slicesAny(ss []string, f func(string) bool) bool {
	for _, s := range ss {
		if f(s) {
			return true
		}
	}
	return false
}

// tcpAddrPort is addr's port as text.
func tcpAddrPort(addr netip.AddrPort) string {
	return strings.TrimPrefix(addr.String(), addr.Addr().String()+":")
}

// tcpEcho is a loopback TCP server that echoes what it reads, until the
// test ends.
func tcpEcho(t *testing.T) net.Listener {
	t.Helper()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return echo
}

// metricSum adds up a metric's values over its series.
func metricSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestTCPBytesWhileOpen: an open TCP connection's bytes reach Istio's TCP
// byte counters every tcp_reporting_duration (istio.stats), as Envoy's
// stats filter reports them, not only when it closes; and each byte is
// counted once.
func TestTCPBytesWhileOpen(t *testing.T) {
	echo := tcpEcho(t)
	chain := tcpChainProto("echo", "echo", 0)
	cfg := &statspb.PluginConfig{TcpReportingDuration: durationpb.New(20 * time.Millisecond)}
	chain.Filters = append([]*listenerv3.Filter{{Name: "istio.stats", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, cfg)}}}, chain.Filters...)
	addr := freeAddr(t)
	reg := prometheus.NewRegistry()
	e := New(slog.New(slog.DiscardHandler), Options{Registerer: reg})
	t.Cleanup(e.shutdown)
	if err := e.Apply(&xdsclient.Snapshot{
		Listeners: map[string]*listenerv3.Listener{"echo": {Name: "echo", Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{chain}}},
		Clusters:  map[string]*clusterv3.Cluster{"echo": staticCluster("echo", netip.MustParseAddrPort(echo.Addr().String()), false)}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitBytes := func(received, sent float64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for metricSum(t, reg, "istio_tcp_received_bytes_total") != received || metricSum(t, reg, "istio_tcp_sent_bytes_total") != sent {
			if time.Now().After(deadline) {
				t.Fatalf("received %v, sent %v; want %v and %v", metricSum(t, reg, "istio_tcp_received_bytes_total"),
					metricSum(t, reg, "istio_tcp_sent_bytes_total"), received, sent)
			}
			time.Sleep(5 * time.Millisecond) // the proxy reports on its own clock
		}
	}
	buf := make([]byte, 16)
	for i, msg := range []string{"hello", "a second message"} {
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		n := float64(len("hello") + i*len("a second message"))
		waitBytes(n, n) // while the connection is open
	}
	if got := metricSum(t, reg, "istio_tcp_connections_closed_total"); got != 0 {
		t.Fatalf("closed %v, want the connection still open", got)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(t, reg, "istio_tcp_connections_closed_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the connection never counted as closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitBytes(21, 21) // nothing counted twice at the close

	// A reporting interval that is not positive is refused.
	bad := tcpChainProto("bad", "echo", 0)
	bad.Filters = append([]*listenerv3.Filter{{Name: "istio.stats", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t,
		&statspb.PluginConfig{TcpReportingDuration: durationpb.New(-time.Second)})}}}, bad.Filters...)
	if _, err := compileListener(&listenerv3.Listener{Name: "bad", Address: socketAddr(freeAddr(t)), FilterChains: []*listenerv3.FilterChain{bad}}); err == nil ||
		!strings.Contains(err.Error(), "tcp_reporting_duration") {
		t.Errorf("a negative tcp_reporting_duration: %v", err)
	}
}

// TestStatsChangesMetrics: a filter that only sets tcp_reporting_duration
// leaves its chain on the standard metrics path; one that drops a metric
// does not.
func TestStatsChangesMetrics(t *testing.T) {
	for _, c := range []struct {
		cfg  *statspb.PluginConfig
		want bool
	}{
		{&statspb.PluginConfig{TcpReportingDuration: durationpb.New(time.Second)}, false},
		{&statspb.PluginConfig{Metrics: []*statspb.MetricConfig{{Name: "custom_total", Drop: true}}}, false}, // not recorded by weft
		{&statspb.PluginConfig{Metrics: []*statspb.MetricConfig{{Name: "request_messages_total", Drop: true}}}, true},
		{&statspb.PluginConfig{Metrics: []*statspb.MetricConfig{{Name: "requests_total", Drop: true}}}, true},
		{&statspb.PluginConfig{Metrics: []*statspb.MetricConfig{{TagsToRemove: []string{"response_flags"}}}}, true},
		{&statspb.PluginConfig{Metrics: []*statspb.MetricConfig{{Dimensions: map[string]string{"request_host": "request.host"}}}}, true},
	} {
		sc, err := compileStats(mustAnyT(t, c.cfg))
		if err != nil {
			t.Fatal(err)
		}
		if got := sc.changesMetrics(); got != c.want {
			t.Errorf("%v: changesMetrics %v, want %v", c.cfg, got, c.want)
		}
	}
	if (*statsConfig)(nil).changesMetrics() {
		t.Error("no filter changes metrics")
	}
}
