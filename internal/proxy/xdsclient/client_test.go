package xdsclient

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
)

// modes runs a test body over state of the world and delta.
func modes(t *testing.T, body func(t *testing.T, delta bool)) {
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) { body(t, delta) })
	}
}

func TestInitialWarmAndPublish(t *testing.T) {
	modes(t, func(t *testing.T, delta bool) {
		srv := startServer(t, "")
		srv.set("v1", fullConfig("v1", 8080)...)
		c := startClient(t, srv.addr, delta, nil, nil)
		s := waitSnapshot(t, c, "v1", atVersion("v1"))
		if len(s.Listeners) != 1 || s.Listeners["l1"] == nil || s.Routes["r1"] == nil || len(s.Clusters) != 2 ||
			len(s.Endpoints["c1"].GetEndpoints()) != 1 {
			t.Fatalf("snapshot: %d listeners, routes %v, %d clusters, endpoints %v", len(s.Listeners), s.Routes, len(s.Clusters), s.Endpoints)
		}
		if c.Current() != s {
			t.Fatal("Current is not the published snapshot")
		}
		srv.waitAcked("v1", configTypes...)
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if len(srv.state.nacks) != 0 {
			t.Fatalf("unexpected NACKs: %v", srv.state.nacks)
		}
	})
}

func TestCurrentNilBeforeFirst(t *testing.T) {
	c := New(Config{Server: "127.0.0.1:1", Node: testNode}, nil, nil)
	if c.Current() != nil {
		t.Fatal("Current before any update is not nil")
	}
	select {
	case s := <-c.Updates():
		t.Fatalf("update before running: %v", s)
	default:
	}
}

// Routes and endpoints the listeners and clusters name arrive only in a
// later server snapshot: nothing is applied before they do, and the first
// snapshot applied holds them.
func TestLateEDSAndRDSPublishConsistentSnapshot(t *testing.T) {
	modes(t, func(t *testing.T, delta bool) {
		srv := startServer(t, "")
		srv.set("v1", httpListener("l1", "r1"), edsCluster("c1"), staticCluster("static"))
		validated := make(chan *Snapshot, 16)
		c := startClient(t, srv.addr, delta, func(s *Snapshot) error { validated <- s; return nil }, nil)
		srv.waitFor("EDS and RDS subscriptions", func(st *serverState) bool {
			return subscribed(st, delta, EndpointType, "c1") && subscribed(st, delta, RouteType, "r1")
		})
		select {
		case s := <-validated:
			t.Fatalf("validated an incomplete candidate: %v", s.Versions)
		default:
		}
		srv.set("v2", fullConfig("v2", 9090)...)
		s := waitSnapshot(t, c, "first snapshot", func(*Snapshot) bool { return true })
		if s.Routes["r1"] == nil || len(s.Endpoints["c1"].GetEndpoints()) != 1 || s.Listeners["l1"] == nil {
			t.Fatalf("first snapshot is not consistent: routes %v endpoints %v", s.Routes, s.Endpoints)
		}
		if first := <-validated; first != s {
			t.Fatalf("the validator saw another candidate first: %v", first.Versions)
		}
		waitSnapshot(t, c, "v2", atVersion("v2"))
	})
}

// drain empties Updates, checking that no snapshot has the bad cluster.
func drain(t *testing.T, c *Client) {
	t.Helper()
	for {
		select {
		case s := <-c.Updates():
			if s.Clusters["bad"] != nil {
				t.Fatalf("published a rejected cluster: %v", s.Versions)
			}
		default:
			return
		}
	}
}

// subscribed reports whether a request for typeURL named name.
func subscribed(st *serverState, delta bool, typeURL, name string) bool {
	if delta {
		for _, r := range st.deltas {
			if r.GetTypeUrl() == typeURL && slices.Contains(r.GetResourceNamesSubscribe(), name) {
				return true
			}
		}
		return false
	}
	for _, r := range st.requests {
		if r.GetTypeUrl() == typeURL && slices.Contains(r.GetResourceNames(), name) {
			return true
		}
	}
	return false
}

