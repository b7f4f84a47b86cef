package translate

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	stats "istio.io/api/envoy/extensions/stats"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// describeStats is an istio.stats config in a line: per metric ("*" for
// every one) drop, -removed labels and +label=expression; "" for none.
func describeStats(t *testing.T, pc *stats.PluginConfig) string {
	t.Helper()
	if pc == nil {
		return ""
	}
	var out []string
	for i, mc := range pc.GetMetrics() {
		if i > 0 && mc.GetName() <= pc.GetMetrics()[i-1].GetName() {
			t.Errorf("istio.stats metrics not sorted by name: %q after %q", mc.GetName(), pc.GetMetrics()[i-1].GetName())
		}
		if !sort.StringsAreSorted(mc.GetTagsToRemove()) {
			t.Errorf("istio.stats %q: tags_to_remove %v not sorted", mc.GetName(), mc.GetTagsToRemove())
		}
		name := mc.GetName()
		if name == "" {
			name = "*"
		}
		parts := []string{name}
		if mc.GetDrop() {
			parts = append(parts, "drop")
		}
		for _, tag := range mc.GetTagsToRemove() {
			if _, ok := mc.GetDimensions()[tag]; ok {
				t.Errorf("istio.stats %q: tag %q both removed and set", mc.GetName(), tag)
			}
			parts = append(parts, "-"+tag)
		}
		var dims []string
		for k, v := range mc.GetDimensions() {
			dims = append(dims, "+"+k+"="+v)
		}
		sort.Strings(dims)
		out = append(out, strings.Join(append(parts, dims...), " "))
	}
	if d := pc.GetTcpReportingDuration(); d != nil {
		out = append(out, "every "+d.AsDuration().String())
	}
	return strings.Join(out, "; ")
}

