package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeClock is a manually advanced Clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// fakeResolver answers from a map; missing names fail.
type fakeResolver struct {
	mu    sync.Mutex
	hosts map[string][]string
	calls int
}

func (r *fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if a, ok := r.hosts[host]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("lookup %s: no such host", host)
}

func (r *fakeResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	r.hosts[host] = addrs
	r.mu.Unlock()
}

// ep describes one test endpoint.
type ep struct {
	addr   string
	port   uint32
	weight uint32
	health corev3.HealthStatus
}

// loc is one test locality.
type loc struct {
	region   string
	weight   uint32 // 0: unset
	priority uint32
	eps      []ep
}

func lbEndpoints(eps []ep) []*endpointv3.LbEndpoint {
	var out []*endpointv3.LbEndpoint
	for _, e := range eps {
		port := e.port
		if port == 0 {
			port = 8080
		}
		lbe := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: e.addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
			}},
			HealthStatus: e.health,
		}
		if e.weight > 0 {
			lbe.LoadBalancingWeight = wrapperspb.UInt32(e.weight)
		}
		out = append(out, lbe)
	}
	return out
}

func cla(name string, locs ...loc) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	for _, l := range locs {
		lle := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: l.region}, LbEndpoints: lbEndpoints(l.eps), Priority: l.priority}
		if l.weight > 0 {
			lle.LoadBalancingWeight = wrapperspb.UInt32(l.weight)
		}
		la.Endpoints = append(la.Endpoints, lle)
	}
	return la
}

// edsCluster is an EDS cluster with the given policy.
func edsCluster(name string, p clusterv3.Cluster_LbPolicy) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		LbPolicy:       p,
		ConnectTimeout: durationpb.New(time.Second),
	}
}

// outlierCluster is an EDS cluster ejecting after n 5xx.
func outlierCluster(name string, n, maxPct uint32) *clusterv3.Cluster {
	c := edsCluster(name, clusterv3.Cluster_ROUND_ROBIN)
	c.OutlierDetection = &clusterv3.OutlierDetection{
		Consecutive_5Xx:          wrapperspb.UInt32(n),
		EnforcingConsecutive_5Xx: wrapperspb.UInt32(100),
		EnforcingSuccessRate:     wrapperspb.UInt32(0),
		Interval:                 durationpb.New(10 * time.Second),
		BaseEjectionTime:         durationpb.New(30 * time.Second),
		MaxEjectionPercent:       wrapperspb.UInt32(maxPct),
	}
	c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
	return c
}

func mustCompile(t testing.TB, c *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) *Cluster {
	t.Helper()
	out, err := Compile(c, la)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return out
}

// counts picks n times and counts picks per address.
func counts(t testing.TB, c *Cluster, n int, ctx func(i int) PickContext) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := range n {
		pc := PickContext{}
		if ctx != nil {
			pc = ctx(i)
		}
		e, err := c.Pick(pc)
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		out[e.Address]++
	}
	return out
}

// endpoint returns the cluster's endpoint at addr.
func endpointAt(t testing.TB, c *Cluster, addr string) *Endpoint {
	t.Helper()
	for _, e := range c.Endpoints() {
		if e.Address == addr {
			return e
		}
	}
	t.Fatalf("no endpoint %s", addr)
	return nil
}
