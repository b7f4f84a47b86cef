package translate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/resource"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// LDS/RDS golden cases live in testdata/lds/<case>.yaml: Istio config
// documents (decoded, normalised and validated by internal/resource as the
// API server does) plus test-only documents:
//
//	kind: TestInclude    file: <path relative to the package>, namespace: <default ns>
//	kind: TestRegistry   services: [...], endpoints: [...]
//	kind: TestProxy      type, namespace, ips, labels, serviceAccount, explicit, tproxy
//	kind: TestMesh       registryOnly, domainSuffix, rootNamespace,
//	                     meshConfig (Istio MeshConfig YAML, applied first)
//
// Configs without metadata.creationTimestamp are created one second apart
// in reading order, so the first one read is the oldest.

// ldsTestDoc holds the fields of every test-only document kind.
type ldsTestDoc struct {
	Kind string `json:"kind"`
	// TestInclude
	File string `json:"file"`
	testRegistryDoc
	testProxyDoc
	// TestMesh
	RegistryOnly  bool   `json:"registryOnly"`
	DomainSuffix  string `json:"domainSuffix"`
	RootNamespace string `json:"rootNamespace"`
	MeshConfig    string `json:"meshConfig"`
}

// ldsCase is one loaded test case.
type ldsCase struct {
	snap  *model.Snapshot
	proxy *model.Proxy
}

type ldsLoader struct{ caseLoader }

// loadLDSCase reads testdata/lds/<name>.yaml.
func loadLDSCase(t *testing.T, name string) *ldsCase {
	t.Helper()
	l := &ldsLoader{caseLoader{t: t, mesh: model.DefaultMesh(), proxy: &model.Proxy{Type: model.Sidecar, Namespace: "default"}}}
	l.file(filepath.Join("testdata", "lds", name+".yaml"), "default")
	setProxyID(l.proxy)
	return &ldsCase{snap: l.snapshot(), proxy: l.proxy}
}

func (l *ldsLoader) file(path, defaultNS string) {
	t := l.t
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := resource.SplitYAML(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, d := range docs {
		kind, _ := d.Object["kind"].(string)
		if strings.HasPrefix(kind, "Test") {
			l.testDoc(path, d, defaultNS)
			continue
		}
		l.istioDoc(path, d, defaultNS)
	}
}

func (l *ldsLoader) testDoc(path string, d resource.Document, defaultNS string) {
	t := l.t
	t.Helper()
	js, err := json.Marshal(d.Object)
	if err != nil {
		t.Fatal(err)
	}
	var td ldsTestDoc
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&td); err != nil {
		t.Fatalf("%s: %v", d.Position(path), err)
	}
	switch td.Kind {
	case "TestInclude":
		ns := td.Namespace
		if ns == "" {
			ns = defaultNS
		}
		l.file(td.File, ns)
	case "TestRegistry":
		l.addRegistry(path, td.testRegistryDoc)
	case "TestProxy":
		l.setProxy(td.testProxyDoc)
	case "TestMesh":
		if td.MeshConfig != "" {
			m, _, err := model.ParseMeshConfig([]byte(td.MeshConfig), l.mesh)
			if err != nil {
				t.Fatalf("%s: %v", d.Position(path), err)
			}
			l.mesh = m
		}
		l.mesh.OutboundTrafficPolicyAllowAny = !td.RegistryOnly
		if td.DomainSuffix != "" {
			l.mesh.DomainSuffix = td.DomainSuffix
		}
		if td.RootNamespace != "" {
			l.mesh.RootNamespace = td.RootNamespace
		}
	default:
		t.Fatalf("%s: unknown test document kind %q", d.Position(path), td.Kind)
	}
}

// istioDoc decodes one Istio object the way the API server accepts it:
// normalised (deprecated fields converted), validated, then the spec
// decoded with protojson.
func (l *ldsLoader) istioDoc(path string, d resource.Document, defaultNS string) {
	t := l.t
	t.Helper()
	apiVersion, _ := d.Object["apiVersion"].(string)
	kindName, _ := d.Object["kind"].(string)
	k, err := resource.ByKind(apiVersion, kindName)
	if err != nil || k.NewSpec == nil {
		t.Fatalf("%s: %s %s: not an Istio kind (%v)", d.Position(path), apiVersion, kindName, err)
	}
	k.Normalize(d.Object)
	if errs := k.Validate(d.Object); len(errs) > 0 {
		t.Fatalf("%s: invalid %s: %v", d.Position(path), kindName, errs)
	}
	meta, _ := d.Object["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	if ns == "" {
		ns = defaultNS
	}
	raw, err := json.Marshal(d.Object["spec"])
	if err != nil {
		t.Fatal(err)
	}
	spec := k.NewSpec()
	if err := protojson.Unmarshal(raw, spec); err != nil {
		t.Fatalf("%s: %s %s/%s: %v", d.Position(path), kindName, ns, name, err)
	}
	c := &model.Config{Kind: kindName, Name: name, Namespace: ns,
		CreationTime: l.nextCreationTime(), Spec: spec}
	if ts, _ := meta["creationTimestamp"].(string); ts != "" {
		ct, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			t.Fatalf("%s: %s: %v", d.Position(path), c.Key(), err)
		}
		c.CreationTime = ct
	}
	l.configs = append(l.configs, c)
}

// ldsResult is what one case produced.
type ldsResult struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	warnings  []string
}