// chainStats returns a chain's istio.stats config (nil: none) and
// whether the chain is HTTP, checking that the filter sits just before
// the router or tcp_proxy.
func chainStats(t *testing.T, l *listenerv3.Listener, fc *listenerv3.FilterChain) (*stats.PluginConfig, bool) {
	t.Helper()
	fs := fc.GetFilters()
	if len(fs) > 0 && fs[0].GetName() == hcmFilterName {
		h := ldsUnpack(t, fs[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
		hf := h.GetHttpFilters()
		if len(hf) == 0 || hf[len(hf)-1].GetName() != routerFilterName {
			t.Fatalf("%s/%s: last HTTP filter is not the router", l.GetName(), fc.GetName())
		}
		var pc *stats.PluginConfig
		for i, f := range hf {
			if f.GetName() != statsFilterName {
				continue
			}
			if pc != nil || i != len(hf)-2 {
				t.Errorf("%s/%s: istio.stats at %d of %d HTTP filters, want once, just before the router", l.GetName(), fc.GetName(), i, len(hf))
			}
			pc = ldsUnpack(t, f.GetTypedConfig(), &stats.PluginConfig{})
		}
		return pc, true
	}
	if len(fs) == 0 || fs[len(fs)-1].GetName() != tcpProxyFilterName {
		t.Fatalf("%s/%s: last network filter is not tcp_proxy", l.GetName(), fc.GetName())
	}
	var pc *stats.PluginConfig
	for i, f := range fs {
		if f.GetName() != statsFilterName {
			continue
		}
		if pc != nil || i != len(fs)-2 {
			t.Errorf("%s/%s: istio.stats at %d of %d network filters, want once, just before tcp_proxy", l.GetName(), fc.GetName(), i, len(fs))
		}
		pc = ldsUnpack(t, f.GetTypedConfig(), &stats.PluginConfig{})
	}
	return pc, false
}

// sideStats returns the istio.stats config of the proxy's outbound and
// inbound chains (describeStats), checking that every connection manager
// and tcp_proxy chain of a side has the same one and that each side has
// both kinds of chain.
func sideStats(t *testing.T, ls []*listenerv3.Listener) (client, server string) {
	t.Helper()
	type side struct {
		configs   map[string]bool
		http, tcp int
	}
	sides := map[corev3.TrafficDirection]*side{}
	for _, l := range ls {
		chains := append(append([]*listenerv3.FilterChain(nil), l.GetFilterChains()...), l.GetDefaultFilterChain())
		for _, fc := range chains {
			if fc == nil {
				continue
			}
			pc, isHTTP := chainStats(t, l, fc)
			s := sides[l.GetTrafficDirection()]
			if s == nil {
				s = &side{configs: map[string]bool{}}
				sides[l.GetTrafficDirection()] = s
			}
			if isHTTP {
				s.http++
			} else {
				s.tcp++
			}
			s.configs[describeStats(t, pc)] = true
		}
	}
	one := func(d corev3.TrafficDirection) string {
		s := sides[d]
		if s == nil || s.http == 0 || s.tcp == 0 {
			t.Fatalf("%v: want HTTP and TCP chains, got %+v", d, s)
		}
		if len(s.configs) != 1 {
			t.Fatalf("%v chains have istio.stats configs %v, want one", d, s.configs)
		}
		for k := range s.configs {
			return k
		}
		return ""
	}
	return one(corev3.TrafficDirection_OUTBOUND), one(corev3.TrafficDirection_INBOUND)
}

// metricsSnapshot is a mesh where the proxy (default/a, 10.0.0.1) serves
// HTTP (reviews:9080) and TCP (db:5432) and sees HTTP and TCP services,
// one of them routed by a weighted TCP route, with configs added.
func metricsSnapshot(t *testing.T, configs ...*model.Config) (*model.Snapshot, *model.Proxy) {
	t.Helper()
	vs := &networking.VirtualService{}
	if err := protojson.Unmarshal([]byte(`{"hosts": ["mysql.default.svc.cluster.local"], "tcp": [{"route": [
		{"destination": {"host": "mysql.default.svc.cluster.local"}, "weight": 80},
		{"destination": {"host": "mysql-b.default.svc.cluster.local"}, "weight": 20}]}]}`), vs); err != nil {
		t.Fatal(err)
	}
	configs = append([]*model.Config{{Kind: "VirtualService", Namespace: "default", Name: "mysql", Spec: vs}}, configs...)
	for i, c := range configs {
		c.CreationTime = time.Unix(int64(i), 0)
	}
	svc := func(name, addr string, port uint32, protocol string) registry.Service {
		return registry.Service{Hostname: name + ".default.svc.cluster.local", Namespace: "default", Addresses: []string{addr},
			Ports: []registry.Port{{Name: strings.ToLower(protocol), Number: port, Protocol: protocol}}}
	}
	ep := func(name string) []registry.Endpoint {
		return []registry.Endpoint{{Hostname: name + ".default.svc.cluster.local", Namespace: "default", Address: "10.0.0.1",
			Labels: map[string]string{"app": "a"}, Healthy: true}}
	}
	reg := &registry.Snapshot{Version: 1, Services: []registry.Service{
		svc("db", "10.0.0.14", 5432, "TCP"),
		svc("mysql", "10.0.0.20", 3306, "TCP"),
		svc("mysql-b", "10.0.0.21", 3306, "TCP"),
		svc("reviews", "10.0.0.13", 9080, "HTTP"),
	}, Endpoints: map[string][]registry.Endpoint{
		registry.Key("default", "db.default.svc.cluster.local"):      ep("db"),
		registry.Key("default", "reviews.default.svc.cluster.local"): ep("reviews"),
	}}
	s := model.NewSnapshot("1", model.DefaultMesh(), configs, reg)
	p := &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "a"}, IPs: []string{"10.0.0.1"}}
	return s, p
}

// telemetryConfig is a Telemetry from its JSON spec.
func telemetryConfig(t *testing.T, ns, name, spec string) *model.Config {
	t.Helper()
	tm := &telemetry.Telemetry{}
	if err := protojson.Unmarshal([]byte(spec), tm); err != nil {
		t.Fatalf("%s: %v", spec, err)
	}
	return &model.Config{Kind: telemetryKind, Namespace: ns, Name: name, Spec: tm}
}

