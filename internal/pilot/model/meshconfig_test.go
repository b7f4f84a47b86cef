package model

import (
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
		AccessLog: m.AccessLog}
	if m != want {
		t.Errorf("got %+v\nwant %+v", m, want)
	}
	if diff := cmp.Diff(m.AccessLog, &AccessLogging{File: "/dev/stdout", Providers: map[string]FileLogProvider{}}); diff != "" {
		t.Errorf("access log (-got +want)\n%s", diff)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `"defaultConfig"`) {
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
		"extensionProviders: [{name: x, envoyFileAccessLog: {logFormat: {labels: {a: 1}}}}]", "accessLogEncoding: XML", "rootNamespace: [a]", "trustDomain: x\n  y: : z", "[1]"} {
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
`), DefaultMesh())
	if err != nil {
		t.Fatal(err)
	}
	want := &AccessLogging{File: "/var/log/access.log", JSON: true, Format: `{"code": "%RESPONSE_CODE%"}`,
		DefaultProviders: []string{"envoy"}, Providers: map[string]FileLogProvider{
			"text-file":   {Path: "/tmp/a.log", Text: "%REQ(:METHOD)%"},
			"json-stdout": {Path: "/dev/stdout", Labels: map[string]string{"method": "%REQ(:METHOD)%"}},
		}}
	if diff := cmp.Diff(m.AccessLog, want); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "defaultProviders.metrics and .tracing") || !strings.Contains(warnings[1], `"zipkin"`) {
		t.Errorf("warnings %q", warnings)
	}
}

func FuzzParseMeshConfig(f *testing.F) {
	f.Add([]byte("pathNormalization: {normalization: BASE}\nrootNamespace: x\n"))
	f.Add([]byte("connectTimeout: 1s\noutboundTrafficPolicy: {mode: ALLOW_ANY}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, _, err := ParseMeshConfig(data, DefaultMesh())
		if err != nil && m != DefaultMesh() {
			t.Fatalf("error %v but mesh changed: %+v", err, m)
		}
	})
}
