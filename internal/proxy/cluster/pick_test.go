package cluster

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster/lb"
	"google.golang.org/protobuf/types/known/durationpb"
)

var policies = []clusterv3.Cluster_LbPolicy{
	clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_RANDOM,
	clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV,
}

// hashCtx gives hashing policies well-spread keys.
func hashCtx(i int) PickContext { return PickContext{HashKey: lb.Mix64(uint64(i) + 7), HasHash: true} }

// tolerance is the allowed deviation of a share over 10k picks: a ring of
// ~1-2k points (the default minimum of 1024) places hosts with a few
// percent of variance, as Envoy's does.
func tolerance(p clusterv3.Cluster_LbPolicy) float64 {
	if p == clusterv3.Cluster_RING_HASH {
		return 0.035
	}
	return 0.02
}

func checkShare(t *testing.T, got map[string]int, want map[string]float64, n int, tol float64) {
	t.Helper()
	for addr, w := range want {
		if s := float64(got[addr]) / float64(n); math.Abs(s-w) > tol {
			t.Errorf("%s: share %.4f, want %.4f ± %.3f (%v)", addr, s, w, tol, got)
		}
	}
	for addr := range got {
		if _, ok := want[addr]; !ok {
			t.Errorf("unexpected endpoint %s picked %d times", addr, got[addr])
		}
	}
}

func TestWeightedEndpoints(t *testing.T) {
	for _, p := range policies {
		t.Run(p.String(), func(t *testing.T) {
			c := mustCompile(t, edsCluster("c", p), cla("c", loc{eps: []ep{
				{addr: "10.0.0.1", weight: 1}, {addr: "10.0.0.2", weight: 3}, {addr: "10.0.0.3", weight: 6},
			}}))
			got := counts(t, c, 10000, hashCtx)
			checkShare(t, got, map[string]float64{"10.0.0.1:8080": 0.1, "10.0.0.2:8080": 0.3, "10.0.0.3:8080": 0.6}, 10000, tolerance(p))
		})
	}
}

// weightedLocalities is pilot's weighted-localities shape: locality
// weights are the sums of their endpoints' weights, here skewed on
// purpose (locality a: 1, b: 3) so that locality weighting shows.
func weightedLocalities() []loc {
	return []loc{
		{region: "a", weight: 1, eps: []ep{{addr: "10.1.0.1", weight: 8}, {addr: "10.1.0.2", weight: 2}}},
		{region: "b", weight: 3, eps: []ep{{addr: "10.2.0.1", weight: 1}}},
	}
}

func TestLocalityWeights(t *testing.T) {
	want := map[string]float64{"10.1.0.1:8080": 0.2, "10.1.0.2:8080": 0.05, "10.2.0.1:8080": 0.75}
	for _, p := range policies {
		t.Run(p.String(), func(t *testing.T) {
			c := mustCompile(t, edsCluster("c", p), cla("c", weightedLocalities()...))
			checkShare(t, counts(t, c, 10000, hashCtx), want, 10000, tolerance(p))
		})
	}
}

func TestLocalityAvailabilityScalesWeight(t *testing.T) {
	// Locality b has 2 of 4 endpoints up: 1.4 × 50% = 70% of its weight,
	// so a gets 10/17.
	locs := []loc{
		{region: "a", weight: 10, eps: []ep{{addr: "10.1.0.1"}}},
		{region: "b", weight: 10, eps: []ep{{addr: "10.2.0.1"}, {addr: "10.2.0.2"},
			{addr: "10.2.0.3", health: corev3.HealthStatus_UNHEALTHY}, {addr: "10.2.0.4", health: corev3.HealthStatus_DRAINING}}},
	}
	c := mustCompile(t, edsCluster("c", clusterv3.Cluster_ROUND_ROBIN), cla("c", locs...))
	got := counts(t, c, 10000, nil)
	a := float64(got["10.1.0.1:8080"]) / 10000
	if math.Abs(a-10.0/17) > 0.01 {
		t.Errorf("locality a share %.3f, want %.3f (%v)", a, 10.0/17, got)
	}
}

