package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestCircuitBreakersConcurrent(t *testing.T) {
	cc := edsCluster("c", clusterv3.Cluster_ROUND_ROBIN)
	cc.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		MaxConnections: wrapperspb.UInt32(3), MaxPendingRequests: wrapperspb.UInt32(5),
		MaxRequests: wrapperspb.UInt32(10), MaxRetries: wrapperspb.UInt32(2),
	}}}
	c := mustCompile(t, cc, nil)
	s := c.State()
	for r, limit := range map[Resource]int64{Connections: 3, PendingRequests: 5, Requests: 10, Retries: 2} {
		t.Run(r.String(), func(t *testing.T) {
			var held, peak, granted, refused atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for range 500 {
						release, ok := s.Acquire(r)
						if !ok {
							refused.Add(1)
							continue
						}
						granted.Add(1)
						n := held.Add(1)
						for {
							p := peak.Load()
							if n <= p || peak.CompareAndSwap(p, n) {
								break
							}
						}
						held.Add(-1)
						release()
					}
				}()
			}
			close(start)
			wg.Wait()
			if p := peak.Load(); p > limit {
				t.Errorf("peak %d above limit %d", p, limit)
			}
			if s.InUse(r) != 0 {
				t.Errorf("InUse = %d after all releases", s.InUse(r))
			}
			if granted.Load() == 0 {
				t.Error("nothing granted")
			}
			t.Logf("granted %d, refused %d, peak %d", granted.Load(), refused.Load(), peak.Load())
		})
	}
	// Sequential: exactly limit acquisitions succeed.
	var rels []func()
	for {
		rel, ok := s.Acquire(Retries)
		if !ok {
			break
		}
		rels = append(rels, rel)
	}
	if len(rels) != 2 {
		t.Errorf("acquired %d retries, want 2", len(rels))
	}
	for _, r := range rels {
		r()
	}
}

func TestCircuitBreakerDefaults(t *testing.T) {
	c := mustCompile(t, edsCluster("c", clusterv3.Cluster_ROUND_ROBIN), nil)
	if c.Limits != (Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}) {
		t.Errorf("default limits %+v", c.Limits)
	}
}

// TestRetryBudget: with a retry budget, concurrent retries follow the
// load (20 % of active requests, at least 3); without one, max_retries.
func TestRetryBudget(t *testing.T) {
	pb := edsCluster("c", clusterv3.Cluster_ROUND_ROBIN)
	pb.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		MaxRetries: wrapperspb.UInt32(1),
		RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent: &typev3.Percent{Value: 20}, MinRetryConcurrency: wrapperspb.UInt32(3)},
	}}}
	m := NewManager(Options{})
	m.Update(map[string]*Cluster{"c": mustCompile(t, pb, nil)})
	st := m.Get("c").State()
	take := func(n int, f func() (func(), bool)) (got int, rels []func()) {
		for range n {
			if rel, ok := f(); ok {
				got++
				rels = append(rels, rel)
			}
		}
		return got, rels
	}
	// Idle cluster: the floor (3), not max_retries (1).
	got, rels := take(10, st.AcquireRetry)
	if got != 3 {
		t.Fatalf("retries allowed with no load: %d, want the floor 3", got)
	}
	for _, r := range rels {
		r()
	}
	// 50 requests in flight: 20 % = 10 retries.
	_, reqs := take(50, func() (func(), bool) { return st.Acquire(Requests) })
	if got, rels = take(20, st.AcquireRetry); got != 10 {
		t.Fatalf("retries allowed with 50 active requests: %d, want 10", got)
	}
	for _, r := range append(rels, reqs...) {
		r()
	}
	// Without a budget, max_retries.
	pb.CircuitBreakers.Thresholds[0].RetryBudget = nil
	m.Update(map[string]*Cluster{"c": mustCompile(t, pb, nil)})
	if got, _ := take(10, m.Get("c").State().AcquireRetry); got != 1 {
		t.Fatalf("retries allowed by max_retries 1: %d", got)
	}
}

// fiveEndpoints is a cluster of 10.0.0.1-5 with outlier detection after
// 3 5xx, under manager m.
func fiveEndpoints(t *testing.T, m *Manager, maxPct uint32) *Cluster {
	t.Helper()
	var eps []ep
	for i := range 5 {
		eps = append(eps, ep{addr: fmt.Sprintf("10.0.0.%d", i+1)})
	}
	c := mustCompile(t, outlierCluster("c", 3, maxPct), cla("c", loc{eps: eps}))
	m.Update(map[string]*Cluster{"c": c})
	return m.Get("c")
}

