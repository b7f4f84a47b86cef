// Package proxyless checks weft's discovery against gRPC's own proxyless
// xDS client: a real weft server (in-process), real gRPC backends on
// loopback, and a gRPC client dialing xds:/// targets.
package proxyless

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/weftmesh/weft/internal/testutil/wefttest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"
)

// backend is a gRPC TestService that answers with its own id.
type backend struct {
	testpb.UnimplementedTestServiceServer
	id string
}

func (b *backend) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{ServerId: b.id}, nil
}

func startBackend(t *testing.T, id string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	testpb.RegisterTestServiceServer(g, &backend{id: id})
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return ln.Addr().(*net.TCPAddr).Port
}

// startWeft runs an in-process weft server.
func startWeft(t *testing.T) *wefttest.Server { return wefttest.Start(t, nil) }

// startEchoADS starts a weft server with echoConfig over two backends
// (50/50) and returns it with an ADS client on its plaintext xDS port and a
// context (30 s) for the client's streams.
func startEchoADS(t *testing.T) (*wefttest.Server, discovery.AggregatedDiscoveryServiceClient, context.Context) {
	t.Helper()
	w := startWeft(t)
	p1, p2 := startBackend(t, "v1"), startBackend(t, "v2")
	w.Apply(echoConfig(p1, p2, 50, 50))
	conn, err := grpc.NewClient(w.XDS, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return w, discovery.NewAggregatedDiscoveryServiceClient(conn), ctx
}

func echoConfig(p1, p2, w1, w2 int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7070, name: grpc, protocol: GRPC}]
  endpoints:
  - {address: 127.0.0.1, ports: {grpc: %d}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {grpc: %d}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo.mesh
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  http:
  - route:
    - {destination: {host: echo.mesh, subset: v1}, weight: %d}
    - {destination: {host: echo.mesh, subset: v2}, weight: %d}
`, p1, p2, w1, w2)
}

// settle waits until the client has acknowledged the config that splits
// between both subsets. The three objects of echoConfig reach the store
// one by one, so a client that connects at once may first get a config
// without the VirtualService; gRPC's client then fails calls for a
// moment when the route switches to the new clusters ("unknown cluster
// selected for RPC"), which is gRPC's behaviour, not the split's.
func settle(t *testing.T, w *wefttest.Server, c testpb.TestServiceClient) {
	t.Helper()
	const id = "sidecar~127.0.0.1~client.default~default.svc.cluster.local"
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		_, cfg := w.Do("GET", "/weft/v1/debug/config_dump?proxyID="+id, "")
		_, sync := w.Do("GET", "/weft/v1/debug/syncz", "")
		if err == nil && strings.Contains(cfg, "outbound|7070|v2|echo.mesh") && strings.Count(sync, `"SYNCED"`) >= 4 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client did not settle on the split config within 15s: last call %v\nsyncz: %s", err, sync)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dump, when set, logs diagnostics on a failed call.
var dump func()

// split makes n calls and returns the share answered by v1.
func split(t *testing.T, c testpb.TestServiceClient, n int) float64 {
	t.Helper()
	v1 := 0
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{FillServerId: true})
		cancel()
		if err != nil {
			if dump != nil {
				dump()
			}
			t.Fatalf("call %d: %v", i, err)
		}
		if resp.GetServerId() == "v1" {
			v1++
		}
	}
	return float64(v1) / float64(n)
}

func TestGRPCProxylessWeightedSplit(t *testing.T) {
	w := startWeft(t)
	p1, p2 := startBackend(t, "v1"), startBackend(t, "v2")
	w.Apply(echoConfig(p1, p2, 80, 20))

	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "sidecar~127.0.0.1~client.default~default.svc.cluster.local",
           "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}}
}`, w.XDS)
	builder, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo.mesh:7070", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := testpb.NewTestServiceClient(conn)
	dump = func() {
		_, body := w.Do("GET", "/weft/v1/debug/config_dump?proxyID=sidecar~127.0.0.1~client.default~default.svc.cluster.local", "")
		_, sync := w.Do("GET", "/weft/v1/debug/syncz", "")
		t.Logf("config_dump:\n%s\nsyncz:\n%s", body, sync)
	}
	defer func() { dump = nil }()
	settle(t, w, c)

	const n = 1000
	got := split(t, c, n)
	t.Logf("80/20 split: v1 answered %.1f%% of %d calls", got*100, n)
	if got < 0.75 || got > 0.85 {
		t.Fatalf("v1 share %.3f, want 0.80 ± 0.05", got)
	}

	// Change the weights; the same client follows without reconnecting.
	w.Apply(echoConfig(p1, p2, 10, 90))
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = split(t, c, 200)
		if got < 0.2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after changing to 10/90, v1 still answers %.2f", got)
		}
	}
	got = split(t, c, n)
	t.Logf("10/90 split: v1 answered %.1f%% of %d calls", got*100, n)
	if got < 0.05 || got > 0.15 {
		t.Fatalf("v1 share %.3f after the change, want 0.10 ± 0.05", got)
	}

	// proxy-status sees the client, synced.
	code, body := w.Do("GET", "/weft/v1/debug/syncz", "")
	if code != 200 || !strings.Contains(body, `"type": "proxyless"`) || !strings.Contains(body, `"lds": "SYNCED"`) {
		t.Fatalf("syncz: %d %s", code, body)
	}
}
