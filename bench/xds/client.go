package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/weftmesh/weft/bench/internal/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// The four xDS types, in the order Envoy subscribes to them.
const (
	tCDS = iota
	tEDS
	tLDS
	tRDS
	numTypes
)

var typeURLs = [numTypes]string{
	"type.googleapis.com/envoy.config.cluster.v3.Cluster",
	"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
	"type.googleapis.com/envoy.config.listener.v3.Listener",
	"type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
}

func typeIndex(url string) int {
	for i, u := range typeURLs {
		if u == url {
			return i
		}
	}
	return -1
}

// fleet is N simulated sidecars on a few shared gRPC connections.
type fleet struct {
	conns   []*grpc.ClientConn
	clients []*client
	// synced counts clients that have ACKed a version of every type.
	synced atomic.Int64
	// syncedAll is closed when synced reaches len(clients).
	syncedAll chan struct{}
	// errc receives the first failure of any client.
	errc   chan error
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// client is one simulated sidecar: one ADS stream. Only its own goroutine
// touches the unexported per-type state; rdsVersion and rdsAckedAt are read
// by the measuring goroutine.
type client struct {
	f     *fleet
	index int
	node  *corev3.Node
	// probe clients decode RDS to check the content of the change.
	probe bool

	version, nonce [numTypes]string
	names          [numTypes][]string
	acked          [numTypes]bool
	synced         bool

	// rdsAckedAt (UnixNano) is when the RDS version in rdsVersion was
	// ACKed; it is stored first.
	rdsAckedAt atomic.Int64
	rdsVersion atomic.Pointer[string]
	// size and count are, for probe clients, the bytes and the number of
	// resources of the last response of each type.
	size, count [numTypes]atomic.Int64
	// lastResponse (UnixNano) is when the last response of any type
	// arrived.
	lastResponse atomic.Int64
	// routes is what a probe client last saw: RDS version and the v1
	// weight of each service host.
	routes atomic.Pointer[routeView]
}

// routeView is the routing a probe client decoded from one RDS response.
type routeView struct {
	version string
	w1      map[string]int // service host -> weight of its first weighted cluster
}

// nodeID is an Istio sidecar node ID. The IPs (10.200.0.0/16) are no
// endpoint of the mesh, so every client gets the same resources.
func nodeID(i int) string {
	return fmt.Sprintf("sidecar~10.200.%d.%d~bench-%d.%s~%s.svc.cluster.local", (i+1)>>8, (i+1)&255, i, namespace, namespace)
}

// startFleet dials conns plaintext gRPC connections to addr and starts n
// clients spread round robin over them. classes > 1 gives client i the
// label app=bench-<i mod classes> (each label set is a proxy class the
// server translates for separately).
func startFleet(parent context.Context, addr string, n, perConn, classes int) (*fleet, error) {
	ctx, cancel := context.WithCancel(parent)
	f := &fleet{syncedAll: make(chan struct{}), errc: make(chan error, 1), cancel: cancel}
	nconns := (n + perConn - 1) / perConn
	for i := 0; i < nconns; i++ {
		cc, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
		if err != nil {
			f.stop()
			return nil, fmt.Errorf("dialing %s: %w", addr, err)
		}
		f.conns = append(f.conns, cc)
	}
	for i := 0; i < n; i++ {
		md := map[string]*structpb.Value{
			"NAMESPACE":  structpb.NewStringValue(namespace),
			"CLUSTER_ID": structpb.NewStringValue("bench"),
		}
		if classes > 1 {
			md["LABELS"] = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"app": structpb.NewStringValue(fmt.Sprintf("bench-%d", i%classes)),
			}})
		}
		f.clients = append(f.clients, &client{f: f, index: i, probe: i == 0,
			node: &corev3.Node{Id: nodeID(i), Cluster: "bench", Metadata: &structpb.Struct{Fields: md}}})
	}
	for i, c := range f.clients {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := c.run(ctx, f.conns[i%nconns]); err != nil && ctx.Err() == nil {
				select {
				case f.errc <- fmt.Errorf("client %d (%s): %w", c.index, c.node.Id, err):
				default:
				}
			}
		}()
	}
	return f, nil
}

// stop ends every stream and closes the connections, waiting at most 30 s.
func (f *fleet) stop() {
	f.cancel()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		harness.Logf("warning: client goroutines did not stop within 30s")
	}
	for _, cc := range f.conns {
		cc.Close()
	}
}

// waitSynced waits until every client has ACKed every type.
func (f *fleet) waitSynced(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-f.syncedAll:
			return nil
		case err := <-f.errc:
			return err
		case <-tick.C:
			harness.Logf("  %d of %d clients synced", f.synced.Load(), len(f.clients))
		case <-ctx.Done():
			return fmt.Errorf("%d of %d clients synced: %w", f.synced.Load(), len(f.clients), context.Cause(ctx))
		}
	}
}

func (c *client) run(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("opening ADS stream: %w", err)
	}
	// Like Envoy: CDS and LDS are wildcard subscriptions; EDS and RDS
	// follow the names they reference.
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: c.node, TypeUrl: typeURLs[tCDS]}); err != nil {
		return fmt.Errorf("sending CDS request: %w", err)
	}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: typeURLs[tLDS]}); err != nil {
		return fmt.Errorf("sending LDS request: %w", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil // the fleet is stopping
			}
			if errors.Is(err, io.EOF) {
				return errors.New("the server ended the stream")
			}
			return fmt.Errorf("receiving: %w", err)
		}
		if err := c.handle(stream, resp); err != nil {
			return err
		}
	}
}

