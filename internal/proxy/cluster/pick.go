package cluster

import (
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/weftmesh/weft/internal/proxy/cluster/lb"
)

// ErrNoOriginalDst is returned by Pick on an OriginalDst cluster when the
// request has no original destination.
var ErrNoOriginalDst = fmt.Errorf("%w: no original destination", ErrNoHealthyUpstream)

// PickContext is what Pick needs to know about a request.
type PickContext struct {
	// HashKey is the request's hash (route hash policy) for RING_HASH and
	// MAGLEV clusters.
	HashKey uint64
	// HasHash reports whether HashKey is set; without it those policies
	// pick at random.
	HasHash bool
	// Exclude lists the addresses ("ip:port") of endpoints the request
	// already tried (retry host predicate previous_hosts); Pick avoids
	// them while another endpoint is available.
	Exclude []string
	// OriginalDst is the request's original destination (OriginalDst
	// clusters).
	OriginalDst netip.AddrPort
}

// maxPickAttempts is how often Pick draws before scanning for an
// endpoint outside Exclude (Istio's host_selection_retry_max_attempts).
const maxPickAttempts = 5

// Pick chooses the endpoint for one request: among healthy, non-ejected
// endpoints (degraded ones when no healthy one is left, all of them in
// panic mode), a locality by weight and then an endpoint with the
// cluster's policy. It returns an error wrapping ErrNoHealthyUpstream when
// there is none. Pick is safe for concurrent use and does not allocate,
// except when the available set changed since the previous Pick.
func (c *Cluster) Pick(ctx PickContext) (*Endpoint, error) {
	if c.Type == OriginalDst {
		return c.pickOriginalDst(ctx.OriginalDst) // the address alone: ctx (its Exclude) does not escape
	}
	s := c.state
	s.maybeSweep()
	hs := c.hosts.Load()
	if gen := s.gen.Load(); hs == nil || hs.gen != gen {
		hs = c.rebuild(gen)
	}
	if hs.n == 0 {
		return nil, ErrNoHealthyUpstream
	}
	req := lb.Request{Hash: ctx.HashKey, HasHash: ctx.HasHash}
	var ep *Endpoint
	for req.Attempt = 0; req.Attempt < maxPickAttempts; req.Attempt++ {
		ep = hs.pick(req)
		if len(ctx.Exclude) == 0 || !slices.Contains(ctx.Exclude, ep.Address) {
			return ep, nil
		}
	}
	for _, l := range hs.locs {
		for _, h := range l.hosts {
			if !slices.Contains(ctx.Exclude, h.Address) {
				return h, nil
			}
		}
	}
	// Every endpoint was tried: retry on one of them, as Envoy does.
	return ep, nil
}

func (c *Cluster) pickOriginalDst(ap netip.AddrPort) (*Endpoint, error) {
	if !ap.IsValid() {
		return nil, ErrNoOriginalDst
	}
	if c.OriginalDstPort != 0 {
		ap = netip.AddrPortFrom(ap.Addr(), uint16(c.OriginalDstPort))
	}
	return c.state.originalDst(ap), nil
}

// hostSet is what Pick chooses from, built for one generation of the
// State: the available endpoints grouped by locality with their pickers.
type hostSet struct {
	gen   uint64
	n     int
	panic bool
	// locs are the localities with available endpoints; with a hashing
	// policy, or without locality weights, there is one holding all.
	locs []locality
	// locPicker chooses among locs when there are several.
	locPicker lb.Picker
}

type locality struct {
	hosts  []*Endpoint
	picker lb.Picker
}

func (hs *hostSet) pick(req lb.Request) *Endpoint {
	l := &hs.locs[0]
	if hs.locPicker != nil {
		l = &hs.locs[hs.locPicker.Pick(req)]
	}
	return l.hosts[l.picker.Pick(req)]
}

// loads reads the in-flight requests of endpoints for least request.
type loads []*Endpoint

func (l loads) Load(i int) int64 { return l[i].live.active.Load() }

// rebuild builds and caches the host set of generation gen.
func (c *Cluster) rebuild(gen uint64) *hostSet {
	c.buildMu.Lock()
	defer c.buildMu.Unlock()
	if hs := c.hosts.Load(); hs != nil && hs.gen == gen {
		return hs
	}
	hs := c.buildHostSet(c.Endpoints())
	hs.gen = gen
	c.hosts.Store(hs)
	return hs
}