func TestValidatorRejectionNACKsAndKeepsCurrent(t *testing.T) {
	modes(t, func(t *testing.T, delta bool) {
		srv := startServer(t, "")
		srv.set("v1", fullConfig("v1", 8080)...)
		validate := func(s *Snapshot) error {
			if _, ok := s.Clusters["bad"]; ok {
				return errors.New("cluster bad: unsupported lb policy")
			}
			return nil
		}
		c := startClient(t, srv.addr, delta, validate, nil)
		good := waitSnapshot(t, c, "v1", atVersion("v1"))
		srv.waitAcked("v1", configTypes...)

		srv.set("v2", append(fullConfig("v2", 8081), edsCluster("bad"), endpoints("bad", 1))...)
		srv.waitFor("NACK of v2", func(st *serverState) bool {
			for _, n := range st.nacks {
				if n.typeURL == ClusterType && n.version == "v2" && n.message == "cluster bad: unsupported lb policy" {
					return true
				}
			}
			return false
		})
		// Types that arrived before the clusters may have been applied
		// (each complete candidate is); the rejected clusters were not.
		if cur := c.Current(); cur.Versions[ClusterType] != "v1" || cur.Clusters["bad"] != nil || cur.Clusters["c1"] != good.Clusters["c1"] {
			t.Fatalf("Current took the rejected clusters: %v", cur.Versions)
		}
		drain(t, c)

		// A fixed config goes through, and the rejection did not loop.
		srv.set("v3", fullConfig("v3", 8082)...)
		s := waitSnapshot(t, c, "v3", atVersion("v3"))
		if _, ok := s.Clusters["bad"]; ok || s.Endpoints["c1"].GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != 8082 {
			t.Fatalf("v3 snapshot: clusters %v endpoints %v", s.Clusters, s.Endpoints)
		}
		srv.waitAcked("v3", configTypes...)
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if n := len(srv.state.nacks); n > 8 {
			t.Fatalf("%d NACKs for one rejected version: the server and client loop", n)
		}
	})
}

func TestUndecodableResourceIsNACKed(t *testing.T) {
	cand := newCandidate(nil, false)
	if _, err := cand.applySotw(ClusterType, "v1", nil); err != nil {
		t.Fatal(err)
	}
	_, err := cand.applySotw(ListenerType, "v1", anys(t, edsCluster("c1")))
	if err == nil || !strings.Contains(err.Error(), "in a type.googleapis.com/envoy.config.listener.v3.Listener response") {
		t.Fatalf("a cluster in an LDS response: %v", err)
	}
	if cand.have[ListenerType] || cand.versions[ListenerType] != "" {
		t.Fatal("a rejected response changed the candidate")
	}
	if _, err := cand.applySotw(ClusterType, "v2", anys(t, edsCluster("c1"), edsCluster("c1"))); err == nil {
		t.Fatal("duplicate clusters accepted")
	}
	if len(cand.res[ClusterType]) != 0 {
		t.Fatal("a rejected response changed the candidate")
	}
}

