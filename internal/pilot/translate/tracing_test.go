package translate

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
)

// describeTracing is an HCM's tracing in a line: collector cluster,
// sampling and the tags beyond Istio's ("-istio" when Istio's are left
// out; nil: none).
func describeTracing(t *testing.T, tr *hcmv3.HttpConnectionManager_Tracing) string {
	t.Helper()
	if tr == nil {
		return ""
	}
	var tags []string
	istio := 0
	for _, ct := range tr.GetCustomTags() {
		if !strings.HasPrefix(ct.GetTag(), "istio.") {
			tags = append(tags, ct.GetTag())
		} else {
			istio++
		}
	}
	sort.Strings(tags)
	if istio == 0 { // enableIstioTags: false
		tags = append(tags, "-istio")
	}
	if tr.GetNoContextPropagation() { // disableContextPropagation
		tags = append(tags, "-propagation")
	}
	if oc := (&tracev3.OpenTelemetryConfig{}); tr.GetProvider().GetTypedConfig().MessageIs(oc) {
		if err := tr.GetProvider().GetTypedConfig().UnmarshalTo(oc); err != nil || tr.GetProvider().GetName() != otelTracer {
			t.Fatalf("%s: %v", tr.GetProvider().GetName(), err)
		}
		if gs := oc.GetGrpcService(); gs != nil {
			var md []string
			for _, h := range gs.GetInitialMetadata() {
				md = append(md, h.GetKey()+"="+h.GetValue())
			}
			return fmt.Sprintf("otlp/grpc %s %s %s %v %g%% %v %v", gs.GetEnvoyGrpc().GetClusterName(), gs.GetEnvoyGrpc().GetAuthority(),
				oc.GetServiceName(), gs.GetTimeout().AsDuration(), tr.GetRandomSampling().GetValue(), tags, md)
		}
		hs := oc.GetHttpService()
		var hdr []string
		for _, h := range hs.GetRequestHeadersToAdd() {
			hdr = append(hdr, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		return fmt.Sprintf("otlp/http %s %s %s %v %g%% %v %v", hs.GetHttpUri().GetCluster(), hs.GetHttpUri().GetUri(),
			oc.GetServiceName(), hs.GetHttpUri().GetTimeout().AsDuration(), tr.GetRandomSampling().GetValue(), tags, hdr)
	}
	zc := &tracev3.ZipkinConfig{}
	if err := tr.GetProvider().GetTypedConfig().UnmarshalTo(zc); err != nil || tr.GetProvider().GetName() != zipkinTracer {
		t.Fatalf("%s: %v", tr.GetProvider().GetName(), err)
	}
	cluster := zc.GetCollectorCluster()
	if cs := zc.GetCollectorService(); cs != nil {
		if zc.GetCollectorCluster() != "" || zc.GetCollectorEndpoint() != "" || zc.GetCollectorHostname() != "" {
			t.Errorf("zipkin %v: collector_service beside the older fields", zc)
		}
		var hdr []string
		for _, h := range cs.GetRequestHeadersToAdd() {
			hdr = append(hdr, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		return fmt.Sprintf("%s %g%% %v via %s %v %v", cs.GetHttpUri().GetCluster(), tr.GetRandomSampling().GetValue(), tags,
			cs.GetHttpUri().GetUri(), cs.GetHttpUri().GetTimeout().AsDuration(), hdr)
	}
	d := fmt.Sprintf("%s %g%% %v", cluster, tr.GetRandomSampling().GetValue(), tags)
	if p := zc.GetCollectorEndpoint(); p != "/api/v2/spans" {
		d += " " + p
	}
	if !zc.GetTraceId_128Bit() {
		d += " 64-bit"
	}
	if zc.GetTraceContextOption() == tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION {
		d += " w3c"
	}
	return d
}

// sideTracing returns the tracing of the proxy's outbound and inbound
// HCMs, checking that every HCM of a side has the same.
func sideTracing(t *testing.T, ls []*listenerv3.Listener) (client, server string) {
	t.Helper()
	seen := map[corev3.TrafficDirection]map[string]bool{}
	for _, l := range ls {
		chains := append(append([]*listenerv3.FilterChain(nil), l.GetFilterChains()...), l.GetDefaultFilterChain())
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				if !f.GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{}) {
					continue
				}
				h := ldsUnpack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
				d := l.GetTrafficDirection()
				if seen[d] == nil {
					seen[d] = map[string]bool{}
				}
				seen[d][describeTracing(t, h.GetTracing())] = true
			}
		}
	}
	one := func(d corev3.TrafficDirection) string {
		if len(seen[d]) != 1 {
			t.Fatalf("%v HCMs have tracing %v, want one setting", d, seen[d])
		}
		for k := range seen[d] {
			return k
		}
		return ""
	}
	return one(corev3.TrafficDirection_OUTBOUND), one(corev3.TrafficDirection_INBOUND)
}

// TestLDSTracing: the installation guide's tracing settings (golden).
func TestLDSTracing(t *testing.T) {
	r := runLDSCase(t, "tracing")
	client, server := sideTracing(t, r.listeners)
	const want = "outbound|9411||zipkin.istio-system.svc.cluster.local 100% []"
	if client != want || server != want {
		t.Errorf("tracing: client %q server %q, want %q on both", client, server, want)
	}
}

// TestTracingPrecedence: which tracer and sampling a sidecar gets from
// the mesh config and Telemetry resources.
func TestTracingPrecedence(t *testing.T) {
	tel := func(ns, name, spec string) *model.Config { return telemetryConfig(t, ns, name, spec) }
	const zipkin = "outbound|9411||zipkin.istio-system.svc.cluster.local"
	const jaeger = "outbound|9411||jaeger-collector.observability.svc.cluster.local"
	providers := map[string]model.TracingProvider{
		"zipkin":  {Service: "zipkin.istio-system.svc.cluster.local", Port: 9411},
		"jaeger":  {Service: "observability/jaeger-collector.observability.svc.cluster.local", Port: 9411},
		"nowhere": {Service: "tempo.observability.svc.cluster.local", Port: 9411},
		"jaeger-w3c": {Service: "jaeger-collector.observability.svc.cluster.local", Port: 9411, Path: "/zipkin/spans",
			TraceID64: true, W3C: true},
		"jaeger-auth": {Service: "jaeger-collector.observability.svc.cluster.local", Port: 9411,
			Headers: []model.Header{{Name: "Authorization", Value: "Bearer x"}}},
		"otel": {OTel: true, Service: "otel-collector.observability.svc.cluster.local", Port: 4317, Timeout: 3 * time.Second,
			Headers: []model.Header{{Name: "X-Tenant", Value: "a"}}},
		"otel-http": {OTel: true, OTLPHTTP: true, Service: "otel-collector.observability.svc.cluster.local", Port: 4318, Path: "/v1/traces",
			Headers: []model.Header{{Name: "Authorization", Value: "Bearer x"}}},
	}
	// legacy is defaultConfig.tracing.zipkin.address as Istio's add-on
	// names the collector (Istio's default before 1.22).
	legacy := func(m *model.Tracing) { m.ZipkinAddress = "zipkin.istio-system:9411" }
	const otelGRPC = "otlp/grpc outbound|4317||otel-collector.observability.svc.cluster.local otel-collector.observability.svc.cluster.local a.default 3s"
	const otelHTTP = "otlp/http outbound|4318||otel-collector.observability.svc.cluster.local otel-collector.observability.svc.cluster.local/v1/traces a.default 5s"
	for name, tc := range map[string]struct {
		tracing        func(*model.Tracing)
		noZipkin       bool
		configs        []*model.Config
		client, server string
		warning        string
	}{
		// Istio 1.22 dropped the default zipkin.istio-system:9411.
		"istio default, zipkin installed":  {},
		"zipkin address, zipkin installed": {tracing: legacy, client: zipkin + " 1% []", server: zipkin + " 1% []"},
		"zipkin address, no zipkin": {tracing: legacy, noZipkin: true,
			client: "outbound|9411||zipkin.istio-system 1% []", server: "outbound|9411||zipkin.istio-system 1% []",
			warning: "zipkin.address zipkin.istio-system:9411: no service zipkin.istio-system with port 9411 is visible to this proxy; it propagates trace headers and drops its spans"},
		"enableTracing false": {tracing: func(m *model.Tracing) { legacy(m); m.Enabled = false }},
		"mesh sampling": {tracing: func(m *model.Tracing) { legacy(m); m.Sampling = 25 },
			client: zipkin + " 25% []", server: zipkin + " 25% []"},
		"default provider": {tracing: func(m *model.Tracing) { m.Providers = providers; m.DefaultProviders = []string{"jaeger"} },
			client: jaeger + " 1% []", server: jaeger + " 1% []"},
		"provider path, 64-bit ids and W3C": {tracing: func(m *model.Tracing) { m.Providers = providers; m.DefaultProviders = []string{"jaeger-w3c"} },
			client: jaeger + " 1% [] /zipkin/spans 64-bit w3c", server: jaeger + " 1% [] /zipkin/spans 64-bit w3c"},
		"zipkin provider with headers": {tracing: func(m *model.Tracing) { m.Providers = providers; m.DefaultProviders = []string{"jaeger-auth"} },
			client: jaeger + " 1% [] via http://jaeger-collector.observability.svc.cluster.local/api/v2/spans 5s [Authorization=Bearer x]",
			server: jaeger + " 1% [] via http://jaeger-collector.observability.svc.cluster.local/api/v2/spans 5s [Authorization=Bearer x]"},
		"opentelemetry over gRPC": {tracing: func(m *model.Tracing) { m.Providers = providers; m.DefaultProviders = []string{"otel"} },
			client: otelGRPC + " 1% [] [x-tenant=a]", server: otelGRPC + " 1% [] [x-tenant=a]"},
		"opentelemetry over HTTP from a Telemetry": {tracing: func(m *model.Tracing) { m.Providers = providers },
			configs: []*model.Config{tel("istio-system", "mesh", `{"tracing": [{"providers": [{"name": "otel-http"}], "randomSamplingPercentage": 5}]}`)},
			client:  otelHTTP + " 5% [] [Authorization=Bearer x]", server: otelHTTP + " 5% [] [Authorization=Bearer x]"},
		"telemetry provider and sampling": {tracing: func(m *model.Tracing) { m.Providers = providers },
			configs: []*model.Config{tel("istio-system", "mesh", `{"tracing": [{"providers": [{"name": "jaeger"}], "randomSamplingPercentage": 100,
				"customTags": {"team": {"literal": {"value": "a"}}, "user": {"header": {"name": "x-user"}}}}]}`)},
			client: jaeger + " 100% [team user]", server: jaeger + " 100% [team user]"},
		"namespace sampling over root provider": {tracing: func(m *model.Tracing) { m.Providers = providers },
			configs: []*model.Config{
				tel("istio-system", "mesh", `{"tracing": [{"providers": [{"name": "jaeger"}], "randomSamplingPercentage": 10}]}`),
				tel("default", "ns", `{"tracing": [{"randomSamplingPercentage": 50}]}`)},
			client: jaeger + " 50% []", server: jaeger + " 50% []"},
		"workload disables reporting": {tracing: legacy, configs: []*model.Config{
			tel("default", "wl", `{"selector": {"matchLabels": {"app": "a"}}, "tracing": [{"disableSpanReporting": true}]}`)}},
		"istio tags off for the workload": {tracing: func(m *model.Tracing) { m.Providers = providers },
			configs: []*model.Config{
				tel("istio-system", "mesh", `{"tracing": [{"providers": [{"name": "jaeger"}], "enableIstioTags": true}]}`),
				tel("default", "wl", `{"selector": {"matchLabels": {"app": "a"}}, "tracing": [{"enableIstioTags": false, "customTags": {"team": {"literal": {"value": "a"}}}}]}`)},
			client: jaeger + " 1% [team -istio]", server: jaeger + " 1% [team -istio]"},
		// An egress gateway's or a workload's spans are still reported, but
		// the trace stops there; a later scope can turn it back on.
		"context propagation off for the namespace": {tracing: legacy, configs: []*model.Config{
			tel("default", "ns", `{"tracing": [{"disableContextPropagation": true}]}`)},
			client: zipkin + " 1% [-propagation]", server: zipkin + " 1% [-propagation]"},
		"context propagation back on for the workload": {tracing: legacy, configs: []*model.Config{
			tel("default", "ns", `{"tracing": [{"disableContextPropagation": true}]}`),
			tel("default", "wl", `{"selector": {"matchLabels": {"app": "a"}}, "tracing": [{"match": {"mode": "SERVER"}, "disableContextPropagation": false}]}`)},
			client: zipkin + " 1% [-propagation]", server: zipkin + " 1% []"},
		"request-id sampling off is warned about": {tracing: legacy, configs: []*model.Config{
			tel("default", "ns", `{"tracing": [{"useRequestIdForTraceSampling": false}]}`)},
			client: zipkin + " 1% []", server: zipkin + " 1% []", warning: "useRequestIdForTraceSampling: false has no effect"},
		"client side only": {tracing: legacy, configs: []*model.Config{
			tel("istio-system", "mesh", `{"tracing": [{"match": {"mode": "SERVER"}, "disableSpanReporting": true}]}`)},
			client: zipkin + " 1% []"},
		"sampling out of range": {tracing: legacy, configs: []*model.Config{tel("default", "ns", `{"tracing": [{"randomSamplingPercentage": 250}]}`)},
			client: zipkin + " 1% []", server: zipkin + " 1% []", warning: "randomSamplingPercentage 250 is not in [0, 100]"},
		"unknown provider": {configs: []*model.Config{tel("default", "ns", `{"tracing": [{"providers": [{"name": "otel"}]}]}`)},
			warning: `tracing: provider "otel" is not a zipkin or opentelemetry extensionProvider`},
		"provider without service": {tracing: func(m *model.Tracing) { m.Providers = providers; m.DefaultProviders = []string{"nowhere"} },
			warning: `tracing: provider "nowhere": no service tempo.observability.svc.cluster.local with port 9411 is visible`},
	} {
		t.Run(name, func(t *testing.T) {
			mesh := model.DefaultMesh()
			if tc.tracing != nil {
				tc.tracing(&mesh.Tracing)
			}
			for i, c := range tc.configs {
				c.CreationTime = time.Unix(int64(i), 0)
			}
			svcs := []registry.Service{
				{Hostname: "jaeger-collector.observability.svc.cluster.local", Namespace: "observability", Ports: []registry.Port{{Name: "http", Number: 9411, Protocol: "HTTP"}}},
				{Hostname: "otel-collector.observability.svc.cluster.local", Namespace: "observability", Ports: []registry.Port{
					{Name: "grpc-otlp", Number: 4317, Protocol: "GRPC"}, {Name: "http-otlp", Number: 4318, Protocol: "HTTP"}}},
				{Hostname: "reviews.default.svc.cluster.local", Namespace: "default", Addresses: []string{"10.0.0.13"}, Ports: []registry.Port{{Name: "http", Number: 9080, Protocol: "HTTP"}}},
			}
			if !tc.noZipkin {
				svcs = append(svcs, registry.Service{Hostname: "zipkin.istio-system.svc.cluster.local", Namespace: "istio-system",
					Ports: []registry.Port{{Name: "http", Number: 9411, Protocol: "HTTP"}}})
			}
			reg := &registry.Snapshot{Version: 1, Services: svcs, Endpoints: map[string][]registry.Endpoint{
				registry.Key("default", "reviews.default.svc.cluster.local"): {{Hostname: "reviews.default.svc.cluster.local", Namespace: "default",
					Address: "10.0.0.1", Labels: map[string]string{"app": "a"}, Healthy: true}}}}
			s := model.NewSnapshot("1", mesh, tc.configs, reg)
			p := &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "a"}, IPs: []string{"10.0.0.1"}}
			r := Build(s, p)
			for _, l := range r.Listeners {
				ldsValidate(t, l)
			}
			client, server := sideTracing(t, r.Listeners)
			if diff := cmp.Diff([]string{client, server}, []string{tc.client, tc.server}); diff != "" {
				t.Errorf("client, server tracing (-got +want)\n%s", diff)
			}
			if tc.warning != "" {
				(&ldsResult{warnings: r.Warnings}).wantWarning(t, tc.warning)
			}
		})
	}
}
