package apiserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/apiserver/authn"
	"github.com/weftmesh/weft/internal/apiserver/rbac"
	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/bolt"
)

// requestTimeout bounds every single HTTP exchange of a test.
const requestTimeout = 10 * time.Second

// eventTimeout bounds the wait for one watch event.
const eventTimeout = 5 * time.Second

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// harness is an API server over a real bolt store, served over plain HTTP.
type harness struct {
	t      *testing.T
	st     *bolt.Store
	srv    *Server
	ts     *httptest.Server
	tokens *authn.Tokens
	admin  string
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	logger := quietLogger()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "weft.db"), store.Options{ProgressInterval: 50 * time.Millisecond}, logger)
	if err != nil {
		t.Fatalf("opening bolt store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	tokens := authn.NewTokens(st, nil)
	srv := New(st, authn.NewAuthenticator(tokens), rbac.New(st), tokens, logger, opts)
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if err := srv.Bootstrap(ctx); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	h := &harness{t: t, st: st, srv: srv, ts: ts, tokens: tokens}
	h.admin = h.token("admin", rbac.GroupMasters)
	return h
}

// token issues a bearer token for user in groups.
func (h *harness) token(user string, groups ...string) string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	tok, _, err := h.tokens.Issue(ctx, user, groups, 0)
	if err != nil {
		h.t.Fatalf("issuing token for %s: %v", user, err)
	}
	return tok
}

// response is a finished HTTP exchange.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// obj decodes the body as a JSON object.
func (r response) obj(t *testing.T) map[string]any {
	t.Helper()
	var o map[string]any
	if err := json.Unmarshal(r.body, &o); err != nil {
		t.Fatalf("response body is not a JSON object: %v\n%s", err, r.body)
	}
	return o
}

// req describes one request.
type req struct {
	method string
	path   string
	token  string // "" sends no Authorization header
	ctype  string // default application/json when there is a body
	accept string
	body   any // []byte, string or a value to encode as JSON
}

func (h *harness) do(t *testing.T, rq req) response {
	t.Helper()
	resp, err := h.try(rq)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// try sends a request; it is safe to call from any goroutine.
func (h *harness) try(rq req) (response, error) {
	var body io.Reader
	switch b := rq.body.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(b)
	case string:
		body = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return response{}, fmt.Errorf("encoding request body: %w", err)
		}
		body = bytes.NewReader(raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, rq.method, h.ts.URL+rq.path, body)
	if err != nil {
		return response{}, fmt.Errorf("building request: %w", err)
	}
	if rq.token != "" {
		r.Header.Set("Authorization", "Bearer "+rq.token)
	}
	if body != nil {
		ct := rq.ctype
		if ct == "" {
			ct = "application/json"
		}
		r.Header.Set("Content-Type", ct)
	}
	if rq.accept != "" {
		r.Header.Set("Accept", rq.accept)
	}
	resp, err := h.ts.Client().Do(r)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", rq.method, rq.path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: reading body: %w", rq.method, rq.path, err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: raw}, nil
}

// admin sends a request as the cluster admin and checks the status code.
func (h *harness) adminDo(t *testing.T, method, path string, body any, want int) map[string]any {
	t.Helper()
	resp := h.do(t, req{method: method, path: path, token: h.admin, body: body})
	if resp.code != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.code, want, resp.body)
	}
	return resp.obj(t)
}

// expectStatus checks that resp is a failure Status with code and reason.
func expectStatus(t *testing.T, resp response, code int, reason string) map[string]any {
	t.Helper()
	if resp.code != code {
		t.Fatalf("status %d, want %d: %s", resp.code, code, resp.body)
	}
	o := resp.obj(t)
	if o["kind"] != "Status" || o["apiVersion"] != "v1" || o["status"] != "Failure" {
		t.Fatalf("body is not a failure Status: %s", resp.body)
	}
	if got := fmt.Sprint(o["code"]); got != fmt.Sprint(code) {
		t.Fatalf("Status.code %s, want %d", got, code)
	}
	if o["reason"] != reason {
		t.Fatalf("Status.reason %v, want %s: %s", o["reason"], reason, resp.body)
	}
	return o
}

func (h *harness) createNamespace(t *testing.T, name string) {
	t.Helper()
	h.adminDo(t, http.MethodPost, "/api/v1/namespaces", map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name},
	}, http.StatusCreated)
}

const vsAPI = "/apis/networking.istio.io/v1"

func vsPath(ns, name string) string {
	p := vsAPI + "/namespaces/" + ns + "/virtualservices"
	if name != "" {
		p += "/" + name
	}
	return p
}

// virtualService builds a valid VirtualService routing host to dest.
func virtualService(name string, labels map[string]string, host string) map[string]any {
	md := map[string]any{"name": name}
	if labels != nil {
		l := map[string]any{}
		for k, v := range labels {
			l[k] = v
		}
		md["labels"] = l
	}
	return map[string]any{
		"apiVersion": "networking.istio.io/v1",
		"kind":       "VirtualService",
		"metadata":   md,
		"spec": map[string]any{
			"hosts":    []any{host},
			"gateways": []any{"mesh"},
			"http": []any{map[string]any{
				"route": []any{map[string]any{"destination": map[string]any{"host": host}}},
			}},
		},
	}
}

