package translate

import (
	"fmt"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/registry"
)

// describeLogs renders access logs as "path text|json [filter]".
func describeLogs(t *testing.T, als []*accesslogv3.AccessLog) []string {
	t.Helper()
	var out []string
	for _, al := range als {
		if al.GetName() == otelAccessLogName {
			out = append(out, describeOTelLog(t, al))
			continue
		}
		if al.GetName() != fileAccessLogName {
			t.Fatalf("access log named %q", al.GetName())
		}
		f := ldsUnpack(t, al.GetTypedConfig(), &filev3.FileAccessLog{})
		kind := "text"
		if f.GetLogFormat().GetJsonFormat() != nil {
			kind = "json"
		}
		s := f.GetPath() + " " + kind
		if ef := al.GetFilter().GetExtensionFilter(); ef != nil {
			s += " [" + ldsUnpack(t, ef.GetTypedConfig(), &celv3.ExpressionFilter{}).GetExpression() + "]"
		}
		out = append(out, s)
	}
	return out
}

// describeOTelLog renders an OpenTelemetry access log as "otel cluster
// authority log_name body-or-istio attr=format… [filter]", checking what
// istiod always sets.
func describeOTelLog(t *testing.T, al *accesslogv3.AccessLog) string {
	t.Helper()
	c := ldsUnpack(t, al.GetTypedConfig(), &otelalsv3.OpenTelemetryAccessLogConfig{})
	if !c.GetDisableBuiltinLabels() {
		t.Errorf("OpenTelemetry access log %v: want Istio's disable_builtin_labels", c)
	}
	body := c.GetBody().GetStringValue()
	if body == accesslog.IstioTextFormat {
		body = "istio-text"
	}
	s := fmt.Sprintf("otel %s %s %s %q", c.GetGrpcService().GetEnvoyGrpc().GetClusterName(), c.GetGrpcService().GetEnvoyGrpc().GetAuthority(),
		c.GetLogName(), body)
	for _, kv := range c.GetAttributes().GetValues() {
		s += " " + kv.GetKey() + "=" + kv.GetValue().GetStringValue()
	}
	if ef := al.GetFilter().GetExtensionFilter(); ef != nil {
		s += " [" + ldsUnpack(t, ef.GetTypedConfig(), &celv3.ExpressionFilter{}).GetExpression() + "]"
	}
	return s
}

// TestOTelAccessLogProvider: an envoyOtelAls provider chosen by a
// Telemetry becomes istiod's OpenTelemetry access logger on both sides,
// reaching the collector service's outbound cluster: Istio's TEXT format
// as the body unless logFormat.text is set, labels as attributes, the
// Telemetry filter; a collector the proxy cannot see, or a label weft-proxy
// cannot format, is reported and leaves the log out.
func TestOTelAccessLogProvider(t *testing.T) {
	providers := map[string]model.OTelLogProvider{
		"otel":     {Service: "otel-collector.observability.svc.cluster.local", Port: 4317},
		"custom":   {Service: "observability/otel-collector.observability.svc.cluster.local", Port: 4317, LogName: "mesh", Text: "%RESPONSE_CODE%", Labels: map[string]string{"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}},
		"nowhere":  {Service: "otel.elsewhere.svc.cluster.local", Port: 4317},
		"badlabel": {Service: "otel-collector.observability.svc.cluster.local", Port: 4317, Labels: map[string]string{"x": "%NOPE%"}},
	}
	const cluster = "outbound|4317||otel-collector.observability.svc.cluster.local otel-collector.observability.svc.cluster.local"
	for name, tc := range map[string]struct {
		spec    string
		want    []string
		warning string
	}{
		"istio defaults": {spec: `{"accessLogging": [{"providers": [{"name": "otel"}]}]}`,
			want: []string{"otel " + cluster + ` otel_envoy_accesslog "istio-text"`}},
		"format, labels, filter": {spec: `{"accessLogging": [{"providers": [{"name": "custom"}], "filter": {"expression": "response.code >= 400"}}]}`,
			want: []string{"otel " + cluster + ` mesh "%RESPONSE_CODE%" code=%RESPONSE_CODE% path=%REQ(:PATH)% [response.code >= 400]`}},
		"collector not visible": {spec: `{"accessLogging": [{"providers": [{"name": "nowhere"}]}]}`,
			warning: `provider nowhere: no service otel.elsewhere.svc.cluster.local with port 4317 is visible to this proxy`},
		"label weft cannot format": {spec: `{"accessLogging": [{"providers": [{"name": "badlabel"}]}]}`,
			warning: `label "x": command operator %NOPE% is not supported`},
	} {
		t.Run(name, func(t *testing.T) {
			mesh := model.DefaultMesh()
			mesh.AccessLog = &model.AccessLogging{OTelProviders: providers}
			reg := &registry.Snapshot{Version: 1, Services: []registry.Service{{Hostname: "otel-collector.observability.svc.cluster.local",
				Namespace: "observability", Ports: []registry.Port{{Name: "grpc-otlp", Number: 4317, Protocol: "GRPC"}}}}}
			s := model.NewSnapshot("1", mesh, []*model.Config{telemetryConfig(t, "istio-system", "mesh", tc.spec)}, reg)
			r := Build(s, &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "a"}, IPs: []string{"10.0.0.1"}})
			client, server := virtualLogs(t, r)
			if diff := cmp.Diff([][]string{client, server}, [][]string{tc.want, tc.want}); diff != "" {
				t.Errorf("client, server access logs (-got +want)\n%s", diff)
			}
			if tc.warning != "" {
				(&ldsResult{warnings: r.Warnings}).wantWarning(t, tc.warning)
			}
		})
	}
}

