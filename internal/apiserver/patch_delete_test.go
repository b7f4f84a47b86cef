package apiserver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/weftmesh/weft/internal/apiserver/rbac"
	"github.com/weftmesh/weft/internal/resource"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const secretsPath = "/api/v1/namespaces/default/secrets"

func TestPatchSecret(t *testing.T) {
	h := newHarness(t, Options{})
	created := h.adminDo(t, http.MethodPost, secretsPath, map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata":   map[string]any{"name": "creds"},
		"stringData": map[string]any{"a": "one"},
	}, http.StatusCreated)
	if created["type"] != "Opaque" || created["data"].(map[string]any)["a"] != b64("one") || created["stringData"] != nil {
		t.Fatalf("created secret %v", created)
	}
	staleRV := rvOf(t, created)

	steps := []struct {
		name     string
		ctype    string
		patch    string
		wantData map[string]any
		wantLbls map[string]any
	}{
		{"merge", "application/merge-patch+json", `{"data":{"b":"` + b64("two") + `"}}`,
			map[string]any{"a": b64("one"), "b": b64("two")}, nil},
		{"json", "application/json-patch+json",
			`[{"op":"replace","path":"/data/a","value":"` + b64("uno") + `"},{"op":"remove","path":"/data/b"},{"op":"add","path":"/metadata/labels","value":{"k":"v"}}]`,
			map[string]any{"a": b64("uno")}, map[string]any{"k": "v"}},
		{"strategic", "application/strategic-merge-patch+json",
			`{"metadata":{"labels":{"k":null,"s":"m"}},"stringData":{"c":"three"}}`,
			map[string]any{"a": b64("uno"), "c": b64("three")}, map[string]any{"s": "m"}},
		{"merge with charset", "application/merge-patch+json; charset=utf-8", `{"data":{"a":null}}`,
			map[string]any{"c": b64("three")}, map[string]any{"s": "m"}},
	}
	prevRV := staleRV
	for _, st := range steps {
		resp := h.do(t, req{method: http.MethodPatch, path: secretsPath + "/creds", token: h.admin, ctype: st.ctype, body: st.patch})
		if resp.code != http.StatusOK {
			t.Fatalf("%s patch: %d %s", st.name, resp.code, resp.body)
		}
		reply := resp.obj(t)
		got := h.adminDo(t, http.MethodGet, secretsPath+"/creds", nil, http.StatusOK)
		if rvOf(t, reply) != rvOf(t, got) || rvOf(t, got) == prevRV {
			t.Fatalf("%s patch: reply rv %s, stored rv %s, previous %s", st.name, rvOf(t, reply), rvOf(t, got), prevRV)
		}
		prevRV = rvOf(t, got)
		if fmt.Sprint(got["data"]) != fmt.Sprint(st.wantData) {
			t.Fatalf("%s patch: data %v, want %v", st.name, got["data"], st.wantData)
		}
		labels, _ := metaOf(t, got)["labels"].(map[string]any)
		if len(st.wantLbls) == 0 && len(labels) != 0 || len(st.wantLbls) != 0 && fmt.Sprint(labels) != fmt.Sprint(st.wantLbls) {
			t.Fatalf("%s patch: labels %v, want %v", st.name, labels, st.wantLbls)
		}
		if got["stringData"] != nil {
			t.Fatalf("%s patch: stringData stored: %v", st.name, got["stringData"])
		}
	}

	failures := []struct {
		name   string
		path   string
		ctype  string
		patch  string
		code   int
		reason string
	}{
		{"stale resourceVersion", secretsPath + "/creds", "application/merge-patch+json", `{"metadata":{"resourceVersion":"` + staleRV + `"},"data":{"z":"` + b64("z") + `"}}`, 409, "Conflict"},
		{"server-side apply", secretsPath + "/creds", "application/apply-patch+yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n", 415, "UnsupportedMediaType"},
		{"unknown patch type", secretsPath + "/creds", "text/plain", `{}`, 415, "UnsupportedMediaType"},
		{"bad json patch", secretsPath + "/creds", "application/json-patch+json", `{"op":"add"}`, 400, "BadRequest"},
		{"failing test op", secretsPath + "/creds", "application/json-patch+json", `[{"op":"test","path":"/type","value":"kubernetes.io/tls"}]`, 400, "BadRequest"},
		{"invalid result", secretsPath + "/creds", "application/merge-patch+json", `{"data":{"bad":"not base64!"}}`, 422, "Invalid"},
		{"rename", secretsPath + "/creds", "application/merge-patch+json", `{"metadata":{"name":"other"}}`, 400, "BadRequest"},
		{"missing object", secretsPath + "/nope", "application/merge-patch+json", `{}`, 404, "NotFound"},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			before := h.adminDo(t, http.MethodGet, secretsPath+"/creds", nil, http.StatusOK)
			expectStatus(t, h.do(t, req{method: http.MethodPatch, path: f.path, token: h.admin, ctype: f.ctype, body: f.patch}), f.code, f.reason)
			after := h.adminDo(t, http.MethodGet, secretsPath+"/creds", nil, http.StatusOK)
			if rvOf(t, after) != rvOf(t, before) || fmt.Sprint(after["data"]) != fmt.Sprint(before["data"]) {
				t.Fatalf("failed patch changed the secret: %v -> %v", before, after)
			}
		})
	}

	// A patch naming the current resourceVersion succeeds.
	cur := h.adminDo(t, http.MethodGet, secretsPath+"/creds", nil, http.StatusOK)
	resp := h.do(t, req{method: http.MethodPatch, path: secretsPath + "/creds", token: h.admin, ctype: "application/merge-patch+json",
		body: `{"metadata":{"resourceVersion":"` + rvOf(t, cur) + `"},"data":{"z":"` + b64("z") + `"}}`})
	if resp.code != http.StatusOK {
		t.Fatalf("patch with current resourceVersion: %d %s", resp.code, resp.body)
	}
}

