package xdsclient

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// testNode is the node every test client announces.
var testNode = NewNode(NodeInfo{IP: "10.0.0.1", Name: "app", Namespace: "default"})

// serverState is what a test management server has seen from clients.
type serverState struct {
	acked    map[string]string // type URL -> last ACKed version
	nacks    []nackSeen
	requests []*discovery.DiscoveryRequest      // SotW requests, in order
	deltas   []*discovery.DeltaDiscoveryRequest // delta requests, in order
	streams  int                                // streams opened
}

type nackSeen struct{ typeURL, version, message string }

// testServer is an in-process go-control-plane management server (snapshot
// cache, non-ADS mode) on loopback that records ACKs and NACKs.
type testServer struct {
	t     *testing.T
	addr  string
	cache cachev3.SnapshotCache
	grpc  *grpc.Server

	mu      sync.Mutex
	state   serverState
	changed chan struct{} // closed and replaced on every change
	nonces  map[string]string
}

// startServer serves on addr ("": a fresh loopback port).
func startServer(t *testing.T, addr string) *testServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, addr: ln.Addr().String(), cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil),
		changed: make(chan struct{}), nonces: map[string]string{}, state: serverState{acked: map[string]string{}}}
	ctx, cancel := context.WithCancel(context.Background())
	cb := serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.update(func(st *serverState) { st.streams++ })
			return nil
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			s.update(func(st *serverState) { st.streams++ })
			return nil
		},
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			s.update(func(st *serverState) {
				st.requests = append(st.requests, r)
				s.answer(st, r.GetTypeUrl(), r.GetVersionInfo(), r.GetResponseNonce(), r.GetErrorDetail().GetMessage())
			})
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			s.update(func(st *serverState) {
				st.deltas = append(st.deltas, r)
				s.answer(st, r.GetTypeUrl(), s.nonces[r.GetResponseNonce()], r.GetResponseNonce(), r.GetErrorDetail().GetMessage())
			})
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
			s.update(func(*serverState) { s.nonces[r.GetNonce()] = r.GetSystemVersionInfo() })
		},
	}
	s.grpc = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(s.grpc, serverv3.NewServer(ctx, s.cache, cb))
	go func() { _ = s.grpc.Serve(ln) }()
	t.Cleanup(func() { cancel(); s.grpc.Stop() })
	return s
}

// answer records an ACK or NACK (requests without a nonce are neither).
func (s *testServer) answer(st *serverState, typeURL, version, nonce, nackMsg string) {
	switch {
	case nonce == "":
	case nackMsg != "":
		st.nacks = append(st.nacks, nackSeen{typeURL, version, nackMsg})
	default:
		st.acked[typeURL] = version
	}
}

func (s *testServer) update(f func(*serverState)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.state)
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitFor waits (10 s at most) until cond holds for the server's state.
func (s *testServer) waitFor(what string, cond func(*serverState) bool) {
	s.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		ok, ch := cond(&s.state), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			s.mu.Lock()
			defer s.mu.Unlock()
			s.t.Fatalf("server: %s: not seen within 10s (acked %v, nacks %v)", what, s.state.acked, s.state.nacks)
		}
	}
}

// waitAcked waits until every given type was ACKed at version.
func (s *testServer) waitAcked(version string, typeURLs ...string) {
	s.t.Helper()
	s.waitFor("ACK of "+version, func(st *serverState) bool {
		for _, t := range typeURLs {
			if st.acked[t] != version {
				return false
			}
		}
		return true
	})
}

// set installs a snapshot for the test node.
func (s *testServer) set(version string, res ...types.Resource) {
	s.t.Helper()
	byType := map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: nil, resourcev3.RouteType: nil, resourcev3.ClusterType: nil, resourcev3.EndpointType: nil,
	}
	for _, r := range res {
		var t string
		switch r.(type) {
		case *listenerv3.Listener:
			t = resourcev3.ListenerType
		case *routev3.RouteConfiguration:
			t = resourcev3.RouteType
		case *clusterv3.Cluster:
			t = resourcev3.ClusterType
		case *endpointv3.ClusterLoadAssignment:
			t = resourcev3.EndpointType
		}
		byType[t] = append(byType[t], r)
	}
	snap, err := cachev3.NewSnapshot(version, byType)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.cache.SetSnapshot(context.Background(), testNode.GetId(), snap); err != nil {
		s.t.Fatal(err)
	}
}

func ads() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads()}}
}

func staticCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}
}

func endpoints(cluster string, ports ...uint32) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	var lbs []*endpointv3.LbEndpoint
	for _, p := range ports {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: p}}}}}}})
	}
	la.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	return la
}

// httpListener is a listener whose connection manager uses RDS route.
func httpListener(name, route string) *listenerv3.Listener {
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads(), RouteConfigName: route}}})
	if err != nil {
		panic(err)
	}
	return &listenerv3.Listener{Name: name, FilterChains: []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
}

func routeConfig(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{Name: name, Domains: []string{"*"},
		Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}}}}}
}

// fullConfig is a complete config: a listener with route r1 to cluster c1
// (EDS, endpoints on port) and a static cluster. tag changes every
// resource (so that delta servers send them all).
func fullConfig(tag string, port uint32) []types.Resource {
	l, r := httpListener("l1", "r1"), routeConfig("r1", "c1")
	c1, st := edsCluster("c1"), staticCluster("static")
	r.VirtualHosts[0].Name = tag
	c1.AltStatName, st.AltStatName = tag, tag
	l.StatPrefix = tag
	return []types.Resource{l, r, c1, endpoints("c1", port), st}
}

func testLogger() *slog.Logger {
	if os.Getenv("WEFT_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startClient runs a client against addr until the test ends.
func startClient(t *testing.T, addr string, delta bool, validate Validator, clock Clock) *Client {
	t.Helper()
	c := New(Config{Server: addr, Node: testNode, Delta: delta, Clock: clock,
		Backoff: Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond}}, validate, testLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of its context ending")
		}
	})
	return c
}

// waitSnapshot reads updates (10 s at most) until one satisfies cond.
func waitSnapshot(t *testing.T, c *Client, what string, cond func(*Snapshot) bool) *Snapshot {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-c.Updates():
			if cond(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("client: %s: no such snapshot within 10s (current: %+v)", what, c.Current())
		}
	}
}

// configTypes are the types the tests' server sends (no secrets).
var configTypes = []string{ListenerType, RouteType, ClusterType, EndpointType}

// atVersion holds when every config type is at version v.
func atVersion(v string) func(*Snapshot) bool {
	return func(s *Snapshot) bool {
		for _, t := range configTypes {
			if s.Versions[t] != v {
				return false
			}
		}
		return true
	}
}

// fakeClock is a manual clock for warming timeouts.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	afters  chan time.Duration // every After's duration
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_000_000, 0), afters: make(chan time.Duration, 1024)}
}

// waitAfter waits (10 s at most) until After(d) is called.
func (f *fakeClock) waitAfter(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-f.afters:
			if got == d {
				return
			}
		case <-deadline:
			t.Fatalf("clock: After(%v) not called within 10s", d)
		}
	}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case f.afters <- d:
	default:
	}
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- f.now
		return ch
	}
	f.waiters = append(f.waiters, fakeWaiter{at: f.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock and fires the waiters that are due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if w.at.After(f.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- f.now
	}
	f.waiters = kept
}