// TestMetricsPrecedence: the istio.stats config each side of a sidecar
// gets from the Telemetry resources' metrics, on every connection manager
// and tcp_proxy chain.
func TestMetricsPrecedence(t *testing.T) {
	const removeFlags = `{"metrics": [{"overrides": [{"match": {"metric": "ALL_METRICS"}, "tagOverrides": {"response_flags": {"operation": "REMOVE"}}}]}]}`
	for name, tc := range map[string]struct {
		root, ns, workload string // Telemetry specs ("": none)
		client, server     string
		warning            string
	}{
		"no telemetry":              {},
		"telemetry without metrics": {root: `{"tracing": [{"randomSamplingPercentage": 10}]}`},
		"metrics without overrides": {root: `{"metrics": [{"providers": [{"name": "prometheus"}]}]}`},
		"root removes a tag from all metrics": {root: removeFlags,
			client: "* -response_flags", server: "* -response_flags"},
		"namespace adds a server request count tag": {
			ns: `{"metrics": [{"providers": [{"name": "prometheus"}], "overrides": [{"match": {"metric": "REQUEST_COUNT", "mode": "SERVER"},
				"tagOverrides": {"destination_service": {"value": "request.host"}}}]}]}`,
			server: "requests_total +destination_service=request.host"},
		"an expression weft-proxy cannot compile is left out": {
			ns: `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"destination_app": {"value": "upstream_peer.app"},
				"response_flags": {"operation": "REMOVE"}}}]}]}`,
			client: "requests_total -response_flags", server: "requests_total -response_flags",
			warning: `metrics tagOverrides "destination_app": expression "upstream_peer.app"`},
		"a label that is not a Prometheus name is left out": {
			ns: `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"request-host": {"value": "request.host"},
				"request_host": {"value": "request.host"}}}]}]}`,
			client: "requests_total +request_host=request.host", server: "requests_total +request_host=request.host",
			warning: `metrics tagOverrides "request-host": not a Prometheus label name; left out`},
		"client side only": {
			root:   `{"metrics": [{"overrides": [{"match": {"metric": "TCP_SENT_BYTES", "mode": "CLIENT"}, "tagOverrides": {"destination_version": {"operation": "REMOVE"}}}]}]}`,
			client: "tcp_sent_bytes_total -destination_version"},
		"workload disables request duration": {root: removeFlags,
			workload: `{"selector": {"matchLabels": {"app": "a"}}, "metrics": [{"overrides": [{"match": {"metric": "REQUEST_DURATION"}, "disabled": true}]}]}`,
			client:   "* -response_flags; request_duration_milliseconds drop",
			server:   "* -response_flags; request_duration_milliseconds drop"},
		"workload of another app": {root: removeFlags,
			workload: `{"selector": {"matchLabels": {"app": "b"}}, "metrics": [{"overrides": [{"match": {"metric": "REQUEST_DURATION"}, "disabled": true}]}]}`,
			client:   "* -response_flags", server: "* -response_flags"},
		"namespace upsert replaces a root remove": {
			root: `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {
				"destination_version": {"operation": "REMOVE"}, "source_version": {"operation": "REMOVE"}}}]}]}`,
			ns:     `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"destination_version": {"value": "'v1'"}}}]}]}`,
			client: "requests_total -source_version +destination_version='v1'",
			server: "requests_total -source_version +destination_version='v1'"},
		"workload remove replaces a namespace upsert": {
			ns:       `{"metrics": [{"overrides": [{"tagOverrides": {"request_protocol": {"operation": "UPSERT", "value": "request.protocol"}}}]}]}`,
			workload: `{"selector": {"matchLabels": {"app": "a"}}, "metrics": [{"overrides": [{"tagOverrides": {"request_protocol": {"operation": "REMOVE"}}}]}]}`,
			client:   "* -request_protocol", server: "* -request_protocol"},
		"all metrics override replaces an earlier one of a metric": {
			root:   `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"destination_version": {"value": "'v1'"}}}]}]}`,
			ns:     `{"metrics": [{"overrides": [{"match": {"metric": "ALL_METRICS"}, "tagOverrides": {"destination_version": {"operation": "REMOVE"}}}]}]}`,
			client: "* -destination_version; requests_total -destination_version",
			server: "* -destination_version; requests_total -destination_version"},
		"a metric override replaces an earlier one of all metrics": {
			root:   `{"metrics": [{"overrides": [{"match": {"metric": "ALL_METRICS"}, "tagOverrides": {"destination_version": {"operation": "REMOVE"}}}]}]}`,
			ns:     `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"destination_version": {"value": "'v1'"}}}]}]}`,
			client: "* -destination_version; requests_total +destination_version='v1'",
			server: "* -destination_version; requests_total +destination_version='v1'"},
		"disabled false enables again": {
			root:   `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_SIZE"}, "disabled": true}, {"match": {"metric": "RESPONSE_SIZE"}, "disabled": true}]}]}`,
			ns:     `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_SIZE"}, "disabled": false}]}]}`,
			client: "request_bytes; response_bytes drop", server: "request_bytes; response_bytes drop"},
		"custom metric": {
			root:   `{"metrics": [{"overrides": [{"match": {"customMetric": "my_requests_total"}, "tagOverrides": {"team": {"value": "'a'"}}}]}]}`,
			client: "my_requests_total +team='a'", server: "my_requests_total +team='a'"},
		"all metrics disabled": {
			root:   `{"metrics": [{"overrides": [{"match": {"mode": "SERVER"}, "tagOverrides": {"response_flags": {"operation": "REMOVE"}}}, {"disabled": true}]}]}`,
			client: "* drop", server: "* drop"},
		// As istiod: disabling every metric drops the filter; any later
		// override of the side brings it back, with the earlier settings.
		"all metrics disabled, then a namespace override": {
			root: `{"metrics": [{"overrides": [{"match": {"mode": "SERVER"}, "tagOverrides": {"response_flags": {"operation": "REMOVE"}}}, {"disabled": true}]}]}`,
			ns: `{"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT", "mode": "SERVER"},
				"tagOverrides": {"destination_service": {"value": "request.host"}}}]}]}`,
			client: "* drop", server: "* -response_flags; requests_total +destination_service=request.host"},
		"other provider": {root: removeFlags,
			ns:     `{"metrics": [{"providers": [{"name": "stackdriver"}], "overrides": [{"disabled": true}]}, {"overrides": [{"disabled": true}]}]}`,
			client: "* -response_flags", server: "* -response_flags",
			warning: "Telemetry/default/ns: metrics for providers [stackdriver]: weft only has the prometheus provider; ignored"},
		"prometheus among other providers": {
			root:   `{"metrics": [{"providers": [{"name": "stackdriver"}, {"name": "Prometheus"}], "overrides": [{"match": {"metric": "TCP_OPENED_CONNECTIONS"}, "disabled": true}]}]}`,
			client: "tcp_connections_opened_total drop", server: "tcp_connections_opened_total drop"},
		"reporting interval": {
			root:   `{"metrics": [{"reportingInterval": "30s", "overrides": [{"match": {"metric": "TCP_CLOSED_CONNECTIONS"}, "disabled": true}]}]}`,
			client: "tcp_connections_closed_total drop; every 30s", server: "tcp_connections_closed_total drop; every 30s"},
		"reporting interval alone, the namespace's over the root's": {
			root:   `{"metrics": [{"reportingInterval": "30s"}]}`,
			ns:     `{"metrics": [{"reportingInterval": "5s"}]}`,
			client: "every 5s", server: "every 5s"},
		"a reporting interval that is not positive": {
			root:    `{"metrics": [{"reportingInterval": "0s"}]}`,
			warning: "metrics reportingInterval 0s is not a positive duration; ignored"},
		"upsert without a value": {
			root:   `{"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "UPSERT"}, "response_flags": {"operation": "REMOVE"}}}]}]}`,
			client: "* -response_flags", server: "* -response_flags",
			warning: `metrics tagOverrides "x": UPSERT needs a value; ignored`},
		"targetRef": {
			ns:      `{"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}], "metrics": [{"overrides": [{"disabled": true}]}]}`,
			warning: "targetRef is not supported by weft (gateways only); accessLogging, metrics and tracing ignored"},
	} {
		t.Run(name, func(t *testing.T) {
			var configs []*model.Config
			if tc.root != "" {
				configs = append(configs, telemetryConfig(t, "istio-system", "mesh", tc.root))
			}
			if tc.ns != "" {
				configs = append(configs, telemetryConfig(t, "default", "ns", tc.ns))
			}
			if tc.workload != "" {
				configs = append(configs, telemetryConfig(t, "default", "wl", tc.workload))
			}
			r := Build(metricsSnapshot(t, configs...))
			for _, l := range r.Listeners {
				ldsValidate(t, l)
			}
			client, server := sideStats(t, r.Listeners)
			if diff := cmp.Diff([]string{client, server}, []string{tc.client, tc.server}); diff != "" {
				t.Errorf("client, server istio.stats (-got +want)\n%s", diff)
			}
			if tc.warning != "" {
				(&ldsResult{warnings: r.Warnings}).wantWarning(t, tc.warning)
			} else if len(r.Warnings) > 0 {
				t.Errorf("warnings %q, want none", r.Warnings)
			}
		})
	}
}