// handle ACKs one response and follows changes of the EDS and RDS names.
func (c *client) handle(stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discoverygrpc.DiscoveryResponse) error {
	c.lastResponse.Store(time.Now().UnixNano())
	t := typeIndex(resp.GetTypeUrl())
	if t < 0 {
		return fmt.Errorf("response of unexpected type %q", resp.GetTypeUrl())
	}
	// Names the response makes this client subscribe to (EDS after CDS,
	// RDS after LDS).
	var follow = -1
	var names []string
	var err error
	switch t {
	case tCDS:
		follow = tEDS
		names, err = edsNames(resp.GetResources())
	case tLDS:
		follow = tRDS
		names, err = rdsNames(resp.GetResources())
	}
	if c.probe {
		c.size[t].Store(int64(proto.Size(resp)))
		c.count[t].Store(int64(len(resp.GetResources())))
	}
	switch t {
	case tRDS:
		if c.probe {
			var v *routeView
			if v, err = decodeRoutes(resp); err == nil {
				c.routes.Store(v)
			}
		}
	}
	if err != nil {
		// A real Envoy would NACK; the bench expects valid config.
		return fmt.Errorf("%s version %s: %w", shortType(t), resp.GetVersionInfo(), err)
	}
	ack := &discoverygrpc.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(),
		ResponseNonce: resp.GetNonce(), ResourceNames: c.names[t]}
	if err := stream.Send(ack); err != nil {
		return fmt.Errorf("sending %s ACK: %w", shortType(t), err)
	}
	c.version[t], c.nonce[t], c.acked[t] = resp.GetVersionInfo(), resp.GetNonce(), true
	if t == tRDS {
		v := resp.GetVersionInfo()
		c.rdsAckedAt.Store(time.Now().UnixNano())
		c.rdsVersion.Store(&v)
	}
	if follow >= 0 && !slices.Equal(names, c.names[follow]) {
		c.names[follow] = names
		req := &discoverygrpc.DiscoveryRequest{TypeUrl: typeURLs[follow], VersionInfo: c.version[follow],
			ResponseNonce: c.nonce[follow], ResourceNames: names}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("sending %s request: %w", shortType(follow), err)
		}
		if len(names) == 0 {
			c.acked[follow] = true // nothing to wait for
		}
	}
	if !c.synced && c.acked[tCDS] && c.acked[tLDS] && c.acked[tEDS] && c.acked[tRDS] {
		c.synced = true
		if int(c.f.synced.Add(1)) == len(c.f.clients) {
			close(c.f.syncedAll)
		}
	}
	return nil
}

// edsNames are the EDS service names of the EDS clusters, sorted.
func edsNames(rs []*anypb.Any) ([]string, error) {
	var out []string
	for _, a := range rs {
		var cl clusterv3.Cluster
		if err := a.UnmarshalTo(&cl); err != nil {
			return nil, err
		}
		if cl.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		name := cl.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = cl.GetName()
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// rdsNames are the route config names the listeners' HTTP connection
// managers fetch over RDS, sorted.
func rdsNames(rs []*anypb.Any) ([]string, error) {
	var out []string
	for _, a := range rs {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			return nil, err
		}
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains, d)
		}
		for _, ch := range chains {
			for _, f := range ch.GetFilters() {
				tc := f.GetTypedConfig()
				if tc == nil || !strings.HasSuffix(tc.GetTypeUrl(), "HttpConnectionManager") {
					continue
				}
				var h hcmv3.HttpConnectionManager
				if err := tc.UnmarshalTo(&h); err != nil {
					return nil, err
				}
				if n := h.GetRds().GetRouteConfigName(); n != "" {
					out = append(out, n)
				}
			}
		}
		if api := l.GetApiListener().GetApiListener(); api != nil {
			var h hcmv3.HttpConnectionManager
			if err := api.UnmarshalTo(&h); err == nil && h.GetRds().GetRouteConfigName() != "" {
				out = append(out, h.GetRds().GetRouteConfigName())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// decodeRoutes finds, for every virtual host, the weight of the first
// weighted cluster of its first route.
func decodeRoutes(resp *discoverygrpc.DiscoveryResponse) (*routeView, error) {
	v := &routeView{version: resp.GetVersionInfo(), w1: map[string]int{}}
	for _, a := range resp.GetResources() {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			return nil, err
		}
		for _, vh := range rc.GetVirtualHosts() {
			if len(vh.GetRoutes()) == 0 {
				continue
			}
			wc := vh.GetRoutes()[0].GetRoute().GetWeightedClusters().GetClusters()
			if len(wc) == 0 {
				continue
			}
			for _, d := range vh.GetDomains() {
				host, _, _ := strings.Cut(d, ":")
				v.w1[host] = int(wc[0].GetWeight().GetValue())
			}
		}
	}
	return v, nil
}

func shortType(t int) string {
	return [numTypes]string{"CDS", "EDS", "LDS", "RDS"}[t]
}
