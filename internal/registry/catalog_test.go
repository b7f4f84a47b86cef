package registry

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"testing"
	"time"
)

// fakeCatalog answers CatalogWatch's queries from channels: each blocking
// query waits for the next answer the test sends.
type fakeCatalog struct {
	lists chan []string
	gets  chan fakeGet
}

type fakeGet struct {
	key, v string
	err    error
}

func (f *fakeCatalog) list(ctx context.Context, index uint64) ([]string, uint64, error) {
	select {
	case keys := <-f.lists:
		return keys, index + 1, nil
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
}

// get answers only the gets addressed to key; others are put back.
func (f *fakeCatalog) get(ctx context.Context, key string, index uint64) (string, uint64, error) {
	for {
		select {
		case g := <-f.gets:
			if g.key != key {
				f.gets <- g
				continue
			}
			return g.v, index + 1, g.err
		case <-ctx.Done():
			return "", 0, ctx.Err()
		}
	}
}

type stateSink chan State

func (s stateSink) Update(_ string, st State) { s <- st }

func TestCatalogWatch(t *testing.T) {
	f := &fakeCatalog{lists: make(chan []string), gets: make(chan fakeGet, 4)}
	w := &CatalogWatch[string, string]{
		Source: "fake", Logger: slog.New(slog.DiscardHandler), RetryMin: time.Millisecond, RetryMax: time.Millisecond,
		ListName: "list", List: f.list,
		GetName: "get", Get: f.get, GetLogAttrs: func(k string) []any { return []any{"key", k} },
		State: func(answers map[string]string) State {
			var st State
			for k, v := range answers {
				st.Services = append(st.Services, Service{Hostname: k + "=" + v})
			}
			sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Hostname < st.Services[j].Hostname })
			return st
		},
	}
	sink := make(stateSink, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx, sink) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	want := func(hosts ...string) {
		t.Helper()
		select {
		case st := <-sink:
			var got []string
			for _, s := range st.Services {
				got = append(got, s.Hostname)
			}
			if !slices.Equal(got, hosts) {
				t.Fatalf("state %q, want %q", got, hosts)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no state, want %q", hosts)
		}
	}

	f.lists <- []string{"a", "b"}
	f.gets <- fakeGet{key: "a", v: "1"}
	// No report until b's first query finished; a failure counts.
	f.gets <- fakeGet{key: "b", err: errors.New("down")}
	want("a=1", "b=")
	f.gets <- fakeGet{key: "b", v: "2"}
	want("a=1", "b=2")
	f.lists <- []string{"b"}
	want("b=2")
}
