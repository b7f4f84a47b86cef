package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func TestCreateAndGet(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	h := newHarness(t, Options{Clock: func() time.Time { return now }})
	created := h.createVS(t, "default", "reviews", map[string]string{"app": "reviews"})
	m := metaOf(t, created)
	if uid, _ := m["uid"].(string); len(uid) != 36 {
		t.Errorf("uid %q is not a UUID", m["uid"])
	}
	if m["creationTimestamp"] != "2030-01-02T03:04:05Z" {
		t.Errorf("creationTimestamp %v", m["creationTimestamp"])
	}
	if m["generation"] != float64(1) {
		t.Errorf("generation %v, want 1", m["generation"])
	}
	if m["namespace"] != "default" {
		t.Errorf("namespace %v, want default", m["namespace"])
	}
	rv := rvOf(t, created)
	if n, err := strconv.ParseInt(rv, 10, 64); err != nil || n <= 0 {
		t.Errorf("resourceVersion %q is not a positive integer", rv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if cur, _ := h.st.Revision(ctx); strconv.FormatInt(cur, 10) != rv {
		t.Errorf("resourceVersion %s, store revision %d", rv, cur)
	}

	for _, version := range []string{"v1", "v1beta1", "v1alpha3"} {
		t.Run(version, func(t *testing.T) {
			got := h.adminDo(t, http.MethodGet, "/apis/networking.istio.io/"+version+"/namespaces/default/virtualservices/reviews", nil, http.StatusOK)
			if got["apiVersion"] != "networking.istio.io/"+version || got["kind"] != "VirtualService" {
				t.Fatalf("apiVersion %v kind %v", got["apiVersion"], got["kind"])
			}
			gm := metaOf(t, got)
			if gm["uid"] != m["uid"] || rvOf(t, got) != rv || gm["name"] != "reviews" {
				t.Fatalf("metadata %v, created %v", gm, m)
			}
			spec, _ := got["spec"].(map[string]any)
			if hosts, _ := spec["hosts"].([]any); len(hosts) != 1 || hosts[0] != "reviews.example.svc.cluster.local" {
				t.Fatalf("spec.hosts %v", spec["hosts"])
			}
		})
	}
	t.Run("unserved version", func(t *testing.T) {
		expectStatus(t, h.do(t, req{method: http.MethodGet, path: "/apis/networking.istio.io/v1alpha1/namespaces/default/virtualservices/reviews", token: h.admin}), http.StatusNotFound, "NotFound")
	})
	t.Run("missing object", func(t *testing.T) {
		st := expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("default", "nope"), token: h.admin}), http.StatusNotFound, "NotFound")
		d, _ := st["details"].(map[string]any)
		if d["name"] != "nope" || d["group"] != "networking.istio.io" || d["kind"] != "virtualservices" {
			t.Fatalf("details %v", d)
		}
	})
	t.Run("create at v1alpha3 is served back at v1", func(t *testing.T) {
		vs := virtualService("old", nil, "old.example.com")
		vs["apiVersion"] = "networking.istio.io/v1alpha3"
		h.adminDo(t, http.MethodPost, "/apis/networking.istio.io/v1alpha3/namespaces/default/virtualservices", vs, http.StatusCreated)
		got := h.adminDo(t, http.MethodGet, vsPath("default", "old"), nil, http.StatusOK)
		if got["apiVersion"] != "networking.istio.io/v1" {
			t.Fatalf("apiVersion %v", got["apiVersion"])
		}
	})
}

