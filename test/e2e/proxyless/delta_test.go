package proxyless

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestDeltaXDS subscribes to clusters over incremental (delta) ADS, the
// protocol Envoy prefers, and follows an added subset cluster.
func TestDeltaXDS(t *testing.T) {
	w, ads, ctx := startEchoADS(t)
	stream, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "sidecar~10.8.8.8~delta.default~default.svc.cluster.local"}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	clusters := map[string]bool{}
	recv := func() {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResources() {
			c := &clusterv3.Cluster{}
			if err := r.GetResource().UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			clusters[c.GetName()] = true
		}
		for _, name := range resp.GetRemovedResources() {
			delete(clusters, name)
		}
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	// The config was written a moment ago; the push may follow the
	// first response (the stream's context bounds the wait).
	for !(clusters["outbound|7070||echo.mesh"] && clusters["outbound|7070|v1|echo.mesh"] && clusters["outbound|7070|v2|echo.mesh"]) {
		recv()
	}
	if !clusters["PassthroughCluster"] {
		t.Fatalf("delta CDS lacks the passthrough cluster: %v", clusters)
	}
	// A third subset arrives as an incremental update.
	w.Apply(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo.mesh
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
`)
	for !clusters["outbound|7070|v3|echo.mesh"] {
		recv()
	}
}
