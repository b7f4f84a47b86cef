// Package all links every store backend into the binary that imports it.
package all

import (
	// Backends register themselves in init.
	_ "github.com/weftmesh/weft/internal/store/bolt"
	_ "github.com/weftmesh/weft/internal/store/etcd"
)