// TestConcurrentPatchesWithoutResourceVersion checks that patches that do
// not name a resourceVersion never fail with a conflict: like Kubernetes, the
// server re-applies them to the latest object when it loses a race.
func TestConcurrentPatchesWithoutResourceVersion(t *testing.T) {
	h := newHarness(t, Options{})
	h.createVS(t, "default", "patched", nil)
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				patch := fmt.Sprintf(`{"metadata":{"labels":{"w%d-%d":"x"}}}`, w, i)
				resp, err := h.try(req{method: http.MethodPatch, path: vsPath("default", "patched"), token: h.admin, ctype: "application/merge-patch+json", body: patch})
				if err != nil {
					errs <- err
					return
				}
				if resp.code != http.StatusOK {
					errs <- fmt.Errorf("patch %s: %d %s", patch, resp.code, resp.body)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := h.adminDo(t, http.MethodGet, vsPath("default", "patched"), nil, http.StatusOK)
	if labels, _ := metaOf(t, got)["labels"].(map[string]any); len(labels) != workers*each {
		t.Fatalf("%d labels after %d patches: lost updates", len(labels), workers*each)
	}
}

func TestConcurrentUpdatesLoseNothing(t *testing.T) {
	h := newHarness(t, Options{})
	h.createVS(t, "default", "counter", map[string]string{"count": "0"})
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var conflicts sync.Map
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				for attempt := 0; ; attempt++ {
					if attempt > 1000 {
						errs <- fmt.Errorf("worker %d: no progress after %d conflicts", w, attempt)
						return
					}
					resp, err := h.try(req{method: http.MethodGet, path: vsPath("default", "counter"), token: h.admin})
					if err != nil || resp.code != http.StatusOK {
						errs <- fmt.Errorf("get: %v %d %s", err, resp.code, resp.body)
						return
					}
					var o map[string]any
					if err := json.Unmarshal(resp.body, &o); err != nil {
						errs <- err
						return
					}
					labels := o["metadata"].(map[string]any)["labels"].(map[string]any)
					n, _ := strconv.Atoi(labels["count"].(string))
					labels["count"] = strconv.Itoa(n + 1)
					resp, err = h.try(req{method: http.MethodPut, path: vsPath("default", "counter"), token: h.admin, body: o})
					if err != nil {
						errs <- err
						return
					}
					if resp.code == http.StatusConflict {
						conflicts.Store(w, true)
						continue
					}
					if resp.code != http.StatusOK {
						errs <- fmt.Errorf("put: %d %s", resp.code, resp.body)
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := h.adminDo(t, http.MethodGet, vsPath("default", "counter"), nil, http.StatusOK)
	if c := metaOf(t, got)["labels"].(map[string]any)["count"]; c != strconv.Itoa(workers*each) {
		t.Fatalf("count = %v, want %d (lost updates)", c, workers*each)
	}
	if metaOf(t, got)["generation"] != float64(1) {
		t.Fatalf("label updates bumped generation to %v", metaOf(t, got)["generation"])
	}
}

func TestDelete(t *testing.T) {
	h := newHarness(t, Options{})
	created := h.createVS(t, "default", "del", map[string]string{"a": "b"})

	st := expectStatus(t, h.do(t, req{method: http.MethodDelete, path: vsPath("default", "del"), token: h.admin,
		body: map[string]any{"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": map[string]any{"resourceVersion": "1"}}}), http.StatusConflict, "Conflict")
	_ = st
	expectStatus(t, h.do(t, req{method: http.MethodDelete, path: vsPath("default", "del"), token: h.admin,
		body: map[string]any{"preconditions": map[string]any{"uid": "00000000-0000-0000-0000-000000000000"}}}), http.StatusConflict, "Conflict")
	expectStatus(t, h.do(t, req{method: http.MethodDelete, path: vsPath("default", "del"), token: h.admin, body: "{not json"}), http.StatusBadRequest, "BadRequest")
	h.adminDo(t, http.MethodGet, vsPath("default", "del"), nil, http.StatusOK)

	gone := h.adminDo(t, http.MethodDelete, vsPath("default", "del"), map[string]any{
		"preconditions": map[string]any{"resourceVersion": rvOf(t, created), "uid": metaOf(t, created)["uid"]},
	}, http.StatusOK)
	if gone["kind"] != "VirtualService" || metaOf(t, gone)["name"] != "del" || metaOf(t, gone)["uid"] != metaOf(t, created)["uid"] {
		t.Fatalf("delete reply %v", gone)
	}
	expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("default", "del"), token: h.admin}), http.StatusNotFound, "NotFound")
	expectStatus(t, h.do(t, req{method: http.MethodDelete, path: vsPath("default", "del"), token: h.admin}), http.StatusNotFound, "NotFound")
	// The name can be reused, with a new uid.
	again := h.createVS(t, "default", "del", nil)
	if metaOf(t, again)["uid"] == metaOf(t, created)["uid"] {
		t.Fatalf("re-created object kept the old uid")
	}
}

