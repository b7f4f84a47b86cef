package etcd

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/weftmesh/weft/internal/store"
)

func init() {
	store.Register("etcd", func(ctx context.Context, cfg store.Config, log *slog.Logger) (store.Store, error) {
		if len(cfg.Endpoints) == 0 {
			return nil, fmt.Errorf("etcd: no endpoints: pass --etcd-endpoints=https://host:2379[,...]")
		}
		return Open(ctx, Config{
			Endpoints: cfg.Endpoints, Prefix: cfg.Prefix,
			CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile,
			Options: cfg.Options,
		}, log)
	})
}
