package nomad

import (
	"log/slog"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/registry/registrytest"
)

// propagation is how soon a change in Nomad must reach the sink.
const propagation = time.Second

// start runs a source against fake until the test ends.
func start(t *testing.T, cfg Config, logger *slog.Logger) *registrytest.Recorder {
	t.Helper()
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 30 * time.Second // long: changes must come from index moves
	}
	src, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return registrytest.Run(t, src)
}
