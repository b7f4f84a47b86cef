// Package fakeconsul is an in-process Consul HTTP API for tests. It serves
// the read endpoints weft's consul registry source uses, following Consul's
// documented HTTP API: GET /v1/catalog/services and GET
// /v1/health/service/:service, both with blocking queries (index and wait
// query parameters, X-Consul-Index response header), plus the dc, tag,
// passing, stale and consistent parameters and X-Consul-Token ACL checks.
// Tests change the catalog with Go methods (Register, Deregister, SetCheck),
// each of which advances the Raft-like index, and can stop and restart the
// server on the same address to simulate an outage.
//
// Real Consul cannot be built in weft's environment, so this fake is the
// only Consul the tests run against; its behaviour follows
// https://developer.hashicorp.com/consul/api-docs/features/blocking and the
// catalog and health endpoint pages.
package fakeconsul

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

// Check statuses, as Consul spells them.
const (
	Passing  = "passing"
	Warning  = "warning"
	Critical = "critical"
)

// Instance is one service instance on one node.
type Instance struct {
	// Node is the node name (required); NodeAddress its address.
	Node        string
	NodeAddress string
	// NodeMeta is the node's metadata.
	NodeMeta map[string]string
	// ID is the service ID, unique on the node (default: Service).
	ID string
	// Service is the service name (required).
	Service string
	// Address is the service address ("" means the node address).
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	// Status of the instance's single service check ("" means passing).
	Status string
}

// Request is one HTTP request the server received.
type Request struct {
	Method string
	Path   string
	Query  url.Values
	Token  string
}

type instance struct {
	Instance
	checkStatus string
	createIndex uint64
	modifyIndex uint64
}

// Server is a fake Consul agent. Create it with New; Close it when done.
type Server struct {
	// Datacenter is the datacenter the server answers for ("dc1").
	Datacenter string

	mu        sync.Mutex
	changed   chan struct{}  // closed and replaced on every change
	stopped   chan struct{}  // closed by Stop, replaced by Start
	parked    map[string]int // blocked queries by path
	parkedCh  chan struct{}  // closed and replaced when parked changes
	index     uint64
	catalogIx uint64
	serviceIx map[string]uint64
	instances map[string]*instance // by node + "/" + ID
	token     string
	requests  []Request

	addr string
	srv  *httptest.Server
}

