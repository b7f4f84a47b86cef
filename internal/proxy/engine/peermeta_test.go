package engine

import (
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/telemetry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestPeerMetadata: the metadata exchange's encoding (a base64
// google.protobuf.Struct, as Istio's sidecars send it) and which side adds,
// reads and removes the headers.
func TestPeerMetadata(t *testing.T) {
	self := telemetry.Peer{Workload: "reviews-v2", Namespace: "bookinfo", App: "reviews", Version: "v2",
		CanonicalService: "reviews", CanonicalRevision: "v2", Cluster: "east"}
	md, _ := ownPeerMetadata("sidecar~10.0.0.2~reviews-v2.bookinfo~bookinfo.svc.cluster.local", self)
	var c peerCache
	if got, ok := c.decode(md[0]); !ok || got != self {
		t.Fatalf("own metadata decodes to %+v (%v), want %+v", got, ok, self)
	}
	if h, f := ownPeerMetadata("", self); h != nil || f != nil {
		t.Errorf("a proxy without a node ID takes part in the exchange")
	}
	// As an Istio sidecar sends it: canonical-name and -revision labels,
	// other fields; no app or version label, so no source_app or
	// source_version (Istio reads those labels only).
	st, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "cart", "CLUSTER_ID": "Kubernetes",
		"LABELS": map[string]any{"service.istio.io/canonical-name": "cart-svc", "service.istio.io/canonical-revision": "v9", "pod-template-hash": "x"}})
	raw, _ := proto.Marshal(st)
	if got, ok := c.decode(base64.StdEncoding.EncodeToString(raw)); !ok || got != (telemetry.Peer{Workload: "cart", Namespace: "shop",
		CanonicalService: "cart-svc", CanonicalRevision: "v9", Cluster: "Kubernetes"}) {
		t.Errorf("Istio's metadata decodes to %+v (%v)", got, ok)
	}
	for _, bad := range []string{"not base64!", base64.StdEncoding.EncodeToString([]byte{0xff, 0xff})} {
		if _, ok := c.decode(bad); ok {
			t.Errorf("%q decoded", bad)
		}
	}

	e := &Engine{peerMD: md}
	mesh := &cluster.Cluster{TLS: &cluster.UpstreamTLS{CertSDS: sdsCert}}
	plain := &cluster.Cluster{}
	// Client side: added towards sidecars only.
	h := http.Header{}
	e.requestPeer(h, &exchange{}, false, plain)
	if len(h) != 0 {
		t.Errorf("metadata sent to a cluster without mesh mTLS: %v", h)
	}
	e.requestPeer(h, &exchange{}, false, mesh)
	if h.Get(peerMetadataHeader) != md[0] || len(h) != 1 {
		t.Errorf("request to a sidecar carries %v, want its metadata only", h)
	}
	// Server side: read and removed from the request (Envoy's id too),
	// answered once per connection.
	h.Set(peerIDHeader, "sidecar~10.0.0.1~x.y~y.svc.cluster.local")
	in, conn := &exchange{}, &chainConn{}
	e.requestPeer(h, in, true, plain)
	if len(h) != 0 || !in.peerSeen || in.peer != self {
		t.Errorf("inbound: headers left %v, peer %+v (%v)", h, in.peer, in.peerSeen)
	}
	resp := http.Header{}
	e.responsePeer(resp, in, conn, true, plain)
	if resp.Get(peerMetadataHeader) != md[0] {
		t.Errorf("the first answer to a sidecar lacks this proxy's metadata: %v", resp)
	}
	again := http.Header{}
	e.responsePeer(again, in, conn, true, plain)
	if len(again) != 0 {
		t.Errorf("the second answer on the connection repeats the metadata: %v", again)
	}
	quiet := http.Header{}
	e.responsePeer(quiet, &exchange{}, &chainConn{}, true, plain)
	if len(quiet) != 0 {
		t.Errorf("a caller that sent no metadata got some: %v", quiet)
	}
	// Client side again: the server's read and removed, then remembered
	// for the endpoint's answers without it.
	out := &exchange{upstream: "10.0.0.2:8080"}
	e.responsePeer(resp, out, &chainConn{}, false, mesh)
	if len(resp) != 0 || !out.peerSeen || out.peer != self {
		t.Errorf("outbound response: headers left %v, peer %+v", resp, out.peer)
	}
	later := &exchange{upstream: "10.0.0.2:8080"}
	e.responsePeer(http.Header{}, later, &chainConn{}, false, mesh)
	if !later.peerSeen || later.peer != self {
		t.Errorf("a later answer of the endpoint: peer %+v (%v), want the one it sent first", later.peer, later.peerSeen)
	}
	other := &exchange{upstream: "10.0.0.3:8080"}
	e.responsePeer(http.Header{}, other, &chainConn{}, false, mesh)
	if other.peerSeen {
		t.Errorf("another endpoint took its peer's metadata")
	}
}
