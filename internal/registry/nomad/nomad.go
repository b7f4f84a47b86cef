// Package nomad is the registry source for Nomad's native service discovery
// (services with provider = "nomad"). It runs a blocking query on
// /v1/services across namespaces and, for every service listed, another on
// /v1/service/<name>, and reports the complete state after each change. A
// Nomad service <svc> in Nomad namespace <ns> becomes the weft service
// <svc>.<ns>.nomad in weft namespace <ns>; each registration becomes one
// endpoint.
package nomad

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/nomad/api"

	"github.com/weftmesh/weft/internal/registry"
)

// Tag keys with a meaning beyond labels (tags are "key=value").
const (
	// TagProtocol is the port's protocol: http, http2, grpc, tcp, …
	TagProtocol = "protocol"
	// TagServiceAccount is the instance's identity.
	TagServiceAccount = "service-account"
)

// Source watches one Nomad region. Create it with New.
type Source struct {
	cfg    Config
	client *api.Client
	logger *slog.Logger
}

var _ registry.Source = (*Source)(nil)

// New returns a source for cfg. It does not contact Nomad. A nil logger
// discards logs.
func New(cfg Config, logger *slog.Logger) (*Source, error) {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ac := &api.Config{Address: cfg.Address, SecretID: cfg.Token, Region: cfg.Region, WaitTime: cfg.WaitTime}
	if cfg.TLS != (TLS{}) {
		ac.TLSConfig = &api.TLSConfig{
			CACert: cfg.TLS.CAFile, ClientCert: cfg.TLS.CertFile, ClientKey: cfg.TLS.KeyFile,
			Insecure: cfg.TLS.InsecureSkipVerify,
		}
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("nomad: client for %s: %w", cfg.Address, err)
	}
	return &Source{cfg: cfg, client: client, logger: logger.With("component", "registry.nomad")}, nil
}

// Name returns "nomad".
func (s *Source) Name() string { return SourceName }

// serviceKey identifies a Nomad service: its namespace and name.
type serviceKey struct{ namespace, name string }

type serviceWatch struct {
	cancel context.CancelFunc
	done   bool // the first query finished (successfully or not)
	regs   []*api.ServiceRegistration
}

type watches struct {
	mu       sync.Mutex
	synced   bool
	services map[serviceKey]*serviceWatch
	dirty    chan struct{}
}

func (w *watches) signal() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// Run watches Nomad until ctx ends and reports the complete state to sink
// after every change. The first report waits until the service list and
// every service have been read once. Query errors are logged and retried
// with backoff; Run returns nil when ctx ends.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	w := &watches{services: map[serviceKey]*serviceWatch{}, dirty: make(chan struct{}, 1)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watchList(ctx, w, &wg)
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

func (s *Source) query(ctx context.Context, namespace string, index uint64) *api.QueryOptions {
	q := &api.QueryOptions{Namespace: namespace, WaitIndex: index, WaitTime: s.cfg.WaitTime, AllowStale: true}
	return q.WithContext(ctx)
}

// watchList runs the blocking query on /v1/services and starts and stops
// the per-service watchers.
func (s *Source) watchList(ctx context.Context, w *watches, wg *sync.WaitGroup) {
	var index uint64
	failures := 0
	for {
		list, meta, err := s.client.Services().List(s.query(ctx, s.cfg.Namespace, index))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			d := registry.Backoff(s.cfg.RetryMin, s.cfg.RetryMax, failures)
			s.logger.Warn("service list query failed", "err", err, "failures", failures, "retry_in", d)
			if !registry.Sleep(ctx, d) {
				return
			}
			continue
		}
		if failures > 0 {
			s.logger.Info("service list query recovered", "failures", failures)
		}
		failures = 0
		index = registry.NextIndex(index, meta.LastIndex)

		present := map[serviceKey]bool{}
		for _, ns := range list {
			for _, svc := range ns.Services {
				present[serviceKey{ns.Namespace, svc.ServiceName}] = true
			}
		}
		w.mu.Lock()
		for k := range present {
			if _, ok := w.services[k]; ok {
				continue
			}
			sctx, scancel := context.WithCancel(ctx)
			sw := &serviceWatch{cancel: scancel}
			w.services[k] = sw
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.watchService(sctx, w, k, sw)
			}()
		}
		for k, sw := range w.services {
			if !present[k] {
				sw.cancel()
				delete(w.services, k)
			}
		}
		w.synced = true
		w.mu.Unlock()
		w.signal()
	}
}