func fail(c *Cluster, addr string, n int, o Outcome) {
	for _, e := range c.Endpoints() {
		if e.Address == addr {
			for range n {
				c.State().Report(e, o)
			}
		}
	}
}

func picked(t *testing.T, c *Cluster, addr string) bool {
	t.Helper()
	return counts(t, c, 200, nil)[addr] > 0
}

func TestOutlierEjectionAndBackoff(t *testing.T) {
	clock := newFakeClock()
	m := NewManager(Options{Clock: clock})
	c := fiveEndpoints(t, m, 100)
	bad := "10.0.0.1:8080"
	e := endpointAt(t, c, bad)

	// Two 5xx then a success: the streak resets.
	fail(c, bad, 2, Outcome{Status: 500})
	c.State().Report(e, Outcome{Status: 200})
	fail(c, bad, 2, Outcome{Status: 503})
	if e.Ejected() {
		t.Fatal("ejected before 3 consecutive 5xx")
	}
	fail(c, bad, 1, Outcome{Status: 500})
	if !e.Ejected() || picked(t, c, bad) {
		t.Fatal("not ejected after 3 consecutive 5xx")
	}
	// First ejection: base ejection time (30s), checked every 10s.
	clock.Advance(20 * time.Second)
	if !picked(t, c, "10.0.0.2:8080") || picked(t, c, bad) {
		t.Fatal("un-ejected too early")
	}
	clock.Advance(10 * time.Second)
	if !picked(t, c, bad) || e.Ejected() {
		t.Fatal("not un-ejected after 30s")
	}
	// Second ejection right away: 2 × 30s.
	fail(c, bad, 3, Outcome{ConnectFailure: true})
	if !e.Ejected() {
		t.Fatal("connect failures did not eject")
	}
	clock.Advance(40 * time.Second)
	if picked(t, c, bad) {
		t.Fatal("second ejection shorter than 60s")
	}
	clock.Advance(20 * time.Second)
	if picked(t, c, bad); e.Ejected() {
		t.Fatal("not un-ejected after 60s")
	}
	// Healthy intervals bring the multiplier back down: after two quiet
	// sweeps, the next ejection lasts 30s again.
	clock.Advance(10 * time.Second)
	c.Pick(PickContext{})
	clock.Advance(10 * time.Second)
	c.Pick(PickContext{})
	fail(c, bad, 3, Outcome{Status: 502})
	clock.Advance(30 * time.Second)
	if c.Pick(PickContext{}); e.Ejected() {
		t.Fatal("multiplier did not decay")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	clock := newFakeClock()
	m := NewManager(Options{Clock: clock})
	c := fiveEndpoints(t, m, 40) // at most 2 of 5
	for i := range 5 {
		fail(c, fmt.Sprintf("10.0.0.%d:8080", i+1), 3, Outcome{Status: 500})
	}
	if n := c.State().EjectedCount(); n != 2 {
		t.Fatalf("ejected %d, want 2 (40%% of 5)", n)
	}
	if got := counts(t, c, 300, nil); len(got) != 3 {
		t.Errorf("picked %v, want the 3 endpoints left", got)
	}

	// 10% of 5 rounds down to none, unless always_eject_one_host.
	cc := outlierCluster("d", 3, 10)
	c2 := mustCompile(t, cc, cla("d", loc{eps: []ep{{addr: "10.0.0.1"}, {addr: "10.0.0.2"}}}))
	fail(c2, "10.0.0.1:8080", 3, Outcome{Status: 500})
	if c2.State().EjectedCount() != 1 {
		t.Errorf("Envoy ejects while ejected%% (0) < max%% (10): got %d", c2.State().EjectedCount())
	}
	fail(c2, "10.0.0.2:8080", 3, Outcome{Status: 500})
	if c2.State().EjectedCount() != 1 {
		t.Errorf("second ejection beyond max_ejection_percent")
	}
}

func TestEjectionPanic(t *testing.T) {
	// Ejecting 3 of 5 leaves 40% < 50%: panic mode picks all five.
	m := NewManager(Options{Clock: newFakeClock()})
	c := fiveEndpoints(t, m, 100)
	for i := range 3 {
		fail(c, fmt.Sprintf("10.0.0.%d:8080", i+1), 3, Outcome{Status: 500})
	}
	if got := counts(t, c, 500, nil); len(got) != 5 {
		t.Errorf("panic mode picked %v", got)
	}
}

func TestGatewayFailureAndSplit(t *testing.T) {
	cc := outlierCluster("c", 100, 100)
	cc.OutlierDetection.ConsecutiveGatewayFailure = wrapperspb.UInt32(2)
	cc.OutlierDetection.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(100)
	c := mustCompile(t, cc, cla("c", loc{eps: []ep{{addr: "10.0.0.1"}, {addr: "10.0.0.2"}}}))
	e := endpointAt(t, c, "10.0.0.1:8080")
	fail(c, e.Address, 1, Outcome{Status: 504})
	fail(c, e.Address, 1, Outcome{Status: 500}) // not a gateway error: resets
	fail(c, e.Address, 1, Outcome{GatewayError: true})
	if e.Ejected() {
		t.Fatal("ejected without 2 consecutive gateway failures")
	}
	fail(c, e.Address, 1, Outcome{Status: 502})
	if !e.Ejected() {
		t.Fatal("not ejected after 2 consecutive gateway failures")
	}

	// Split: local failures count apart and HTTP successes do not reset them.
	cc = outlierCluster("s", 100, 100)
	cc.OutlierDetection.SplitExternalLocalOriginErrors = true
	cc.OutlierDetection.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(2)
	c = mustCompile(t, cc, cla("s", loc{eps: []ep{{addr: "10.0.0.1"}, {addr: "10.0.0.2"}}}))
	e = endpointAt(t, c, "10.0.0.1:8080")
	fail(c, e.Address, 1, Outcome{ConnectFailure: true})
	fail(c, e.Address, 1, Outcome{ConnectFailure: true})
	if !e.Ejected() {
		t.Fatal("split: 2 local failures did not eject")
	}
}

func TestStateSurvivesUpdate(t *testing.T) {
	clock := newFakeClock()
	m := NewManager(Options{Clock: clock})
	c1 := fiveEndpoints(t, m, 100)
	bad := endpointAt(t, c1, "10.0.0.1:8080")
	fail(c1, bad.Address, 3, Outcome{Status: 500})
	busy := endpointAt(t, c1, "10.0.0.2:8080")
	busy.StartRequest()
	release, _ := c1.State().Acquire(Requests)

	// New version: 10.0.0.5 gone, 10.0.0.6 new, weights changed, tighter
	// limits.
	cc := outlierCluster("c", 3, 100)
	cc.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(1)}}}
	c2 := mustCompile(t, cc, cla("c", loc{eps: []ep{
		{addr: "10.0.0.1", weight: 2}, {addr: "10.0.0.2"}, {addr: "10.0.0.3"}, {addr: "10.0.0.4"}, {addr: "10.0.0.6"},
	}}))
	m.Update(map[string]*Cluster{"c": c2})
	if m.Get("c") != c2 || c2.State() != c1.State() {
		t.Fatal("State not handed over")
	}
	if !endpointAt(t, c2, "10.0.0.1:8080").Ejected() || picked(t, c2, "10.0.0.1:8080") {
		t.Error("ejection lost across update")
	}
	if n := endpointAt(t, c2, "10.0.0.2:8080").ActiveRequests(); n != 1 {
		t.Errorf("in-flight count %d, want 1", n)
	}
	if _, ok := c2.State().Acquire(Requests); ok {
		t.Error("new max_requests 1 not applied to the in-flight request")
	}
	release()
	busy.EndRequest()
	if n := endpointAt(t, c2, "10.0.0.2:8080").ActiveRequests(); n != 0 {
		t.Errorf("in-flight count %d after the old endpoint ended", n)
	}
	// Un-ejection still runs on the new version.
	clock.Advance(30 * time.Second)
	if !picked(t, c2, "10.0.0.1:8080") {
		t.Error("not un-ejected after the update")
	}
	// A removed cluster loses its state.
	m.Update(map[string]*Cluster{})
	c3 := mustCompile(t, outlierCluster("c", 3, 100), cla("c", loc{eps: []ep{{addr: "10.0.0.1"}}}))
	m.Update(map[string]*Cluster{"c": c3})
	if c3.State() == c1.State() {
		t.Error("state of a removed cluster came back")
	}
}

