package nomad

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/registry"
)

// propagation is how soon a change in Nomad must reach the sink.
const propagation = time.Second

// recorder is a registry.Sink keeping every state it receives.
type recorder struct {
	mu     sync.Mutex
	states []registry.State
	notify chan struct{}
}

func (r *recorder) Update(source string, st registry.State) {
	if source != SourceName {
		panic("unexpected source " + source)
	}
	r.mu.Lock()
	r.states = append(r.states, st)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

// waitFor returns the first state after the first `after` updates for which
// ok holds, failing the test if none arrives within timeout.
func (r *recorder) waitFor(t *testing.T, after int, timeout time.Duration, what string, ok func(registry.State) bool) registry.State {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	next := after
	for {
		r.mu.Lock()
		pending := r.states[min(next, len(r.states)):]
		next = len(r.states)
		r.mu.Unlock()
		for _, st := range pending {
			if ok(st) {
				return st
			}
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no state with %s within %v; %d states, last: %s", what, timeout, len(r.states), dump(r.states[max(len(r.states)-1, 0):]))
		}
	}
}

// change applies a change and waits for the state it should produce,
// logging the measured propagation latency.
func (r *recorder) change(t *testing.T, what string, do func(), ok func(registry.State) bool) registry.State {
	t.Helper()
	n := r.count()
	start := time.Now()
	do()
	st := r.waitFor(t, n, propagation, what, ok)
	t.Logf("%s: reached the sink in %v", what, time.Since(start).Round(10*time.Microsecond))
	return st
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// logCounter is a slog.Handler that counts records by message and can
// signal each one.
type logCounter struct {
	mu     sync.Mutex
	counts map[string]int
	times  map[string][]time.Time
	notify chan string
}

func newLogCounter() *logCounter {
	return &logCounter{counts: map[string]int{}, times: map[string][]time.Time{}, notify: make(chan string, 1024)}
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.times[r.Message] = append(h.times[r.Message], r.Time)
	h.mu.Unlock()
	select {
	case h.notify <- r.Message:
	default:
	}
	return nil
}
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

func (h *logCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// start runs a source against fake until the test ends.
func start(t *testing.T, cfg Config, logger *slog.Logger) *recorder {
	t.Helper()
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 30 * time.Second // long: changes must come from index moves
	}
	src, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rec := &recorder{notify: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, rec) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return rec
}