// watchService runs the blocking query on /v1/service/<name> until ctx
// ends (the service was deregistered, or Run ended).
func (s *Source) watchService(ctx context.Context, w *watches, k serviceKey, sw *serviceWatch) {
	var index uint64
	failures := 0
	for {
		regs, meta, err := s.client.Services().Get(k.name, s.query(ctx, k.namespace, index))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			d := registry.Backoff(s.cfg.RetryMin, s.cfg.RetryMax, failures)
			s.logger.Warn("service query failed", "namespace", k.namespace, "service", k.name, "err", err, "failures", failures, "retry_in", d)
			w.mu.Lock()
			first := !sw.done
			sw.done = true
			w.mu.Unlock()
			if first {
				w.signal()
			}
			if !registry.Sleep(ctx, d) {
				return
			}
			continue
		}
		failures = 0
		index = registry.NextIndex(index, meta.LastIndex)
		w.mu.Lock()
		sw.done, sw.regs = true, regs
		w.mu.Unlock()
		w.signal()
	}
}

// state builds the registry state; ready is false until the list and every
// listed service have been read once.
func (s *Source) state(w *watches) (registry.State, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced {
		return registry.State{}, false
	}
	keys := make([]serviceKey, 0, len(w.services))
	for k, sw := range w.services {
		if !sw.done {
			return registry.State{}, false
		}
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].namespace != keys[j].namespace {
			return keys[i].namespace < keys[j].namespace
		}
		return keys[i].name < keys[j].name
	})
	var st registry.State
	for _, k := range keys {
		svc, eps := s.convert(k, w.services[k].regs)
		st.Services = append(st.Services, svc)
		st.Endpoints = append(st.Endpoints, eps...)
	}
	return st, true
}

// Hostname is the weft host name of Nomad service name in namespace:
// <name>.<namespace>.<domain>.
func (s *Source) Hostname(namespace, name string) string {
	return strings.ToLower(name) + "." + strings.ToLower(namespace) + "." + s.cfg.Domain
}

// convert maps one Nomad service and its registrations.
func (s *Source) convert(k serviceKey, regs []*api.ServiceRegistration) (registry.Service, []registry.Endpoint) {
	host := s.Hostname(k.namespace, k.name)
	regs = append([]*api.ServiceRegistration(nil), regs...)
	sort.SliceStable(regs, func(i, j int) bool { return regs[i].ID < regs[j].ID })
	ports := map[int]registry.Port{}
	var eps []registry.Endpoint
	for _, r := range regs {
		if r.Port <= 0 || r.Port > 65535 || r.Namespace != k.namespace {
			continue
		}
		labels := tagLabels(r.Tags)
		proto := strings.ToUpper(labels[TagProtocol])
		if proto == "" {
			proto = "TCP"
		}
		port, ok := ports[r.Port]
		if !ok {
			port = registry.Port{Name: strings.ToLower(proto) + "-" + strconv.Itoa(r.Port), Number: uint32(r.Port), Protocol: proto}
			ports[r.Port] = port
		}
		workload := r.AllocID
		if workload == "" {
			workload = r.ID
		}
		eps = append(eps, registry.Endpoint{
			Hostname:       host,
			Namespace:      k.namespace,
			Address:        r.Address,
			Ports:          map[string]uint32{port.Name: uint32(r.Port)},
			Labels:         labels,
			Locality:       r.Datacenter,
			Healthy:        true,
			ServiceAccount: labels[TagServiceAccount],
			WorkloadName:   workload,
		})
	}
	svc := registry.Service{
		Hostname:   host,
		Namespace:  k.namespace,
		Resolution: registry.ResolutionStatic,
		Location:   registry.MeshInternal,
		Source:     SourceName,
	}
	for _, p := range ports {
		svc.Ports = append(svc.Ports, p)
	}
	sort.Slice(svc.Ports, func(i, j int) bool { return svc.Ports[i].Number < svc.Ports[j].Number })
	return svc, eps
}

// tagLabels turns key=value tags into labels (other tags are ignored).
func tagLabels(tags []string) map[string]string {
	var out map[string]string
	for _, t := range tags {
		if k, v, ok := strings.Cut(t, "="); ok && k != "" {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}