func TestReconnectAppliesNewSnapshot(t *testing.T) {
	modes(t, func(t *testing.T, delta bool) {
		srv := startServer(t, "")
		srv.set("v1", fullConfig("v1", 8080)...)
		c := startClient(t, srv.addr, delta, nil, nil)
		first := waitSnapshot(t, c, "v1", atVersion("v1"))
		srv.waitAcked("v1", configTypes...)

		srv.grpc.Stop()
		if c.Current() != first {
			t.Fatal("Current changed when the server went away")
		}
		srv2 := startServer(t, srv.addr)
		srv2.set("v2", fullConfig("v2", 9090)...)
		s := waitSnapshot(t, c, "v2 after reconnecting", atVersion("v2"))
		if len(s.Endpoints["c1"].GetEndpoints()) != 1 {
			t.Fatalf("v2 endpoints: %v", s.Endpoints)
		}
		// The new stream started from the applied versions and names.
		srv2.mu.Lock()
		defer srv2.mu.Unlock()
		if delta {
			var cds, eds *discovery.DeltaDiscoveryRequest
			for _, r := range srv2.state.deltas {
				if r.GetTypeUrl() == ClusterType && cds == nil {
					cds = r
				}
				if r.GetTypeUrl() == EndpointType && eds == nil {
					eds = r
				}
			}
			if len(cds.GetInitialResourceVersions()) != 2 || !slices.Equal(eds.GetResourceNamesSubscribe(), []string{"c1"}) ||
				eds.GetInitialResourceVersions()["c1"] == "" {
				t.Fatalf("first delta requests after reconnecting: CDS %v, EDS %v", cds, eds)
			}
		} else {
			var cds, eds *discovery.DiscoveryRequest
			for _, r := range srv2.state.requests {
				if r.GetTypeUrl() == ClusterType && cds == nil {
					cds = r
				}
				if r.GetTypeUrl() == EndpointType && eds == nil {
					eds = r
				}
			}
			if cds.GetVersionInfo() != "v1" || eds.GetVersionInfo() != "v1" || !slices.Equal(eds.GetResourceNames(), []string{"c1"}) {
				t.Fatalf("first requests after reconnecting: CDS %v, EDS %v", cds, eds)
			}
		}
	})
}

// A consumer that does not read gets the latest snapshot only.
func TestUpdatesCoalesce(t *testing.T) {
	modes(t, func(t *testing.T, delta bool) {
		srv := startServer(t, "")
		srv.set("v1", fullConfig("v1", 8080)...)
		c := startClient(t, srv.addr, delta, nil, nil)
		waitSnapshot(t, c, "v1", atVersion("v1"))
		for i := 2; i <= 5; i++ {
			v := fmt.Sprintf("v%d", i)
			srv.set(v, fullConfig(v, uint32(8080+i))...)
			srv.waitAcked(v, configTypes...) // ACKs follow publishing
		}
		select {
		case s := <-c.Updates():
			if !atVersion("v5")(s) || s != c.Current() {
				t.Fatalf("pending update is %v, want the latest (v5)", s.Versions)
			}
		default:
			t.Fatal("no pending update")
		}
		select {
		case s := <-c.Updates():
			t.Fatalf("a second pending update: %v", s.Versions)
		default:
		}
	})
}

// An EDS resource the server never sends is replaced by an empty one after
// the warming timeout.
func TestWarmingTimeoutUsesEmptyAssignment(t *testing.T) {
	modes(t, func(t *testing.T, delta bool) {
		srv := startServer(t, "")
		srv.set("v1", edsCluster("c1"), staticCluster("static"))
		clock := newFakeClock()
		c := startClient(t, srv.addr, delta, nil, clock)
		srv.waitFor("EDS subscription", func(st *serverState) bool { return subscribed(st, delta, EndpointType, "c1") })
		if !delta {
			// SotW answers the subscription with no assignment, which the
			// client ACKs at once (it waits for more of the same type).
			srv.waitAcked("v1", EndpointType)
		}
		clock.waitAfter(t, WarmingTimeout) // the client is warming
		select {
		case s := <-c.Updates():
			t.Fatalf("published before the warming timeout: %v", s.Versions)
		default:
		}
		clock.Advance(WarmingTimeout)
		s := waitSnapshot(t, c, "after the warming timeout", func(*Snapshot) bool { return true })
		if la := s.Endpoints["c1"]; la == nil || len(la.GetEndpoints()) != 0 || len(s.Clusters) != 2 {
			t.Fatalf("warmed snapshot: clusters %v endpoints %v", s.Clusters, s.Endpoints)
		}
		srv.waitAcked("v1", ClusterType, ListenerType)
		// The real assignment replaces the placeholder when it comes.
		srv.set("v2", edsCluster("c1"), staticCluster("static"), endpoints("c1", 7070))
		waitSnapshot(t, c, "v2", func(s *Snapshot) bool { return len(s.Endpoints["c1"].GetEndpoints()) == 1 })
	})
}

