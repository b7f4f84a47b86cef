// Package consul is the registry source for HashiCorp Consul's service
// catalog. It runs a blocking query on /v1/catalog/services and, for every
// service listed, another on /v1/health/service/<name>, and reports the
// complete state after each change: one registry.Service per service and
// host name (<service>.service.consul and any extra domains) and one
// registry.Endpoint per instance and host name.
package consul

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/weftmesh/weft/internal/registry"
)

// Metadata keys read from service instances and nodes.
const (
	// MetaProtocol (service meta, or a "protocol=<p>" tag) is the port's
	// protocol: http, http2, grpc, tcp, …
	MetaProtocol = "protocol"
	// MetaServiceAccount (service meta) is the instance's identity.
	MetaServiceAccount = "service-account"
	// NodeMetaRegion, NodeMetaZone and NodeMetaSubzone (node meta) give the
	// locality region/zone/subzone; NodeMetaLocality gives it whole.
	NodeMetaRegion   = "region"
	NodeMetaZone     = "zone"
	NodeMetaSubzone  = "subzone"
	NodeMetaLocality = "locality"
)

// Source watches one Consul datacenter. Create it with New.
type Source struct {
	cfg    Config
	client *api.Client
	logger *slog.Logger
}

var _ registry.Source = (*Source)(nil)

// New returns a source for cfg. It does not contact Consul. A nil logger
// discards logs.
func New(cfg Config, logger *slog.Logger) (*Source, error) {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ac := &api.Config{
		Address:    cfg.Address,
		Token:      cfg.Token,
		Datacenter: cfg.Datacenter,
		WaitTime:   cfg.WaitTime,
		TLSConfig: api.TLSConfig{
			CAFile: cfg.TLS.CAFile, CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
			InsecureSkipVerify: cfg.TLS.InsecureSkipVerify,
		},
	}
	if cfg.TLS != (TLS{}) && !strings.Contains(cfg.Address, "://") {
		ac.Scheme = "https"
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: client for %s: %w", cfg.Address, err)
	}
	return &Source{cfg: cfg, client: client, logger: logger.With("component", "registry.consul")}, nil
}

// Name returns "consul".
func (s *Source) Name() string { return SourceName }

// serviceWatch is the health watcher of one service.
type serviceWatch struct {
	cancel context.CancelFunc
	// done: the first query finished (successfully or not).
	done    bool
	entries []*api.ServiceEntry
}

// watches is the state the watcher goroutines share with Run.
type watches struct {
	mu       sync.Mutex
	synced   bool // the catalog has been read once
	services map[string]*serviceWatch
	dirty    chan struct{} // capacity 1: "something changed"
}

func (w *watches) signal() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// Run watches Consul until ctx ends and reports the complete state to sink
// after every change. The first report waits until the catalog and every
// service's health have been read once. Query errors are logged and retried
// with backoff; Run returns nil when ctx ends.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	w := &watches{services: map[string]*serviceWatch{}, dirty: make(chan struct{}, 1)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watchCatalog(ctx, w, &wg)
	}()
	var last *registry.State
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.dirty:
		}
		st, ready := s.state(w)
		if !ready || (last != nil && reflect.DeepEqual(*last, st)) {
			continue
		}
		s.logger.Debug("state changed", "services", len(st.Services), "endpoints", len(st.Endpoints))
		sink.Update(SourceName, st)
		last = &st
	}
}

// watchCatalog runs the blocking query on /v1/catalog/services and starts
// and stops the per-service health watchers.
func (s *Source) watchCatalog(ctx context.Context, w *watches, wg *sync.WaitGroup) {
	var index uint64
	failures := 0
	for {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: s.cfg.WaitTime, AllowStale: true}).WithContext(ctx)
		services, meta, err := s.client.Catalog().Services(q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			d := registry.Backoff(s.cfg.RetryMin, s.cfg.RetryMax, failures)
			s.logger.Warn("catalog query failed", "err", err, "failures", failures, "retry_in", d)
			if !registry.Sleep(ctx, d) {
				return
			}
			continue
		}
		if failures > 0 {
			s.logger.Info("catalog query recovered", "failures", failures)
		}
		failures = 0
		index = registry.NextIndex(index, meta.LastIndex)

		w.mu.Lock()
		for name := range services {
			if _, ok := w.services[name]; ok {
				continue
			}
			sctx, scancel := context.WithCancel(ctx)
			sw := &serviceWatch{cancel: scancel}
			w.services[name] = sw
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.watchService(sctx, w, name, sw)
			}()
		}
		for name, sw := range w.services {
			if _, ok := services[name]; !ok {
				sw.cancel()
				delete(w.services, name)
			}
		}
		w.synced = true
		w.mu.Unlock()
		w.signal()
	}
}

// watchService runs the blocking query on /v1/health/service/<name> until
// ctx ends (the service left the catalog, or Run ended).
func (s *Source) watchService(ctx context.Context, w *watches, name string, sw *serviceWatch) {
	var index uint64
	failures := 0
	path := "/v1/health/service/" + name
	for {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: s.cfg.WaitTime, AllowStale: true}).WithContext(ctx)
		entries, meta, err := s.client.Health().Service(name, "", false, q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			d := registry.Backoff(s.cfg.RetryMin, s.cfg.RetryMax, failures)
			s.logger.Warn("health query failed", "path", path, "err", err, "failures", failures, "retry_in", d)
			w.mu.Lock()
			first := !sw.done
			sw.done = true
			w.mu.Unlock()
			if first {
				w.signal() // do not hold back the first report for one service
			}
			if !registry.Sleep(ctx, d) {
				return
			}
			continue
		}
		failures = 0
		index = registry.NextIndex(index, meta.LastIndex)
		w.mu.Lock()
		sw.done, sw.entries = true, entries
		w.mu.Unlock()
		w.signal()
	}
}

