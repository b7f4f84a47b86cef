package store

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
)

// Config selects and configures a backend. Each backend reads the fields it
// needs and ignores the rest.
type Config struct {
	// Backend is the registered name: "bolt" or "etcd".
	Backend string
	// DataDir holds the bolt database file (weft.db).
	DataDir string
	// Endpoints are the etcd client URLs.
	Endpoints []string
	// Prefix is the etcd key prefix. Default "/weft".
	Prefix string
	// CAFile, CertFile and KeyFile configure TLS to etcd.
	CAFile, CertFile, KeyFile string
	// Options are the knobs every backend shares.
	Options Options
}

// Factory opens a backend.
type Factory func(ctx context.Context, cfg Config, log *slog.Logger) (Store, error)

var (
	mu        sync.Mutex
	factories = map[string]Factory{}
)

// Register makes a backend available by name. It panics on a duplicate, as
// that is a programming error caught at start-up.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := factories[name]; dup {
		panic("store: backend registered twice: " + name)
	}
	factories[name] = f
}

// Backends lists the registered backend names.
func Backends() []string {
	mu.Lock()
	defer mu.Unlock()
	names := make([]string, 0, len(factories))
	for n := range factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open opens the backend cfg.Backend names.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (Store, error) {
	mu.Lock()
	f, ok := factories[cfg.Backend]
	mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("store: unknown backend %q (available: %s)", cfg.Backend, strings.Join(Backends(), ", "))
	}
	return f(ctx, cfg, log)
}