func TestHealthAndPanic(t *testing.T) {
	unhealthy := corev3.HealthStatus_UNHEALTHY
	for _, p := range policies {
		t.Run(p.String(), func(t *testing.T) {
			// 3 of 4 healthy: the unhealthy one gets nothing.
			c := mustCompile(t, edsCluster("c", p), cla("c", loc{eps: []ep{
				{addr: "10.0.0.1"}, {addr: "10.0.0.2"}, {addr: "10.0.0.3"}, {addr: "10.0.0.4", health: unhealthy},
			}}))
			if got := counts(t, c, 3000, hashCtx); got["10.0.0.4:8080"] != 0 || len(got) != 3 {
				t.Errorf("healthy set: %v", got)
			}
			// 1 of 4 healthy (25% < 50%): panic, all four take traffic.
			c = mustCompile(t, edsCluster("c", p), cla("c", loc{eps: []ep{
				{addr: "10.0.0.1"}, {addr: "10.0.0.2", health: unhealthy}, {addr: "10.0.0.3", health: corev3.HealthStatus_TIMEOUT},
				{addr: "10.0.0.4", health: unhealthy},
			}}))
			if got := counts(t, c, 3000, hashCtx); len(got) != 4 {
				t.Errorf("panic mode: %v", got)
			}
			// All unhealthy with panic disabled: no healthy upstream.
			cc := edsCluster("c", p)
			cc.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 0}}
			c = mustCompile(t, cc, cla("c", loc{eps: []ep{{addr: "10.0.0.1", health: unhealthy}}}))
			if _, err := c.Pick(PickContext{}); !errors.Is(err, ErrNoHealthyUpstream) {
				t.Errorf("Pick = %v, want ErrNoHealthyUpstream", err)
			}
		})
	}
}

// TestPriorities: the load goes to the highest priority as far as its
// availability (the share of its endpoints up, times the
// overprovisioning factor 1.4) goes, the rest to the next one, as
// Envoy's priority levels (what Istio's locality failover sends).
func TestPriorities(t *testing.T) {
	unhealthy := corev3.HealthStatus_UNHEALTHY
	p0 := func(eps ...ep) loc { return loc{region: "near", eps: eps} }
	p1 := func(eps ...ep) loc { return loc{region: "far", priority: 1, eps: eps} }
	for name, tc := range map[string]struct {
		locs []loc
		want map[string]float64
	}{
		"all healthy: the first priority only": {
			[]loc{p0(ep{addr: "10.0.0.1"}, ep{addr: "10.0.0.2"}), p1(ep{addr: "10.1.0.1"})},
			map[string]float64{"10.0.0.1:8080": 0.5, "10.0.0.2:8080": 0.5}},
		"half the first priority down: 70 % stays": {
			[]loc{p0(ep{addr: "10.0.0.1"}, ep{addr: "10.0.0.2", health: unhealthy}), p1(ep{addr: "10.1.0.1"})},
			map[string]float64{"10.0.0.1:8080": 0.7, "10.1.0.1:8080": 0.3}},
		"the first priority down: all fails over": {
			[]loc{p0(ep{addr: "10.0.0.1", health: unhealthy}), p1(ep{addr: "10.1.0.1"}, ep{addr: "10.1.0.2"})},
			map[string]float64{"10.1.0.1:8080": 0.5, "10.1.0.2:8080": 0.5}},
		// 1 of 3 up is below the panic threshold, but the two priorities
		// together are available: no panic, the unhealthy ones get nothing.
		"below the threshold but covered by the next": {
			[]loc{p0(ep{addr: "10.0.0.1"}, ep{addr: "10.0.0.2", health: unhealthy}, ep{addr: "10.0.0.3", health: unhealthy}),
				p1(ep{addr: "10.1.0.1"})},
			map[string]float64{"10.0.0.1:8080": 0.46, "10.1.0.1:8080": 0.54}},
		// Each 1 of 4 up (35 % each): scaled up to 100 %, each priority
		// in panic, so Envoy's total panic: every endpoint alike.
		"every priority in panic": {
			[]loc{p0(ep{addr: "10.0.0.1"}, ep{addr: "10.0.0.2", health: unhealthy}, ep{addr: "10.0.0.3", health: unhealthy}, ep{addr: "10.0.0.4", health: unhealthy}),
				p1(ep{addr: "10.1.0.1"}, ep{addr: "10.1.0.2", health: unhealthy}, ep{addr: "10.1.0.3", health: unhealthy}, ep{addr: "10.1.0.4", health: unhealthy})},
			map[string]float64{"10.0.0.1:8080": 0.125, "10.0.0.2:8080": 0.125, "10.0.0.3:8080": 0.125, "10.0.0.4:8080": 0.125,
				"10.1.0.1:8080": 0.125, "10.1.0.2:8080": 0.125, "10.1.0.3:8080": 0.125, "10.1.0.4:8080": 0.125}},
		// 28 % and 70 %: scaled to 28 % (and the 1 % rounding leaves) and
		// 71 %. The first priority, 1 of 5 up, is in panic: all five
		// share its load; the second is not.
		"short of 100 %: scaled": {
			[]loc{p0(ep{addr: "10.0.0.1"}, ep{addr: "10.0.0.2", health: unhealthy}, ep{addr: "10.0.0.3", health: unhealthy},
				ep{addr: "10.0.0.4", health: unhealthy}, ep{addr: "10.0.0.5", health: unhealthy}),
				p1(ep{addr: "10.1.0.1"}, ep{addr: "10.1.0.2", health: unhealthy})},
			map[string]float64{"10.0.0.1:8080": 0.058, "10.0.0.2:8080": 0.058, "10.0.0.3:8080": 0.058, "10.0.0.4:8080": 0.058,
				"10.0.0.5:8080": 0.058, "10.1.0.1:8080": 0.71}},
	} {
		for _, p := range policies {
			t.Run(name+"/"+p.String(), func(t *testing.T) {
				c := mustCompile(t, edsCluster("c", p), cla("c", tc.locs...))
				checkShare(t, counts(t, c, 10000, hashCtx), tc.want, 10000, tolerance(p))
			})
		}
	}
}

