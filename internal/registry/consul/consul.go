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
	"sort"
	"strconv"
	"strings"

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

// Run watches Consul until ctx ends and reports the complete state to sink
// after every change. The first report waits until the catalog and every
// service's health have been read once. Query errors are logged and retried
// with backoff; Run returns nil when ctx ends.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	w := &registry.CatalogWatch[string, []*api.ServiceEntry]{
		Source: SourceName, Logger: s.logger, RetryMin: s.cfg.RetryMin, RetryMax: s.cfg.RetryMax,
		ListName: "catalog", List: s.services,
		GetName: "health", Get: s.health,
		GetLogAttrs: func(name string) []any { return []any{"path", "/v1/health/service/" + name} },
		State:       s.state,
	}
	return w.Run(ctx, sink)
}

// query is the options of a blocking query waiting on index.
func (s *Source) query(ctx context.Context, index uint64) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: s.cfg.WaitTime, AllowStale: true}).WithContext(ctx)
}

// services runs the blocking query on /v1/catalog/services.
func (s *Source) services(ctx context.Context, index uint64) ([]string, uint64, error) {
	services, meta, err := s.client.Catalog().Services(s.query(ctx, index))
	if err != nil {
		return nil, 0, err
	}
	names := make([]string, 0, len(services))
	for name := range services {
		names = append(names, name)
	}
	return names, meta.LastIndex, nil
}

// health runs the blocking query on /v1/health/service/<name>.
func (s *Source) health(ctx context.Context, name string, index uint64) ([]*api.ServiceEntry, uint64, error) {
	entries, meta, err := s.client.Health().Service(name, "", false, s.query(ctx, index))
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

// state builds the registry state from every service's health entries.
func (s *Source) state(entries map[string][]*api.ServiceEntry) registry.State {
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var st registry.State
	for _, n := range names {
		svcs, eps := s.convert(n, entries[n])
		st.Services = append(st.Services, svcs...)
		st.Endpoints = append(st.Endpoints, eps...)
	}
	sort.SliceStable(st.Services, func(i, j int) bool { return st.Services[i].Hostname < st.Services[j].Hostname })
	sort.SliceStable(st.Endpoints, func(i, j int) bool { return st.Endpoints[i].Hostname < st.Endpoints[j].Hostname })
	return st
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