func TestDNSCluster(t *testing.T) {
	res := &fakeResolver{hosts: map[string][]string{"db.example.com": {"192.0.2.1", "192.0.2.2", "2001:db8::1"}}}
	clock := newFakeClock()
	m := NewManager(Options{Resolver: res, Clock: clock})
	dns := func(name string, t clusterv3.Cluster_DiscoveryType) *clusterv3.Cluster {
		return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: t},
			DnsLookupFamily: clusterv3.Cluster_V4_ONLY, LoadAssignment: cla(name, loc{eps: []ep{{addr: "db.example.com", port: 5432}}})}
	}
	strict := mustCompile(t, dns("strict", clusterv3.Cluster_STRICT_DNS), nil)
	logical := mustCompile(t, dns("logical", clusterv3.Cluster_LOGICAL_DNS), nil)
	m.Update(map[string]*Cluster{"strict": strict, "logical": logical})
	if _, err := strict.Pick(PickContext{}); err == nil {
		t.Fatal("picked before resolution")
	}
	next := m.Resolve(context.Background())
	if want := clock.Now().Add(5 * time.Second); !next.Equal(want) {
		t.Errorf("next resolution %v, want %v (dns_refresh_rate default 5s)", next, want)
	}
	if got := counts(t, strict, 100, nil); len(got) != 2 || got["192.0.2.1:5432"] == 0 {
		t.Errorf("STRICT_DNS picked %v", got)
	}
	if got := counts(t, logical, 10, nil); len(got) != 1 || got["192.0.2.1:5432"] != 10 {
		t.Errorf("LOGICAL_DNS picked %v", got)
	}
	if h := endpointAt(t, strict, "192.0.2.1:5432").Hostname; h != "db.example.com" {
		t.Errorf("Hostname %q", h)
	}
	// Not due: no lookups.
	calls := res.calls
	m.Resolve(context.Background())
	if res.calls != calls {
		t.Error("resolved before the refresh rate")
	}
	// Address change after the refresh; the surviving address keeps its
	// state.
	e := endpointAt(t, strict, "192.0.2.2:5432")
	e.StartRequest()
	res.set("db.example.com", "192.0.2.2", "192.0.2.3")
	clock.Advance(5 * time.Second)
	m.Resolve(context.Background())
	if got := counts(t, strict, 100, nil); got["192.0.2.1:5432"] != 0 || got["192.0.2.3:5432"] == 0 {
		t.Errorf("after re-resolution picked %v", got)
	}
	if endpointAt(t, strict, "192.0.2.2:5432").ActiveRequests() != 1 {
		t.Error("in-flight count lost on re-resolution")
	}
	// A failed lookup keeps the last addresses.
	res.set("db.example.com")
	delete(res.hosts, "db.example.com")
	clock.Advance(5 * time.Second)
	m.Resolve(context.Background())
	if len(strict.Endpoints()) != 2 {
		t.Errorf("failed lookup dropped endpoints: %d left", len(strict.Endpoints()))
	}
	// An update with the same hostnames keeps the resolution.
	strict2 := mustCompile(t, dns("strict", clusterv3.Cluster_STRICT_DNS), nil)
	m.Update(map[string]*Cluster{"strict": strict2, "logical": logical})
	if len(strict2.Endpoints()) != 2 {
		t.Errorf("update lost the resolution: %d endpoints", len(strict2.Endpoints()))
	}
}

