// Package fakenomad is an in-process Nomad HTTP API for tests. It serves the
// native service discovery endpoints weft's nomad registry source uses,
// following Nomad's documented HTTP API: GET /v1/services (with
// namespace=* for every namespace) and GET /v1/service/:service_name, both
// as blocking queries (index and wait query parameters, X-Nomad-Index
// response header), plus the region parameter and X-Nomad-Token ACL checks.
// As in Nomad, both endpoints report the index of the service registrations
// table, so any registration change wakes every blocked query, and an
// unknown service is an empty list with that index. Response shapes were
// checked against `nomad agent -dev` (Nomad 1.11.3).
//
// Tests change registrations with Go methods (Register, Deregister) that
// advance the index, and can stop and restart the server on the same
// address to simulate an outage.
package fakenomad

import (
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Registration is one service registration, as Nomad's API returns it.
type Registration struct {
	ID          string
	ServiceName string
	Namespace   string
	NodeID      string
	Datacenter  string
	JobID       string
	AllocID     string
	Tags        []string
	Address     string
	Port        int
	CreateIndex uint64
	ModifyIndex uint64
}

// Request is one HTTP request the server received.
type Request struct {
	Method string
	Path   string
	Query  url.Values
	Token  string
}

// Server is a fake Nomad agent. Create it with New; Close it when done.
type Server struct {
	// Region is the region the server answers for ("global").
	Region string

	mu       sync.Mutex
	changed  chan struct{}
	stopped  chan struct{}
	parked   map[string]int
	parkedCh chan struct{}
	index    uint64
	regs     map[string]*Registration // by ID
	token    string
	requests []Request

	addr string
	srv  *httptest.Server
}

// New starts a fake Nomad agent on a loopback port.
func New() *Server {
	s := &Server{
		Region:   "global",
		changed:  make(chan struct{}),
		stopped:  make(chan struct{}),
		parked:   map[string]int{},
		parkedCh: make(chan struct{}),
		index:    1,
		regs:     map[string]*Registration{},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	s.addr = s.srv.Listener.Addr().String()
	return s
}

// URL is the agent's base URL (http://127.0.0.1:port).
func (s *Server) URL() string { return "http://" + s.addr }

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// Stop closes the listener and all connections, ending blocked queries.
// State is kept for Start.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	if srv != nil {
		close(s.stopped)
	}
	s.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// Start serves again on the address the server had before Stop.
func (s *Server) Start() error {
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	srv.Listener.Close()
	srv.Listener = l
	s.mu.Lock()
	s.stopped = make(chan struct{})
	s.srv = srv
	s.mu.Unlock()
	srv.Start()
	return nil
}

// RequireToken makes every request need this ACL token (X-Nomad-Token);
// "" turns ACLs off.
func (s *Server) RequireToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

// Index returns the registrations table index.
func (s *Server) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// AwaitBlocked waits until at least n blocking queries on path are parked,
// or timeout passes; it reports whether they are.
func (s *Server) AwaitBlocked(path string, n int, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		ok, ch := s.parked[path] >= n, s.parkedCh
		s.mu.Unlock()
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

// Register adds or replaces (by ID) a registration and returns the new
// index. Namespace defaults to "default", Datacenter to "dc1".
func (s *Server) Register(r Registration) uint64 {
	if r.Namespace == "" {
		r.Namespace = "default"
	}
	if r.Datacenter == "" {
		r.Datacenter = "dc1"
	}
	r.Tags = slices.Clone(r.Tags)
	s.mu.Lock()
	defer s.mu.Unlock()
	ix := s.bump()
	r.CreateIndex, r.ModifyIndex = ix, ix
	if old, ok := s.regs[r.ID]; ok {
		r.CreateIndex = old.CreateIndex
	}
	s.regs[r.ID] = &r
	return ix
}

// Deregister removes a registration by ID and returns the new index; it
// reports false if there was none.
func (s *Server) Deregister(id string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.regs[id]; !ok {
		return s.index, false
	}
	delete(s.regs, id)
	return s.bump(), true
}

// bump advances the index and wakes blocked queries. s.mu held.
func (s *Server) bump() uint64 {
	s.index++
	close(s.changed)
	s.changed = make(chan struct{})
	return s.index
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	token := r.Header.Get("X-Nomad-Token")
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Query: q, Token: token})
	want, region := s.token, s.Region
	s.mu.Unlock()
	if r.Method != http.MethodGet {
		http.Error(w, "Invalid method", http.StatusMethodNotAllowed)
		return
	}
	if want != "" && token != want {
		http.Error(w, "Permission denied", http.StatusForbidden)
		return
	}
	if rg := q.Get("region"); rg != "" && rg != region {
		http.Error(w, "No path to region", http.StatusInternalServerError)
		return
	}
	index, wait, err := blockingParams(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ns := q.Get("namespace")
	if ns == "" {
		ns = "default"
	}
	switch {
	case r.URL.Path == "/v1/services":
		s.block(w, r, index, wait, func() any { return s.list(ns) })
	case strings.HasPrefix(r.URL.Path, "/v1/service/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/service/")
		if name == "" {
			http.Error(w, "missing service name", http.StatusBadRequest)
			return
		}
		s.block(w, r, index, wait, func() any { return s.get(ns, name) })
	default:
		http.NotFound(w, r)
	}
}

// blockingParams parses index and wait (a Go duration, or seconds); Nomad's
// default wait is 5m and its maximum 10m.
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

// block answers at once when index is 0 or passed, else when the index
// moves past it or wait (plus up to wait/16 jitter) elapses.
func (s *Server) block(w http.ResponseWriter, r *http.Request, index uint64, wait time.Duration, read func() any) {
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
		s.mu.Lock()
		ix, body := s.index, read()
		changed, stopped := s.changed, s.stopped
		s.mu.Unlock()
		if index == 0 || ix > index {
			reply(w, ix, body)
			return
		}
		if !s.wait(r, changed, stopped, timeout) {
			if r.Context().Err() == nil {
				s.mu.Lock()
				ix, body = s.index, read()
				s.mu.Unlock()
				reply(w, ix, body)
			}
			return
		}
	}
}

