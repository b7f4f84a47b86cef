package cluster

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// expectedUnsupported lists the clusters of pilot's golden files that
// weft-proxy rejects, with why. Empty: everything pilot emits compiles.
var expectedUnsupported = map[string]string{}

// TestCompilePilotCorpus compiles every Cluster (with its EDS assignment)
// that pilot's translation golden files hold.
func TestCompilePilotCorpus(t *testing.T) {
	files, err := filepath.Glob("../../pilot/translate/testdata/cds/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	n := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Clusters  []json.RawMessage `json:"clusters"`
			Endpoints []json.RawMessage `json:"endpoints"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		las := map[string]*endpointv3.ClusterLoadAssignment{}
		for _, r := range doc.Endpoints {
			la := &endpointv3.ClusterLoadAssignment{}
			if err := protojson.Unmarshal(r, la); err != nil {
				t.Fatalf("%s: endpoints: %v", f, err)
			}
			las[la.GetClusterName()] = la
		}
		for _, r := range doc.Clusters {
			c := &clusterv3.Cluster{}
			if err := protojson.Unmarshal(r, c); err != nil {
				t.Fatalf("%s: cluster: %v", f, err)
			}
			n++
			var la *endpointv3.ClusterLoadAssignment
			if c.GetType() == clusterv3.Cluster_EDS {
				la = las[c.GetEdsClusterConfig().GetServiceName()]
				if la == nil {
					t.Errorf("%s: %s: no load assignment", filepath.Base(f), c.GetName())
				}
			}
			got, err := Compile(c, la)
			if why, ok := expectedUnsupported[c.GetName()]; ok {
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("%s: %s: want unsupported (%s), got %v", filepath.Base(f), c.GetName(), why, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", filepath.Base(f), err)
				continue
			}
			// Clusters with endpoints must be pickable.
			if len(got.Endpoints()) > 0 {
				if _, err := got.Pick(PickContext{HashKey: 42, HasHash: true}); err != nil && !errors.Is(err, ErrNoHealthyUpstream) {
					t.Errorf("%s: %s: Pick: %v", filepath.Base(f), c.GetName(), err)
				}
			}
		}
	}
	t.Logf("compiled %d clusters from %d files", n, len(files))
}
