package cluster

import (
	"errors"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoHealthyUpstream is returned by Pick when no endpoint can take the
// request; the proxy answers 503 "no healthy upstream".
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// Health is how an endpoint's EDS health status counts when picking.
type Health int

const (
	// Healthy endpoints (HEALTHY, UNKNOWN) take traffic.
	Healthy Health = iota
	// Degraded endpoints (DEGRADED) take traffic only when no healthy
	// endpoint is available.
	Degraded
	// Unhealthy endpoints (UNHEALTHY, DRAINING, TIMEOUT) take traffic only
	// in panic mode.
	Unhealthy
)

// Endpoint is one upstream address of a cluster. Its fields never change;
// its in-flight count and outlier state are live and shared by every
// version of the cluster that lists the same address.
type Endpoint struct {
	// Address is "ip:port" (IPv6 in brackets), the dial address.
	Address string
	// AddrPort is Address parsed.
	AddrPort netip.AddrPort
	// Hostname is the endpoint's hostname (EDS hostname, or the DNS name
	// it was resolved from); may be empty.
	Hostname string
	// Weight is the endpoint's load-balancing weight (at least 1).
	Weight uint32
	// Locality is where the endpoint runs.
	Locality Locality
	// LocalityWeight is its locality's weight; 0 when unset.
	LocalityWeight uint32
	// Priority is its locality's priority: 0, the highest, takes the
	// load while enough of its endpoints are up (see hostBuild.hostSet).
	Priority uint32
	// Health is its health from EDS.
	Health Health

	locality int // index of the locality within the cluster
	live     *endpointLive
}

// endpointLive is the state kept for one address across updates.
type endpointLive struct {
	active atomic.Int64

	cons5xx, consGateway, consLocal atomic.Uint32
	ejected                         atomic.Bool

	// guarded by State.mu
	ejectedAt    int64 // unix nanoseconds
	numEjections uint32
	member       bool

	// joined is when the address joined the cluster (unix nanoseconds):
	// slow start counts from it. Set once.
	joined int64
}

// StartRequest counts a request in flight to e (least request reads it).
// Pair every call with EndRequest.
func (e *Endpoint) StartRequest() { e.live.active.Add(1) }

// EndRequest ends a request started with StartRequest.
func (e *Endpoint) EndRequest() { e.live.active.Add(-1) }

// ActiveRequests is the number of requests in flight to e.
func (e *Endpoint) ActiveRequests() int64 { return e.live.active.Load() }

// Ejected reports whether outlier detection currently ejects e.
func (e *Endpoint) Ejected() bool { return e.live.ejected.Load() }

// Resource is a circuit-breaker resource.
type Resource int

const (
	// Connections counts open upstream connections (max_connections).
	Connections Resource = iota
	// PendingRequests counts requests waiting for a connection
	// (max_pending_requests).
	PendingRequests
	// Requests counts requests in flight (max_requests).
	Requests
	// Retries counts retries in flight (max_retries).
	Retries
	numResources
)

// String returns Envoy's name of the threshold.
func (r Resource) String() string {
	return [...]string{"max_connections", "max_pending_requests", "max_requests", "max_retries"}[r]
}

// Clock tells the time; outlier detection takes it from the Manager so
// that tests can drive it.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// State is the live part of a cluster: circuit-breaker counters and the
// per-address endpoint state (in-flight requests, outlier detection). It
// survives configuration updates of the cluster (Manager.Update).
type State struct {
	limits  [numResources]atomic.Int64
	counts  [numResources]atomic.Int64
	release [numResources]func()

	// gen changes whenever the set of available endpoints may have
	// changed (ejection, un-ejection, new membership).
	gen     atomic.Uint64
	outlier atomic.Pointer[OutlierConfig]
	// budget is the retry budget (nil: max_retries limits retries).
	budget atomic.Pointer[RetryBudget]
	// nextSweep is when outlier detection next un-ejects (unix
	// nanoseconds); 0 when nothing is ejected or backing off.
	nextSweep atomic.Int64
	clock     Clock

	mu      sync.Mutex
	live    map[string]*endpointLive
	members int
	ejected int

	origMu  sync.RWMutex
	origDst map[netip.AddrPort]*Endpoint
}

func newState(clock Clock) *State {
	if clock == nil {
		clock = systemClock{}
	}
	s := &State{clock: clock, live: map[string]*endpointLive{}}
	for r := range numResources {
		s.release[r] = func() { s.counts[r].Add(-1) }
		s.limits[r].Store(math.MaxInt64)
	}
	return s
}

// Acquire takes one unit of resource r if its threshold allows, without
// locking. On success the caller must call release exactly once when done;
// on failure the proxy answers 503 with x-envoy-overloaded (or, for
// Retries, does not retry).
func (s *State) Acquire(r Resource) (release func(), ok bool) {
	if s.counts[r].Add(1) > s.limits[r].Load() {
		s.counts[r].Add(-1)
		return nil, false
	}
	return s.release[r], true
}

// AcquireRetry takes one unit of Retries if the cluster's retry limit
// allows another concurrent retry: its retry budget (a share of the
// requests active and pending now, never below its floor) when it has one,
// else max_retries. On failure the request is not retried: retries never
// multiply the load on a struggling upstream beyond the budget.
func (s *State) AcquireRetry() (release func(), ok bool) {
	b := s.budget.Load()
	if b == nil {
		return s.Acquire(Retries)
	}
	active := s.counts[Requests].Load() + s.counts[PendingRequests].Load()
	limit := max(int64(float64(active)*b.BudgetPercent/100), int64(b.MinRetryConcurrency))
	if s.counts[Retries].Add(1) > limit {
		s.counts[Retries].Add(-1)
		return nil, false
	}
	return s.release[Retries], true
}

// InUse is the number of units of r currently held.
func (s *State) InUse(r Resource) int64 { return s.counts[r].Load() }

// Limit is the current threshold of r.
func (s *State) Limit(r Resource) int64 { return s.limits[r].Load() }

// EjectedCount is the number of endpoints currently ejected.
func (s *State) EjectedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ejected
}

