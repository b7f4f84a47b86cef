package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLeanDependencies keeps the data plane lean: weft-proxy must never link
// the API server, the store, pilot or Kubernetes' client libraries.
func TestLeanDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/weftmesh/weft/internal/apiserver",
		"github.com/weftmesh/weft/internal/store",
		"github.com/weftmesh/weft/internal/pilot",
		"github.com/weftmesh/weft/internal/server",
		"k8s.io/client-go",
		"go.etcd.io/",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 5 {
		t.Fatalf("go list -deps returned only %d packages: %s", len(deps), out)
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("weft-proxy links %s (forbidden prefix %s)", d, f)
			}
		}
	}
}
