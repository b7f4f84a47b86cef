// Package all links every optional registry source (those enabled with
// --registry) into the binary that imports it.
package all

import (
	// Sources register their factories in init.
	_ "github.com/weftmesh/weft/internal/registry/consul"
	_ "github.com/weftmesh/weft/internal/registry/nomad"
)
