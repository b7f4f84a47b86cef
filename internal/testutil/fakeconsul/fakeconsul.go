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
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/weftmesh/weft/internal/testutil/fakeagent"
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
type Request = fakeagent.Request

type instance struct {
	Instance
	checkStatus string
	createIndex uint64
	modifyIndex uint64
}

// Server is a fake Consul agent. Create it with New; Close it when done.
// The embedded Agent serves it: URL, Addr, Stop, Start, RequireToken (the
// X-Consul-Token header or token query parameter), Requests, Blocked and
// AwaitBlocked.
type Server struct {
	*fakeagent.Agent
	// Datacenter is the datacenter the server answers for ("dc1").
	Datacenter string

	mu        sync.Mutex
	index     uint64
	catalogIx uint64
	serviceIx map[string]uint64
	instances map[string]*instance // by node + "/" + ID
}

// New starts a fake Consul server on a loopback port.
func New() *Server {
	s := &Server{
		Datacenter: "dc1",
		index:      1,
		catalogIx:  1,
		serviceIx:  map[string]uint64{},
		instances:  map[string]*instance{},
	}
	s.Agent = fakeagent.New(fakeagent.Options{HeaderPrefix: "X-Consul", TokenParam: true}, s.serveHTTP)
	return s
}

// Index returns the current index.
func (s *Server) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// bump advances the index for a change to service (catalog: the set of
// services or their tags changed too) and wakes blocked queries. s.mu held.
func (s *Server) bump(service string, catalog bool) uint64 {
	s.index++
	s.serviceIx[service] = s.index
	if catalog {
		s.catalogIx = s.index
	}
	s.Changed()
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
	s.mu.Lock()
	dc := s.Datacenter
	s.mu.Unlock()

	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !s.Authorized(r) {
		http.Error(w, "ACL not found", http.StatusForbidden)
		return
	}
	if d := q.Get("dc"); d != "" && d != dc {
		http.Error(w, "No path to datacenter", http.StatusInternalServerError)
		return
	}
	switch {
	case r.URL.Path == "/v1/catalog/services":
		s.Block(w, r, func() (uint64, any) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.catalogIx, s.catalogServices()
		})
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
		s.Block(w, r, func() (uint64, any) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.healthIndex(name), s.healthService(dc, name, tags, passing)
		})
	default:
		http.NotFound(w, r)
	}
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
