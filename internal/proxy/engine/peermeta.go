package engine

import (
	"encoding/base64"
	"net/http"
	"sync"

	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/telemetry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Istio's HTTP metadata exchange between sidecars, which gives the
// standard metrics their peer labels: a client sidecar sends its node
// metadata with every request to a sidecar (a cluster of mesh mTLS); the
// server sidecar reads and removes it (source_workload,
// source_workload_namespace, source_app, source_version), and answers
// with its own, which the client reads and removes in turn
// (destination_*). The metadata is a google.protobuf.Struct (NAMESPACE,
// WORKLOAD_NAME, LABELS), serialised and base64-encoded, as Istio's Envoy
// sidecars send it in x-envoy-peer-metadata.
//
// To keep its cost per request small (each header line costs both sides
// parsing and an allocation), weft-proxy sends no
// x-envoy-peer-metadata-id (only Envoy's cache needs it; it is removed
// when received), and a server answers with its metadata once per
// connection: the client remembers each endpoint's.
const (
	peerIDHeader       = "X-Envoy-Peer-Metadata-Id"
	peerMetadataHeader = "X-Envoy-Peer-Metadata"
)

// peerLabels are the node labels the metadata carries (what the metrics
// read).
var peerLabels = []string{"app", "version", "service.istio.io/canonical-name", "service.istio.io/canonical-revision"}

// ownPeerHeaders encodes this proxy's metadata once (nil without a node
// ID: no exchange).
func ownPeerHeaders(nodeID string, w telemetry.Peer) []string {
	fields := map[string]*structpb.Value{}
	for k, v := range map[string]string{"NAMESPACE": w.Namespace, "WORKLOAD_NAME": w.Workload} {
		if v != "" {
			fields[k] = structpb.NewStringValue(v)
		}
	}
	labels := map[string]*structpb.Value{}
	for k, v := range map[string]string{"app": w.App, "version": w.Version} {
		if v != "" {
			labels[k] = structpb.NewStringValue(v)
		}
	}
	if len(labels) > 0 {
		fields["LABELS"] = structpb.NewStructValue(&structpb.Struct{Fields: labels})
	}
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(&structpb.Struct{Fields: fields})
	if err != nil || nodeID == "" {
		return nil
	}
	return []string{base64.StdEncoding.EncodeToString(raw)}
}

// peerCache decodes metadata values, keeping what it decoded: the values
// repeat with every request of a peer.
type peerCache struct {
	mu sync.Mutex
	m  map[string]telemetry.Peer
}

// peerCacheMax bounds the cache; past it, it starts over.
const peerCacheMax = 256

// decode reads a metadata value; false when it is not one.
func (c *peerCache) decode(v string) (telemetry.Peer, bool) {
	c.mu.Lock()
	p, ok := c.m[v]
	c.mu.Unlock()
	if ok {
		return p, true
	}
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return p, false
	}
	var s structpb.Struct
	if err := proto.Unmarshal(raw, &s); err != nil {
		return p, false
	}
	f := s.GetFields()
	labels := f["LABELS"].GetStructValue().GetFields()
	label := func(names ...string) string {
		for _, n := range names {
			if v := labels[n].GetStringValue(); v != "" {
				return v
			}
		}
		return ""
	}
	p = telemetry.Peer{Workload: f["WORKLOAD_NAME"].GetStringValue(), Namespace: f["NAMESPACE"].GetStringValue(),
		App: label(peerLabels[0], peerLabels[2]), Version: label(peerLabels[1], peerLabels[3])}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= peerCacheMax {
		c.m = map[string]telemetry.Peer{}
	}
	c.m[v] = p
	c.mu.Unlock()
	return p, true
}

// toSidecar reports whether c's endpoints are sidecars: mesh mTLS.
func toSidecar(c *cluster.Cluster) bool { return c.TLS != nil && c.TLS.CertSDS == sdsCert }

// requestPeer is the exchange's request side: on the inbound side it takes
// (and removes) the caller's metadata; towards a sidecar it adds this
// proxy's.
func (e *Engine) requestPeer(h http.Header, ex *exchange, inbound bool, c *cluster.Cluster) {
	if inbound {
		if v := h[peerMetadataHeader]; len(v) > 0 {
			ex.peer, ex.peerSeen = e.peers.decode(v[0])
			delete(h, peerMetadataHeader)
		}
		delete(h, peerIDHeader)
		return
	}
	if e.peerMD != nil && toSidecar(c) {
		h[peerMetadataHeader] = e.peerMD
	}
}

// responsePeer is the exchange's response side: on the inbound side it
// answers a caller that sent its metadata with this proxy's, the first
// time on each connection; from a sidecar it takes (and removes) the
// server's, or the one endpoint (the address it came from) last sent.
func (e *Engine) responsePeer(h http.Header, ex *exchange, cc *chainConn, inbound bool, c *cluster.Cluster) {
	if inbound {
		if ex.peerSeen && e.peerMD != nil && !cc.peerAnswered.Load() && cc.peerAnswered.CompareAndSwap(false, true) {
			h[peerMetadataHeader] = e.peerMD
		}
		return
	}
	if !toSidecar(c) {
		return
	}
	if v := h[peerMetadataHeader]; len(v) > 0 {
		if ex.peer, ex.peerSeen = e.peers.decode(v[0]); ex.peerSeen {
			e.serverPeers.Store(ex.upstream, ex.peer)
		}
		delete(h, peerMetadataHeader)
		delete(h, peerIDHeader)
		return
	}
	if p, ok := e.serverPeers.Load(ex.upstream); ok {
		ex.peer, ex.peerSeen = p.(telemetry.Peer), true
	}
}
