// Package registry is weft's platform-neutral service registry: services
// (hostname, ports with protocol, VIPs) and their endpoints (address, ports,
// labels, locality, health, identity, weight), fed by sources that each live
// in a sub-package (serviceentry, consul, nomad, …) and never import each
// other. Every source reports its complete current state on each change;
// the Aggregator merges the sources into immutable snapshots.
package registry

import (
	"context"
	"sort"
	"strings"
	"sync"
)

// Resolution says how a client finds a service's endpoints.
type Resolution int

const (
	// ResolutionStatic: the endpoints listed are the instances (EDS).
	ResolutionStatic Resolution = iota
	// ResolutionDNS: endpoint addresses are host names resolved by the proxy.
	ResolutionDNS
	// ResolutionNone: the proxy forwards to the original destination.
	ResolutionNone
	// ResolutionDNSRoundRobin: one host name, resolved at connect time.
	ResolutionDNSRoundRobin
)

// Location says whether a service is part of the mesh.
type Location int

const (
	// MeshInternal services run sidecars (mTLS possible).
	MeshInternal Location = iota
	// MeshExternal services are outside the mesh.
	MeshExternal
)

// Port is one port a service listens on.
type Port struct {
	// Name identifies the port (endpoints map port names to target ports).
	Name string
	// Number is the service port.
	Number uint32
	// Protocol is Istio's protocol name, upper case: HTTP, HTTP2, GRPC,
	// HTTPS, TLS, TCP, MONGO, … ("" means sniffed).
	Protocol string
	// TargetPort is the default endpoint port (0: same as Number).
	TargetPort uint32
}

// Service is one reachable name in the mesh.
type Service struct {
	// Hostname is the name clients use (e.g. "reviews.default.svc.cluster.local",
	// "web.service.consul", "api.example.com").
	Hostname string
	// Namespace owns the service (config scoping, exportTo).
	Namespace string
	// Addresses are VIPs or CIDRs clients dial (may be empty).
	Addresses  []string
	Ports      []Port
	Resolution Resolution
	Location   Location
	// Labels of the service itself (not of its endpoints).
	Labels map[string]string
	// ExportTo limits visibility: "*" (default), "." or namespace names.
	ExportTo []string
	// SubjectAltNames are the identities allowed to serve it (secure naming).
	SubjectAltNames []string
	// Source names the source that reported it ("serviceentry", "consul", …).
	Source string
	// CreationTime orders conflicting definitions (oldest wins), Unix nanos.
	CreationTime int64
}

// ShortName is a service's name as Istio's metrics and cluster metadata
// give it (destination_service_name): <name> of a Kubernetes-style
// "<name>.<namespace>.svc.<domain>", else the whole hostname; namespace
// is the hostname's namespace part, "" when it has none.
func ShortName(hostname string) (name, namespace string) {
	n, rest, _ := strings.Cut(hostname, ".")
	if ns, tail, ok := strings.Cut(rest, "."); ok && ns != "" && strings.HasPrefix(tail, "svc.") {
		return n, ns
	}
	return hostname, ""
}

// Endpoint is one instance of a service.
type Endpoint struct {
	// Hostname and Namespace name the service this endpoint belongs to.
	Hostname  string
	Namespace string
	// Address is an IP, a host name (DNS resolution) or "unix://path".
	Address string
	// Ports maps service port names to endpoint ports; a port missing here
	// uses the service port's TargetPort (or Number).
	Ports map[string]uint32
	// Labels select subsets and workloads.
	Labels map[string]string
	// Locality is "region/zone/subzone".
	Locality string
	Network  string
	// Healthy is false for instances failing their health checks.
	Healthy bool
	// ServiceAccount is the workload identity ("" when unknown).
	ServiceAccount string
	// Weight for load balancing (0 means 1).
	Weight uint32
	// WorkloadName identifies the workload (e.g. the WorkloadEntry name).
	WorkloadName string
	// SidecarPorts maps application ports (PortFor) to the ports the
	// workload's explicit-mode sidecar accepts mesh traffic on for them
	// (see AnnotationInboundPorts); nil without such a sidecar.
	SidecarPorts map[uint32]uint32
}