// runLDSCase loads a case, builds its listeners and routes, validates every
// resource and compares them with testdata/lds/<name>.json.
func runLDSCase(t *testing.T, name string) *ldsResult {
	t.Helper()
	c := loadLDSCase(t, name)
	b := &builder{s: c.snap, p: c.proxy, services: VisibleServices(c.snap, c.proxy)}
	r := &ldsResult{}
	r.listeners, r.routes = b.listeners()
	r.warnings = b.warnings
	for _, l := range r.listeners {
		ldsValidate(t, l)
	}
	for _, rc := range r.routes {
		ldsValidate(t, rc)
	}
	again := &builder{s: c.snap, p: c.proxy, services: VisibleServices(c.snap, c.proxy)}
	l2, r2 := again.listeners()
	if got, want := ldsRender(t, l2, r2, again.warnings), ldsRender(t, r.listeners, r.routes, r.warnings); !bytes.Equal(got, want) {
		t.Errorf("%s: two builds differ: translation is not deterministic", name)
	}
	// Byte-level too: packed typed configs must not vary either.
	det := proto.MarshalOptions{Deterministic: true}
	for i := range r.listeners {
		a, _ := det.Marshal(r.listeners[i])
		b, _ := det.Marshal(l2[i])
		if !bytes.Equal(a, b) {
			t.Errorf("listener %s: encodings of two builds differ", r.listeners[i].GetName())
		}
	}
	for i := range r.routes {
		a, _ := det.Marshal(r.routes[i])
		b, _ := det.Marshal(r2[i])
		if !bytes.Equal(a, b) {
			t.Errorf("route configuration %s: encodings of two builds differ", r.routes[i].GetName())
		}
	}
	compareGolden(t, filepath.Join("testdata", "lds", name+".json"), ldsRender(t, r.listeners, r.routes, r.warnings), ldsLineDiff)
	return r
}

// ldsValidate runs protoc-gen-validate's checks on m and on every message
// inside it, including the typed configs packed in Any fields (Validate
// itself does not look into them).
func ldsValidate(t *testing.T, m proto.Message) {
	t.Helper()
	if v, ok := m.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			t.Errorf("%T: %v", m, err)
		}
	}
	if a, ok := m.(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("unpacking %s: %v", a.GetTypeUrl(), err)
			return
		}
		ldsValidate(t, inner)
		return
	}
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				ldsValidate(t, v.List().Get(i).Message().Interface())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				ldsValidate(t, mv.Message().Interface())
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			ldsValidate(t, v.Message().Interface())
		}
		return true
	})
}

// ldsRender formats listeners, routes and warnings as stable, indented
// JSON (protojson output is compacted first: it varies its whitespace on
// purpose).
func ldsRender(t *testing.T, ls []*listenerv3.Listener, rs []*routev3.RouteConfiguration, warnings []string) []byte {
	t.Helper()
	raw := func(m proto.Message) json.RawMessage {
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, b); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	out := struct {
		Listeners []json.RawMessage `json:"listeners"`
		Routes    []json.RawMessage `json:"routes"`
		Warnings  []string          `json:"warnings"`
	}{Listeners: []json.RawMessage{}, Routes: []json.RawMessage{}, Warnings: warnings}
	for _, l := range ls {
		out.Listeners = append(out.Listeners, raw(l))
	}
	for _, r := range rs {
		out.Routes = append(out.Routes, raw(r))
	}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// ldsLineDiff is a small line diff: the first differing region with context.
func ldsLineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	i := 0
	for i < len(g) && i < len(w) && g[i] == w[i] {
		i++
	}
	j := 0
	for j < len(g)-i && j < len(w)-i && g[len(g)-1-j] == w[len(w)-1-j] {
		j++
	}
	var b strings.Builder
	from := max(i-3, 0)
	for k := from; k < i; k++ {
		fmt.Fprintf(&b, "  %s\n", g[k])
	}
	for k := i; k < len(g)-j && k < i+40; k++ {
		fmt.Fprintf(&b, "- %s\n", g[k])
	}
	for k := i; k < len(w)-j && k < i+40; k++ {
		fmt.Fprintf(&b, "+ %s\n", w[k])
	}
	return b.String()
}

// listener returns the listener named name.
func (r *ldsResult) listener(t *testing.T, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range r.listeners {
		if l.GetName() == name {
			return l
		}
	}
	t.Fatalf("no listener %q", name)
	return nil
}

// routeConfig returns the route configuration named name.
func (r *ldsResult) routeConfig(t *testing.T, name string) *routev3.RouteConfiguration {
	t.Helper()
	for _, rc := range r.routes {
		if rc.GetName() == name {
			return rc
		}
	}
	t.Fatalf("no route configuration %q", name)
	return nil
}

// vhost returns the virtual host named name in route configuration rc.
func (r *ldsResult) vhost(t *testing.T, rc, name string) *routev3.VirtualHost {
	t.Helper()
	for _, vh := range r.routeConfig(t, rc).GetVirtualHosts() {
		if vh.GetName() == name {
			return vh
		}
	}
	t.Fatalf("route configuration %q has no virtual host %q", rc, name)
	return nil
}

// wantWarning fails unless a warning contains every substring.
func (r *ldsResult) wantWarning(t *testing.T, substrs ...string) {
	t.Helper()
next:
	for _, w := range r.warnings {
		for _, s := range substrs {
			if !strings.Contains(w, s) {
				continue next
			}
		}
		return
	}
	t.Errorf("no warning containing %q; warnings: %q", substrs, r.warnings)
}

// ldsUnpack unpacks a typed config.
func ldsUnpack[T proto.Message](t *testing.T, a *anypb.Any, into T) T {
	t.Helper()
	if err := a.UnmarshalTo(into); err != nil {
		t.Fatalf("unpacking %s: %v", a.GetTypeUrl(), err)
	}
	return into
}
