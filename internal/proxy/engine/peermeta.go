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

// The metadata's keys, as Istio's node metadata names them.
const (
	mdNamespace = "NAMESPACE"
	mdWorkload  = "WORKLOAD_NAME"
	mdCluster   = "CLUSTER_ID"
	mdLabels    = "LABELS"
)

// ownPeerStruct is this proxy's metadata: namespace, workload, cluster,
// and the labels the metrics read (app, version, the canonical service
// and revision, as CanonicalNames finds them).
func ownPeerStruct(w telemetry.Peer) *structpb.Struct {
	fields := map[string]*structpb.Value{}
	for k, v := range map[string]string{mdNamespace: w.Namespace, mdWorkload: w.Workload, mdCluster: w.Cluster} {
		if v != "" {
			fields[k] = structpb.NewStringValue(v)
		}
	}
	labels := map[string]*structpb.Value{}
	for k, v := range map[string]string{"app": w.App, "version": w.Version,
		telemetry.CanonicalNameLabel: w.CanonicalService, telemetry.CanonicalRevisionLabel: w.CanonicalRevision} {
		if v != "" {
			labels[k] = structpb.NewStringValue(v)
		}
	}
	if len(labels) > 0 {
		fields[mdLabels] = structpb.NewStructValue(&structpb.Struct{Fields: labels})
	}
	return &structpb.Struct{Fields: fields}
}

// ownPeerMetadata encodes this proxy's metadata once, as the HTTP
// exchange's header value and as the TCP exchange's frame (peermx.go);
// nil without a node ID: no exchange.
func ownPeerMetadata(nodeID string, w telemetry.Peer) (header []string, frame []byte) {
	if nodeID == "" {
		return nil, nil
	}
	md := ownPeerStruct(w)
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(md)
	if err != nil {
		return nil, nil
	}
	return []string{base64.StdEncoding.EncodeToString(raw)}, mxFrame(nodeID, md)
}

// peerFromStruct reads a peer's metadata (Istio's node metadata, or
// weft's subset of it) as Istio's sidecars do: app and version from those
// labels only, the canonical service and revision from theirs.
func peerFromStruct(s *structpb.Struct) telemetry.Peer {
	f := s.GetFields()
	labels := f[mdLabels].GetStructValue().GetFields()
	label := func(name string) string { return labels[name].GetStringValue() }
	return telemetry.Peer{Workload: f[mdWorkload].GetStringValue(), Namespace: f[mdNamespace].GetStringValue(),
		Cluster: f[mdCluster].GetStringValue(), App: label("app"), Version: label("version"),
		CanonicalService: label(telemetry.CanonicalNameLabel), CanonicalRevision: label(telemetry.CanonicalRevisionLabel)}
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
	p = peerFromStruct(&s)
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
			e.upstreams.learn(ex.upstream, ex.peer)
		}
		delete(h, peerMetadataHeader)
		delete(h, peerIDHeader)
		return
	}
	if up := e.upstreams.lookup(ex.upstream); up != nil {
		if p := up.peer.Load(); p != nil {
			ex.peer, ex.peerSeen = *p, true
		}
	}
}
