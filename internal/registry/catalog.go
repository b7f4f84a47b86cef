package registry

import (
	"context"
	"log/slog"
	"reflect"
	"sync"
	"time"
)

// CatalogWatch is the run loop of the sources that read a remote catalog
// with blocking queries (Consul, Nomad): one query lists the services, and
// one per listed service, started and stopped as the list changes, reads
// its instances. Every query is retried with Backoff after a failure and
// follows NextIndex. The complete state is reported after every change,
// once the list and every listed service have been read once.
//
// K identifies a service; V is one answer of its query.
type CatalogWatch[K comparable, V any] struct {
	// Source is the name the state is reported under (Sink.Update).
	Source string
	// Logger logs failed and recovered queries and state changes.
	Logger *slog.Logger
	// RetryMin and RetryMax bound the backoff after a failed query.
	RetryMin, RetryMax time.Duration

	// ListName names the list query in logs: "<ListName> query failed",
	// "<ListName> query recovered".
	ListName string
	// List runs the list query, blocking while the catalog's index is
	// index, and returns the services listed and the answer's index.
	List func(ctx context.Context, index uint64) (keys []K, lastIndex uint64, err error)

	// GetName names the per-service query in logs: "<GetName> query failed".
	GetName string
	// GetLogAttrs are the log attributes that name service key.
	GetLogAttrs func(key K) []any
	// Get runs the query of service key, blocking while its index is index,
	// and returns its answer and the answer's index.
	Get func(ctx context.Context, key K, index uint64) (v V, lastIndex uint64, err error)

	// State builds the registry state from the last answer of every listed
	// service (the zero V for a service whose first query failed).
	State func(answers map[K]V) State
}

// catalogService is the watcher of one listed service.
type catalogService[V any] struct {
	cancel context.CancelFunc
	// done: the first query finished (successfully or not).
	done   bool
	answer V
}

// catalogState is what the query goroutines share with Run.
type catalogState[K comparable, V any] struct {
	mu       sync.Mutex
	synced   bool // the list has been read once
	services map[K]*catalogService[V]
	dirty    chan struct{} // capacity 1: "something changed"
}

func (w *catalogState[K, V]) signal() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// Run watches the catalog until ctx ends and reports the complete state to
// sink after every change. Query errors are logged and retried; Run returns
// nil when ctx ends.
func (c *CatalogWatch[K, V]) Run(ctx context.Context, sink Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	w := &catalogState[K, V]{services: map[K]*catalogService[V]{}, dirty: make(chan struct{}, 1)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.watchList(ctx, w, &wg)
	}()
	var last *State
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.dirty:
		}
		st, ready := c.state(w)
		if !ready || (last != nil && reflect.DeepEqual(*last, st)) {
			continue
		}
		c.Logger.Debug("state changed", "services", len(st.Services), "endpoints", len(st.Endpoints))
		sink.Update(c.Source, st)
		last = &st
	}
}

// watchList runs the list query and starts and stops the per-service
// watchers.
func (c *CatalogWatch[K, V]) watchList(ctx context.Context, w *catalogState[K, V], wg *sync.WaitGroup) {
	var index uint64
	failures := 0
	for {
		keys, lastIndex, err := c.List(ctx, index)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			d := Backoff(c.RetryMin, c.RetryMax, failures)
			c.Logger.Warn(c.ListName+" query failed", "err", err, "failures", failures, "retry_in", d)
			if !Sleep(ctx, d) {
				return
			}
			continue
		}
		if failures > 0 {
			c.Logger.Info(c.ListName+" query recovered", "failures", failures)
		}
		failures = 0
		index = NextIndex(index, lastIndex)

		present := make(map[K]bool, len(keys))
		for _, k := range keys {
			present[k] = true
		}
		w.mu.Lock()
		for k := range present {
			if _, ok := w.services[k]; ok {
				continue
			}
			sctx, scancel := context.WithCancel(ctx)
			sw := &catalogService[V]{cancel: scancel}
			w.services[k] = sw
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.watchService(sctx, w, k, sw)
			}()
		}
		for k, sw := range w.services {
			if !present[k] {
				sw.cancel()
				delete(w.services, k)
			}
		}
		w.synced = true
		w.mu.Unlock()
		w.signal()
	}
}

// watchService runs the query of one service until ctx ends (the service
// left the list, or Run ended).
func (c *CatalogWatch[K, V]) watchService(ctx context.Context, w *catalogState[K, V], k K, sw *catalogService[V]) {
	var index uint64
	failures := 0
	for {
		v, lastIndex, err := c.Get(ctx, k, index)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			d := Backoff(c.RetryMin, c.RetryMax, failures)
			c.Logger.Warn(c.GetName+" query failed", append(c.GetLogAttrs(k), "err", err, "failures", failures, "retry_in", d)...)
			w.mu.Lock()
			first := !sw.done
			sw.done = true
			w.mu.Unlock()
			if first {
				w.signal() // do not hold back the first report for one service
			}
			if !Sleep(ctx, d) {
				return
			}
			continue
		}
		failures = 0
		index = NextIndex(index, lastIndex)
		w.mu.Lock()
		sw.done, sw.answer = true, v
		w.mu.Unlock()
		w.signal()
	}
}

// state builds the registry state; ready is false until the list and every
// listed service have been read once.
func (c *CatalogWatch[K, V]) state(w *catalogState[K, V]) (State, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced {
		return State{}, false
	}
	answers := make(map[K]V, len(w.services))
	for k, sw := range w.services {
		if !sw.done {
			return State{}, false
		}
		answers[k] = sw.answer
	}
	return c.State(answers), true
}
