package proxyless

import (
	"context"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/testutil/fakeconsul"
	"github.com/weftmesh/weft/internal/testutil/fakenomad"
	"github.com/weftmesh/weft/internal/testutil/wefttest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// adsWatcher is a raw ADS client that subscribes to every cluster and to
// the load assignments of the EDS clusters it sees, and ACKs everything.
type adsWatcher struct {
	t       *testing.T
	stream  discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	updates chan map[string]int // cluster name -> endpoint count (-1: no EDS yet)
}

func watchADS(t *testing.T, addr, nodeID string) *adsWatcher {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &adsWatcher{t: t, stream: stream, updates: make(chan map[string]int, 64)}
	node := &core.Node{Id: nodeID}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	go w.loop()
	return w
}

func (w *adsWatcher) loop() {
	state := map[string]int{}
	var edsNames []string
	for {
		resp, err := w.stream.Recv()
		if err != nil {
			close(w.updates)
			return
		}
		ack := &discovery.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		switch resp.GetTypeUrl() {
		case resourcev3.ClusterType:
			next := map[string]int{}
			edsNames = nil
			for _, a := range resp.GetResources() {
				c := &clusterv3.Cluster{}
				if a.UnmarshalTo(c) != nil {
					continue
				}
				if n, ok := state[c.GetName()]; ok {
					next[c.GetName()] = n
				} else {
					next[c.GetName()] = -1
				}
				if c.GetType() == clusterv3.Cluster_EDS {
					edsNames = append(edsNames, c.GetName())
				}
			}
			state = next
			_ = w.stream.Send(ack)
			// (Re)subscribe to the load assignments of the EDS clusters.
			_ = w.stream.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: edsNames})
		case resourcev3.EndpointType:
			for _, a := range resp.GetResources() {
				la := &endpointv3.ClusterLoadAssignment{}
				if a.UnmarshalTo(la) != nil {
					continue
				}
				n := 0
				for _, l := range la.GetEndpoints() {
					n += len(l.GetLbEndpoints())
				}
				if _, ok := state[la.GetClusterName()]; ok {
					state[la.GetClusterName()] = n
				}
			}
			ack.ResourceNames = edsNames
			_ = w.stream.Send(ack)
		}
		snap := make(map[string]int, len(state))
		for k, v := range state {
			snap[k] = v
		}
		w.updates <- snap
	}
}

// await waits (bounded) until cond holds for the client's view and returns
// how long that took since start.
func (w *adsWatcher) await(what string, start time.Time, cond func(map[string]int) bool) time.Duration {
	w.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s, ok := <-w.updates:
			if !ok {
				w.t.Fatalf("%s: ADS stream closed", what)
			}
			if cond(s) {
				return time.Since(start)
			}
		case <-deadline:
			w.t.Fatalf("%s: not seen by the xDS client within 10s", what)
		}
	}
}

// startWeftWithRegistry runs a weft server with one registry source and
// the default push debounce, and returns its plaintext xDS address.
func startWeftWithRegistry(t *testing.T, registry string) string {
	t.Helper()
	return wefttest.Start(t, func(c *server.Config) {
		c.Discovery.Debounce = 0 // the default
		c.Discovery.Registries = []string{registry}
	}).XDS
}

// registryChanges drives one registry through add, scale-out and removal,
// checking that each reaches a connected xDS client and logging how long it
// took (the default 100 ms debounce included).
func registryChanges(t *testing.T, xdsAddr, cluster string, add, scale, remove func()) {
	w := watchADS(t, xdsAddr, "sidecar~10.77.0.1~watcher.default~default.svc.cluster.local")
	w.await("initial config", time.Now(), func(map[string]int) bool { return true })
	steps := []struct {
		name string
		do   func()
		cond func(map[string]int) bool
	}{
		{"register", add, func(s map[string]int) bool { return s[cluster] == 1 }},
		{"second instance", scale, func(s map[string]int) bool { return s[cluster] == 2 }},
		{"deregister", remove, func(s map[string]int) bool { _, ok := s[cluster]; return !ok }},
	}
	for _, st := range steps {
		start := time.Now()
		st.do()
		took := w.await(st.name, start, st.cond)
		// Latency is reported, not asserted (performance is measured,
		// not timed in tests); the functional bound is await's 10 s.
		t.Logf("%s reached the xDS client in %v", st.name, took.Round(time.Millisecond))
	}
}

func TestConsulChangesReachXDS(t *testing.T) {
	c := fakeconsul.New()
	t.Cleanup(c.Close)
	xdsAddr := startWeftWithRegistry(t, "consul="+c.Addr())
	cluster := "outbound|8080||web.service.consul"
	registryChanges(t, xdsAddr, cluster,
		func() {
			c.Register(fakeconsul.Instance{Node: "n1", NodeAddress: "10.1.0.1", ID: "web-1", Service: "web", Address: "10.1.0.1", Port: 8080, Tags: []string{"version=v1"}})
		},
		func() {
			c.Register(fakeconsul.Instance{Node: "n2", NodeAddress: "10.1.0.2", ID: "web-2", Service: "web", Address: "10.1.0.2", Port: 8080, Tags: []string{"version=v2"}})
		},
		func() {
			c.Deregister("n1", "web-1")
			c.Deregister("n2", "web-2")
		})
}

func TestNomadChangesReachXDS(t *testing.T) {
	n := fakenomad.New()
	t.Cleanup(n.Close)
	xdsAddr := startWeftWithRegistry(t, "nomad="+strings.TrimPrefix(n.URL(), "http://"))
	cluster := "outbound|9090||api.default.nomad"
	reg := func(id, addr string) fakenomad.Registration {
		return fakenomad.Registration{ID: id, ServiceName: "api", Namespace: "default", Address: addr, Port: 9090, Tags: []string{"version=v1"}}
	}
	registryChanges(t, xdsAddr, cluster,
		func() { n.Register(reg("api-1", "10.2.0.1")) },
		func() { n.Register(reg("api-2", "10.2.0.2")) },
		func() {
			n.Deregister("api-1")
			n.Deregister("api-2")
		})
}
