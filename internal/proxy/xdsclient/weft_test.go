package xdsclient_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	pilotxds "github.com/weftmesh/weft/internal/pilot/xds"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/testutil/wefttest"
)

// startWeft runs an in-process weft server (the real control plane).
func startWeft(t *testing.T) *wefttest.Server { return wefttest.Start(t, nil) }

const serviceEntry = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 18080}}
`

// TestAgainstWeft follows a real weft server: a ServiceEntry applied
// through the API reaches the client as a validated snapshot whose
// listeners, routes, cluster and endpoints are consistent.
func TestAgainstWeft(t *testing.T) {
	const cluster = "outbound|8080||echo.mesh"
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%v", delta), func(t *testing.T) {
			// A server each: weft's xDS server keys streams by
			// go-control-plane's stream ID, which SotW and delta count
			// separately, so concurrent streams of both kinds collide.
			w := startWeft(t)
			w.Apply(serviceEntry)
			info := xdsclient.NodeInfo{IP: "127.0.0.1", Name: fmt.Sprintf("app-%v", delta), Namespace: "default",
				Labels: map[string]string{"app": "app"}, Explicit: true}
			node := xdsclient.NewNode(info)
			p, err := pilotxds.ProxyFromNode(node)
			if err != nil || p.Namespace != "default" || !p.Explicit || p.Labels["app"] != "app" || p.WorkloadName != info.Name {
				t.Fatalf("weft reads the node as %+v (%v)", p, err)
			}
			var validated atomic.Int32
			c := xdsclient.New(xdsclient.Config{Server: w.XDS, Node: node, Delta: delta}, func(s *xdsclient.Snapshot) error {
				validated.Add(1)
				return nil
			}, wefttest.Logger())
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			deadline := time.After(15 * time.Second)
			for {
				var s *xdsclient.Snapshot
				select {
				case s = <-c.Updates():
				case <-deadline:
					t.Fatalf("no snapshot with %s and its endpoints within 15s; current: %v", cluster, c.Current())
				}
				cl := s.Clusters[cluster]
				if cl == nil || len(s.Listeners) == 0 {
					continue
				}
				name := cl.GetEdsClusterConfig().GetServiceName()
				if name == "" {
					name = cluster
				}
				la := s.Endpoints[name]
				if len(la.GetEndpoints()) == 0 || len(la.GetEndpoints()[0].GetLbEndpoints()) != 1 {
					continue
				}
				if port := la.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); port != 18080 {
					t.Fatalf("endpoint port %d, want 18080", port)
				}
				for _, typ := range []string{xdsclient.ListenerType, xdsclient.ClusterType, xdsclient.EndpointType} {
					if s.Versions[typ] == "" {
						t.Errorf("no %s version in %v", typ, s.Versions)
					}
				}
				t.Logf("snapshot: %d listeners, %d routes, %d clusters, %d load assignments, versions %v",
					len(s.Listeners), len(s.Routes), len(s.Clusters), len(s.Endpoints), s.Versions)
				if validated.Load() == 0 {
					t.Fatal("published without validating")
				}
				return
			}
		})
	}
}