func TestRunNeedsServerAndNode(t *testing.T) {
	if err := New(Config{Node: testNode}, nil, nil).Run(t.Context()); err == nil {
		t.Fatal("Run without a server address succeeded")
	}
	if err := New(Config{Server: "127.0.0.1:1"}, nil, nil).Run(t.Context()); err == nil {
		t.Fatal("Run without a node succeeded")
	}
}

func TestBackoffBounds(t *testing.T) {
	c := New(Config{Server: "x", Node: testNode, Backoff: Backoff{Initial: time.Second, Max: 4 * time.Second}}, nil, nil)
	for n, ceil := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second} {
		for range 50 {
			if d := c.backoff(n); d <= 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want (0, %v]", n, d, ceil)
			}
		}
	}
	if d := c.backoff(1000); d <= 0 || d > 4*time.Second {
		t.Fatalf("backoff(1000) = %v", d)
	}
}

func TestNewNode(t *testing.T) {
	n := NewNode(NodeInfo{IP: "10.1.2.3", Name: "web", Namespace: "shop", Labels: map[string]string{"app": "web"},
		ServiceAccount: "web-sa", WorkloadGroup: "web", Explicit: true})
	if n.GetId() != "sidecar~10.1.2.3~web.shop~shop.svc.cluster.local" {
		t.Fatalf("node id %q", n.GetId())
	}
	md := n.GetMetadata().GetFields()
	if md["NAMESPACE"].GetStringValue() != "shop" || md["INTERCEPTION_MODE"].GetStringValue() != "NONE" ||
		md["SERVICE_ACCOUNT"].GetStringValue() != "web-sa" || md["WORKLOAD_GROUP"].GetStringValue() != "web" ||
		md["INSTANCE_IPS"].GetStringValue() != "10.1.2.3" || md["LABELS"].GetStructValue().GetFields()["app"].GetStringValue() != "web" {
		t.Fatalf("metadata %v", md)
	}
}

// anys marshals resources for candidate tests.
func anys(t testing.TB, res ...types.Resource) []*anypb.Any {
	t.Helper()
	out := make([]*anypb.Any, 0, len(res))
	for _, r := range res {
		a, err := anypb.New(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func TestCandidateMergeAndPrune(t *testing.T) {
	cand := newCandidate(nil, false)
	mustApply := func(typ string, res ...types.Resource) {
		t.Helper()
		if _, err := cand.applySotw(typ, "v", anys(t, res...)); err != nil {
			t.Fatal(err)
		}
		cand.prune()
	}
	mustApply(ClusterType, edsCluster("c1"), edsCluster("c2"))
	mustApply(ListenerType, httpListener("l1", "r1"))
	if got := cand.missing(); !slices.Equal(got, []string{EndpointType + " c1", EndpointType + " c2", RouteType + " r1"}) {
		t.Fatalf("missing %v", got)
	}
	mustApply(EndpointType, endpoints("c1", 1))
	mustApply(EndpointType, endpoints("c2", 2)) // SotW EDS adds, keeps c1
	mustApply(RouteType, routeConfig("r1", "c1"))
	if m := cand.missing(); len(m) != 0 || len(cand.res[EndpointType]) != 2 {
		t.Fatalf("missing %v, endpoints %v", m, cand.res[EndpointType])
	}
	mustApply(ClusterType, edsCluster("c1")) // c2 goes, and its endpoints with it
	if _, ok := cand.res[EndpointType]["c2"]; ok {
		t.Fatal("endpoints of a removed cluster kept")
	}
	// Delta: removing a still-referenced assignment leaves an empty one.
	if _, err := cand.applyDelta(EndpointType, "v2", nil, []string{"c1"}); err != nil {
		t.Fatal(err)
	}
	if la := cand.res[EndpointType]["c1"]; la == nil || len(la.(*endpointv3.ClusterLoadAssignment).GetEndpoints()) != 0 {
		t.Fatalf("c1 after delta removal: %v", la)
	}
	s := cand.build()
	if len(s.Clusters) != 1 || len(s.Endpoints) != 1 || len(s.Routes) != 1 || s.Versions[EndpointType] != "v2" {
		t.Fatalf("built %v", s)
	}
}
