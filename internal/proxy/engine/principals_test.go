package engine

import (
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/telemetry"
)

// TestNamespaceOf: the namespace of Istio's SPIFFE identities only.
func TestNamespaceOf(t *testing.T) {
	for in, want := range map[string]string{
		"spiffe://cluster.local/ns/bookinfo/sa/reviews": "bookinfo",
		"spiffe://td/ns/a/sa/b":                         "a",
		"spiffe://cluster.local/ns//sa/x":               "",
		"spiffe://cluster.local/workload/x":             "",
		"spiffe://cluster.local/ns/a/b/sa/x":            "",
		"":                                              "",
	} {
		if got := namespaceOf(in); got != want {
			t.Errorf("namespaceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestUpstreamPeersPrune: an endpoint's entry survives one configuration
// without it (its connections may still be in use) and goes at the
// second; an endpoint that comes back starts its count again.
func TestUpstreamPeersPrune(t *testing.T) {
	with := func(addrs ...string) map[string]*cluster.Cluster {
		t.Helper()
		var lbs []*endpointv3.LbEndpoint
		for _, a := range addrs {
			lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddr(netip.MustParseAddrPort(a))}}})
		}
		c, err := cluster.Compile(&clusterv3.Cluster{Name: "outbound|80||x", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "outbound|80||x",
				Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]*cluster.Cluster{c.Name: c}
	}
	var u upstreamPeers
	u.learn("10.0.0.1:80", telemetry.Peer{Workload: "a"})
	u.learn("10.0.0.2:80", telemetry.Peer{Workload: "b"})
	u.prune(with("10.0.0.1:80"))
	if u.lookup("10.0.0.2:80") == nil {
		t.Fatal("an endpoint missing from one configuration was forgotten")
	}
	u.prune(with("10.0.0.1:80", "10.0.0.2:80")) // back: its count starts again
	u.prune(with("10.0.0.1:80"))
	if u.lookup("10.0.0.2:80") == nil {
		t.Fatal("an endpoint that came back was forgotten after one more configuration without it")
	}
	u.prune(with("10.0.0.1:80"))
	if u.lookup("10.0.0.2:80") != nil {
		t.Error("an endpoint missing from two configurations in a row is still remembered")
	}
	if p := u.lookup("10.0.0.1:80"); p == nil || p.peer.Load().Workload != "a" {
		t.Error("a live endpoint's entry went")
	}
}
