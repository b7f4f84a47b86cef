package model

import (
	"strings"
	"testing"
	"time"
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
		ConnectTimeout: 3 * time.Second, PathNormalization: PathNormalizationDecodeAndMergeSlashes}
	if m != want {
		t.Errorf("got %+v\nwant %+v", m, want)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], `"accessLogFile"`) || !strings.Contains(warnings[1], `"defaultConfig"`) {
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
	for _, bad := range []string{"pathNormalization: {normalization: SOMETIMES}", "rootNamespace: [a]", "trustDomain: x\n  y: : z", "[1]"} {
		if _, _, err := ParseMeshConfig([]byte(bad), DefaultMesh()); err == nil {
			t.Errorf("%q accepted", bad)
		}
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
