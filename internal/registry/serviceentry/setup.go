package serviceentry

import (
	"log/slog"

	"github.com/weftmesh/weft/internal/store"
)

// SourceName is the name the source reports under (registry.Service.Source).
const SourceName = "serviceentry"

// DefaultDomainSuffix is the mesh's cluster domain suffix.
const DefaultDomainSuffix = "svc.cluster.local"

// Store is what the source needs from weft's config store: listing and
// watching key prefixes.
type Store interface {
	store.Reader
	store.Watcher
}

// Mesh is the mesh-wide information the source needs.
type Mesh struct {
	// DomainSuffix is the cluster domain suffix. Default "svc.cluster.local".
	// ServiceEntry hosts are taken literally, as Istio does, so short host
	// names are never qualified with it; it is kept so that every source is
	// constructed from the same mesh information.
	DomainSuffix string
}

// New returns a source that serves the ServiceEntry and WorkloadEntry objects
// held in st. A nil logger discards logs.
func New(st Store, mesh Mesh, logger *slog.Logger) *Source {
	if mesh.DomainSuffix == "" {
		mesh.DomainSuffix = DefaultDomainSuffix
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{
		st:     st,
		mesh:   mesh,
		logger: logger.With("component", "registry.serviceentry"),
	}
}