func TestDeleteNamespaceRemovesContents(t *testing.T) {
	h := newHarness(t, Options{})
	h.createNamespace(t, "team")
	h.createNamespace(t, "team2")
	h.createVS(t, "team", "vs1", nil)
	h.createVS(t, "team", "vs2", nil)
	h.createVS(t, "team2", "keep", nil)
	h.adminDo(t, http.MethodPost, "/api/v1/namespaces/team/secrets", map[string]any{"metadata": map[string]any{"name": "s"}, "stringData": map[string]any{"k": "v"}}, http.StatusCreated)
	h.adminDo(t, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings", roleBinding("rb", rbac.View, "alice"), http.StatusCreated)

	gone := h.adminDo(t, http.MethodDelete, "/api/v1/namespaces/team", nil, http.StatusOK)
	if gone["kind"] != "Namespace" || metaOf(t, gone)["name"] != "team" {
		t.Fatalf("delete reply %v", gone)
	}
	expectStatus(t, h.do(t, req{method: http.MethodGet, path: "/api/v1/namespaces/team", token: h.admin}), http.StatusNotFound, "NotFound")
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	for _, k := range resource.All() {
		if !k.Namespaced {
			continue
		}
		kvs, _, err := h.st.List(ctx, k.KeyPrefix("team"))
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) != 0 {
			t.Errorf("%d %s left in the deleted namespace", len(kvs), k.Resource)
		}
	}
	if got := names(t, h.adminDo(t, http.MethodGet, vsAPI+"/virtualservices", nil, http.StatusOK)); !slices.Equal(got, []string{"keep"}) {
		t.Fatalf("virtualservices left: %v", got)
	}
	// Nothing can be created in it any more.
	expectStatus(t, h.do(t, req{method: http.MethodPost, path: vsPath("team", ""), token: h.admin, body: virtualService("late", nil, "late.example.com")}), http.StatusNotFound, "NotFound")
}

func TestDeleteCollection(t *testing.T) {
	h := newHarness(t, Options{})
	h.createNamespace(t, "other")
	h.createVS(t, "default", "a", map[string]string{"app": "web"})
	h.createVS(t, "default", "b", map[string]string{"app": "web"})
	h.createVS(t, "default", "c", map[string]string{"app": "db"})
	h.createVS(t, "other", "d", map[string]string{"app": "web"})

	dry := h.adminDo(t, http.MethodDelete, vsPath("default", "")+"?labelSelector=app%3Dweb&dryRun=All", nil, http.StatusOK)
	if got := names(t, dry); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("dry-run deletecollection reported %v", got)
	}
	if got := names(t, h.adminDo(t, http.MethodGet, vsPath("default", ""), nil, http.StatusOK)); len(got) != 3 {
		t.Fatalf("dry-run deletecollection deleted: %v left", got)
	}

	out := h.adminDo(t, http.MethodDelete, vsPath("default", "")+"?labelSelector=app%3Dweb", nil, http.StatusOK)
	if out["kind"] != "VirtualServiceList" {
		t.Fatalf("kind %v", out["kind"])
	}
	if got := names(t, out); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("deletecollection reported %v, want [a b]", got)
	}
	if got := names(t, h.adminDo(t, http.MethodGet, vsAPI+"/virtualservices", nil, http.StatusOK)); !slices.Equal(got, []string{"c", "d"}) {
		t.Fatalf("left after deletecollection: %v, want [c d] (other namespaces untouched)", got)
	}
	expectStatus(t, h.do(t, req{method: http.MethodDelete, path: vsPath("default", "") + "?labelSelector=%3D%3D", token: h.admin}), http.StatusBadRequest, "BadRequest")
}
