package server

import (
	"log/slog"

	"github.com/weftmesh/weft/internal/registry"
	// Link the optional sources (consul, nomad).
	_ "github.com/weftmesh/weft/internal/registry/all"
	"github.com/weftmesh/weft/internal/registry/serviceentry"
	"github.com/weftmesh/weft/internal/store"
)

// newServiceEntrySource is the always-on source: ServiceEntry and
// WorkloadEntry objects from the config store.
func newServiceEntrySource(st store.Store, log *slog.Logger) (registry.Source, error) {
	return serviceentry.New(st, serviceentry.Mesh{}, log), nil
}

// newRegistrySource builds an extra source from a --registry flag value.
func newRegistrySource(spec string, log *slog.Logger) (registry.Source, error) {
	return registry.NewSource(spec, log)
}