// configure applies a cluster version's thresholds and outlier settings.
func (s *State) configure(c *Cluster) {
	l := c.Limits
	for r, v := range [numResources]uint32{l.MaxConnections, l.MaxPendingRequests, l.MaxRequests, l.MaxRetries} {
		s.limits[r].Store(int64(v))
	}
	s.budget.Store(l.RetryBudget)
	s.outlier.Store(c.Outlier)
	if c.Outlier == nil {
		// Disabling outlier detection un-ejects everything.
		s.mu.Lock()
		for _, l := range s.live {
			l.ejected.Store(false)
			l.numEjections = 0
		}
		s.ejected = 0
		s.nextSweep.Store(0)
		s.mu.Unlock()
		s.gen.Add(1)
	}
}

// bind makes eps the cluster's members: each gets the live state of its
// address (kept from earlier members, else new); addresses no longer
// listed are forgotten. The caller publishes eps and then bumps gen
// (publishing after the bump could let a Pick cache the old endpoints
// under the new generation).
func (s *State) bind(eps []*Endpoint) {
	s.mu.Lock()
	next := make(map[string]*endpointLive, len(eps))
	ejected := 0
	for _, ep := range eps {
		l := next[ep.Address]
		if l == nil {
			if l = s.live[ep.Address]; l == nil {
				l = &endpointLive{joined: s.clock.Now().UnixNano()}
			}
			l.member = true
			next[ep.Address] = l
			if l.ejected.Load() {
				ejected++
			}
		}
		if ep.live != l {
			// Only unpublished endpoints get a new pointer: published
			// ones (a DNS resolution handed over) already share it.
			ep.live = l
		}
	}
	for addr, l := range s.live {
		if next[addr] == nil {
			l.member = false
		}
	}
	s.live, s.members, s.ejected = next, len(next), ejected
	s.mu.Unlock()
}

// useClock makes clock the state's, before the cluster is published: its
// members join the cluster now by that clock (slow start counts from it).
func (s *State) useClock(clock Clock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock = clock
	now := clock.Now().UnixNano()
	for _, l := range s.live {
		l.joined = now
	}
}

// originalDst returns the endpoint of an original destination, creating
// and caching it on first use (at most maxOrigDst are kept).
func (s *State) originalDst(ap netip.AddrPort) *Endpoint {
	s.origMu.RLock()
	ep := s.origDst[ap]
	s.origMu.RUnlock()
	if ep != nil {
		return ep
	}
	s.origMu.Lock()
	defer s.origMu.Unlock()
	if ep = s.origDst[ap]; ep != nil {
		return ep
	}
	if s.origDst == nil || len(s.origDst) >= maxOrigDst {
		s.origDst = map[netip.AddrPort]*Endpoint{}
	}
	ep = &Endpoint{Address: ap.String(), AddrPort: ap, Weight: 1, live: &endpointLive{}}
	s.origDst[ap] = ep
	return ep
}

// maxOrigDst bounds the cache of original-destination endpoints; it is
// emptied when full.
const maxOrigDst = 4096
