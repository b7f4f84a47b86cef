package model

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseMeshConfig(t *testing.T) {
	m, warnings, err := ParseMeshConfig([]byte(`
rootNamespace: mesh-root
trustDomain: example.org
connectTimeout: 3s
enableAutoMtls: false
outboundTrafficPolicy: {mode: REGISTRY_ONLY}
pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}
accessLogFile: /dev/stdout
defaultConfig: {concurrency: 2}
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	want := Mesh{RootNamespace: "mesh-root", TrustDomain: "example.org", DomainSuffix: "svc.cluster.local",
		ConnectTimeout: 3 * time.Second, PathNormalization: PathNormalizationDecodeAndMergeSlashes,
		AccessLog: m.AccessLog, Tracing: DefaultMesh().Tracing}
	want.Tracing.Providers = map[string]TracingProvider{}
	if diff := cmp.Diff(m, want); diff != "" {
		t.Errorf("mesh (-got +want)\n%s", diff)
	}
	if diff := cmp.Diff(m.AccessLog, &AccessLogging{File: "/dev/stdout", Providers: map[string]FileLogProvider{}, OTelProviders: map[string]OTelLogProvider{}}); diff != "" {
		t.Errorf("access log (-got +want)\n%s", diff)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `defaultConfig.concurrency`) {
		t.Errorf("warnings %q", warnings)
	}
	for in, want := range map[string]PathNormalization{
		"{}": PathNormalizationBase, "pathNormalization: {normalization: NONE}": PathNormalizationNone,
		"pathNormalization: {}": PathNormalizationBase, "pathNormalization: {normalization: MERGE_SLASHES}": PathNormalizationMergeSlashes,
	} {
		m, _, err := ParseMeshConfig([]byte(in), DefaultMesh())
		if err != nil || m.PathNormalization != want {
			t.Errorf("%s: %v %v, want %v", in, m.PathNormalization, err, want)
		}
	}
	for _, bad := range []string{"pathNormalization: {normalization: SOMETIMES}", "accessLogEncoding: JSON\naccessLogFormat: '[%START_TIME%]'",
		"extensionProviders: [{name: x, envoyFileAccessLog: {logFormat: {labels: {a: 1}}}}]", "accessLogEncoding: XML",
		"extensionProviders: [{name: x, envoyOtelAls: {service: otel.observability.svc.cluster.local}}]",
		"extensionProviders: [{name: x, envoyOtelAls: {service: otel.observability.svc.cluster.local, port: 4317, logFormat: {labels: {a: [1]}}}}]", "rootNamespace: [a]", "trustDomain: x\n  y: : z", "[1]"} {
		if _, _, err := ParseMeshConfig([]byte(bad), DefaultMesh()); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestParseMeshConfigAccessLog: the access log fields and file access log
// providers; other providers and default providers are reported.
func TestParseMeshConfigAccessLog(t *testing.T) {
	m, warnings, err := ParseMeshConfig([]byte(`
accessLogFile: /var/log/access.log
accessLogEncoding: JSON
accessLogFormat: '{"code": "%RESPONSE_CODE%"}'
defaultProviders: {accessLogging: [envoy], tracing: [zipkin]}
extensionProviders:
- name: text-file
  envoyFileAccessLog: {path: /tmp/a.log, logFormat: {text: "%REQ(:METHOD)%"}}
- name: json-stdout
  envoyFileAccessLog: {logFormat: {labels: {method: "%REQ(:METHOD)%"}}}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: otel-als
  envoyOtelAls:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
    logName: mesh
    logFormat: {text: "%RESPONSE_CODE%", labels: {path: "%REQ(:PATH)%"}}
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	want := &AccessLogging{File: "/var/log/access.log", JSON: true, Format: `{"code": "%RESPONSE_CODE%"}`,
		DefaultProviders: []string{"envoy"}, Providers: map[string]FileLogProvider{
			"text-file":   {Path: "/tmp/a.log", Text: "%REQ(:METHOD)%"},
			"json-stdout": {Path: "/dev/stdout", Labels: map[string]string{"method": "%REQ(:METHOD)%"}},
		}, OTelProviders: map[string]OTelLogProvider{
			"otel-als": {Service: "opentelemetry-collector.observability.svc.cluster.local", Port: 4317, LogName: "mesh",
				Text: "%RESPONSE_CODE%", Labels: map[string]string{"path": "%REQ(:PATH)%"}},
		}}
	if diff := cmp.Diff(m.AccessLog, want); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings %q", warnings)
	}
	if diff := cmp.Diff(m.Tracing.Providers, map[string]TracingProvider{"zipkin": {Service: "zipkin.istio-system.svc.cluster.local", Port: 9411}}); diff != "" {
		t.Errorf("tracing providers (-got +want)\n%s", diff)
	}
	if diff := cmp.Diff(m.Tracing.DefaultProviders, []string{"zipkin"}); diff != "" {
		t.Errorf("default tracing providers (-got +want)\n%s", diff)
	}
}

// TestParseMeshConfigTracing: Istio's tracing settings — enableTracing,
// defaultConfig.tracing (sampling, zipkin address) — over its defaults,
// and the errors that leave the mesh as it was.
func TestParseMeshConfigTracing(t *testing.T) {
	if d := DefaultMesh().Tracing; !d.Enabled || d.Sampling != 1 || d.ZipkinAddress != "" {
		t.Errorf("default tracing %+v, want Istio's since 1.22: enabled, 1 %%, no zipkin address", d)
	}
	m, warnings, err := ParseMeshConfig([]byte(`
enableTracing: true
defaultConfig:
  tracing:
    sampling: 100.0
    zipkin: {address: "jaeger-collector.observability:9411"}
  holdApplicationUntilProxyStarts: true
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	if m.Tracing.Sampling != 100 || m.Tracing.ZipkinAddress != "jaeger-collector.observability:9411" || !m.Tracing.Enabled {
		t.Errorf("tracing %+v", m.Tracing)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "defaultConfig.holdApplicationUntilProxyStarts") {
		t.Errorf("warnings %q", warnings)
	}
	if m, _, err := ParseMeshConfig([]byte("enableTracing: false"), DefaultMesh()); err != nil || m.Tracing.Enabled {
		t.Errorf("enableTracing: false: %+v %v", m.Tracing, err)
	}
	m, warnings, err = ParseMeshConfig([]byte(`
extensionProviders:
- name: plain
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: w3c
  zipkin: {service: jaeger.observability.svc.cluster.local, port: 9411, path: /zipkin/spans, enable64bitTraceId: true,
    traceContextOption: USE_B3_WITH_W3C_PROPAGATION, timeout: 2s, headers: [{name: X-Tenant, value: a}]}
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]TracingProvider{
		"plain": {Service: "zipkin.istio-system.svc.cluster.local", Port: 9411},
		"w3c": {Service: "jaeger.observability.svc.cluster.local", Port: 9411, Path: "/zipkin/spans", TraceID64: true, W3C: true,
			Timeout: 2 * time.Second, Headers: []Header{{"X-Tenant", "a"}}},
	}
	if !cmp.Equal(m.Tracing.Providers, want) {
		t.Errorf("zipkin providers: %s", cmp.Diff(want, m.Tracing.Providers))
	}
	if len(warnings) != 0 {
		t.Errorf("warnings %q", warnings)
	}
	t.Setenv("OTEL_TOKEN", "s3cret")
	m, warnings, err = ParseMeshConfig([]byte(`
extensionProviders:
- name: otel
  opentelemetry: {service: opentelemetry-collector.observability.svc.cluster.local, port: 4317, maxTagLength: 99,
    grpc: {timeout: 3s, initialMetadata: [{name: x-tenant, value: a}]}}
- name: otel-http
  opentelemetry:
    service: otel-http.observability.svc.cluster.local
    port: 4318
    http: {path: v1/traces, timeout: 1s, headers: [{name: Authorization, envName: OTEL_TOKEN}]}
    resourceDetectors: {environment: {}}
- name: otel-http-default
  opentelemetry: {service: otel-http.observability.svc.cluster.local, port: 4318, http: {}}
defaultProviders: {tracing: [otel]}
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]TracingProvider{
		"otel": {OTel: true, Service: "opentelemetry-collector.observability.svc.cluster.local", Port: 4317, MaxTagLength: 99,
			Timeout: 3 * time.Second, Headers: []Header{{"x-tenant", "a"}}},
		"otel-http": {OTel: true, OTLPHTTP: true, Service: "otel-http.observability.svc.cluster.local", Port: 4318, Path: "/v1/traces",
			Timeout: time.Second, Headers: []Header{{"Authorization", "s3cret"}}},
		"otel-http-default": {OTel: true, OTLPHTTP: true, Service: "otel-http.observability.svc.cluster.local", Port: 4318, Path: "/v1/traces"},
	}
	if !cmp.Equal(m.Tracing.Providers, want) || !slices.Equal(m.Tracing.DefaultProviders, []string{"otel"}) {
		t.Errorf("opentelemetry providers: %s, defaults %v", cmp.Diff(want, m.Tracing.Providers), m.Tracing.DefaultProviders)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `"otel-http": opentelemetry resourceDetectors and dynatraceSampler are not supported`) {
		t.Errorf("warnings %q", warnings)
	}
	for _, bad := range []string{
		"extensionProviders: [{name: o, opentelemetry: {service: otel.observability.svc.cluster.local}}]",
		"extensionProviders: [{name: o, opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, grpc: {timeout: 0s}}}]",
		"extensionProviders: [{name: o, opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, http: {path: '/v1/traces?x=1'}}}]",
		"extensionProviders: [{name: o, opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, http: {headers: [{name: 'a b', value: v}]}}}]",
		"extensionProviders: [{name: o, opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, grpc: {initialMetadata: [{name: a, value: \"v\\n\"}]}}}]",
		"extensionProviders: [{name: z, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, path: api/v2/spans}}]",
		"extensionProviders: [{name: z, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, timeout: -1s}}]",
		"extensionProviders: [{name: z, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, headers: [{name: 'a:b', value: v}]}}]",
		"extensionProviders: [{name: z, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, traceContextOption: W3C}}]",
		"defaultConfig: {tracing: {sampling: 150}}",
		"defaultConfig: {tracing: {zipkin: {address: zipkin}}}",
		"defaultConfig: {tracing: {datadog: {address: 'dd:8126'}}}",
		"extensionProviders: [{name: z, zipkin: {service: zipkin.istio-system.svc.cluster.local}}]",
		"defaultConfig: [1]",
	} {
		if m, _, err := ParseMeshConfig([]byte(bad), DefaultMesh()); err == nil || !cmp.Equal(m, DefaultMesh()) {
			t.Errorf("%q: accepted (%v) or changed the mesh", bad, err)
		}
	}
}

func FuzzParseMeshConfig(f *testing.F) {
	f.Add([]byte("pathNormalization: {normalization: BASE}\nrootNamespace: x\n"))
	f.Add([]byte("connectTimeout: 1s\noutboundTrafficPolicy: {mode: ALLOW_ANY}"))
	f.Add([]byte("extensionProviders: [{name: o, opentelemetry: {service: s, port: 4317, http: {path: /v1/traces, headers: [{name: a, value: b}]}}}, " +
		"{name: l, envoyOtelAls: {service: s, port: 4317, logFormat: {labels: {c: '%RESPONSE_CODE%'}}}}, {name: z, zipkin: {service: z, port: 9411, timeout: 1s}}]"))
	f.Add([]byte("trustDomain: new.example\ntrustDomainAliases: [old.example]\ndefaultConfig: {proxyHeaders: {server: {value: edge}, requestId: {disabled: true}, " +
		"forwardedClientCert: SANITIZE_SET, setCurrentClientCertDetails: {uri: true}}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, _, err := ParseMeshConfig(data, DefaultMesh())
		if err != nil && !cmp.Equal(m, DefaultMesh()) {
			t.Fatalf("error %v but mesh changed: %+v", err, m)
		}
	})
}

// TestParseMeshConfigTrustDomains: trustDomain and trustDomainAliases
// (sorted, without duplicates or the trust domain itself); a name that
// is not a SPIFFE trust domain is an error that leaves the mesh as it
// was.
func TestParseMeshConfigTrustDomains(t *testing.T) {
	m, warnings, err := ParseMeshConfig([]byte(`
trustDomain: new.example
trustDomainAliases: [old.example, cluster.local, old.example, new.example]
`), DefaultMesh())
	if err != nil || len(warnings) != 0 {
		t.Fatalf("%v %q", err, warnings)
	}
	if m.TrustDomain != "new.example" || !slices.Equal(m.TrustDomainAliases, []string{"cluster.local", "old.example"}) {
		t.Errorf("trust domain %q, aliases %q", m.TrustDomain, m.TrustDomainAliases)
	}
	if d := DefaultMesh(); d.TrustDomain != "cluster.local" || d.TrustDomainAliases != nil {
		t.Errorf("default trust domain %q, aliases %q", d.TrustDomain, d.TrustDomainAliases)
	}
	for doc, want := range map[string]string{
		"trustDomain: Example.org":          `trustDomain "Example.org"`,
		"trustDomain: ''":                   `trustDomain ""`,
		"trustDomainAliases: [old/example]": `trustDomainAliases: "old/example"`,
		"trustDomainAliases: ['*.example']": `trustDomainAliases: "*.example"`,
		"trustDomainAliases: {a: b}":        "trustDomainAliases",
	} {
		got, _, err := ParseMeshConfig([]byte(doc), m)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want one naming %s", doc, err, want)
		}
		if got.TrustDomain != m.TrustDomain || !slices.Equal(got.TrustDomainAliases, m.TrustDomainAliases) {
			t.Errorf("%s: the mesh changed: %q %q", doc, got.TrustDomain, got.TrustDomainAliases)
		}
	}
}

// TestParseMeshConfigProxyHeaders: defaultConfig.proxyHeaders as Istio
// documents it; a field weft has no use for is a warning, a value of the
// wrong kind an error naming defaultConfig.
func TestParseMeshConfigProxyHeaders(t *testing.T) {
	m, warnings, err := ParseMeshConfig([]byte(`
defaultConfig:
  proxyHeaders:
    server: {value: edge}
    requestId: {disabled: true}
    attemptCount: {disabled: true}
    envoyDebugHeaders: {disabled: true}
    forwardedClientCert: SANITIZE_SET
    setCurrentClientCertDetails: {subject: false, uri: true, cert: true}
    metadataExchangeHeaders: {mode: IN_MESH}
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	want := ProxyHeaders{ServerName: "edge", RequestIDDisabled: true, AttemptCountDisabled: true, EnvoyDebugHeadersDisabled: true,
		ForwardedClientCert: "SANITIZE_SET", ClientCertDetails: &ClientCertDetails{URI: true, Cert: true}}
	if diff := cmp.Diff(m.ProxyHeaders, want); diff != "" {
		t.Errorf("proxy headers (-got +want)\n%s", diff)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "defaultConfig.proxyHeaders.metadataExchangeHeaders is not used") {
		t.Errorf("warnings %q", warnings)
	}
	if d := DefaultMesh().ProxyHeaders; d != (ProxyHeaders{}) {
		t.Errorf("default proxy headers %+v, want the zero value (Istio's defaults)", d)
	}
	m, _, err = ParseMeshConfig([]byte("defaultConfig: {proxyHeaders: {server: {disabled: true}}}"), DefaultMesh())
	if err != nil || !m.ProxyHeaders.ServerDisabled {
		t.Errorf("server disabled: %+v %v", m.ProxyHeaders, err)
	}
	for _, doc := range []string{
		"defaultConfig: {proxyHeaders: {forwardedClientCert: SOMETIMES}}",
		"defaultConfig: {proxyHeaders: {server: {disabled: maybe}}}",
		"defaultConfig: {proxyHeaders: [server]}",
	} {
		if _, _, err := ParseMeshConfig([]byte(doc), DefaultMesh()); err == nil || !strings.Contains(err.Error(), "defaultConfig") {
			t.Errorf("%s: err %v, want one naming defaultConfig", doc, err)
		}
	}
}

// TestParseMeshConfigLocality: localityLbSetting is kept for translation
// and checked by Istio's rules (a bad one leaves the mesh as it was).
func TestParseMeshConfigLocality(t *testing.T) {
	if DefaultMesh().LocalityLB != nil {
		t.Error("default localityLbSetting set; want nil (Istio's default: enabled)")
	}
	m, warnings, err := ParseMeshConfig([]byte(`
localityLbSetting:
  enabled: true
  failover: [{from: us-east, to: eu-west}]
`), DefaultMesh())
	if err != nil || len(warnings) != 0 {
		t.Fatalf("%v %q", err, warnings)
	}
	if f := m.LocalityLB.GetFailover(); !m.LocalityLB.GetEnabled().GetValue() || len(f) != 1 || f[0].GetFrom() != "us-east" || f[0].GetTo() != "eu-west" {
		t.Errorf("localityLbSetting %v", m.LocalityLB)
	}
	m, warnings, err = ParseMeshConfig([]byte(`localityLbSetting: {failoverPriority: [topology.kubernetes.io/zone]}`), DefaultMesh())
	if err != nil || len(warnings) != 0 || len(m.LocalityLB.GetFailoverPriority()) != 1 {
		t.Errorf("failoverPriority: %v %q %v", err, warnings, m.LocalityLB)
	}
	for bad, want := range map[string]string{
		`localityLbSetting: {distribute: [{from: "a/*", to: {"a/*": 50}}]}`:                        "localityLbSetting.distribute[0].to: Invalid value: the weights add up to 50, not 100",
		`localityLbSetting: {failover: [{from: a, to: "b/*"}]}`:                                    `localityLbSetting.failover[0]: Invalid value: "a" to "b/*": failover names regions only`,
		`localityLbSetting: {distribute: [{from: a, to: {a: 100}}], failover: [{from: a, to: b}]}`: "distribute and failover cannot both be set",
	} {
		m, _, err := ParseMeshConfig([]byte(bad), DefaultMesh())
		if err == nil || !strings.Contains(err.Error(), want) || m.LocalityLB != nil {
			t.Errorf("%s: %v, want an error with %q and the mesh unchanged", bad, err, want)
		}
	}
}
