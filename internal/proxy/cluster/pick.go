package cluster

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

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
	if gen := s.gen.Load(); hs == nil || hs.gen != gen || (hs.refreshAt != 0 && s.clock.Now().UnixNano() >= hs.refreshAt) {
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
	for _, lv := range hs.levels {
		for _, l := range lv.locs {
			for _, h := range l.hosts {
				if !slices.Contains(ctx.Exclude, h.Address) {
					return h, nil
				}
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
// State: the priority levels that take load, each with its available
// endpoints grouped by locality and their pickers.
type hostSet struct {
	gen uint64
	n   int // available endpoints over all levels
	// refreshAt is when slow start's weights are due to be worked out
	// again (unix nanoseconds); 0: never.
	refreshAt int64
	// levels are the priorities that take load, highest first; most
	// clusters have one.
	levels []level
}

// level is one priority's share of the load and what it picks from.
type level struct {
	// upTo is the load (percent) of this level and the ones before it:
	// a draw below it and at or above the previous level's lands here.
	upTo  uint32
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
	lv := &hs.levels[0]
	if len(hs.levels) > 1 {
		// As Envoy chooses a priority: by the request's hash when the
		// policy hashes, else at random.
		var r uint32
		if req.HasHash {
			r = uint32(req.Hash % 100)
		} else {
			r = rand.Uint32N(100)
		}
		for i := range hs.levels {
			if r < hs.levels[i].upTo {
				lv = &hs.levels[i]
				break
			}
		}
	}
	l := &lv.locs[0]
	if lv.locPicker != nil {
		l = &lv.locs[lv.locPicker.Pick(req)]
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
	now := c.state.clock.Now().UnixNano()
	if hs := c.hosts.Load(); hs != nil && hs.gen == gen && (hs.refreshAt == 0 || now < hs.refreshAt) {
		return hs
	}
	b := &hostBuild{c: c, now: now}
	hs := b.hostSet(c.Endpoints())
	if b.slowing {
		hs.refreshAt = now + int64(slowStartRefresh)
	}
	hs.gen = gen
	c.hosts.Store(hs)
	return hs
}

// hostSet splits the endpoints by priority and gives each priority
// its share of the load, as Envoy does: a priority's availability is the
// share of its endpoints that are up (healthy or degraded, not ejected)
// times the overprovisioning factor, at most 100 %; the highest priority
// takes as much of the load as its availability, the next one as much of
// the rest as its own, and so on. When the availabilities add up to less
// than 100 % they are scaled up to 100 %. When every priority is below
// the panic threshold, all endpoints of all priorities take the load
// (Envoy's total panic, by endpoint count).
func (b *hostBuild) hostSet(eps []*Endpoint) *hostSet {
	c := b.c
	hs := &hostSet{}
	prios := byPriority(eps)
	if len(prios) <= 1 {
		lv := b.level(eps, true)
		if lv.n > 0 {
			lv.upTo = 100
			hs.n, hs.levels = lv.n, []level{lv}
		}
		return hs
	}
	avail := make([]uint64, len(prios))
	var sum uint64
	allPanic := true
	for i, g := range prios {
		up := 0
		for _, ep := range g {
			if !ep.live.ejected.Load() && (ep.Health == Healthy || ep.Health == Degraded) {
				up++
			}
		}
		avail[i] = min(100, uint64(c.OverprovisioningFactor)*uint64(up)/uint64(len(g)))
		sum += avail[i]
		allPanic = allPanic && 100*float64(up)/float64(len(g)) < c.PanicThreshold
	}
	if sum == 0 || (sum < 100 && allPanic) {
		lv := b.level(eps, true) // below the threshold over all: panic
		if lv.n > 0 {
			lv.upTo = 100
			hs.n, hs.levels = lv.n, []level{lv}
		}
		return hs
	}
	norm := min(sum, 100)
	left := uint64(100)
	loads := make([]uint64, len(prios))
	for i := range prios {
		loads[i] = min(left, avail[i]*100/norm)
		left -= loads[i]
	}
	upTo := uint32(0)
	for i, g := range prios {
		if loads[i] == 0 {
			continue
		}
		// A priority below the panic threshold only panics when the
		// priorities together are short of 100 % (Envoy's per-priority
		// panic).
		lv := b.level(g, norm < 100)
		if lv.n == 0 {
			continue
		}
		if len(hs.levels) == 0 {
			loads[i] += left // what rounding left goes first, as Envoy's
		}
		upTo += uint32(loads[i])
		lv.upTo = upTo
		hs.n += lv.n
		hs.levels = append(hs.levels, lv)
	}
	if len(hs.levels) > 0 {
		// A level with nothing to pick leaves its load to the last one.
		hs.levels[len(hs.levels)-1].upTo = 100
	}
	return hs
}

// hostBuild builds one host set at now.
type hostBuild struct {
	c   *Cluster
	now int64 // unix nanoseconds
	// slowing: an endpoint's weight was scaled by slow start, so the
	// weights change with time.
	slowing bool
}

// weight is ep's load-balancing weight, scaled by slow start for a
// healthy endpoint of a round robin or least request cluster that joined
// less than the window ago.
func (b *hostBuild) weight(ep *Endpoint) float64 {
	w := float64(ep.Weight)
	ss := b.c.SlowStart
	if ss == nil || ep.Health != Healthy || (b.c.Policy != lb.RoundRobin && b.c.Policy != lb.LeastRequest) {
		return w
	}
	f, in := ss.factor(time.Duration(b.now - ep.live.joined))
	b.slowing = b.slowing || in
	return w * f
}

// byPriority groups eps by priority, highest (0) first, leaving out
// priorities without endpoints.
func byPriority(eps []*Endpoint) [][]*Endpoint {
	top := uint32(0)
	for _, ep := range eps {
		top = max(top, ep.Priority)
	}
	if top == 0 {
		return [][]*Endpoint{eps}
	}
	groups := make([][]*Endpoint, top+1)
	for _, ep := range eps {
		groups[ep.Priority] = append(groups[ep.Priority], ep)
	}
	return slices.DeleteFunc(groups, func(g []*Endpoint) bool { return len(g) == 0 })
}

// level selects the endpoints of one priority to pick from:
// healthy ones, else degraded ones; all of them when the share of healthy
// and degraded endpoints is below the panic threshold (and panic is
// allowed). With locality weights, each locality's weight is scaled by
// its availability (times the overprovisioning factor, at most 1).
func (b *hostBuild) level(eps []*Endpoint, allowPanic bool) level {
	c := b.c
	hs := level{}
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
	if pct := 100 * float64(len(healthy)+len(degraded)) / float64(len(eps)); allowPanic && pct < c.PanicThreshold {
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
				sum += b.weight(ep)
			}
			for _, ep := range g {
				w := b.weight(ep)
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
			ws[j] = b.weight(ep)
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
