package serviceentry

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/registrytest"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/bolt"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const samples = "../../../../shared/istio-samples/other"

// waitTimeout bounds every wait for the source to report a state.
const waitTimeout = 5 * time.Second

func openStore(t *testing.T) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "weft.db"), store.Options{}, registrytest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// run starts the source and stops it when the test ends.
func run(t *testing.T, st Store) *registrytest.Recorder {
	t.Helper()
	return registrytest.Run(t, New(st, Mesh{}, registrytest.Quiet()))
}

// createdAt is the creationTimestamp given to objects that have none.
const createdAt = "2030-01-02T03:04:05Z"

// writeObject stores obj under its kind's key (creating or updating it).
func writeObject(t *testing.T, st store.Store, obj map[string]any, defaultNS string) {
	t.Helper()
	kindName, _ := obj["kind"].(string)
	md, _ := obj["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		obj["metadata"] = md
	}
	if md["namespace"] == nil {
		md["namespace"] = defaultNS
	}
	if md["creationTimestamp"] == nil {
		md["creationTimestamp"] = createdAt
	}
	var kind *resource.Kind
	for _, k := range resource.All() {
		if k.Kind == kindName {
			kind = k
		}
	}
	if kind == nil {
		t.Fatalf("unknown kind %q", kindName)
	}
	key := kind.Key(md["namespace"].(string), md["name"].(string))
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.Create(ctx, key, b); err == nil {
		return
	}
	if _, err := st.Update(ctx, key, b, 0); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
}

func deleteObject(t *testing.T, st store.Store, kindName, ns, name string) {
	t.Helper()
	if _, err := st.Delete(context.Background(), kindPrefix(kindName)+ns+"/"+name, 0); err != nil {
		t.Fatalf("delete %s %s/%s: %v", kindName, ns, name, err)
	}
}

// writeYAML stores every document of a YAML file (all kinds: the source
// must ignore the ones it does not serve).
func writeYAML(t *testing.T, st store.Store, path, defaultNS string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := resource.SplitYAML(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		writeObject(t, st, d.Object, defaultNS)
	}
}

// readable renders a state for golden files, with enum names spelled out.
func readable(t *testing.T, st registry.State) string {
	t.Helper()
	var v map[string][]map[string]any
	if err := json.Unmarshal([]byte(registrytest.Dump(st)), &v); err != nil {
		t.Fatal(err)
	}
	resolutions := []string{"STATIC", "DNS", "NONE", "DNS_ROUND_ROBIN"}
	locations := []string{"MESH_INTERNAL", "MESH_EXTERNAL"}
	for _, s := range v["Services"] {
		s["Resolution"] = resolutions[int(s["Resolution"].(float64))]
		s["Location"] = locations[int(s["Location"].(float64))]
	}
	return registrytest.Dump(v)
}

func golden(t *testing.T, name string, got registry.State) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden.json")
	b := []byte(readable(t, got) + "\n")
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if d := cmp.Diff(string(b), string(want)); d != "" {
		t.Errorf("%s mismatch (-got +want):\n%s", path, d)
	}
}

func TestSamples(t *testing.T) {
	st := openStore(t)
	writeYAML(t, st, filepath.Join(samples, "service-entry-examples.yaml"), "seexamples")
	writeYAML(t, st, filepath.Join(samples, "service-entry-static-weighted-endpoints.yaml"), "default")
	rec := run(t, st)
	got := rec.WaitFor(t, 0, waitTimeout, "9 services", func(s registry.State) bool { return len(s.Services) == 9 })
	golden(t, "samples", got)
	if n := rec.Count(); n != 1 {
		t.Errorf("got %d updates for a static store, want 1", n)
	}
}

func seObject(ns, name string, spec map[string]any) map[string]any {
	return map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
		"metadata": map[string]any{"name": name, "namespace": ns}, "spec": spec,
	}
}