// New starts a fake Consul server on a loopback port.
func New() *Server {
	s := &Server{
		Datacenter: "dc1",
		changed:    make(chan struct{}),
		stopped:    make(chan struct{}),
		index:      1,
		catalogIx:  1,
		serviceIx:  map[string]uint64{},
		instances:  map[string]*instance{},
		parked:     map[string]int{},
		parkedCh:   make(chan struct{}),
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	s.addr = s.srv.Listener.Addr().String()
	return s
}

// URL is the server's base URL (http://127.0.0.1:port).
func (s *Server) URL() string { return "http://" + s.addr }

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// Stop closes the listener and every open connection, ending in-flight
// blocking queries, so that clients see connection errors. State is kept.
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

// Start serves again on the address the server had before Stop, with the
// state (and index) it had.
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

// RequireToken makes every request need this ACL token (X-Consul-Token
// header or token query parameter); "" turns ACLs off.
func (s *Server) RequireToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

// Index returns the current index.
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

// Blocked reports how many blocking queries on path are waiting now.
func (s *Server) Blocked(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parked[path]
}

// AwaitBlocked waits until at least n blocking queries on path are waiting,
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

// park counts a blocked query on path (delta +1 or -1). s.mu held.
func (s *Server) park(path string, delta int) {
	s.parked[path] += delta
	close(s.parkedCh)
	s.parkedCh = make(chan struct{})
}

// bump advances the index for a change to service (catalog: the set of
// services or their tags changed too) and wakes blocked queries. s.mu held.
func (s *Server) bump(service string, catalog bool) uint64 {
	s.index++
	s.serviceIx[service] = s.index
	if catalog {
		s.catalogIx = s.index
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return s.index
}

// Register adds or replaces a service instance (like PUT
// /v1/catalog/register) and returns the new index.
func (s *Server) Register(in Instance) uint64 {
	if in.ID == "" {
		in.ID = in.Service
	}
	if in.Status == "" {
		in.Status = Passing
	}
	in.Tags = slices.Clone(in.Tags)
	s.mu.Lock()
	defer s.mu.Unlock()
	key := in.Node + "/" + in.ID
	old := s.instances[key]
	it := &instance{Instance: in, checkStatus: in.Status}
	if old != nil {
		it.createIndex = old.createIndex
		if old.Service != in.Service {
			s.bump(old.Service, true)
		}
	}
	// Other instances on the same node share its address and metadata.
	for _, o := range s.instances {
		if o.Node == in.Node {
			o.NodeAddress, o.NodeMeta = in.NodeAddress, in.NodeMeta
		}
	}
	ix := s.bump(in.Service, true)
	if it.createIndex == 0 {
		it.createIndex = ix
	}
	it.modifyIndex = ix
	s.instances[key] = it
	return ix
}

// Deregister removes a service instance (like PUT /v1/catalog/deregister)
// and returns the new index; it reports false if there was none.
func (s *Server) Deregister(node, id string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.instances[node+"/"+id]
	if !ok {
		return s.index, false
	}
	delete(s.instances, node+"/"+id)
	return s.bump(it.Service, true), true
}

// SetCheck sets the status of an instance's service check (passing,
// warning or critical) and returns the new index. Like a check update in
// Consul, it changes the health index of the service but not the catalog's.
func (s *Server) SetCheck(node, id, status string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.instances[node+"/"+id]
	if !ok {
		return s.index, false
	}
	it.checkStatus = status
	return s.bump(it.Service, false), true
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	token := r.Header.Get("X-Consul-Token")
	if token == "" {
		token = q.Get("token")
	}
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Query: q, Token: token})
	want, dc := s.token, s.Datacenter
	s.mu.Unlock()

	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if want != "" && token != want {
		http.Error(w, "ACL not found", http.StatusForbidden)
		return
	}
	if d := q.Get("dc"); d != "" && d != dc {
		http.Error(w, "No path to datacenter", http.StatusInternalServerError)
		return
	}
	index, wait, err := blockingParams(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case r.URL.Path == "/v1/catalog/services":
		s.block(w, r, index, wait, func() (uint64, any) { return s.catalogIx, s.catalogServices() })
	case strings.HasPrefix(r.URL.Path, "/v1/health/service/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/health/service/")
		if name == "" {
			http.Error(w, "Missing service name", http.StatusBadRequest)
			return
		}
		_, passing := q["passing"]
		if passing && q.Get("passing") != "" {
			if b, err := strconv.ParseBool(q.Get("passing")); err == nil {
				passing = b
			}
		}
		tags := q["tag"]
		s.block(w, r, index, wait, func() (uint64, any) { return s.healthIndex(name), s.healthService(dc, name, tags, passing) })
	default:
		http.NotFound(w, r)
	}
}

// blockingParams parses index and wait. wait takes a Go duration or a
// number of seconds; Consul's default is 5m and its maximum 10m.
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
	wait = min(wait, 10*time.Minute)
	return index, wait, nil
}

// block answers at once when index is 0 or already passed, otherwise when
// the index moves past it or wait (plus up to wait/16 jitter) elapses.
func (s *Server) block(w http.ResponseWriter, r *http.Request, index uint64, wait time.Duration, read func() (uint64, any)) {
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
		ix, body := read()
		changed, stopped := s.changed, s.stopped
		s.mu.Unlock()
		if index == 0 || ix > index {
			reply(w, ix, body)
			return
		}
		if !s.wait(r, changed, stopped, timeout) {
			s.mu.Lock()
			ix, body = read()
			s.mu.Unlock()
			if r.Context().Err() == nil {
				reply(w, ix, body)
			}
			return
		}
	}
}