func TestRunResolves(t *testing.T) {
	res := &fakeResolver{hosts: map[string][]string{"svc.example.com": {"192.0.2.9"}}}
	m := NewManager(Options{Resolver: res})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	c := mustCompile(t, &clusterv3.Cluster{Name: "d", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		LoadAssignment: cla("d", loc{eps: []ep{{addr: "svc.example.com", port: 80}}})}, nil)
	m.Update(map[string]*Cluster{"d": c})
	deadline := time.After(5 * time.Second)
	for len(c.Endpoints()) == 0 {
		select {
		case <-deadline:
			t.Fatal("Run did not resolve the new cluster")
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run = %v", err)
	}
}

// TestConcurrentPickReportUpdate runs picks, reports, breaker
// acquisitions and updates at once (meaningful under -race).
func TestConcurrentPickReportUpdate(t *testing.T) {
	clock := newFakeClock()
	m := NewManager(Options{Clock: clock})
	build := func(n int) *Cluster {
		var eps []ep
		for i := range n {
			eps = append(eps, ep{addr: fmt.Sprintf("10.0.0.%d", i+1)})
		}
		return mustCompile(t, outlierCluster("c", 2, 50), cla("c", loc{eps: eps}))
	}
	m.Update(map[string]*Cluster{"c": build(6)})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := m.Get("c")
				e, err := c.Pick(PickContext{Exclude: []string{"10.0.0.1:8080"}})
				if err != nil {
					continue
				}
				rel, ok := c.State().Acquire(Requests)
				e.StartRequest()
				c.State().Report(e, Outcome{Status: []int{200, 503}[(i+g)%2]})
				e.EndRequest()
				if ok {
					rel()
				}
			}
		}()
	}
	for i := range 200 {
		m.Update(map[string]*Cluster{"c": build(4 + i%4)})
		clock.Advance(5 * time.Second)
	}
	close(stop)
	wg.Wait()
	if n := m.Get("c").State().InUse(Requests); n != 0 {
		t.Errorf("InUse(Requests) = %d", n)
	}
}