func weObject(ns, name string, metaLabels map[string]any, spec map[string]any) map[string]any {
	md := map[string]any{"name": name, "namespace": ns}
	if metaLabels != nil {
		md["labels"] = metaLabels
	}
	return map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": md, "spec": spec}
}

func endpointsOf(s registry.State, host string) []registry.Endpoint {
	var out []registry.Endpoint
	for _, e := range s.Endpoints {
		if e.Hostname == host {
			out = append(out, e)
		}
	}
	return out
}

func workloadNames(eps []registry.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.WorkloadName+"@"+e.Address)
	}
	return out
}

func TestWorkloadSelector(t *testing.T) {
	st := openStore(t)
	writeObject(t, st, seObject("apps", "web", map[string]any{
		"hosts":            []any{"web.apps.internal"},
		"ports":            []any{map[string]any{"number": 80, "name": "http", "protocol": "http", "targetPort": 8080}},
		"location":         "MESH_INTERNAL",
		"resolution":       "STATIC",
		"workloadSelector": map[string]any{"labels": map[string]any{"app": "web"}},
	}), "")
	writeObject(t, st, weObject("apps", "web-1", nil, map[string]any{
		"address": "10.0.0.1", "labels": map[string]any{"app": "web", "version": "v1"},
		"ports": map[string]any{"http": 9090}, "serviceAccount": "web", "locality": "eu/west-1/a", "network": "n1", "weight": 2,
	}), "")
	// Matches through its metadata labels (Istio merges them with spec.labels);
	// its explicit-mode sidecar takes mesh traffic for 8080 on 15080.
	web2 := weObject("apps", "web-2", map[string]any{"app": "web"}, map[string]any{"address": "10.0.0.2"})
	web2["metadata"].(map[string]any)["annotations"] = map[string]any{registry.AnnotationInboundPorts: "8080=15080"}
	writeObject(t, st, web2, "")
	// An unparsable inbound-ports annotation: the entry is skipped (and logged).
	bad := weObject("apps", "web-bad", map[string]any{"app": "web"}, map[string]any{"address": "10.0.0.9"})
	bad["metadata"].(map[string]any)["annotations"] = map[string]any{registry.AnnotationInboundPorts: "8080:15080"}
	writeObject(t, st, bad, "")
	// Wrong namespace and wrong labels: never selected.
	writeObject(t, st, weObject("other", "web-x", nil, map[string]any{"address": "10.9.0.1", "labels": map[string]any{"app": "web"}}), "")
	writeObject(t, st, weObject("apps", "db-1", nil, map[string]any{"address": "10.0.1.1", "labels": map[string]any{"app": "db"}}), "")
	rec := run(t, st)
	first := rec.WaitFor(t, 0, waitTimeout, "initial state", func(registry.State) bool { return true })
	golden(t, "workload-selector", first)
	for _, e := range endpointsOf(first, "web.apps.internal") {
		want := uint32(8080)
		if e.WorkloadName == "web-2" {
			want = 15080
		}
		if e.WorkloadName == "web-bad" {
			t.Errorf("web-bad has an invalid %s annotation and must be skipped", registry.AnnotationInboundPorts)
		}
		if got := e.DialPort(first.Services[0].Ports[0]); e.WorkloadName != "web-1" && got != want {
			t.Errorf("%s: DialPort %d, want %d", e.WorkloadName, got, want)
		}
	}

	n := rec.Count()
	writeObject(t, st, weObject("apps", "web-3", nil, map[string]any{"address": "10.0.0.3", "labels": map[string]any{"app": "web"}}), "")
	rec.WaitFor(t, n, waitTimeout, "web-3 selected", func(s registry.State) bool {
		return cmp.Equal(workloadNames(endpointsOf(s, "web.apps.internal")), []string{"web-1@10.0.0.1", "web-2@10.0.0.2", "web-3@10.0.0.3"})
	})

	n = rec.Count()
	writeObject(t, st, weObject("apps", "web-1", nil, map[string]any{"address": "10.0.0.11", "labels": map[string]any{"app": "web"}}), "")
	rec.WaitFor(t, n, waitTimeout, "web-1 moved", func(s registry.State) bool {
		return cmp.Equal(workloadNames(endpointsOf(s, "web.apps.internal")), []string{"web-1@10.0.0.11", "web-2@10.0.0.2", "web-3@10.0.0.3"})
	})

	n = rec.Count()
	// Relabelling a workload out of the selector drops it.
	writeObject(t, st, weObject("apps", "web-2", map[string]any{"app": "web"}, map[string]any{"address": "10.0.0.2", "labels": map[string]any{"app": "batch"}}), "")
	deleteObject(t, st, "WorkloadEntry", "apps", "web-1")
	rec.WaitFor(t, n, waitTimeout, "web-1 deleted, web-2 relabelled", func(s registry.State) bool {
		return cmp.Equal(workloadNames(endpointsOf(s, "web.apps.internal")), []string{"web-3@10.0.0.3"})
	})
}

