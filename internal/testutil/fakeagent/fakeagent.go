// Package fakeagent is the HTTP side shared by the in-process fakes of
// HashiCorp agents (fakeconsul, fakenomad): a loopback server that can be
// stopped and restarted on the same address, a request log, ACL tokens, and
// blocking queries as Consul and Nomad document them
// (https://developer.hashicorp.com/consul/api-docs/features/blocking):
// index and wait query parameters (wait a Go duration or seconds, default
// 5m, at most 10m, plus up to wait/16 jitter) and the <prefix>-Index,
// -KnownLeader and -LastContact response headers.
//
// A fake keeps its own catalog under its own lock, calls Changed after
// every change, and answers each endpoint with Block.
package fakeagent

import (
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Options describe the agent being faked.
type Options struct {
	// HeaderPrefix names the headers: "X-Consul" gives X-Consul-Index,
	// X-Consul-KnownLeader, X-Consul-LastContact and the X-Consul-Token
	// ACL header.
	HeaderPrefix string
	// TokenParam also accepts the ACL token as the token query parameter.
	TokenParam bool
}

// Request is one HTTP request the server received.
type Request struct {
	Method string
	Path   string
	Query  url.Values
	Token  string
}

// Agent serves a fake agent's HTTP API. Create it with New; Close it when
// done.
type Agent struct {
	opts    Options
	handler http.HandlerFunc

	mu       sync.Mutex
	changed  chan struct{}  // closed and replaced by Changed
	stopped  chan struct{}  // closed by Stop, replaced by Start
	parked   map[string]int // blocked queries by path
	parkedCh chan struct{}  // closed and replaced when parked changes
	token    string
	requests []Request

	addr string
	srv  *httptest.Server
}

// New starts serving handler on a loopback port; every request is logged
// (Requests) before handler sees it.
func New(opts Options, handler http.HandlerFunc) *Agent {
	a := &Agent{
		opts:     opts,
		handler:  handler,
		changed:  make(chan struct{}),
		stopped:  make(chan struct{}),
		parked:   map[string]int{},
		parkedCh: make(chan struct{}),
	}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serveHTTP))
	a.addr = a.srv.Listener.Addr().String()
	return a
}

// URL is the agent's base URL (http://127.0.0.1:port).
func (a *Agent) URL() string { return "http://" + a.addr }

// Addr is the agent's host:port.
func (a *Agent) Addr() string { return a.addr }

// Close stops the server for good.
func (a *Agent) Close() { a.Stop() }

// Stop closes the listener and every open connection, ending in-flight
// blocking queries, so that clients see connection errors. The fake's
// state is kept for Start.
func (a *Agent) Stop() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	if srv != nil {
		close(a.stopped)
	}
	a.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// Start serves again on the address the agent had before Stop.
func (a *Agent) Start() error {
	l, err := net.Listen("tcp", a.addr)
	if err != nil {
		return err
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(a.serveHTTP))
	srv.Listener.Close()
	srv.Listener = l
	a.mu.Lock()
	a.stopped = make(chan struct{})
	a.srv = srv
	a.mu.Unlock()
	srv.Start()
	return nil
}

// RequireToken makes every request need this ACL token; "" turns ACLs off.
func (a *Agent) RequireToken(token string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.token = token
}

// Authorized reports whether r carries the token RequireToken asked for.
func (a *Agent) Authorized(r *http.Request) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.token == "" || a.requestToken(r) == a.token
}

func (a *Agent) requestToken(r *http.Request) string {
	token := r.Header.Get(a.opts.HeaderPrefix + "-Token")
	if token == "" && a.opts.TokenParam {
		token = r.URL.Query().Get("token")
	}
	return token
}

// Requests returns the requests received so far.
func (a *Agent) Requests() []Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.requests)
}

func (a *Agent) serveHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.requests = append(a.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Token: a.requestToken(r)})
	a.mu.Unlock()
	a.handler(w, r)
}

// Changed wakes the blocked queries so they read the fake's state again.
// Call it after every change.
func (a *Agent) Changed() {
	a.mu.Lock()
	defer a.mu.Unlock()
	close(a.changed)
	a.changed = make(chan struct{})
}

// Blocked reports how many blocking queries on path are waiting now.
func (a *Agent) Blocked(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.parked[path]
}

// AwaitBlocked waits until at least n blocking queries on path are waiting,
// or timeout passes; it reports whether they are.
func (a *Agent) AwaitBlocked(path string, n int, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		a.mu.Lock()
		ok, ch := a.parked[path] >= n, a.parkedCh
		a.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return false
		}
	}
}

// Block answers r as a blocking query: at once when its index is 0 or
// already passed, otherwise when read's index moves past it or the wait
// time elapses. read returns the current index and body; it runs without
// the agent's lock, so it takes the fake's own. A bad index or wait is a
// 400.
func (a *Agent) Block(w http.ResponseWriter, r *http.Request, read func() (index uint64, body any)) {
	index, wait, err := blockingParams(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var timeout <-chan time.Time
	if index > 0 {
		jitter := time.Duration(0)
		if wait >= 16 {
			jitter = rand.N(wait / 16)
		}
		t := time.NewTimer(wait + jitter)
		defer t.Stop()
		timeout = t.C
	}
	for {
		// Take the channels before reading: a change after the read
		// closes them.
		a.mu.Lock()
		changed, stopped := a.changed, a.stopped
		a.mu.Unlock()
		ix, body := read()
		if index == 0 || ix > index {
			a.reply(w, ix, body)
			return
		}
		if !a.wait(r, changed, stopped, timeout) {
			if r.Context().Err() == nil {
				ix, body = read()
				a.reply(w, ix, body)
			}
			return
		}
	}
}

// blockingParams parses index and wait.
func blockingParams(q url.Values) (uint64, time.Duration, error) {
	var index uint64
	if v := q.Get("index"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		index = n
	}
	wait := 5 * time.Minute
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			n, err2 := strconv.Atoi(v)
			if err2 != nil {
				return 0, 0, err
			}
			d = time.Duration(n) * time.Second
		}
		wait = d
	}
	return index, min(wait, 10*time.Minute), nil
}

// wait parks a blocked query until the state changes (true) or the wait
// time passes, the client goes away or the server stops (false).
func (a *Agent) wait(r *http.Request, changed, stopped <-chan struct{}, timeout <-chan time.Time) bool {
	a.park(r.URL.Path, 1)
	defer a.park(r.URL.Path, -1)
	select {
	case <-changed:
		return true
	case <-timeout:
	case <-r.Context().Done():
	case <-stopped:
	}
	return false
}

// park counts a blocked query on path (delta +1 or -1).
func (a *Agent) park(path string, delta int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.parked[path] += delta
	close(a.parkedCh)
	a.parkedCh = make(chan struct{})
}

func (a *Agent) reply(w http.ResponseWriter, index uint64, body any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set(a.opts.HeaderPrefix+"-Index", strconv.FormatUint(index, 10))
	h.Set(a.opts.HeaderPrefix+"-KnownLeader", "true")
	h.Set(a.opts.HeaderPrefix+"-LastContact", "0")
	_ = json.NewEncoder(w).Encode(body)
}

// Get is a test client: it GETs path (with its query) from the agent,
// fails t unless the answer is a 200 with an index header, and returns the
// index and the JSON body.
func (a *Agent) Get(t testing.TB, path string) (uint64, json.RawMessage) {
	t.Helper()
	resp, err := http.Get(a.URL() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	h := a.opts.HeaderPrefix + "-Index"
	ix, err := strconv.ParseUint(resp.Header.Get(h), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", h, err)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	return ix, raw
}