// TestPriorityFailoverOnEjection: outlier detection ejecting the only
// endpoint of the first priority moves its load to the next priority,
// and it comes back when the ejection ends.
func TestPriorityFailoverOnEjection(t *testing.T) {
	clock := newFakeClock()
	m := NewManager(Options{Clock: clock})
	m.Update(map[string]*Cluster{"c": mustCompile(t, outlierCluster("c", 3, 100), cla("c",
		loc{region: "near", eps: []ep{{addr: "10.0.0.1"}}}, loc{region: "far", priority: 1, eps: []ep{{addr: "10.1.0.1"}}}))})
	c := m.Get("c")
	if got := counts(t, c, 200, nil); got["10.0.0.1:8080"] != 200 {
		t.Fatalf("before: %v, want all to the first priority", got)
	}
	fail(c, "10.0.0.1:8080", 3, Outcome{Status: 503})
	if got := counts(t, c, 200, nil); got["10.1.0.1:8080"] != 200 {
		t.Fatalf("ejected: %v, want all to the second priority", got)
	}
	clock.Advance(30 * time.Second)
	if got := counts(t, c, 200, nil); got["10.0.0.1:8080"] != 200 {
		t.Fatalf("after the ejection: %v, want all back to the first priority", got)
	}
}

func TestDegradedOnlyWithoutHealthy(t *testing.T) {
	c := mustCompile(t, edsCluster("c", clusterv3.Cluster_ROUND_ROBIN), cla("c", loc{eps: []ep{
		{addr: "10.0.0.1"}, {addr: "10.0.0.2", health: corev3.HealthStatus_DEGRADED},
	}}))
	if got := counts(t, c, 100, nil); got["10.0.0.1:8080"] != 100 {
		t.Errorf("degraded endpoint used while a healthy one is up: %v", got)
	}
	c = mustCompile(t, edsCluster("c", clusterv3.Cluster_ROUND_ROBIN), cla("c", loc{eps: []ep{
		{addr: "10.0.0.1", health: corev3.HealthStatus_UNHEALTHY}, {addr: "10.0.0.2", health: corev3.HealthStatus_DEGRADED},
	}}))
	if got := counts(t, c, 100, nil); got["10.0.0.2:8080"] != 100 {
		t.Errorf("degraded endpoint unused: %v", got)
	}
}

func TestNoEndpoints(t *testing.T) {
	c := mustCompile(t, edsCluster("c", clusterv3.Cluster_ROUND_ROBIN), nil)
	if _, err := c.Pick(PickContext{}); !errors.Is(err, ErrNoHealthyUpstream) {
		t.Errorf("Pick without EDS = %v", err)
	}
}

