package bolt

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/weftmesh/weft/internal/store"
)

// FileName is the database file inside the data directory.
const FileName = "weft.db"

func init() {
	store.Register("bolt", func(_ context.Context, cfg store.Config, log *slog.Logger) (store.Store, error) {
		if cfg.DataDir == "" {
			return nil, fmt.Errorf("bolt: a data directory is required")
		}
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("bolt: %w", err)
		}
		return Open(filepath.Join(cfg.DataDir, FileName), cfg.Options, log)
	})
}
