// Package registrytest holds the test helpers the registry sources share:
// Recorder, a sink that waits for the state a test expects; Run, which runs
// a source until the test ends; LogCounter, a log handler that counts and
// times messages; and CheckImports, the rule that sources never import
// each other. Only tests import it.
package registrytest

import (
	"context"
	"encoding/json"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/testutil/fakeagent"
)

// Recorder is a registry.Sink that keeps every state one source reports.
// Create it with NewRecorder (or Run).
type Recorder struct {
	source string
	mu     sync.Mutex
	states []registry.State
	notify chan struct{}
}

// NewRecorder returns a Recorder for source; an update from any other
// source panics.
func NewRecorder(source string) *Recorder {
	return &Recorder{source: source, notify: make(chan struct{}, 1)}
}

// Update records st.
func (r *Recorder) Update(source string, st registry.State) {
	if source != r.source {
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

// Count returns how many states have been reported.
func (r *Recorder) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

// WaitFor returns the first state, among those reported after the first
// `after`, for which ok holds; it fails the test if none comes within
// timeout. what describes the state in the failure.
func (r *Recorder) WaitFor(t testing.TB, after int, timeout time.Duration, what string, ok func(registry.State) bool) registry.State {
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
			t.Fatalf("no state with %s within %v; %d states, last: %s", what, timeout, len(r.states), Dump(r.states[max(len(r.states)-1, 0):]))
		}
	}
}

// Change runs do and waits, at most timeout, for the state it should
// produce (ok), logging how long the change took to reach the sink.
func (r *Recorder) Change(t testing.TB, timeout time.Duration, what string, do func(), ok func(registry.State) bool) registry.State {
	t.Helper()
	n := r.Count()
	start := time.Now()
	do()
	st := r.WaitFor(t, n, timeout, what, ok)
	t.Logf("%s: reached the sink in %v", what, time.Since(start).Round(10*time.Microsecond))
	return st
}

// Run runs src until the test ends and returns the Recorder it reports to.
// At the end it cancels Run and fails the test unless Run returns nil
// within 5s.
func Run(t testing.TB, src registry.Source) *Recorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rec := NewRecorder(src.Name())
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

// Endpoints returns the endpoints of host in st.
func Endpoints(st registry.State, host string) []registry.Endpoint {
	var out []registry.Endpoint
	for _, e := range st.Endpoints {
		if e.Hostname == host {
			out = append(out, e)
		}
	}
	return out
}

// Dump formats v as indented JSON for failure messages.
func Dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// Quiet returns a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// LogCounter is a slog.Handler that counts and timestamps records by
// message. Create it with NewLogCounter.
type LogCounter struct {
	mu     sync.Mutex
	counts map[string]int
	times  map[string][]time.Time
	notify chan struct{}
}

// NewLogCounter returns an empty LogCounter.
func NewLogCounter() *LogCounter {
	return &LogCounter{counts: map[string]int{}, times: map[string][]time.Time{}, notify: make(chan struct{}, 1)}
}

// Enabled is true at every level.
func (h *LogCounter) Enabled(context.Context, slog.Level) bool { return true }

// Handle counts r.
func (h *LogCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.times[r.Message] = append(h.times[r.Message], r.Time)
	h.mu.Unlock()
	select {
	case h.notify <- struct{}{}:
	default:
	}
	return nil
}

// WithAttrs returns h: attributes are not counted.
func (h *LogCounter) WithAttrs([]slog.Attr) slog.Handler { return h }

// WithGroup returns h: groups are not counted.
func (h *LogCounter) WithGroup(string) slog.Handler { return h }

// Count returns how many records with message msg were logged.
func (h *LogCounter) Count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// Await waits until at least n records with message msg were logged; it
// fails the test if that takes longer than timeout.
func (h *LogCounter) Await(t testing.TB, msg string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for h.Count(msg) < n {
		select {
		case <-h.notify:
		case <-deadline.C:
			t.Fatalf("only %d of %d %q logs within %v", h.Count(msg), n, msg, timeout)
		}
	}
}

// CheckSpacing fails the test unless successive records with message msg
// were logged between lo and hi apart (a retry backoff).
func (h *LogCounter) CheckSpacing(t testing.TB, msg string, lo, hi time.Duration) {
	t.Helper()
	h.mu.Lock()
	times := append([]time.Time(nil), h.times[msg]...)
	h.mu.Unlock()
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < lo || gap > hi {
			t.Errorf("%q %d came %v after the previous one; want backoff within [%v, %v]", msg, i, gap, lo, hi)
		}
	}
}

// CheckImports fails the test if a Go file of the package in the current
// directory, tests included, imports a registry source: sources never
// import each other (the conventions test checks non-test imports
// module-wide). This package is allowed.
func CheckImports(t testing.TB) {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "github.com/weftmesh/weft/internal/registry/"
	for _, f := range files {
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, prefix) && p != prefix+"registrytest" {
				t.Errorf("%s imports %s: registry sources must not import each other", f, p)
			}
		}
	}
}

// ParseCase is one case of a source's Parse test: Spec parses into Want,
// or fails with an error containing Err.
type ParseCase[C any] struct {
	Spec string
	Want C
	Err  string
}

// CheckParse runs parse on every case.
func CheckParse[C any](t testing.TB, parse func(spec string) (C, error), cases []ParseCase[C]) {
	t.Helper()
	for _, tc := range cases {
		got, err := parse(tc.Spec)
		if tc.Err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.Err) {
				t.Errorf("Parse(%q) error %v, want one containing %q", tc.Spec, err, tc.Err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.Spec, err)
			continue
		}
		if d := cmp.Diff(got, tc.Want); d != "" {
			t.Errorf("Parse(%q) (-got +want):\n%s", tc.Spec, d)
		}
	}
}

// CheckBlocking checks that a source watching agent uses blocking queries:
// it waits until a query on every path is parked, then checks that each
// path had a query with an index, that every such query asked for wait
// (as sent, e.g. "7000ms"), and that no request arrives while the source
// is idle.
func CheckBlocking(t testing.TB, agent *fakeagent.Agent, wait string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if !agent.AwaitBlocked(p, 1, 5*time.Second) {
			t.Fatalf("no blocked query on %s", p)
		}
	}
	blocking := map[string]int{}
	for _, r := range agent.Requests() {
		if r.Query.Get("index") == "" || r.Query.Get("index") == "0" {
			continue
		}
		if got := r.Query.Get("wait"); got != wait {
			t.Errorf("%s?%s: wait=%q, want %s", r.Path, r.Query.Encode(), got, wait)
		}
		blocking[r.Path]++
	}
	for _, p := range paths {
		if blocking[p] == 0 {
			t.Errorf("no blocking query (index>0) on %s; requests: %v", p, agent.Requests())
		}
	}
	// Idle: the source must stay parked in blocking queries, not poll. A
	// poll would come within this quiet period.
	before := len(agent.Requests())
	idle := time.NewTimer(300 * time.Millisecond)
	defer idle.Stop()
	<-idle.C
	if n := len(agent.Requests()) - before; n != 0 {
		t.Errorf("%d requests while idle, want 0 (blocked)", n)
	}
}
