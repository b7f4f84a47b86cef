package nomad

import (
	"testing"

	"github.com/weftmesh/weft/internal/registry/registrytest"
)

// TestNoOtherSources: registry sources never import each other, not even in
// tests.
func TestNoOtherSources(t *testing.T) { registrytest.CheckImports(t) }