// TestStatsFilterOrder: istio.stats goes just before the router and
// tcp_proxy, after the inbound RBAC filters, on every kind of chain.
func TestStatsFilterOrder(t *testing.T) {
	ap := &security.AuthorizationPolicy{}
	if err := protojson.Unmarshal([]byte(`{"rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}`), ap); err != nil {
		t.Fatal(err)
	}
	tel := telemetryConfig(t, "istio-system", "mesh", `{"metrics": [{"overrides": [{"tagOverrides": {"response_flags": {"operation": "REMOVE"}}}]}]}`)
	r := Build(metricsSnapshot(t, tel, &model.Config{Kind: authorizationPolicyKind, Namespace: "default", Name: "allow", Spec: ap}))
	got := map[string]bool{}
	var want *stats.PluginConfig
	for _, l := range r.Listeners {
		for _, fc := range append(append([]*listenerv3.FilterChain(nil), l.GetFilterChains()...), l.GetDefaultFilterChain()) {
			if fc == nil {
				continue
			}
			pc, isHTTP := chainStats(t, l, fc)
			if want == nil {
				want = pc
			}
			if !proto.Equal(pc, want) {
				t.Errorf("%s/%s: istio.stats %v, want %v", l.GetName(), fc.GetName(), pc, want)
			}
			var names []string
			if isHTTP {
				names = httpFilterNames(t, fc)
			} else {
				for _, f := range fc.GetFilters() {
					names = append(names, f.GetName())
				}
			}
			got[fmt.Sprintf("%v %v", l.GetTrafficDirection(), names)] = true
		}
	}
	wantChains := []string{
		fmt.Sprintf("INBOUND %v", []string{httpRBACFilterName, statsFilterName, routerFilterName}),
		fmt.Sprintf("INBOUND %v", []string{tcpRBACFilterName, statsFilterName, tcpProxyFilterName}),
		fmt.Sprintf("OUTBOUND %v", []string{faultFilterName, corsFilterName, statsFilterName, routerFilterName}),
		fmt.Sprintf("OUTBOUND %v", []string{statsFilterName, tcpProxyFilterName}),
	}
	var gotChains []string
	for k := range got {
		gotChains = append(gotChains, k)
	}
	slices.Sort(gotChains)
	if diff := cmp.Diff(gotChains, wantChains); diff != "" {
		t.Errorf("filters of the chains (-got +want)\n%s", diff)
	}
	wantCfg := &stats.PluginConfig{Metrics: []*stats.MetricConfig{{TagsToRemove: []string{"response_flags"}}}}
	if !proto.Equal(want, wantCfg) {
		t.Errorf("istio.stats config %v, want %v", want, wantCfg)
	}
}
