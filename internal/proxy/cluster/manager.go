package cluster

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Resolver resolves hostnames of DNS clusters; *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Options configure a Manager; zero values mean the defaults.
type Options struct {
	// Resolver resolves DNS clusters. Default net.DefaultResolver.
	Resolver Resolver
	// Clock drives outlier detection and DNS refresh. Default the system
	// clock.
	Clock Clock
}

// Manager holds the proxy's current clusters. Update installs a new set
// (state of the world), handing each cluster's State over from the
// previous version of the same name; Run resolves DNS clusters.
type Manager struct {
	resolver Resolver
	clock    Clock
	kick     chan struct{}

	mu       sync.Mutex // serialises Update and DNS results
	clusters atomic.Pointer[map[string]*Cluster]
}

// NewManager returns a Manager without clusters.
func NewManager(o Options) *Manager {
	m := &Manager{resolver: o.Resolver, clock: o.Clock, kick: make(chan struct{}, 1)}
	if m.resolver == nil {
		m.resolver = net.DefaultResolver
	}
	if m.clock == nil {
		m.clock = systemClock{}
	}
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
	return m
}

// Get returns the current cluster of that name, or nil.
func (m *Manager) Get(name string) *Cluster { return (*m.clusters.Load())[name] }

// Clusters returns the current clusters; the map must not be modified.
func (m *Manager) Clusters() map[string]*Cluster { return *m.clusters.Load() }

// Update replaces the clusters with cs (keyed by name; clusters missing
// from cs are removed). A cluster whose name existed keeps its State: the
// circuit-breaker counters, and the in-flight counts and outlier ejections
// of every endpoint whose address persists; the new thresholds and outlier
// settings apply from now on. A DNS cluster whose hostnames did not change
// keeps its resolved endpoints. The Manager owns the clusters of cs
// afterwards: they must be fresh from Compile, and not handed to another
// Manager.
func (m *Manager) Update(cs map[string]*Cluster) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.clusters.Load()
	next := make(map[string]*Cluster, len(cs))
	for name, c := range cs {
		if c == nil {
			continue
		}
		if prev := old[name]; prev != nil && prev != c {
			c.adopt(prev)
		} else if prev == nil {
			c.state.useClock(m.clock)
		}
		next[name] = c
	}
	m.clusters.Store(&next)
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// adopt takes prev's State (and resolution, when the hostnames are the
// same) before c is published.
func (c *Cluster) adopt(prev *Cluster) {
	s := prev.state
	all := c.endpoints
	if c.isDNS() && prev.isDNS() && slices.Equal(c.dnsTargets, prev.dnsTargets) && c.DNSFamily == prev.DNSFamily {
		if r := prev.resolved.Load(); r != nil {
			nr := &resolution{dynamic: r.dynamic, perTarget: r.perTarget, due: r.due}
			nr.endpoints = append(slices.Clip(c.endpoints), r.dynamic...)
			c.resolved.Store(nr)
			all = nr.endpoints
		}
	}
	c.state = s
	s.configure(c)
	s.bind(all)
	s.gen.Add(1)
}

func (c *Cluster) isDNS() bool { return c.Type == StrictDNS || c.Type == LogicalDNS }

// resolution is the result of resolving a DNS cluster.
type resolution struct {
	// endpoints are the IP endpoints of the load assignment followed by
	// the resolved ones (dynamic).
	endpoints, dynamic []*Endpoint
	// perTarget are the resolved endpoints of each DNS target.
	perTarget [][]*Endpoint
	// due is when to resolve again.
	due time.Time
}

// Run resolves DNS clusters until ctx ends: new ones at once (Update
// wakes it), then every dns_refresh_rate (dns_failure_refresh_rate after a
// failed lookup). Until its first resolution, a DNS cluster has only the
// endpoints given as IP addresses. Run returns ctx's error.
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		next := m.Resolve(ctx)
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(m.clock.Now()), 10*time.Millisecond)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.kick:
		case <-t.C:
		}
	}
}

// Resolve resolves every DNS cluster that is due now and returns when the
// next one is due (zero when there is no DNS cluster). Run calls it; tests
// may call it directly.
func (m *Manager) Resolve(ctx context.Context) time.Time {
	var next time.Time
	now := m.clock.Now()
	for _, c := range m.Clusters() {
		if !c.isDNS() || len(c.dnsTargets) == 0 {
			continue
		}
		r := c.resolved.Load()
		if r == nil || !now.Before(r.due) {
			r = m.resolve(ctx, c, r, now)
		}
		if next.IsZero() || r.due.Before(next) {
			next = r.due
		}
	}
	return next
}

// resolve looks up c's hostnames and installs the result if c is still
// current. A failed lookup keeps that hostname's previous addresses.
func (m *Manager) resolve(ctx context.Context, c *Cluster, prev *resolution, now time.Time) *resolution {
	failed := false
	var dynamic []*Endpoint
	perTarget := make([][]*Endpoint, len(c.dnsTargets))
	for i, t := range c.dnsTargets {
		addrs, err := m.resolver.LookupHost(ctx, t.host)
		if err != nil {
			failed = true
			if prev != nil && len(prev.perTarget) == len(perTarget) {
				perTarget[i] = prev.perTarget[i]
				dynamic = append(dynamic, perTarget[i]...)
			}
			continue
		}
		ips := filterFamily(addrs, c.DNSFamily)
		if c.Type == LogicalDNS && len(ips) > 1 {
			ips = ips[:1]
		}
		for _, ip := range ips {
			ep := t.tmpl
			ep.AddrPort = netip.AddrPortFrom(ip, t.port)
			ep.Address = ep.AddrPort.String()
			perTarget[i] = append(perTarget[i], &ep)
		}
		dynamic = append(dynamic, perTarget[i]...)
	}
	r := &resolution{dynamic: dynamic, perTarget: perTarget, due: now.Add(c.DNSRefreshRate)}
	if failed {
		r.due = now.Add(c.DNSFailureRefreshRate)
	}
	if prev != nil && sameAddresses(prev.dynamic, dynamic) {
		// Keep the endpoints (and the pick structures built on them).
		r.dynamic, r.endpoints, r.perTarget = prev.dynamic, prev.endpoints, prev.perTarget
	} else {
		r.endpoints = append(slices.Clip(c.endpoints), dynamic...)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Get(c.Name) != c {
		return r // replaced meanwhile; the new version resolves itself
	}
	changed := prev == nil || !sameAddresses(prev.dynamic, dynamic)
	if changed {
		c.state.bind(r.endpoints)
	}
	c.resolved.Store(r)
	if changed {
		c.state.gen.Add(1)
	}
	return r
}

// filterFamily parses addrs keeping the family f asks for.
func filterFamily(addrs []string, f DNSFamily) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			continue
		}
		if ip = ip.Unmap(); ip.Is4() {
			v4 = append(v4, ip)
		} else {
			v6 = append(v6, ip.WithZone(""))
		}
	}
	switch f {
	case DNSV4Only:
		return v4
	case DNSV6Only:
		return v6
	case DNSV4Preferred:
		if len(v4) > 0 {
			return v4
		}
		return v6
	case DNSAll:
		return append(v4, v6...)
	}
	if len(v6) > 0 { // DNSAuto
		return v6
	}
	return v4
}

func sameAddresses(a, b []*Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y *Endpoint) bool { return x.Address == y.Address && x.Hostname == y.Hostname })
}