func TestCreateErrors(t *testing.T) {
	h := newHarness(t, Options{})
	h.createVS(t, "default", "dup", nil)

	badField := virtualService("bad", nil, "x.example.com")
	badField["spec"].(map[string]any)["http"] = []any{map[string]any{
		"route": []any{map[string]any{"destination": map[string]any{"hots": "x"}}},
	}}
	wrongNS := virtualService("wrongns", nil, "x.example.com")
	wrongNS["metadata"].(map[string]any)["namespace"] = "istio-system"
	wrongKind := virtualService("wrongkind", nil, "x.example.com")
	wrongKind["kind"] = "DestinationRule"
	badName := virtualService("Bad_Name", nil, "x.example.com")

	tests := []struct {
		name   string
		path   string
		body   any
		code   int
		reason metav1.StatusReason
		msg    string // substring of the message
		field  string // a cause must name this field
	}{
		{"duplicate", vsPath("default", ""), virtualService("dup", nil, "dup.example.com"), 409, metav1.StatusReasonAlreadyExists, `virtualservices.networking.istio.io "dup" already exists`, ""},
		{"missing namespace", vsPath("ghost", ""), virtualService("x", nil, "x.example.com"), 404, metav1.StatusReasonNotFound, `namespaces "ghost" not found`, ""},
		{"unknown field", vsPath("default", ""), badField, 422, metav1.StatusReasonInvalid, "hots", "spec.http[0].route[0].destination.hots"},
		{"invalid name", vsPath("default", ""), badName, 422, metav1.StatusReasonInvalid, "Bad_Name", "metadata.name"},
		{"no name", vsPath("default", ""), map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": map[string]any{}, "spec": map[string]any{"hosts": []any{"a"}}}, 422, metav1.StatusReasonInvalid, "name or generateName is required", "metadata.name"},
		{"namespace mismatch", vsPath("default", ""), wrongNS, 400, metav1.StatusReasonBadRequest, "does not match the namespace", ""},
		{"kind mismatch", vsPath("default", ""), wrongKind, 400, metav1.StatusReasonBadRequest, "kind of the object", ""},
		{"not JSON", vsPath("default", ""), "{nope", 400, metav1.StatusReasonBadRequest, "not a JSON object", ""},
		{"bad dryRun", vsPath("default", "") + "?dryRun=Some", virtualService("dr", nil, "x.example.com"), 400, metav1.StatusReasonBadRequest, "dryRun", ""},
		{"namespaced kind without namespace", vsAPI + "/virtualservices", virtualService("nons", nil, "x.example.com"), 400, metav1.StatusReasonBadRequest, "is namespaced", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := expectStatus(t, h.do(t, req{method: http.MethodPost, path: tc.path, token: h.admin, body: tc.body}), tc.code, string(tc.reason))
			if msg, _ := st["message"].(string); !strings.Contains(msg, tc.msg) {
				t.Fatalf("message %q lacks %q", msg, tc.msg)
			}
			if tc.field == "" {
				return
			}
			d, _ := st["details"].(map[string]any)
			causes, _ := d["causes"].([]any)
			var fields []string
			for _, c := range causes {
				cm, _ := c.(map[string]any)
				fields = append(fields, fmt.Sprint(cm["field"]))
			}
			if !slices.Contains(fields, tc.field) {
				t.Fatalf("causes %v do not name field %s", causes, tc.field)
			}
			if d["kind"] != "VirtualService" {
				t.Fatalf("details.kind %v", d["kind"])
			}
		})
	}
	// None of the failed creates stored anything.
	list := h.adminDo(t, http.MethodGet, vsPath("default", ""), nil, http.StatusOK)
	if got := names(t, list); !slices.Equal(got, []string{"dup"}) {
		t.Fatalf("after failed creates the namespace holds %v", got)
	}
}

func TestCreateGenerateNameAndDryRun(t *testing.T) {
	h := newHarness(t, Options{})
	vs := virtualService("", nil, "gen.example.com")
	vs["metadata"] = map[string]any{"generateName": "gen-"}
	got := h.adminDo(t, http.MethodPost, vsPath("default", ""), vs, http.StatusCreated)
	name, _ := metaOf(t, got)["name"].(string)
	if !strings.HasPrefix(name, "gen-") || len(name) != len("gen-")+5 {
		t.Fatalf("generated name %q", name)
	}
	h.adminDo(t, http.MethodGet, vsPath("default", name), nil, http.StatusOK)

	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	before, _ := h.st.Revision(ctx)
	dry := h.adminDo(t, http.MethodPost, vsPath("default", "")+"?dryRun=All", virtualService("dry", nil, "dry.example.com"), http.StatusCreated)
	if metaOf(t, dry)["name"] != "dry" || metaOf(t, dry)["uid"] == nil {
		t.Fatalf("dry-run reply %v", dry)
	}
	expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("default", "dry"), token: h.admin}), http.StatusNotFound, "NotFound")
	// A dry-run create of an existing name still reports the conflict.
	expectStatus(t, h.do(t, req{method: http.MethodPost, path: vsPath("default", "") + "?dryRun=All", token: h.admin, body: virtualService(name, nil, "x.example.com")}), http.StatusConflict, "AlreadyExists")
	// A dry-run delete, update and patch change nothing either.
	h.adminDo(t, http.MethodDelete, vsPath("default", name)+"?dryRun=All", nil, http.StatusOK)
	upd := h.adminDo(t, http.MethodGet, vsPath("default", name), nil, http.StatusOK)
	upd["spec"].(map[string]any)["hosts"] = []any{"changed.example.com"}
	h.adminDo(t, http.MethodPut, vsPath("default", name)+"?dryRun=All", upd, http.StatusOK)
	resp := h.do(t, req{method: http.MethodPatch, path: vsPath("default", name) + "?dryRun=All", token: h.admin, ctype: "application/merge-patch+json", body: `{"metadata":{"labels":{"x":"y"}}}`})
	if resp.code != http.StatusOK {
		t.Fatalf("dry-run patch: %d %s", resp.code, resp.body)
	}
	after, _ := h.st.Revision(ctx)
	if after != before {
		t.Fatalf("dry-run requests moved the store revision from %d to %d", before, after)
	}
	cur := h.adminDo(t, http.MethodGet, vsPath("default", name), nil, http.StatusOK)
	if hosts := cur["spec"].(map[string]any)["hosts"].([]any); hosts[0] != "gen.example.com" {
		t.Fatalf("dry-run update changed hosts to %v", hosts)
	}
	if metaOf(t, cur)["labels"] != nil {
		t.Fatalf("dry-run patch set labels %v", metaOf(t, cur)["labels"])
	}
}