// state builds the registry state; ready is false until the catalog and
// every listed service have been read once.
func (s *Source) state(w *watches) (registry.State, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced {
		return registry.State{}, false
	}
	names := make([]string, 0, len(w.services))
	for n, sw := range w.services {
		if !sw.done {
			return registry.State{}, false
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var st registry.State
	for _, n := range names {
		svcs, eps := s.convert(n, w.services[n].entries)
		st.Services = append(st.Services, svcs...)
		st.Endpoints = append(st.Endpoints, eps...)
	}
	sort.SliceStable(st.Services, func(i, j int) bool { return st.Services[i].Hostname < st.Services[j].Hostname })
	sort.SliceStable(st.Endpoints, func(i, j int) bool { return st.Endpoints[i].Hostname < st.Endpoints[j].Hostname })
	return st, true
}

// hostnames returns the host names of a Consul service.
func (s *Source) hostnames(service string) []string {
	name := strings.ToLower(service)
	out := []string{name + "." + s.cfg.Domain}
	for _, d := range s.cfg.ExtraDomains {
		if d = strings.Trim(d, "."); d != "" && d != s.cfg.Domain {
			out = append(out, name+"."+d)
		}
	}
	return out
}

// convert maps one Consul service and its instances.
func (s *Source) convert(service string, entries []*api.ServiceEntry) ([]registry.Service, []registry.Endpoint) {
	entries = append([]*api.ServiceEntry(nil), entries...)
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.Node.Node != b.Node.Node {
			return a.Node.Node < b.Node.Node
		}
		return a.Service.ID < b.Service.ID
	})
	ports := map[int]registry.Port{}
	var instances []registry.Endpoint
	for _, e := range entries {
		if e.Service == nil || e.Node == nil || e.Service.Port <= 0 || e.Service.Port > 65535 {
			continue
		}
		proto := protocol(e.Service)
		port, ok := ports[e.Service.Port]
		if !ok {
			port = registry.Port{
				Name:     strings.ToLower(proto) + "-" + strconv.Itoa(e.Service.Port),
				Number:   uint32(e.Service.Port),
				Protocol: proto,
			}
			ports[e.Service.Port] = port
		}
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		instances = append(instances, registry.Endpoint{
			Address:        addr,
			Ports:          map[string]uint32{port.Name: uint32(e.Service.Port)},
			Labels:         labels(e.Service.Tags, e.Service.Meta),
			Locality:       s.locality(e.Node),
			Healthy:        e.Checks.AggregatedStatus() == api.HealthPassing,
			ServiceAccount: e.Service.Meta[MetaServiceAccount],
			Weight:         uint32(max(e.Service.Weights.Passing, 0)),
			WorkloadName:   e.Service.ID,
		})
	}
	sorted := make([]registry.Port, 0, len(ports))
	for _, p := range ports {
		sorted = append(sorted, p)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Number < sorted[j].Number })

	var svcs []registry.Service
	var eps []registry.Endpoint
	for i, h := range s.hostnames(service) {
		p := sorted
		if i > 0 {
			p = append([]registry.Port(nil), sorted...)
		}
		svcs = append(svcs, registry.Service{
			Hostname:   h,
			Namespace:  s.cfg.Namespace,
			Ports:      p,
			Resolution: registry.ResolutionStatic,
			Location:   registry.MeshInternal,
			Source:     SourceName,
		})
		for _, in := range instances {
			ep := in
			ep.Hostname, ep.Namespace = h, s.cfg.Namespace
			if i > 0 {
				ep.Ports, ep.Labels = cloneMap(in.Ports), cloneMap(in.Labels)
			}
			eps = append(eps, ep)
		}
	}
	return svcs, eps
}

// protocol is the instance's protocol, upper case: service meta "protocol",
// else a "protocol=<p>" tag, else TCP.
func protocol(svc *api.AgentService) string {
	if p := svc.Meta[MetaProtocol]; p != "" {
		return strings.ToUpper(p)
	}
	for _, t := range svc.Tags {
		if v, ok := strings.CutPrefix(t, MetaProtocol+"="); ok && v != "" {
			return strings.ToUpper(v)
		}
	}
	return "TCP"
}

// labels are the key=value tags overlaid with the service meta (tags
// without "=" are not labels).
func labels(tags []string, meta map[string]string) map[string]string {
	out := map[string]string{}
	for _, t := range tags {
		if k, v, ok := strings.Cut(t, "="); ok && k != "" {
			out[k] = v
		}
	}
	for k, v := range meta {
		out[k] = v
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// locality is region/zone/subzone from the node meta, else the node's
// "locality" meta, else its datacenter.
func (s *Source) locality(n *api.Node) string {
	if r := n.Meta[NodeMetaRegion]; r != "" {
		return strings.TrimRight(r+"/"+n.Meta[NodeMetaZone]+"/"+n.Meta[NodeMetaSubzone], "/")
	}
	if l := n.Meta[NodeMetaLocality]; l != "" {
		return l
	}
	if n.Datacenter != "" {
		return n.Datacenter
	}
	return s.cfg.Datacenter
}

func cloneMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return nil
	}
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