func TestExclude(t *testing.T) {
	for _, p := range policies {
		t.Run(p.String(), func(t *testing.T) {
			c := mustCompile(t, edsCluster("c", p), cla("c", loc{eps: []ep{{addr: "10.0.0.1"}, {addr: "10.0.0.2"}, {addr: "10.0.0.3"}}}))
			for i := range 300 {
				pc := hashCtx(i)
				pc.Exclude = []string{"10.0.0.1:8080", "10.0.0.3:8080"}
				e, err := c.Pick(pc)
				if err != nil || e.Address != "10.0.0.2:8080" {
					t.Fatalf("Pick = %v, %v; want the only endpoint not excluded", e, err)
				}
			}
			// Everything excluded: still an endpoint (retry on one tried).
			pc := PickContext{Exclude: []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}}
			if _, err := c.Pick(pc); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestOriginalDst(t *testing.T) {
	cc := &clusterv3.Cluster{Name: "PassthroughCluster", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED,
		UpstreamBindConfig: &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{Address: "127.0.0.6",
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}}}}
	c := mustCompile(t, cc, nil)
	if c.BindAddress != netip.MustParseAddr("127.0.0.6") {
		t.Errorf("BindAddress = %v", c.BindAddress)
	}
	dst := netip.MustParseAddrPort("10.9.8.7:443")
	e, err := c.Pick(PickContext{OriginalDst: dst})
	if err != nil || e.Address != "10.9.8.7:443" {
		t.Fatalf("Pick = %v, %v", e, err)
	}
	if e2, _ := c.Pick(PickContext{OriginalDst: dst}); e2 != e {
		t.Error("original destination endpoint not reused")
	}
	if _, err := c.Pick(PickContext{}); !errors.Is(err, ErrNoOriginalDst) || !errors.Is(err, ErrNoHealthyUpstream) {
		t.Errorf("Pick without destination = %v", err)
	}
}

func TestHashConsistencyThroughCluster(t *testing.T) {
	for _, p := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV} {
		t.Run(p.String(), func(t *testing.T) {
			var eps []ep
			for i := range 10 {
				eps = append(eps, ep{addr: fmt.Sprintf("10.0.0.%d", i+1)})
			}
			c1 := mustCompile(t, edsCluster("c", p), cla("c", loc{eps: eps}))
			c2 := mustCompile(t, edsCluster("c", p), cla("c", loc{eps: append(append([]ep(nil), eps[:4]...), eps[5:]...)}))
			moved, kept := 0, 0
			for i := range 10000 {
				a, _ := c1.Pick(hashCtx(i))
				if again, _ := c1.Pick(hashCtx(i)); again != a {
					t.Fatal("same key, different endpoint")
				}
				if a.Address == "10.0.0.5:8080" {
					continue
				}
				kept++
				if b, _ := c2.Pick(hashCtx(i)); b.Address != a.Address {
					moved++
				}
			}
			if frac := float64(moved) / float64(kept); frac > 0.02 {
				t.Errorf("removing 1 of 10 endpoints moved %.3f of the other keys", frac)
			}
		})
	}
}

// TestSlowStart: an endpoint that joins a round robin or least request
// cluster with slow start gets a share of the load that grows with its
// time in the cluster, from min_weight_percent (default 10 %), until its
// window is over.
func TestSlowStart(t *testing.T) {
	for _, p := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST} {
		t.Run(p.String(), func(t *testing.T) {
			clock := newFakeClock()
			m := NewManager(Options{Clock: clock})
			compile := func(eps ...ep) *Cluster {
				c := edsCluster("c", p)
				ss := &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: durationpb.New(100 * time.Second)}
				if p == clusterv3.Cluster_ROUND_ROBIN {
					c.LbConfig = &clusterv3.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &clusterv3.Cluster_RoundRobinLbConfig{SlowStartConfig: ss}}
				} else {
					c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{SlowStartConfig: ss}}
				}
				return mustCompile(t, c, cla("c", loc{eps: eps}))
			}
			m.Update(map[string]*Cluster{"c": compile(ep{addr: "10.0.0.1"})})
			clock.Advance(time.Hour) // the first endpoint is long past its window
			m.Update(map[string]*Cluster{"c": compile(ep{addr: "10.0.0.1"}, ep{addr: "10.0.0.2"})})
			c := m.Get("c")
			var age time.Duration
			for _, step := range []struct {
				after time.Duration
				want  float64 // the new endpoint's share
			}{
				{0, 0.1 / 1.1},                // just joined: the minimum, 10 % of its weight
				{50 * time.Second, 0.5 / 1.5}, // half its window: half its weight
				{50 * time.Second, 0.5},       // its window is over
			} {
				clock.Advance(step.after)
				age += step.after
				got := counts(t, c, 10000, nil)
				if s := float64(got["10.0.0.2:8080"]) / 10000; math.Abs(s-step.want) > 0.02 {
					t.Fatalf("%v after joining: share %.3f, want %.3f", age, s, step.want)
				}
			}
		})
	}
}