// wait parks a blocked query until the state changes (true) or the wait
// time passes, the client goes away or the server stops (false).
func (s *Server) wait(r *http.Request, changed, stopped <-chan struct{}, timeout <-chan time.Time) bool {
	s.mu.Lock()
	s.park(r.URL.Path, 1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.park(r.URL.Path, -1)
		s.mu.Unlock()
	}()
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
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	_ = json.NewEncoder(w).Encode(body)
}

// catalogServices is the /v1/catalog/services body: name → unique tags.
// s.mu held.
func (s *Server) catalogServices() map[string][]string {
	out := map[string][]string{}
	for _, it := range s.instances {
		tags := out[it.Service]
		if tags == nil {
			tags = []string{}
		}
		for _, t := range it.Tags {
			if !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
		sort.Strings(tags)
		out[it.Service] = tags
	}
	return out
}

// healthIndex is the index of the last change to service (for a service
// that never existed, the catalog's). s.mu held.
func (s *Server) healthIndex(service string) uint64 {
	if ix, ok := s.serviceIx[service]; ok {
		return ix
	}
	return s.catalogIx
}

// The JSON shapes of GET /v1/health/service/:service.
type (
	nodeJSON struct {
		ID              string
		Node            string
		Address         string
		Datacenter      string
		TaggedAddresses map[string]string
		Meta            map[string]string
		CreateIndex     uint64
		ModifyIndex     uint64
	}
	weightsJSON struct {
		Passing int
		Warning int
	}
	serviceJSON struct {
		ID                string
		Service           string
		Tags              []string
		Address           string
		Meta              map[string]string
		Port              int
		Weights           weightsJSON
		EnableTagOverride bool
		CreateIndex       uint64
		ModifyIndex       uint64
	}
	checkJSON struct {
		Node        string
		CheckID     string
		Name        string
		Status      string
		Notes       string
		Output      string
		ServiceID   string
		ServiceName string
		ServiceTags []string
		Type        string
		CreateIndex uint64
		ModifyIndex uint64
	}
	entryJSON struct {
		Node    nodeJSON
		Service serviceJSON
		Checks  []checkJSON
	}
)

// healthService is the /v1/health/service/:service body. s.mu held.
func (s *Server) healthService(dc, name string, tags []string, passing bool) []entryJSON {
	out := []entryJSON{}
	keys := make([]string, 0, len(s.instances))
	for k := range s.instances {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		it := s.instances[k]
		if it.Service != name {
			continue
		}
		if !hasAll(it.Tags, tags) || (passing && it.checkStatus != Passing) {
			continue
		}
		tagsOut := it.Tags
		if tagsOut == nil {
			tagsOut = []string{}
		}
		out = append(out, entryJSON{
			Node: nodeJSON{
				ID: "node-id-" + it.Node, Node: it.Node, Address: it.NodeAddress, Datacenter: dc,
				TaggedAddresses: map[string]string{"lan": it.NodeAddress, "wan": it.NodeAddress},
				Meta:            it.NodeMeta, CreateIndex: it.createIndex, ModifyIndex: it.modifyIndex,
			},
			Service: serviceJSON{
				ID: it.ID, Service: it.Service, Tags: tagsOut, Address: it.Address, Meta: it.Meta,
				Port: it.Port, Weights: weightsJSON{Passing: 1, Warning: 1},
				CreateIndex: it.createIndex, ModifyIndex: it.modifyIndex,
			},
			Checks: []checkJSON{
				{Node: it.Node, CheckID: "serfHealth", Name: "Serf Health Status", Status: Passing,
					Output: "Agent alive and reachable", ServiceTags: []string{}, CreateIndex: it.createIndex, ModifyIndex: it.createIndex},
				{Node: it.Node, CheckID: "service:" + it.ID, Name: "Service '" + it.Service + "' check", Status: it.checkStatus,
					ServiceID: it.ID, ServiceName: it.Service, ServiceTags: tagsOut, Type: "ttl",
					CreateIndex: it.createIndex, ModifyIndex: s.serviceIx[it.Service]},
			},
		})
	}
	return out
}

func hasAll(have, want []string) bool {
	for _, t := range want {
		if !slices.Contains(have, t) {
			return false
		}
	}
	return true
}
