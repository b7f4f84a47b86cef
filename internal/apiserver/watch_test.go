package apiserver

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func rvInt(t *testing.T, o map[string]any) int64 {
	t.Helper()
	n, err := strconv.ParseInt(rvOf(t, o), 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion: %v", err)
	}
	return n
}

func TestWatchFromZeroThenLive(t *testing.T) {
	h := newHarness(t, Options{})
	h.createVS(t, "default", "a", nil)
	h.createVS(t, "default", "b", nil)
	w := h.watch(t, vsPath("default", "")+"?watch=true&resourceVersion=0", h.admin)
	seen := map[string]bool{}
	for range 2 {
		ev := w.next()
		o := ev["object"].(map[string]any)
		if ev["type"] != "ADDED" || o["apiVersion"] != "networking.istio.io/v1" || o["kind"] != "VirtualService" {
			t.Fatalf("initial event %v", ev)
		}
		seen[metaOf(t, o)["name"].(string)] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Fatalf("initial events named %v, want a and b", seen)
	}

	c := h.createVS(t, "default", "c", nil)
	added := w.expect("ADDED", "c")
	if rvOf(t, added) != rvOf(t, c) {
		t.Fatalf("ADDED rv %s, create reply rv %s", rvOf(t, added), rvOf(t, c))
	}
	c["spec"].(map[string]any)["hosts"] = []any{"changed.example.com"}
	upd := h.adminDo(t, http.MethodPut, vsPath("default", "c"), c, http.StatusOK)
	mod := w.expect("MODIFIED", "c")
	if rvOf(t, mod) != rvOf(t, upd) || mod["spec"].(map[string]any)["hosts"].([]any)[0] != "changed.example.com" {
		t.Fatalf("MODIFIED %v, update reply rv %s", mod, rvOf(t, upd))
	}
	if metaOf(t, mod)["generation"] != float64(2) {
		t.Fatalf("MODIFIED generation %v", metaOf(t, mod)["generation"])
	}
	h.adminDo(t, http.MethodDelete, vsPath("default", "a"), nil, http.StatusOK)
	del := w.expect("DELETED", "a")
	if rvInt(t, del) <= rvInt(t, mod) {
		t.Fatalf("DELETED rv %d not after MODIFIED rv %d", rvInt(t, del), rvInt(t, mod))
	}
	// Objects in other namespaces and of other kinds are not reported.
	h.createVS(t, "istio-system", "elsewhere", nil)
	h.adminDo(t, http.MethodPost, "/api/v1/namespaces/default/secrets", map[string]any{"metadata": map[string]any{"name": "s"}}, http.StatusCreated)
	h.createVS(t, "default", "sentinel", nil)
	w.expect("ADDED", "sentinel")
}

func TestWatchAtOtherVersion(t *testing.T) {
	h := newHarness(t, Options{})
	w := h.watch(t, "/apis/networking.istio.io/v1alpha3/namespaces/default/virtualservices?watch=1", h.admin)
	h.createVS(t, "default", "x", nil)
	o := w.expect("ADDED", "x")
	if o["apiVersion"] != "networking.istio.io/v1alpha3" {
		t.Fatalf("apiVersion %v", o["apiVersion"])
	}
}

func TestWatchResumeReplaysLaterEvents(t *testing.T) {
	h := newHarness(t, Options{})
	h.createVS(t, "default", "before", nil)
	mark := h.createVS(t, "default", "mark", nil)
	// Changes after mark, including one to an object that existed before.
	h.createVS(t, "default", "after1", nil)
	before := h.adminDo(t, http.MethodGet, vsPath("default", "before"), nil, http.StatusOK)
	metaOf(t, before)["labels"] = map[string]any{"touched": "yes"}
	h.adminDo(t, http.MethodPut, vsPath("default", "before"), before, http.StatusOK)
	h.adminDo(t, http.MethodDelete, vsPath("default", "mark"), nil, http.StatusOK)
	h.createVS(t, "istio-system", "other-ns", nil)
	h.createVS(t, "default", "after2", nil)

	w := h.watch(t, vsPath("default", "")+"?watch=true&resourceVersion="+rvOf(t, mark), h.admin)
	last := rvInt(t, mark)
	for _, want := range []struct{ typ, name string }{
		{"ADDED", "after1"}, {"MODIFIED", "before"}, {"DELETED", "mark"}, {"ADDED", "after2"},
	} {
		o := w.expect(want.typ, want.name)
		if rv := rvInt(t, o); rv <= last {
			t.Fatalf("%s %s rv %d not after %d", want.typ, want.name, rv, last)
		} else {
			last = rv
		}
	}
	// Nothing else was replayed: the next event is a new live one.
	h.createVS(t, "default", "live", nil)
	w.expect("ADDED", "live")
}