// PortFor returns the endpoint port serving service port p.
func (e *Endpoint) PortFor(p Port) uint32 {
	if n, ok := e.Ports[p.Name]; ok && n != 0 {
		return n
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Number
}

// DialPort returns the port peers connect to for service port p: the
// sidecar port in front of the application port when the workload has one
// (SidecarPorts), else PortFor(p).
func (e *Endpoint) DialPort(p Port) uint32 {
	n := e.PortFor(p)
	if s, ok := e.SidecarPorts[n]; ok {
		return s
	}
	return n
}

// State is what one source reports: its complete current set.
type State struct {
	Services  []Service
	Endpoints []Endpoint
}

// Sink receives a source's complete state each time it changes.
type Sink interface {
	Update(source string, st State)
}

// Source is a service registry a server can run.
type Source interface {
	// Name identifies the source in logs, metrics and Service.Source.
	Name() string
	// Run reports the source's state to sink until ctx ends.
	Run(ctx context.Context, sink Sink) error
}

// Snapshot is the merged state of every source at one moment. It is
// immutable: never modify a Snapshot or anything it holds.
type Snapshot struct {
	// Version increases with every change.
	Version uint64
	// Services sorted by hostname, then namespace.
	Services []Service
	// Endpoints by service key (see Key).
	Endpoints map[string][]Endpoint
}

// Key identifies a service across sources: namespace/hostname.
func Key(namespace, hostname string) string { return namespace + "/" + hostname }

// Aggregator merges sources. It is a Sink; Subscribe gets snapshots.
type Aggregator struct {
	mu      sync.Mutex
	states  map[string]State
	version uint64
	subs    []chan *Snapshot
	last    *Snapshot
}

// NewAggregator returns an empty aggregator.
func NewAggregator() *Aggregator {
	a := &Aggregator{states: map[string]State{}}
	a.last = &Snapshot{Endpoints: map[string][]Endpoint{}}
	return a
}

// Update replaces source's state and publishes a new snapshot, in which
// services without addresses have an auto-allocated VIP (allocateVIPs).
func (a *Aggregator) Update(source string, st State) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range st.Services {
		st.Services[i].Source = source
	}
	a.states[source] = st
	a.version++
	snap := &Snapshot{Version: a.version, Endpoints: map[string][]Endpoint{}}
	names := make([]string, 0, len(a.states))
	for n := range a.states {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := a.states[n]
		snap.Services = append(snap.Services, s.Services...)
		for _, e := range s.Endpoints {
			k := Key(e.Namespace, e.Hostname)
			snap.Endpoints[k] = append(snap.Endpoints[k], e)
		}
	}
	sort.SliceStable(snap.Services, func(i, j int) bool {
		si, sj := snap.Services[i], snap.Services[j]
		if si.Hostname != sj.Hostname {
			return si.Hostname < sj.Hostname
		}
		return si.Namespace < sj.Namespace
	})
	allocateVIPs(snap.Services)
	a.last = snap
	for _, c := range a.subs {
		// Latest wins: drop an unread older snapshot rather than block.
		select {
		case <-c:
		default:
		}
		c <- snap
	}
}

// Snapshot returns the latest snapshot.
func (a *Aggregator) Snapshot() *Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// Subscribe returns a channel that always holds the newest snapshot not yet
// read (older unread ones are replaced), starting with the current one.
func (a *Aggregator) Subscribe() <-chan *Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := make(chan *Snapshot, 1)
	c <- a.last
	a.subs = append(a.subs, c)
	return c
}

// HasReported reports whether source has delivered at least one state.
func (a *Aggregator) HasReported(source string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.states[source]
	return ok
}

// LabelsMatch reports whether labels has every key of selector with the
// same value (an empty selector matches everything), as Istio's
// workloadSelector and subset labels select.
func LabelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
