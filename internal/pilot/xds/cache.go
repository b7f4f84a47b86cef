package xds

import (
	"context"
	"fmt"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/weftmesh/weft/internal/pilot/push"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// Cache serves pilot's snapshots. State-of-the-world responses are built
// from resources marshalled once per push and shared by every stream (a
// 20 KiB route table is not re-encoded 5,000 times); delta streams are
// served by go-control-plane's snapshot cache from the same snapshots.
//
// SotW semantics follow go-control-plane's snapshot cache in non-ADS mode:
// a watch is answered when the snapshot's version differs from the one the
// request acknowledges, or when it holds a subscribed resource the client
// has not been sent; named requests get only the names they ask for, so
// gRPC's proxyless client, which asks for exactly the clusters its routes
// name, is answered at once.
type Cache struct {
	delta cachev3.SnapshotCache

	mu      sync.Mutex
	nodes   map[string]*nodeState
	watchID int64
}

type nodeState struct {
	snap    *push.Snapshot
	watches map[int64]*sotwWatch
}

type sotwWatch struct {
	req *discovery.DiscoveryRequest
	sub cachev3.Subscription
	ch  chan cachev3.Response
}

// NewCache returns an empty cache; log receives go-control-plane's logs.
func NewCache(log CacheLogger) *Cache {
	return &Cache{delta: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, log), nodes: map[string]*nodeState{}}
}

var _ cachev3.Cache = (*Cache)(nil)
var _ push.Cache = (*Cache)(nil)

func (c *Cache) node(id string) *nodeState {
	n, ok := c.nodes[id]
	if !ok {
		n = &nodeState{watches: map[int64]*sotwWatch{}}
		c.nodes[id] = n
	}
	return n
}

// Set installs a snapshot for node and answers its open watches.
func (c *Cache) Set(ctx context.Context, node string, s *push.Snapshot) error {
	c.mu.Lock()
	n := c.node(node)
	n.snap = s
	var answers []func()
	for id, w := range n.watches {
		typ := w.req.GetTypeUrl()
		if s.Versions[typ] == w.req.GetVersionInfo() {
			continue
		}
		resp := respond(w, s)
		delete(n.watches, id)
		ch := w.ch
		answers = append(answers, func() { send(ch, resp) })
	}
	c.mu.Unlock()
	for _, a := range answers {
		a()
	}
	return c.delta.SetSnapshot(ctx, node, s.Snapshot)
}

// Clear forgets node's snapshot (its streams are gone).
func (c *Cache) Clear(node string) {
	c.mu.Lock()
	delete(c.nodes, node)
	c.mu.Unlock()
	c.delta.ClearSnapshot(node)
}

// Get returns the snapshot last set for node.
func (c *Cache) Get(node string) (*push.Snapshot, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[node]
	if !ok || n.snap == nil {
		return nil, false
	}
	return n.snap, true
}

// respond builds the response to w from s: all resources of the type for a
// wildcard subscription, else the subscribed ones that exist.
func respond(w *sotwWatch, s *push.Snapshot) cachev3.Response {
	typ := w.req.GetTypeUrl()
	version := s.Versions[typ]
	names, anys := s.Names[typ], s.Marshalled[typ]
	var out []*anypb.Any
	returned := make(map[string]string, len(names))
	wildcard := w.sub.IsWildcard()
	subscribed := w.sub.SubscribedResources()
	for i, name := range names {
		if !wildcard {
			if _, ok := subscribed[name]; !ok {
				continue
			}
		}
		out = append(out, anys[i])
		returned[name] = version
	}
	return &cachev3.PassthroughResponse{
		Request:           w.req,
		DiscoveryResponse: &discovery.DiscoveryResponse{VersionInfo: version, TypeUrl: typ, Resources: out},
		ReturnedResources: returned,
	}
}

// shouldAnswer reports whether a watch whose request acknowledges the
// current version still needs an answer: a subscribed resource exists that
// the client has not been sent.
func shouldAnswer(w *sotwWatch, s *push.Snapshot) bool {
	typ := w.req.GetTypeUrl()
	if s.Versions[typ] != w.req.GetVersionInfo() {
		return true
	}
	known := w.sub.ReturnedResources()
	if w.sub.IsWildcard() {
		for _, name := range s.Names[typ] {
			if _, ok := known[name]; !ok {
				return true
			}
		}
		return false
	}
	have := map[string]bool{}
	for _, name := range s.Names[typ] {
		have[name] = true
	}
	for name := range w.sub.SubscribedResources() {
		if _, ok := known[name]; !ok && have[name] {
			return true
		}
	}
	return false
}

// CreateWatch implements cachev3.ConfigWatcher for state-of-the-world.
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	node := req.GetNode().GetId()
	if node == "" {
		return nil, status.Error(codes.InvalidArgument, "weft xds: request without a node id")
	}
	w := &sotwWatch{req: req, sub: sub, ch: ch}
	c.mu.Lock()
	n := c.node(node)
	if n.snap != nil && shouldAnswer(w, n.snap) {
		resp := respond(w, n.snap)
		c.mu.Unlock()
		send(ch, resp)
		return func() {}, nil
	}
	c.watchID++
	id := c.watchID
	n.watches[id] = w
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if n, ok := c.nodes[node]; ok {
			delete(n.watches, id)
		}
	}, nil
}

// send delivers resp on a stream's response channel. The channel has room
// for one response per type and a stream has at most one open watch per
// type, so this does not block in practice; should it ever be full (a
// stream going away), the send is retried in the background for a bounded
// time instead of stalling every other proxy.
func send(ch chan cachev3.Response, resp cachev3.Response) {
	select {
	case ch <- resp:
	default:
		go func() {
			t := time.NewTimer(time.Minute)
			defer t.Stop()
			select {
			case ch <- resp:
			case <-t.C:
			}
		}()
	}
}

// CreateDeltaWatch implements cachev3.ConfigWatcher for delta xDS.
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return c.delta.CreateDeltaWatch(req, sub, ch)
}

// Fetch implements cachev3.ConfigFetcher; weft serves xDS over ADS only.
func (c *Cache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, fmt.Errorf("weft serves xDS over ADS streams only")
}