// virtualLogs validates r's listeners and returns the access logs of the
// virtualOutbound and virtualInbound listeners' default chains.
func virtualLogs(t *testing.T, r *Resources) (client, server []string) {
	t.Helper()
	for _, l := range r.Listeners {
		ldsValidate(t, l)
		switch l.GetName() {
		case VirtualOutboundListener:
			client = chainLogs(t, l.GetDefaultFilterChain())
		case VirtualInboundListener:
			server = chainLogs(t, l.GetDefaultFilterChain())
		}
	}
	return client, server
}

// chainLogs is the access logs of a chain's HCM or tcp_proxy.
func chainLogs(t *testing.T, fc *listenerv3.FilterChain) []string {
	t.Helper()
	for _, f := range fc.GetFilters() {
		switch tc := f.GetTypedConfig(); {
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			return describeLogs(t, ldsUnpack(t, tc, &hcmv3.HttpConnectionManager{}).GetAccessLog())
		case tc.MessageIs(&tcpproxyv3.TcpProxy{}):
			return describeLogs(t, ldsUnpack(t, tc, &tcpproxyv3.TcpProxy{}).GetAccessLog())
		}
	}
	t.Fatalf("chain %s has neither HCM nor tcp_proxy", fc.GetName())
	return nil
}

// TestAccessLogPrecedence: which access logs a sidecar's client
// (virtualOutbound) and server (virtualInbound) side get from MeshConfig
// and Telemetry, with Istio's precedence.
func TestAccessLogPrecedence(t *testing.T) {
	tel := func(ns, name, spec string) *model.Config { return telemetryConfig(t, ns, name, spec) }
	providers := map[string]model.FileLogProvider{"file-a": {Path: "/a"}, "json": {Path: "/j", Labels: map[string]string{"code": "%RESPONSE_CODE%"}},
		"bad-format": {Path: "/b", Text: "%NOPE%"}}
	for name, tc := range map[string]struct {
		mesh           *model.AccessLogging
		configs        []*model.Config
		client, server []string
		warning        string
	}{
		"nothing": {},
		"mesh file": {mesh: &model.AccessLogging{File: "/dev/stdout"},
			client: []string{"/dev/stdout text"}, server: []string{"/dev/stdout text"}},
		"mesh json": {mesh: &model.AccessLogging{File: "/var/log/a", JSON: true},
			client: []string{"/var/log/a json"}, server: []string{"/var/log/a json"}},
		"mesh bad format": {mesh: &model.AccessLogging{File: "/x", Format: "%START_TIME% %BOGUS%"},
			warning: "mesh config accessLogFormat: command operator %BOGUS% is not supported"},
		"default providers": {mesh: &model.AccessLogging{DefaultProviders: []string{"envoy"}},
			client: []string{"/dev/stdout text"}, server: []string{"/dev/stdout text"}},
		"telemetry replaces mesh file": {mesh: &model.AccessLogging{File: "/m", Providers: providers},
			configs: []*model.Config{tel("istio-system", "mesh", `{"accessLogging": [{"providers": [{"name": "file-a"}]}]}`)},
			client:  []string{"/a text"}, server: []string{"/a text"}},
		"workload disabled over mesh file": {mesh: &model.AccessLogging{File: "/m"},
			configs: []*model.Config{tel("default", "off", `{"selector": {"matchLabels": {"app": "a"}}, "accessLogging": [{"disabled": true}]}`)}},
		"other workload keeps mesh file": {mesh: &model.AccessLogging{File: "/m"},
			configs: []*model.Config{tel("default", "off", `{"selector": {"matchLabels": {"app": "b"}}, "accessLogging": [{"disabled": true}]}`)},
			client:  []string{"/m text"}, server: []string{"/m text"}},
		"namespace disables root": {configs: []*model.Config{
			tel("istio-system", "mesh", `{"accessLogging": [{"providers": [{"name": "envoy"}]}]}`),
			tel("default", "ns", `{"accessLogging": [{"disabled": true}]}`)}},
		"workload re-enables": {configs: []*model.Config{
			tel("istio-system", "mesh", `{"accessLogging": [{"providers": [{"name": "envoy"}]}]}`),
			tel("default", "ns", `{"accessLogging": [{"disabled": true}]}`),
			tel("default", "wl", `{"selector": {"matchLabels": {"app": "a"}}, "accessLogging": [{"disabled": false}]}`)},
			client: []string{"/dev/stdout text"}, server: []string{"/dev/stdout text"}},
		"workload providers replace root": {mesh: &model.AccessLogging{Providers: providers}, configs: []*model.Config{
			tel("istio-system", "mesh", `{"accessLogging": [{"providers": [{"name": "envoy"}]}]}`),
			tel("default", "wl", `{"selector": {"matchLabels": {"app": "a"}}, "accessLogging": [{"providers": [{"name": "json"}], "filter": {"expression": "response.code >= 400"}}]}`)},
			client: []string{"/j json [response.code >= 400]"}, server: []string{"/j json [response.code >= 400]"}},
		"server side off": {configs: []*model.Config{
			tel("istio-system", "mesh", `{"accessLogging": [{"providers": [{"name": "envoy"}]}, {"match": {"mode": "SERVER"}, "disabled": true}]}`)},
			client: []string{"/dev/stdout text"}},
		"two providers": {mesh: &model.AccessLogging{Providers: providers}, configs: []*model.Config{
			tel("default", "ns", `{"accessLogging": [{"providers": [{"name": "file-a"}, {"name": "json"}]}]}`)},
			client: []string{"/a text", "/j json"}, server: []string{"/a text", "/j json"}},
		"unsupported filter": {configs: []*model.Config{
			tel("default", "ns", `{"accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "size(request.headers) > 2"}}]}`)},
			warning: `Telemetry/default/ns: access log filter "size(request.headers) > 2": request.headers and response.headers can only be read by a constant name`},
		"filter syntax": {configs: []*model.Config{
			tel("default", "ns", `{"accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >="}}]}`)},
			warning: `Telemetry/default/ns: access log filter "response.code >=": ERROR: <input>:1:17: Syntax error`},
		"unknown provider": {configs: []*model.Config{tel("default", "ns", `{"accessLogging": [{"providers": [{"name": "otel"}]}]}`)},
			warning: `Telemetry/default/ns: access log provider "otel" is not an envoyFileAccessLog or envoyOtelAls extension provider`},
		"bad provider format": {mesh: &model.AccessLogging{Providers: providers},
			configs: []*model.Config{tel("default", "ns", `{"accessLogging": [{"providers": [{"name": "bad-format"}]}]}`)},
			warning: "command operator %NOPE% is not supported"},
		"other namespace": {configs: []*model.Config{tel("other", "ns", `{"accessLogging": [{"providers": [{"name": "envoy"}]}]}`)}},
		"oldest namespace-wide wins": {configs: []*model.Config{
			tel("default", "a-first", `{"accessLogging": [{"providers": [{"name": "envoy"}]}]}`),
			tel("default", "b-second", `{"accessLogging": [{"disabled": true}]}`)},
			client: []string{"/dev/stdout text"}, server: []string{"/dev/stdout text"}},
	} {
		t.Run(name, func(t *testing.T) {
			mesh := model.DefaultMesh()
			mesh.AccessLog = tc.mesh
			for i, c := range tc.configs {
				c.CreationTime = time.Unix(int64(i), 0)
			}
			s := model.NewSnapshot("1", mesh, tc.configs, nil)
			p := &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "a"}, IPs: []string{"10.0.0.1"}}
			r := Build(s, p)
			client, server := virtualLogs(t, r)
			if diff := cmp.Diff(client, tc.client); diff != "" {
				t.Errorf("client (-got +want)\n%s", diff)
			}
			if diff := cmp.Diff(server, tc.server); diff != "" {
				t.Errorf("server (-got +want)\n%s", diff)
			}
			if tc.warning != "" {
				(&ldsResult{warnings: r.Warnings}).wantWarning(t, tc.warning)
			}
		})
	}
}

// TestLDSAccessLog: MeshConfig accessLogFile puts Istio's TEXT access log
// on every HCM and tcp_proxy of a capture-mode sidecar (golden).
func TestLDSAccessLog(t *testing.T) {
	r := runLDSCase(t, "accesslog")
	for _, l := range r.listeners {
		chains := append(append([]*listenerv3.FilterChain(nil), l.GetFilterChains()...), l.GetDefaultFilterChain())
		for _, fc := range chains {
			if fc == nil {
				continue
			}
			if got := chainLogs(t, fc); len(got) != 1 {
				t.Errorf("listener %s chain %s: access logs %q", l.GetName(), fc.GetName(), got)
			}
		}
	}
}
