package registry

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
)

// Factory builds a source from the part of a --registry flag after
// "<kind>=", e.g. "127.0.0.1:8500,token=T" for "consul=127.0.0.1:8500,token=T".
type Factory func(spec string, log *slog.Logger) (Source, error)

var (
	factoryMu sync.Mutex
	factories = map[string]Factory{}
)

// RegisterFactory makes a source kind available to --registry. It panics on
// a duplicate, a programming error caught at start-up.
func RegisterFactory(kind string, f Factory) {
	factoryMu.Lock()
	defer factoryMu.Unlock()
	if _, dup := factories[kind]; dup {
		panic("registry: source kind registered twice: " + kind)
	}
	factories[kind] = f
}

// Kinds lists the registered source kinds.
func Kinds() []string {
	factoryMu.Lock()
	defer factoryMu.Unlock()
	out := make([]string, 0, len(factories))
	for k := range factories {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// NewSource builds a source from a --registry flag value "<kind>=<spec>".
func NewSource(flag string, log *slog.Logger) (Source, error) {
	kind, spec, ok := strings.Cut(flag, "=")
	if !ok || spec == "" {
		return nil, fmt.Errorf("invalid --registry %q: want <kind>=<address>[,options], e.g. consul=127.0.0.1:8500 (kinds: %s)", flag, strings.Join(Kinds(), ", "))
	}
	factoryMu.Lock()
	f, ok := factories[kind]
	factoryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("invalid --registry %q: unknown kind %q (kinds: %s)", flag, kind, strings.Join(Kinds(), ", "))
	}
	src, err := f(spec, log)
	if err != nil {
		return nil, fmt.Errorf("invalid --registry %q: %w", flag, err)
	}
	return src, nil
}
