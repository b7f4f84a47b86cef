package serviceentry

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/store"
)

// flakyStore forwards to a real store but lets a test break the live
// watches: close them silently or end them with an error event.
type flakyStore struct {
	Store
	mu      sync.Mutex
	lists   map[string]int
	watches map[string]int
	breaks  []chan error
}

func (f *flakyStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	f.mu.Lock()
	f.lists[prefix]++
	f.mu.Unlock()
	return f.Store.List(ctx, prefix)
}

func (f *flakyStore) Watch(ctx context.Context, prefix string, rev int64) (<-chan store.Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	in, err := f.Store.Watch(ctx, prefix, rev)
	if err != nil {
		cancel()
		return nil, err
	}
	brk := make(chan error, 1)
	f.mu.Lock()
	f.watches[prefix]++
	f.breaks = append(f.breaks, brk)
	f.mu.Unlock()
	out := make(chan store.Event)
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case ev, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			case err := <-brk:
				if err != nil {
					select {
					case out <- store.Event{Type: store.EventError, Err: err}:
					case <-ctx.Done():
					}
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// breakAll ends every watch opened so far with err (nil: a silent close).
func (f *flakyStore) breakAll(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.breaks {
		select {
		case b <- err:
		default:
		}
	}
	f.breaks = nil
}

func (f *flakyStore) counts(kind string) (lists, watches int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := kindPrefix(kind)
	return f.lists[p], f.watches[p]
}

func TestWatchDisruptions(t *testing.T) {
	real := openStore(t)
	fs := &flakyStore{Store: real, lists: map[string]int{}, watches: map[string]int{}}
	rec := run(t, fs)
	rec.WaitFor(t, 0, waitTimeout, "empty state", func(s registry.State) bool { return len(s.Services) == 0 })
	hosts := func(s registry.State) string {
		var h []string
		for _, svc := range s.Services {
			h = append(h, svc.Hostname)
		}
		return strings.Join(h, ",")
	}

	n := rec.Count()
	writeObject(t, real, seObject("a", "zero", map[string]any{"hosts": []any{"zero.example"}}), "")
	rec.WaitFor(t, n, waitTimeout, "zero", func(s registry.State) bool { return hosts(s) == "zero.example" })

	// A silently closed watch resumes from the last revision (no re-list).
	fs.breakAll(nil)
	n = rec.Count()
	writeObject(t, real, seObject("a", "one", map[string]any{"hosts": []any{"one.example"}}), "")
	rec.WaitFor(t, n, waitTimeout, "one after close", func(s registry.State) bool { return hosts(s) == "one.example,zero.example" })
	if l, w := fs.counts("ServiceEntry"); l != 2 || w != 2 {
		// Two lists: the store was empty at start (see tryOpen).
		t.Errorf("after a close: %d lists, %d watches of ServiceEntries; want 2, 2", l, w)
	}

	// A compacted watch re-lists; so does any other watch error.
	weLists, _ := fs.counts("WorkloadEntry")
	fs.breakAll(store.ErrCompacted)
	n = rec.Count()
	writeObject(t, real, seObject("a", "two", map[string]any{"hosts": []any{"two.example"}}), "")
	rec.WaitFor(t, n, waitTimeout, "two after compaction", func(s registry.State) bool { return hosts(s) == "one.example,two.example,zero.example" })
	if l, w := fs.counts("ServiceEntry"); l != 3 || w != 3 {
		t.Errorf("after compaction: %d lists, %d watches of ServiceEntries; want 3, 3", l, w)
	}
	if l, _ := fs.counts("WorkloadEntry"); l != weLists+1 {
		t.Errorf("after compaction: %d lists of WorkloadEntries, want %d", l, weLists+1)
	}
}