func TestUpdateAndDeletePropagate(t *testing.T) {
	st := openStore(t)
	rec := run(t, st) // empty store: the watch path must catch every write
	rec.WaitFor(t, 0, waitTimeout, "empty state", func(s registry.State) bool { return len(s.Services) == 0 })

	spec := map[string]any{
		"hosts":      []any{"api.example.com", "shortname"},
		"ports":      []any{map[string]any{"number": 443, "name": "tls", "protocol": "TLS"}},
		"resolution": "DNS",
		"exportTo":   []any{"."},
		"endpoints":  []any{map[string]any{"address": "api.backend.example.com"}},
	}
	n := rec.Count()
	writeObject(t, st, seObject("ext", "api", spec), "")
	got := rec.WaitFor(t, n, waitTimeout, "api created", func(s registry.State) bool { return len(s.Services) == 2 })
	if got.Services[0].Hostname != "api.example.com" || got.Services[1].Hostname != "shortname" {
		t.Errorf("hosts %q, %q: short names must stay as written", got.Services[0].Hostname, got.Services[1].Hostname)
	}
	if len(got.Endpoints) != 2 || got.Endpoints[1].Hostname != "shortname" || got.Endpoints[1].Address != "api.backend.example.com" {
		t.Errorf("endpoints %s", registrytest.Dump(got.Endpoints))
	}

	n = rec.Count()
	spec["ports"] = []any{map[string]any{"number": 8443, "name": "tls", "protocol": "tls"}}
	writeObject(t, st, seObject("ext", "api", spec), "")
	rec.WaitFor(t, n, waitTimeout, "port 8443", func(s registry.State) bool {
		return len(s.Services) == 2 && s.Services[0].Ports[0].Number == 8443 && s.Services[0].Ports[0].Protocol == "TLS"
	})

	n = rec.Count()
	deleteObject(t, st, "ServiceEntry", "ext", "api")
	rec.WaitFor(t, n, waitTimeout, "api deleted", func(s registry.State) bool { return len(s.Services) == 0 && len(s.Endpoints) == 0 })
}

func TestUndecodableObjectsAreSkipped(t *testing.T) {
	st := openStore(t)
	writeObject(t, st, seObject("a", "bad", map[string]any{"hosts": "not-a-list"}), "")
	writeObject(t, st, seObject("a", "bad-port", map[string]any{"hosts": []any{"x.example"}, "ports": []any{map[string]any{"number": "eighty"}}}), "")
	writeObject(t, st, seObject("a", "good", map[string]any{"hosts": []any{"good.example"}, "resolution": "STATIC"}), "")
	rec := run(t, st)
	got := rec.WaitFor(t, 0, waitTimeout, "initial state", func(registry.State) bool { return true })
	if len(got.Services) != 1 || got.Services[0].Hostname != "good.example" {
		t.Fatalf("services %s, want only good.example", registrytest.Dump(got.Services))
	}
	if want := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano(); got.Services[0].CreationTime != want {
		t.Errorf("CreationTime %d, want %d", got.Services[0].CreationTime, want)
	}
}