// buildHostSet selects the endpoints to pick from, as Envoy does for one
// priority: healthy ones, else degraded ones; all of them when the share
// of healthy and degraded endpoints is below the panic threshold. With
// locality weights, each locality's weight is scaled by its availability
// (times the overprovisioning factor, at most 1).
func (c *Cluster) buildHostSet(eps []*Endpoint) *hostSet {
	hs := &hostSet{}
	if len(eps) == 0 {
		return hs
	}
	var healthy, degraded []*Endpoint
	for _, ep := range eps {
		if ep.live.ejected.Load() {
			continue
		}
		switch ep.Health {
		case Healthy:
			healthy = append(healthy, ep)
		case Degraded:
			degraded = append(degraded, ep)
		}
	}
	avail := healthy
	if len(avail) == 0 {
		avail = degraded
	}
	if pct := 100 * float64(len(healthy)+len(degraded)) / float64(len(eps)); pct < c.PanicThreshold {
		hs.panic, avail = true, eps
	} else if len(avail) == 0 {
		return hs
	}
	hs.n = len(avail)

	// Group by locality; total endpoints per locality for availability.
	nloc := 0
	for _, ep := range eps {
		nloc = max(nloc, ep.locality+1)
	}
	total := make([]int, nloc)
	for _, ep := range eps {
		total[ep.locality]++
	}
	groups := make([][]*Endpoint, nloc)
	for _, ep := range avail {
		groups[ep.locality] = append(groups[ep.locality], ep)
	}
	weighted := false
	for _, ep := range eps {
		weighted = weighted || ep.LocalityWeight > 0
	}
	var locW []uint64
	if weighted {
		locW = make([]uint64, nloc)
		opf := uint64(c.OverprovisioningFactor)
		for i, g := range groups {
			if len(g) == 0 || g[0].LocalityWeight == 0 {
				continue
			}
			w := uint64(g[0].LocalityWeight)
			if !hs.panic {
				// weight × min(1, opf/100 × available/total)
				w = min(w, w*opf*uint64(len(g))/(100*uint64(total[i])))
			}
			locW[i] = max(w, 1)
		}
		if slices.Max(locW) == 0 {
			// Only localities without a weight have endpoints.
			hs.n = 0
			return hs
		}
	}

	if c.Policy.Hashing() || !weighted {
		// One group; hashing policies fold locality weights into
		// endpoint weights (normalised within the locality).
		var hosts []*Endpoint
		var ws []float64
		for i, g := range groups {
			if weighted && locW[i] == 0 {
				continue
			}
			var sum float64
			for _, ep := range g {
				sum += float64(ep.Weight)
			}
			for _, ep := range g {
				w := float64(ep.Weight)
				if weighted {
					w = float64(locW[i]) * w / sum
				}
				hosts = append(hosts, ep)
				ws = append(ws, w)
			}
		}
		hs.n = len(hosts)
		hs.locs = []locality{c.newLocality(hosts, ws)}
		return hs
	}
	var lw []uint32
	for i, g := range groups {
		if len(g) == 0 || locW[i] == 0 {
			continue
		}
		ws := make([]float64, len(g))
		for j, ep := range g {
			ws[j] = float64(ep.Weight)
		}
		hs.locs = append(hs.locs, c.newLocality(g, ws))
		lw = append(lw, uint32(min(locW[i], math.MaxUint32)))
	}
	if len(hs.locs) > 1 {
		p := lb.RoundRobin
		if c.Policy == lb.Random {
			p = lb.Random
		}
		hs.locPicker, _ = lb.New(p, lw, nil, nil, lb.Config{})
	}
	return hs
}

// newLocality builds the picker of one group of endpoints. Weights are
// scaled to integers keeping their ratios to about one in a million.
func (c *Cluster) newLocality(hosts []*Endpoint, ws []float64) locality {
	top := slices.Max(ws)
	scale := 1.0
	if top > 1e6 || slices.ContainsFunc(ws, func(w float64) bool { return w != math.Trunc(w) }) {
		scale = 1e6 / top
	}
	iw := make([]uint32, len(ws))
	names := make([]string, len(hosts))
	for i, w := range ws {
		iw[i] = uint32(max(math.Round(w*scale), 1))
		names[i] = hosts[i].Address
	}
	p, err := lb.New(c.Policy, iw, names, loads(hosts), c.LB)
	if err != nil {
		// Compile validated the settings; fall back rather than fail.
		p, _ = lb.New(lb.Random, iw, nil, nil, lb.Config{})
	}
	return locality{hosts: hosts, picker: p}
}
