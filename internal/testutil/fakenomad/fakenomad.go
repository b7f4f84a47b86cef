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
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/weftmesh/weft/internal/testutil/fakeagent"
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
type Request = fakeagent.Request

// Server is a fake Nomad agent. Create it with New; Close it when done.
// The embedded Agent serves it: URL, Addr, Stop, Start, RequireToken (the
// X-Nomad-Token header), Requests, Blocked and AwaitBlocked.
type Server struct {
	*fakeagent.Agent
	// Region is the region the server answers for ("global").
	Region string

	mu    sync.Mutex
	index uint64
	regs  map[string]*Registration // by ID
}

// New starts a fake Nomad agent on a loopback port.
func New() *Server {
	s := &Server{Region: "global", index: 1, regs: map[string]*Registration{}}
	s.Agent = fakeagent.New(fakeagent.Options{HeaderPrefix: "X-Nomad"}, s.serveHTTP)
	return s
}

// Index returns the registrations table index.
func (s *Server) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
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
	s.Changed()
	return s.index
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	region := s.Region
	s.mu.Unlock()
	if r.Method != http.MethodGet {
		http.Error(w, "Invalid method", http.StatusMethodNotAllowed)
		return
	}
	if !s.Authorized(r) {
		http.Error(w, "Permission denied", http.StatusForbidden)
		return
	}
	if rg := q.Get("region"); rg != "" && rg != region {
		http.Error(w, "No path to region", http.StatusInternalServerError)
		return
	}
	ns := q.Get("namespace")
	if ns == "" {
		ns = "default"
	}
	switch {
	case r.URL.Path == "/v1/services":
		s.Block(w, r, func() (uint64, any) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.index, s.list(ns)
		})
	case strings.HasPrefix(r.URL.Path, "/v1/service/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/service/")
		if name == "" {
			http.Error(w, "missing service name", http.StatusBadRequest)
			return
		}
		s.Block(w, r, func() (uint64, any) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.index, s.get(ns, name)
		})
	default:
		http.NotFound(w, r)
	}
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