func (h *harness) createVS(t *testing.T, ns, name string, labels map[string]string) map[string]any {
	t.Helper()
	return h.adminDo(t, http.MethodPost, vsPath(ns, ""), virtualService(name, labels, name+".example.svc.cluster.local"), http.StatusCreated)
}

// metaOf returns an object's metadata.
func metaOf(t *testing.T, o map[string]any) map[string]any {
	t.Helper()
	m, ok := o["metadata"].(map[string]any)
	if !ok {
		t.Fatalf("object has no metadata: %v", o)
	}
	return m
}

func rvOf(t *testing.T, o map[string]any) string {
	t.Helper()
	rv, _ := metaOf(t, o)["resourceVersion"].(string)
	if rv == "" {
		t.Fatalf("object has no resourceVersion: %v", o)
	}
	return rv
}

// names returns the metadata.name of each item of a list.
func names(t *testing.T, list map[string]any) []string {
	t.Helper()
	items, ok := list["items"].([]any)
	if !ok {
		t.Fatalf("list has no items array: %v", list)
	}
	out := []string{}
	for _, it := range items {
		o, _ := it.(map[string]any)
		out = append(out, fmt.Sprint(metaOf(t, o)["name"]))
	}
	return out
}

// watchStream is an open watch whose events arrive on a channel.
type watchStream struct {
	t      *testing.T
	resp   *http.Response
	events chan map[string]any
	done   chan struct{} // closed when the stream has ended
	cancel context.CancelFunc
}

// watch opens a watch request; it fails the test unless the reply is 200.
func (h *harness) watch(t *testing.T, path, token string) *watchStream {
	t.Helper()
	return h.watchAccept(t, path, token, "")
}

// watchAccept is watch with an Accept header.
func (h *harness) watchAccept(t *testing.T, path, token, accept string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, h.ts.URL+path, nil)
	if err != nil {
		cancel()
		t.Fatalf("building watch request: %v", err)
	}
	r.Header.Set("Authorization", "Bearer "+token)
	if accept != "" {
		r.Header.Set("Accept", accept)
	}
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := h.ts.Client().Do(r)
		got <- result{resp, err}
	}()
	var res result
	select {
	case res = <-got:
	case <-time.After(requestTimeout):
		cancel()
		t.Fatalf("watch %s: no response headers within %v", path, requestTimeout)
	}
	if res.err != nil {
		cancel()
		t.Fatalf("watch %s: %v", path, res.err)
	}
	if res.resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(res.resp.Body)
		res.resp.Body.Close()
		cancel()
		t.Fatalf("watch %s: status %d: %s", path, res.resp.StatusCode, body)
	}
	w := &watchStream{t: t, resp: res.resp, events: make(chan map[string]any, 1024), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		defer close(w.events)
		sc := bufio.NewScanner(res.resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = map[string]any{"type": "UNDECODABLE", "raw": sc.Text()}
			}
			w.events <- ev
		}
	}()
	t.Cleanup(w.close)
	return w
}

// close ends the watch from the client side and waits for the reader.
func (w *watchStream) close() {
	w.cancel()
	_ = w.resp.Body.Close()
	<-w.done
}

// next returns the next event, failing the test after eventTimeout.
func (w *watchStream) next() map[string]any {
	w.t.Helper()
	select {
	case ev, ok := <-w.events:
		if !ok {
			w.t.Fatalf("watch stream ended while an event was expected")
		}
		if ev["type"] == "UNDECODABLE" {
			w.t.Fatalf("undecodable watch line: %v", ev["raw"])
		}
		return ev
	case <-time.After(eventTimeout):
		w.t.Fatalf("no watch event within %v", eventTimeout)
	}
	return nil
}

// nextNonBookmark skips BOOKMARK events.
func (w *watchStream) nextNonBookmark() map[string]any {
	w.t.Helper()
	for {
		ev := w.next()
		if ev["type"] != "BOOKMARK" {
			return ev
		}
	}
}

// expect reads the next non-bookmark event and checks its type and name.
func (w *watchStream) expect(typ, name string) map[string]any {
	w.t.Helper()
	ev := w.nextNonBookmark()
	o, _ := ev["object"].(map[string]any)
	m, _ := o["metadata"].(map[string]any)
	if ev["type"] != typ || m["name"] != name {
		w.t.Fatalf("got %v %v, want %s %s (event %v)", ev["type"], m["name"], typ, name, ev)
	}
	return o
}

// expectEnd waits for the server to end the stream, skipping bookmarks
// and failing on any other event.
func (w *watchStream) expectEnd(within time.Duration) {
	w.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-w.events:
			if !ok {
				return
			}
			if ev["type"] != "BOOKMARK" {
				w.t.Fatalf("unexpected event while waiting for the stream to end: %v", ev)
			}
		case <-deadline:
			w.t.Fatalf("watch stream did not end within %v", within)
		}
	}
}
