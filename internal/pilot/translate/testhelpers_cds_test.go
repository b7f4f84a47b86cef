package translate

// Test-only input format of the CDS golden tests (testdata/cds/*.yaml): a
// multi-document YAML file holding
//   - Istio config objects (DestinationRule, Sidecar, ServiceEntry,
//     PeerAuthentication, AuthorizationPolicy; other kinds are skipped). Specs are decoded with protojson from the JSON of
//     each document's spec. Objects without metadata.namespace land in
//     "default" (or the including document's namespace); without
//     metadata.creationTimestamp they are one second younger than the
//     previous object, so file order is age order. ServiceEntries become
//     registry services and endpoints (one service per host), as the
//     serviceentry registry source reports them.
//   - kind: TestRegistry — services and endpoints (fields of registry.Service
//     and registry.Endpoint in camelCase; resolution STATIC|DNS|
//     DNS_ROUND_ROBIN|NONE, location MESH_INTERNAL|MESH_EXTERNAL, endpoints
//     healthy unless healthy: false).
//   - kind: TestProxy — type (sidecar|router|proxyless), namespace, ips,
//     labels, serviceAccount, explicit.
//   - kind: TestMesh — overrides of model.DefaultMesh(): connectTimeout,
//     trustDomain, trustDomainAliases, rootNamespace, domainSuffix,
//     enableAutoMTLS, pathNormalization.
//   - kind: TestInclude — file (relative to the package directory) and
//     namespace: loads another YAML file of config objects (the Istio
//     samples). A missing file skips the test.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"
)

