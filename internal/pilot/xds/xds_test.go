package xds

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestProxyFromNodeLocality: a proxy's locality is its istio-locality
// label ("region.zone.subzone", as Kubernetes labels cannot hold "/"),
// else the node's locality, else unknown.
func TestProxyFromNodeLocality(t *testing.T) {
	labels := func(kv ...string) *structpb.Struct {
		f := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			f[kv[i]] = kv[i+1]
		}
		s, _ := structpb.NewStruct(map[string]any{"LABELS": f})
		return s
	}
	const id = "sidecar~10.0.0.1~a.default~default.svc.cluster.local"
	for name, tc := range map[string]struct {
		node *core.Node
		want string
	}{
		"none":  {&core.Node{Id: id}, ""},
		"node":  {&core.Node{Id: id, Locality: &core.Locality{Region: "us-east", Zone: "us-east-1a"}}, "us-east/us-east-1a/"},
		"label": {&core.Node{Id: id, Metadata: labels("istio-locality", "eu-west.eu-west-1b.rack7")}, "eu-west/eu-west-1b/rack7"},
		"label over node": {&core.Node{Id: id, Locality: &core.Locality{Region: "us-east"},
			Metadata: labels("istio-locality", "eu-west.eu-west-1b")}, "eu-west/eu-west-1b"},
	} {
		p, err := ProxyFromNode(tc.node)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p.Locality != tc.want {
			t.Errorf("%s: locality %q, want %q", name, p.Locality, tc.want)
		}
	}
}