func TestWatchBookmarks(t *testing.T) {
	h := newHarness(t, Options{BookmarkInterval: 10 * time.Millisecond})
	w := h.watch(t, vsPath("default", "")+"?watch=true&allowWatchBookmarks=true", h.admin)
	o := h.createVS(t, "default", "bm", nil)
	w.expect("ADDED", "bm")
	ev := w.next()
	if ev["type"] != "BOOKMARK" {
		t.Fatalf("event after ADDED on an idle watch: %v, want BOOKMARK", ev)
	}
	bo := ev["object"].(map[string]any)
	if bo["kind"] != "VirtualService" || bo["apiVersion"] != "networking.istio.io/v1" {
		t.Fatalf("bookmark object %v", bo)
	}
	if rvInt(t, bo) < rvInt(t, o) {
		t.Fatalf("bookmark rv %d < last event rv %d", rvInt(t, bo), rvInt(t, o))
	}
	if _, ok := metaOf(t, bo)["annotations"]; ok {
		t.Fatalf("plain bookmark carries annotations: %v", bo)
	}

	// Without allowWatchBookmarks there are none. Open a watch with and one
	// without; once the first has had a bookmark, the store has sent
	// progress to both, and the second must still show nothing but the
	// next live event.
	from := "?watch=true&resourceVersion=" + rvOf(t, o)
	plain := h.watch(t, vsPath("default", "")+from, h.admin)
	marked := h.watch(t, vsPath("default", "")+from+"&allowWatchBookmarks=true", h.admin)
	if ev := marked.next(); ev["type"] != "BOOKMARK" {
		t.Fatalf("idle watch with bookmarks: %v", ev)
	}
	if ev := marked.next(); ev["type"] != "BOOKMARK" {
		t.Fatalf("idle watch with bookmarks: %v", ev)
	}
	h.createVS(t, "default", "bm2", nil)
	if ev := plain.next(); ev["type"] != "ADDED" {
		t.Fatalf("got %v, want ADDED (no bookmarks without allowWatchBookmarks)", ev)
	}
}

func TestWatchSendInitialEvents(t *testing.T) {
	h := newHarness(t, Options{BookmarkInterval: time.Hour})
	h.createVS(t, "default", "one", nil)
	two := h.createVS(t, "default", "two", nil)
	w := h.watch(t, vsPath("default", "")+"?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan", h.admin)
	got := map[string]bool{}
	for range 2 {
		ev := w.next()
		if ev["type"] != "ADDED" {
			t.Fatalf("initial event %v, want ADDED", ev)
		}
		got[metaOf(t, ev["object"].(map[string]any))["name"].(string)] = true
	}
	if !got["one"] || !got["two"] {
		t.Fatalf("initial events %v", got)
	}
	ev := w.next()
	if ev["type"] != "BOOKMARK" {
		t.Fatalf("initial list not ended by a BOOKMARK: %v", ev)
	}
	bo := ev["object"].(map[string]any)
	ann, _ := metaOf(t, bo)["annotations"].(map[string]any)
	if ann["k8s.io/initial-events-end"] != "true" {
		t.Fatalf("bookmark annotations %v", ann)
	}
	if rvInt(t, bo) < rvInt(t, two) {
		t.Fatalf("initial-events-end rv %d < newest object rv %d", rvInt(t, bo), rvInt(t, two))
	}
	h.createVS(t, "default", "three", nil)
	w.expect("ADDED", "three")
}

func TestWatchLabelSelector(t *testing.T) {
	h := newHarness(t, Options{})
	h.createVS(t, "default", "web", map[string]string{"app": "web"})
	h.createVS(t, "default", "db", map[string]string{"app": "db"})
	w := h.watch(t, vsPath("default", "")+"?watch=true&labelSelector=app%3Dweb", h.admin)
	w.expect("ADDED", "web")

	relabel := func(name, app string) {
		t.Helper()
		resp := h.do(t, req{method: http.MethodPatch, path: vsPath("default", name), token: h.admin, ctype: "application/merge-patch+json",
			body: `{"metadata":{"labels":{"app":"` + app + `"}}}`})
		if resp.code != http.StatusOK {
			t.Fatalf("relabel %s: %d %s", name, resp.code, resp.body)
		}
	}
	relabel("web", "gone") // stops matching
	o := w.expect("DELETED", "web")
	if metaOf(t, o)["labels"].(map[string]any)["app"] != "gone" {
		t.Fatalf("DELETED carries %v, want the new (non-matching) object", metaOf(t, o)["labels"])
	}
	relabel("db", "db2") // never matched: not reported
	relabel("db", "web") // starts matching
	w.expect("ADDED", "db")
	resp := h.do(t, req{method: http.MethodPatch, path: vsPath("default", "db"), token: h.admin, ctype: "application/merge-patch+json",
		body: `{"metadata":{"labels":{"extra":"x"}}}`})
	if resp.code != http.StatusOK {
		t.Fatalf("patch db: %d %s", resp.code, resp.body)
	}
	w.expect("MODIFIED", "db")
	h.adminDo(t, http.MethodDelete, vsPath("default", "web"), nil, http.StatusOK) // not visible: not reported
	h.adminDo(t, http.MethodDelete, vsPath("default", "db"), nil, http.StatusOK)
	w.expect("DELETED", "db")
}

