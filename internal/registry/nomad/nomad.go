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
	"sort"
	"strconv"
	"strings"

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

// Run watches Nomad until ctx ends and reports the complete state to sink
// after every change. The first report waits until the service list and
// every service have been read once. Query errors are logged and retried
// with backoff; Run returns nil when ctx ends.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	w := &registry.CatalogWatch[serviceKey, []*api.ServiceRegistration]{
		Source: SourceName, Logger: s.logger, RetryMin: s.cfg.RetryMin, RetryMax: s.cfg.RetryMax,
		ListName: "service list", List: s.list,
		GetName: "service", Get: s.service,
		GetLogAttrs: func(k serviceKey) []any { return []any{"namespace", k.namespace, "service", k.name} },
		State:       s.state,
	}
	return w.Run(ctx, sink)
}

// query is the options of a blocking query in namespace waiting on index.
func (s *Source) query(ctx context.Context, namespace string, index uint64) *api.QueryOptions {
	q := &api.QueryOptions{Namespace: namespace, WaitIndex: index, WaitTime: s.cfg.WaitTime, AllowStale: true}
	return q.WithContext(ctx)
}

// list runs the blocking query on /v1/services.
func (s *Source) list(ctx context.Context, index uint64) ([]serviceKey, uint64, error) {
	list, meta, err := s.client.Services().List(s.query(ctx, s.cfg.Namespace, index))
	if err != nil {
		return nil, 0, err
	}
	var keys []serviceKey
	for _, ns := range list {
		for _, svc := range ns.Services {
			keys = append(keys, serviceKey{ns.Namespace, svc.ServiceName})
		}
	}
	return keys, meta.LastIndex, nil
}

// service runs the blocking query on /v1/service/<name>.
func (s *Source) service(ctx context.Context, k serviceKey, index uint64) ([]*api.ServiceRegistration, uint64, error) {
	regs, meta, err := s.client.Services().Get(k.name, s.query(ctx, k.namespace, index))
	if err != nil {
		return nil, 0, err
	}
	return regs, meta.LastIndex, nil
}

// state builds the registry state from every service's registrations.
func (s *Source) state(regs map[serviceKey][]*api.ServiceRegistration) registry.State {
	keys := make([]serviceKey, 0, len(regs))
	for k := range regs {
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
		svc, eps := s.convert(k, regs[k])
		st.Services = append(st.Services, svc)
		st.Endpoints = append(st.Endpoints, eps...)
	}
	return st
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