func (s *Server) wait(r *http.Request, changed, stopped <-chan struct{}, timeout <-chan time.Time) bool {
	park := func(d int) {
		s.mu.Lock()
		s.parked[r.URL.Path] += d
		close(s.parkedCh)
		s.parkedCh = make(chan struct{})
		s.mu.Unlock()
	}
	park(1)
	defer park(-1)
	select {
	case <-changed:
		return true
	case <-timeout:
	case <-r.Context().Done():
	case <-stopped:
	}
	return false
}

func reply(w http.ResponseWriter, index uint64, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Nomad-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Nomad-KnownLeader", "true")
	w.Header().Set("X-Nomad-LastContact", "0")
	_ = json.NewEncoder(w).Encode(body)
}

type stubJSON struct {
	ServiceName string
	Tags        []string
}

type listJSON struct {
	Namespace string
	Services  []stubJSON
}

// list is the /v1/services body for namespace ns ("*": all). s.mu held.
func (s *Server) list(ns string) []listJSON {
	byNS := map[string]map[string][]string{}
	for _, r := range s.regs {
		if ns != "*" && r.Namespace != ns {
			continue
		}
		if byNS[r.Namespace] == nil {
			byNS[r.Namespace] = map[string][]string{}
		}
		tags := byNS[r.Namespace][r.ServiceName]
		if tags == nil {
			tags = []string{}
		}
		for _, t := range r.Tags {
			if !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
		sort.Strings(tags)
		byNS[r.Namespace][r.ServiceName] = tags
	}
	out := []listJSON{}
	for _, n := range sortedKeys(byNS) {
		l := listJSON{Namespace: n, Services: []stubJSON{}}
		for _, svc := range sortedKeys(byNS[n]) {
			l.Services = append(l.Services, stubJSON{ServiceName: svc, Tags: byNS[n][svc]})
		}
		out = append(out, l)
	}
	return out
}

// get is the /v1/service/:name body for namespace ns. As in Nomad 1.11,
// namespace=* is not a wildcard here: it matches nothing. s.mu held.
func (s *Server) get(ns, name string) []Registration {
	out := []Registration{}
	for _, id := range sortedKeys(s.regs) {
		r := s.regs[id]
		if r.ServiceName == name && r.Namespace == ns {
			c := *r
			if c.Tags == nil {
				c.Tags = []string{}
			}
			out = append(out, c)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