func TestWatchFieldSelector(t *testing.T) {
	h := newHarness(t, Options{})
	w := h.watch(t, vsAPI+"/virtualservices?watch=true&fieldSelector=metadata.name%3Dpick", h.admin)
	h.createVS(t, "default", "skip", nil)
	h.createVS(t, "istio-system", "pick", nil)
	o := w.expect("ADDED", "pick")
	if metaOf(t, o)["namespace"] != "istio-system" {
		t.Fatalf("namespace %v", metaOf(t, o)["namespace"])
	}
}

func TestWatchCompactedIsGone(t *testing.T) {
	h := newHarness(t, Options{})
	old := h.createVS(t, "default", "old", nil)
	h.createVS(t, "default", "n1", nil)
	h.createVS(t, "default", "n2", nil)
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	cur, err := h.st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.st.Compact(ctx, cur); err != nil {
		t.Fatal(err)
	}
	resp := h.do(t, req{method: http.MethodGet, path: vsPath("default", "") + "?watch=true&resourceVersion=" + rvOf(t, old), token: h.admin})
	st := expectStatus(t, resp, http.StatusGone, "Expired")
	if msg, _ := st["message"].(string); msg == "" {
		t.Fatalf("410 without a message")
	}
	// Watching from the current revision, or from 0, still works.
	w := h.watch(t, vsPath("default", "")+"?watch=true&resourceVersion="+strconv.FormatInt(cur, 10), h.admin)
	h.createVS(t, "default", "fresh", nil)
	w.expect("ADDED", "fresh")
	w0 := h.watch(t, vsPath("default", "")+"?watch=true&resourceVersion=0", h.admin)
	w0.expect("ADDED", "fresh") // key order: fresh < n1 < n2 < old
}

func TestWatchBadParameters(t *testing.T) {
	h := newHarness(t, Options{})
	for _, q := range []string{"resourceVersion=abc", "resourceVersion=-1", "timeoutSeconds=x", "labelSelector=%3D%3D"} {
		expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("default", "") + "?watch=true&" + q, token: h.admin}), http.StatusBadRequest, "BadRequest")
	}
	// A resourceVersion from the future is not silently accepted.
	resp := h.do(t, req{method: http.MethodGet, path: vsPath("default", "") + "?watch=true&resourceVersion=999999", token: h.admin})
	if resp.code < 400 {
		t.Fatalf("future resourceVersion: %d %s", resp.code, resp.body)
	}
}

func TestWatchTimeoutEndsStream(t *testing.T) {
	h := newHarness(t, Options{})
	start := time.Now()
	w := h.watch(t, vsPath("default", "")+"?watch=true&timeoutSeconds=1", h.admin)
	w.expectEnd(5 * time.Second)
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("stream ended after %v, before the 1s timeout", d)
	}
}

func TestWatchTable(t *testing.T) {
	h := newHarness(t, Options{})
	w := h.watchAccept(t, vsPath("default", "")+"?watch=true", h.admin, "application/json;as=Table;v=v1;g=meta.k8s.io")
	h.createVS(t, "default", "tbl", nil)
	ev := w.next()
	tbl := ev["object"].(map[string]any)
	if ev["type"] != "ADDED" || tbl["kind"] != "Table" {
		t.Fatalf("event %v", ev)
	}
	if cells := tbl["rows"].([]any)[0].(map[string]any)["cells"].([]any); cells[0] != "tbl" {
		t.Fatalf("cells %v", cells)
	}
}

// TestWatchSendsHeadersAtOnce checks that a watch with nothing to report
// yet still answers with its headers, as clients wait for them before
// reading events.
func TestWatchSendsHeadersAtOnce(t *testing.T) {
	h := newHarness(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.ts.URL+vsPath("default", "")+"?watch=true", nil)
	r.Header.Set("Authorization", "Bearer "+h.admin)
	resp, err := h.ts.Client().Do(r) // returns once the headers are in
	if err != nil {
		t.Fatalf("no headers from an idle watch: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