type cdsTestDoc struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		CreationTimestamp string            `json:"creationTimestamp"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
	testRegistryDoc
	testProxyDoc
	// TestMesh
	ConnectTimeout     string   `json:"connectTimeout"`
	TrustDomain        string   `json:"trustDomain"`
	TrustDomainAliases []string `json:"trustDomainAliases"`
	RootNamespace      string   `json:"rootNamespace"`
	DomainSuffix       string   `json:"domainSuffix"`
	EnableAutoMTLS     *bool    `json:"enableAutoMTLS"`
	// PathNormalization: NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES.
	PathNormalization string `json:"pathNormalization"`
	// TestInclude
	File string `json:"file"`
}

// cdsInput is one loaded test case.
type cdsInput struct {
	snap  *model.Snapshot
	proxy *model.Proxy
}

type cdsLoader struct {
	caseLoader
	skip string
}

var cdsDocSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadCDSCase reads a test case; it skips the test when an included file
// is missing.
func loadCDSCase(t *testing.T, path string) *cdsInput {
	t.Helper()
	l := &cdsLoader{caseLoader: caseLoader{t: t, mesh: model.DefaultMesh(),
		proxy: &model.Proxy{ID: "sidecar~10.0.0.99~test.default~default.svc.cluster.local", Type: model.Sidecar, Namespace: "default"}}}
	l.file(path, "default", true)
	if l.skip != "" {
		t.Skip(l.skip)
	}
	return &cdsInput{snap: l.snapshot(), proxy: l.proxy}
}

func (l *cdsLoader) file(path, defaultNS string, top bool) {
	t := l.t
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !top {
		l.skip = "input " + path + " not found"
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for i, raw := range cdsDocSeparator.Split(string(data), -1) {
		js, err := yaml.YAMLToJSON([]byte(raw))
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if s := strings.TrimSpace(string(js)); s == "null" || s == "" || s == "{}" {
			continue
		}
		var d cdsTestDoc
		if err := json.Unmarshal(js, &d); err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		l.doc(path, i, &d, defaultNS, top)
	}
}

func (l *cdsLoader) doc(path string, i int, d *cdsTestDoc, defaultNS string, top bool) {
	t := l.t
	if strings.HasPrefix(d.Kind, "Test") && !top {
		t.Fatalf("%s: %s only allowed in test case files", path, d.Kind)
	}
	switch d.Kind {
	case "TestInclude":
		ns := d.Namespace
		if ns == "" {
			ns = defaultNS
		}
		l.file(d.File, ns, false)
		return
	case "TestProxy":
		l.setProxy(d.testProxyDoc)
		return
	case "TestMesh":
		if d.ConnectTimeout != "" {
			dur, err := time.ParseDuration(d.ConnectTimeout)
			if err != nil {
				t.Fatalf("%s: TestMesh: %v", path, err)
			}
			l.mesh.ConnectTimeout = dur
		}
		if d.TrustDomain != "" {
			l.mesh.TrustDomain = d.TrustDomain
		}
		if d.TrustDomainAliases != nil {
			l.mesh.TrustDomainAliases = d.TrustDomainAliases
		}
		if d.RootNamespace != "" {
			l.mesh.RootNamespace = d.RootNamespace
		}
		if d.DomainSuffix != "" {
			l.mesh.DomainSuffix = d.DomainSuffix
		}
		if d.EnableAutoMTLS != nil {
			l.mesh.EnableAutoMTLS = *d.EnableAutoMTLS
		}
		if d.PathNormalization != "" {
			l.mesh.PathNormalization = model.PathNormalization(d.PathNormalization)
		}
		return
	case "TestRegistry":
		l.addRegistry(path, d.testRegistryDoc)
		return
	}
	var spec proto.Message
	switch d.Kind {
	case "DestinationRule":
		spec = &networking.DestinationRule{}
	case "Sidecar":
		spec = &networking.Sidecar{}
	case "ServiceEntry":
		spec = &networking.ServiceEntry{}
	case "PeerAuthentication":
		spec = &security.PeerAuthentication{}
	case "RequestAuthentication":
		spec = &security.RequestAuthentication{}
	case "AuthorizationPolicy":
		spec = &security.AuthorizationPolicy{}
	default:
		return // kinds CDS does not read
	}
	if err := protojson.Unmarshal(d.Spec, spec); err != nil {
		t.Fatalf("%s: document %d (%s %s): %v", path, i, d.Kind, d.Metadata.Name, err)
	}
	c := &model.Config{Kind: d.Kind, Name: d.Metadata.Name, Namespace: d.Metadata.Namespace, Labels: d.Metadata.Labels,
		Annotations: d.Metadata.Annotations, CreationTime: l.nextCreationTime(), Spec: spec}
	if c.Namespace == "" {
		c.Namespace = defaultNS
	}
	if ts := d.Metadata.CreationTimestamp; ts != "" {
		ct, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			t.Fatalf("%s: %s: %v", path, c.Key(), err)
		}
		c.CreationTime = ct
	}
	if se, ok := spec.(*networking.ServiceEntry); ok {
		l.serviceEntry(c, se)
		return
	}
	l.configs = append(l.configs, c)
}

// serviceEntry adds the registry view of a ServiceEntry: one service per
// host, its endpoints under each host.
func (l *cdsLoader) serviceEntry(c *model.Config, se *networking.ServiceEntry) {
	res := map[networking.ServiceEntry_Resolution]registry.Resolution{
		networking.ServiceEntry_NONE: registry.ResolutionNone, networking.ServiceEntry_STATIC: registry.ResolutionStatic,
		networking.ServiceEntry_DNS: registry.ResolutionDNS, networking.ServiceEntry_DNS_ROUND_ROBIN: registry.ResolutionDNSRoundRobin,
	}
	for _, h := range se.GetHosts() {
		svc := registry.Service{Hostname: h, Namespace: c.Namespace, Addresses: se.GetAddresses(),
			Resolution: res[se.GetResolution()], ExportTo: se.GetExportTo(), SubjectAltNames: se.GetSubjectAltNames(),
			Source: "serviceentry", CreationTime: c.CreationTime.UnixNano(), Labels: c.Labels}
		if se.GetLocation() == networking.ServiceEntry_MESH_EXTERNAL {
			svc.Location = registry.MeshExternal
		}
		for _, p := range se.GetPorts() {
			svc.Ports = append(svc.Ports, registry.Port{Name: p.GetName(), Number: p.GetNumber(),
				Protocol: strings.ToUpper(p.GetProtocol()), TargetPort: p.GetTargetPort()})
		}
		l.svcs = append(l.svcs, svc)
		for _, we := range se.GetEndpoints() {
			l.eps = append(l.eps, registry.Endpoint{Hostname: h, Namespace: c.Namespace, Address: we.GetAddress(),
				Ports: we.GetPorts(), Labels: we.GetLabels(), Locality: we.GetLocality(), Network: we.GetNetwork(),
				Healthy: true, ServiceAccount: we.GetServiceAccount(), Weight: we.GetWeight()})
		}
	}
}

// renderCDSGolden renders clusters, endpoints, hash policies and warnings
// as stable, indented JSON. protojson output is normalised through
// encoding/json because protojson's whitespace is deliberately unstable.
func renderCDSGolden(t *testing.T, r *cdsResult) []byte {
	t.Helper()
	opts := protojson.MarshalOptions{Multiline: true}
	raw := func(m proto.Message) json.RawMessage {
		b, err := opts.Marshal(m)
		if err != nil {
			t.Fatalf("marshal %T: %v", m, err)
		}
		return b
	}
	out := struct {
		Clusters     []json.RawMessage            `json:"clusters"`
		Endpoints    []json.RawMessage            `json:"endpoints"`
		HashPolicies map[string][]json.RawMessage `json:"hashPolicies,omitempty"`
		Warnings     []string                     `json:"warnings"`
	}{Clusters: []json.RawMessage{}, Endpoints: []json.RawMessage{}, Warnings: r.warnings}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	for _, c := range r.clusters {
		out.Clusters = append(out.Clusters, raw(c))
	}
	for _, e := range r.endpoints {
		out.Endpoints = append(out.Endpoints, raw(e))
	}
	for name, hps := range r.hashPolicies {
		if out.HashPolicies == nil {
			out.HashPolicies = map[string][]json.RawMessage{}
		}
		for _, hp := range hps {
			out.HashPolicies[name] = append(out.HashPolicies[name], raw(hp))
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}
