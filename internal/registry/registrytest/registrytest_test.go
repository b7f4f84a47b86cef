package registrytest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/registry"
)

// staticSource reports one state, then waits for the end.
type staticSource struct{ st registry.State }

func (staticSource) Name() string { return "static" }

func (s staticSource) Run(ctx context.Context, sink registry.Sink) error {
	sink.Update("static", s.st)
	<-ctx.Done()
	return nil
}

func TestRunAndWaitFor(t *testing.T) {
	st := registry.State{Endpoints: []registry.Endpoint{{Hostname: "a"}, {Hostname: "b"}, {Hostname: "a"}}}
	rec := Run(t, staticSource{st})
	got := rec.WaitFor(t, 0, 5*time.Second, "the state", func(s registry.State) bool { return len(s.Endpoints) == 3 })
	if n := len(Endpoints(got, "a")); n != 2 {
		t.Errorf("Endpoints(a) = %d, want 2", n)
	}
	if rec.Count() != 1 {
		t.Errorf("Count = %d, want 1", rec.Count())
	}
}

func TestLogCounter(t *testing.T) {
	logs := NewLogCounter()
	log := slog.New(logs).With("k", "v")
	go func() {
		for range 3 {
			log.Warn("retry")
		}
	}()
	logs.Await(t, "retry", 3, 5*time.Second)
	logs.CheckSpacing(t, "retry", 0, time.Second)
	if n := logs.Count("other"); n != 0 {
		t.Errorf("Count(other) = %d", n)
	}
}

func TestCheckImports(t *testing.T) { CheckImports(t) }