func TestListSelectorsAndTable(t *testing.T) {
	h := newHarness(t, Options{})
	h.createNamespace(t, "other")
	h.createVS(t, "default", "a", map[string]string{"app": "web", "tier": "front"})
	h.createVS(t, "default", "b", map[string]string{"app": "web", "tier": "back"})
	h.createVS(t, "default", "c", map[string]string{"app": "db"})
	h.createVS(t, "other", "d", map[string]string{"app": "web"})

	tests := []struct {
		name, path string
		want       []string
	}{
		{"namespace", vsPath("default", ""), []string{"a", "b", "c"}},
		{"label equality", vsPath("default", "") + "?labelSelector=app%3Dweb", []string{"a", "b"}},
		{"label set", vsPath("default", "") + "?labelSelector=tier+in+(front,middle)", []string{"a"}},
		{"label not", vsPath("default", "") + "?labelSelector=app!%3Dweb", []string{"c"}},
		{"label exists", vsPath("default", "") + "?labelSelector=tier", []string{"a", "b"}},
		{"field name", vsPath("default", "") + "?fieldSelector=metadata.name%3Db", []string{"b"}},
		{"field name not", vsPath("default", "") + "?fieldSelector=metadata.name!%3Db", []string{"a", "c"}},
		{"label and field", vsPath("default", "") + "?labelSelector=app%3Dweb&fieldSelector=metadata.name%3Da", []string{"a"}},
		{"all namespaces", vsAPI + "/virtualservices", []string{"a", "b", "c", "d"}},
		{"all namespaces by label", vsAPI + "/virtualservices?labelSelector=app%3Dweb", []string{"a", "b", "d"}},
		{"all namespaces by field namespace", vsAPI + "/virtualservices?fieldSelector=metadata.namespace%3Dother", []string{"d"}},
		{"other version", "/apis/networking.istio.io/v1beta1/namespaces/other/virtualservices", []string{"d"}},
		{"empty namespace", vsPath("istio-system", ""), []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			list := h.adminDo(t, http.MethodGet, tc.path, nil, http.StatusOK)
			if list["kind"] != "VirtualServiceList" {
				t.Fatalf("kind %v", list["kind"])
			}
			if _, err := strconv.ParseInt(rvOf(t, list), 10, 64); err != nil {
				t.Fatalf("list resourceVersion: %v", err)
			}
			got := names(t, list)
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("bad selectors", func(t *testing.T) {
		for _, q := range []string{"labelSelector=a%3D%3D%3Db", "fieldSelector=spec.hosts%3Dx"} {
			expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("default", "") + "?" + q, token: h.admin}), http.StatusBadRequest, "BadRequest")
		}
	})

	t.Run("table", func(t *testing.T) {
		resp := h.do(t, req{method: http.MethodGet, path: vsPath("default", "") + "?labelSelector=app%3Dweb", token: h.admin,
			accept: "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
		if resp.code != http.StatusOK {
			t.Fatalf("status %d: %s", resp.code, resp.body)
		}
		tbl := resp.obj(t)
		if tbl["kind"] != "Table" || tbl["apiVersion"] != "meta.k8s.io/v1" {
			t.Fatalf("kind %v apiVersion %v", tbl["kind"], tbl["apiVersion"])
		}
		var cols []string
		for _, c := range tbl["columnDefinitions"].([]any) {
			cols = append(cols, c.(map[string]any)["name"].(string))
		}
		if !slices.Equal(cols, []string{"Name", "Gateways", "Hosts", "Age"}) {
			t.Fatalf("columns %v", cols)
		}
		rows := tbl["rows"].([]any)
		if len(rows) != 2 {
			t.Fatalf("%d rows, want 2", len(rows))
		}
		cells := rows[0].(map[string]any)["cells"].([]any)
		if cells[0] != "a" || cells[1] != `["mesh"]` || cells[2] != `["a.example.svc.cluster.local"]` || cells[3] == "<unknown>" {
			t.Fatalf("row cells %v", cells)
		}
	})
	t.Run("table for one object", func(t *testing.T) {
		resp := h.do(t, req{method: http.MethodGet, path: vsPath("default", "c"), token: h.admin, accept: "application/json;as=Table;v=v1;g=meta.k8s.io"})
		tbl := resp.obj(t)
		if tbl["kind"] != "Table" || len(tbl["rows"].([]any)) != 1 {
			t.Fatalf("table %s", resp.body)
		}
	})
}

func TestUpdate(t *testing.T) {
	h := newHarness(t, Options{})
	created := h.createVS(t, "default", "u", map[string]string{"v": "1"})

	// A label change keeps generation.
	o := h.adminDo(t, http.MethodGet, vsPath("default", "u"), nil, http.StatusOK)
	metaOf(t, o)["labels"] = map[string]any{"v": "2"}
	o1 := h.adminDo(t, http.MethodPut, vsPath("default", "u"), o, http.StatusOK)
	if metaOf(t, o1)["generation"] != float64(1) {
		t.Fatalf("metadata-only update bumped generation to %v", metaOf(t, o1)["generation"])
	}
	if rvOf(t, o1) == rvOf(t, created) {
		t.Fatalf("update kept resourceVersion %s", rvOf(t, o1))
	}
	if metaOf(t, o1)["uid"] != metaOf(t, created)["uid"] || metaOf(t, o1)["creationTimestamp"] != metaOf(t, created)["creationTimestamp"] {
		t.Fatalf("update changed server-owned metadata: %v vs %v", metaOf(t, o1), metaOf(t, created))
	}

	// A spec change bumps generation; server-owned fields sent by the client
	// are overridden.
	o1["spec"].(map[string]any)["hosts"] = []any{"new.example.com"}
	metaOf(t, o1)["generation"] = 42
	metaOf(t, o1)["creationTimestamp"] = "1999-01-01T00:00:00Z"
	o2 := h.adminDo(t, http.MethodPut, vsPath("default", "u"), o1, http.StatusOK)
	if metaOf(t, o2)["generation"] != float64(2) {
		t.Fatalf("spec update: generation %v, want 2", metaOf(t, o2)["generation"])
	}
	if metaOf(t, o2)["creationTimestamp"] != metaOf(t, created)["creationTimestamp"] {
		t.Fatalf("update changed creationTimestamp to %v", metaOf(t, o2)["creationTimestamp"])
	}

	// A stale resourceVersion conflicts and changes nothing.
	stale := deepCopy(o1) // still carries o1's resourceVersion
	stale["spec"].(map[string]any)["hosts"] = []any{"stale.example.com"}
	expectStatus(t, h.do(t, req{method: http.MethodPut, path: vsPath("default", "u"), token: h.admin, body: stale}), http.StatusConflict, "Conflict")
	cur := h.adminDo(t, http.MethodGet, vsPath("default", "u"), nil, http.StatusOK)
	if rvOf(t, cur) != rvOf(t, o2) || cur["spec"].(map[string]any)["hosts"].([]any)[0] != "new.example.com" {
		t.Fatalf("conflicting update changed the object: %v", cur)
	}

	// Other failures.
	wrongName := deepCopy(cur)
	metaOf(t, wrongName)["name"] = "other"
	expectStatus(t, h.do(t, req{method: http.MethodPut, path: vsPath("default", "u"), token: h.admin, body: wrongName}), http.StatusBadRequest, "BadRequest")
	wrongUID := deepCopy(cur)
	metaOf(t, wrongUID)["uid"] = "00000000-0000-0000-0000-000000000000"
	expectStatus(t, h.do(t, req{method: http.MethodPut, path: vsPath("default", "u"), token: h.admin, body: wrongUID}), http.StatusConflict, "Conflict")
	invalid := deepCopy(cur)
	invalid["spec"].(map[string]any)["hostz"] = []any{"x"}
	expectStatus(t, h.do(t, req{method: http.MethodPut, path: vsPath("default", "u"), token: h.admin, body: invalid}), http.StatusUnprocessableEntity, "Invalid")
	expectStatus(t, h.do(t, req{method: http.MethodPut, path: vsPath("default", "missing"), token: h.admin, body: virtualService("missing", nil, "m.example.com")}), http.StatusNotFound, "NotFound")

	// Without a resourceVersion the update is unconditional.
	uncond := deepCopy(cur)
	delete(metaOf(t, uncond), "resourceVersion")
	metaOf(t, uncond)["labels"] = map[string]any{"v": "3"}
	o3 := h.adminDo(t, http.MethodPut, vsPath("default", "u"), uncond, http.StatusOK)
	if metaOf(t, o3)["labels"].(map[string]any)["v"] != "3" {
		t.Fatalf("unconditional update: labels %v", metaOf(t, o3)["labels"])
	}
}

func TestUpdatePreservesIstioStatus(t *testing.T) {
	h := newHarness(t, Options{})
	vs := virtualService("s", nil, "s.example.com")
	vs["status"] = map[string]any{"observedGeneration": "1"}
	h.adminDo(t, http.MethodPost, vsPath("default", ""), vs, http.StatusCreated)
	cur := h.adminDo(t, http.MethodGet, vsPath("default", "s"), nil, http.StatusOK)
	want := fmt.Sprint(cur["status"])

	changed := deepCopy(cur)
	changed["status"] = map[string]any{"observedGeneration": "7"}
	o := h.adminDo(t, http.MethodPut, vsPath("default", "s"), changed, http.StatusOK)
	if fmt.Sprint(o["status"]) != want {
		t.Fatalf("PUT changed status to %v, want %v", o["status"], want)
	}
	dropped := h.adminDo(t, http.MethodGet, vsPath("default", "s"), nil, http.StatusOK)
	delete(dropped, "status")
	h.adminDo(t, http.MethodPut, vsPath("default", "s"), dropped, http.StatusOK)
	resp := h.do(t, req{method: http.MethodPatch, path: vsPath("default", "s"), token: h.admin, ctype: "application/merge-patch+json", body: `{"status":{"observedGeneration":"9"}}`})
	if resp.code != http.StatusOK {
		t.Fatalf("patch: %d %s", resp.code, resp.body)
	}
	got := h.adminDo(t, http.MethodGet, vsPath("default", "s"), nil, http.StatusOK)
	if fmt.Sprint(got["status"]) != want {
		t.Fatalf("status became %v, want %v", got["status"], want)
	}
	if metaOf(t, got)["generation"] != float64(1) {
		t.Fatalf("status-only writes bumped generation to %v", metaOf(t, got)["generation"])
	}
}

func TestProtobufCreateNamespace(t *testing.T) {
	h := newHarness(t, Options{})
	ns := corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "proto-ns", Labels: map[string]string{"team": "mesh"}}}
	raw, err := ns.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	u := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, Raw: raw}
	env, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	body := append([]byte{0x6b, 0x38, 0x73, 0x00}, env...)
	resp := h.do(t, req{method: http.MethodPost, path: "/api/v1/namespaces", token: h.admin, ctype: "application/vnd.kubernetes.protobuf", body: body})
	if resp.code != http.StatusCreated {
		t.Fatalf("protobuf create: %d %s", resp.code, resp.body)
	}
	got := h.adminDo(t, http.MethodGet, "/api/v1/namespaces/proto-ns", nil, http.StatusOK)
	m := metaOf(t, got)
	if got["kind"] != "Namespace" || m["name"] != "proto-ns" || m["labels"].(map[string]any)["team"] != "mesh" {
		t.Fatalf("stored namespace %v", got)
	}
	if m["creationTimestamp"] == nil || m["uid"] == nil {
		t.Fatalf("server-owned metadata missing: %v", m)
	}
	if st, _ := got["status"].(map[string]any); st["phase"] != "Active" {
		t.Fatalf("status %v", got["status"])
	}
	// The new namespace is usable at once.
	h.createVS(t, "proto-ns", "in-proto", nil)

	for name, b := range map[string][]byte{
		"no magic":     env,
		"bad envelope": append([]byte{0x6b, 0x38, 0x73, 0x00}, 0xff, 0xff, 0xff),
		"istio kind": func() []byte {
			u := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "networking.istio.io/v1", Kind: "VirtualService"}, Raw: []byte{}}
			e, _ := u.Marshal()
			return append([]byte{0x6b, 0x38, 0x73, 0x00}, e...)
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			expectStatus(t, h.do(t, req{method: http.MethodPost, path: "/api/v1/namespaces", token: h.admin, ctype: "application/vnd.kubernetes.protobuf", body: b}), http.StatusBadRequest, "BadRequest")
		})
	}
}
