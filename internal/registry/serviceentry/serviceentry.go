// Package serviceentry is the registry source for Istio ServiceEntry and
// WorkloadEntry objects held in weft's config store. Each ServiceEntry host
// becomes one registry.Service; its endpoints come from spec.endpoints or,
// with a workloadSelector, from the matching WorkloadEntries of the same
// namespace. The source lists both kinds, then watches their key prefixes
// and reports its complete state after every change.
package serviceentry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// Source serves ServiceEntries and WorkloadEntries. Create it with New.
type Source struct {
	st     Store
	mesh   Mesh
	logger *slog.Logger
}

var _ registry.Source = (*Source)(nil)

// Name returns "serviceentry".
func (s *Source) Name() string { return SourceName }

// Retry bounds for store errors other than compaction (which re-lists at once).
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
	// maxBatch bounds how many queued events are folded into one update.
	maxBatch = 1024
)

// watched is the list+watch state of one kind.
type watched struct {
	kind     string // "ServiceEntry" or "WorkloadEntry"
	prefix   string
	workload bool
	objs     map[string]*object
	rev      int64 // last revision applied
	skipTo   int64 // ignore events at or below this revision (see open)
	ch       <-chan store.Event
	relist   bool
	failures int
}

// Run lists ServiceEntries and WorkloadEntries, reports the state, then
// watches both prefixes and reports the complete state after each batch of
// changes that alters it. It returns nil when ctx ends and an error only if
// the store is closed.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	ws := []*watched{
		{kind: "ServiceEntry", prefix: kindPrefix("ServiceEntry"), relist: true},
		{kind: "WorkloadEntry", prefix: kindPrefix("WorkloadEntry"), workload: true, relist: true},
	}
	var last *registry.State
	for {
		for _, w := range ws {
			if err := s.open(ctx, w); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		st := translate(ws[0].objs, ws[1].objs)
		if last == nil || !reflect.DeepEqual(*last, st) {
			s.logger.Debug("state changed", "services", len(st.Services), "endpoints", len(st.Endpoints),
				"service_entry_revision", ws[0].rev, "workload_entry_revision", ws[1].rev)
			sink.Update(SourceName, st)
			last = &st
		}
		// Wait for one event, then fold in whatever else is queued.
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-ws[0].ch:
			s.apply(ws[0], ev, ok)
		case ev, ok := <-ws[1].ch:
			s.apply(ws[1], ev, ok)
		}
		for range maxBatch {
			select {
			case ev, ok := <-ws[0].ch:
				s.apply(ws[0], ev, ok)
				continue
			case ev, ok := <-ws[1].ch:
				s.apply(ws[1], ev, ok)
				continue
			default:
			}
			break
		}
	}
}

// kindPrefix is the store prefix of every object of an Istio networking kind.
func kindPrefix(kind string) string {
	for _, k := range resource.All() {
		if k.Kind == kind && k.Group == "networking.istio.io" {
			return k.KeyPrefix("")
		}
	}
	panic("serviceentry: unknown kind " + kind)
}

// open makes sure w has a live watch, re-listing first when needed. Store
// errors are retried with backoff until ctx ends; a closed store is fatal.
func (s *Source) open(ctx context.Context, w *watched) error {
	for w.ch == nil {
		err := s.tryOpen(ctx, w)
		if err == nil {
			w.failures = 0
			return nil
		}
		if errors.Is(err, store.ErrClosed) {
			return fmt.Errorf("serviceentry: %s: %w", w.kind, err)
		}
		if errors.Is(err, store.ErrCompacted) {
			w.relist = true
			continue
		}
		w.relist = true
		w.failures++
		d := backoff(w.failures)
		s.logger.Warn("store error, retrying", "kind", w.kind, "err", err, "retry_in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func (s *Source) tryOpen(ctx context.Context, w *watched) error {
	if !w.relist {
		ch, err := s.st.Watch(ctx, w.prefix, w.rev)
		if err != nil {
			return err
		}
		w.ch = ch
		return nil
	}
	kvs, rev, err := s.st.List(ctx, w.prefix)
	if err != nil {
		return err
	}
	var ch <-chan store.Event
	if rev == 0 {
		// Watch(0) means "from now on": open it first, then list again so
		// that no write between the two calls is lost; events already
		// reflected in the second list are skipped.
		if ch, err = s.st.Watch(ctx, w.prefix, 0); err != nil {
			return err
		}
		if kvs, rev, err = s.st.List(ctx, w.prefix); err != nil {
			return err
		}
		w.skipTo = rev
	} else {
		if ch, err = s.st.Watch(ctx, w.prefix, rev); err != nil {
			return err
		}
		w.skipTo = 0
	}
	w.objs = make(map[string]*object, len(kvs))
	for _, kv := range kvs {
		s.put(w, kv)
	}
	w.rev, w.ch, w.relist = rev, ch, false
	s.logger.Debug("listed", "kind", w.kind, "objects", len(w.objs), "revision", rev)
	return nil
}

// apply folds one watch event (ok false: the channel closed) into w.
func (s *Source) apply(w *watched, ev store.Event, ok bool) {
	if !ok {
		// Closed without an error (slow consumer, store restart): resume
		// from the last revision, or re-list if there is none (Watch from 0
		// would mean "from now on" and could miss writes).
		w.ch = nil
		w.relist = w.rev == 0
		return
	}
	if ev.Type != store.EventError && ev.Revision <= w.skipTo {
		return
	}
	switch ev.Type {
	case store.EventPut:
		s.put(w, ev.KV)
		w.rev = ev.Revision
	case store.EventDelete:
		delete(w.objs, ev.KV.Key)
		w.rev = ev.Revision
	case store.EventProgress:
		w.rev = ev.Revision
	case store.EventError:
		if !errors.Is(ev.Err, store.ErrCompacted) {
			s.logger.Warn("watch failed, re-listing", "kind", w.kind, "err", ev.Err)
		}
		w.ch, w.relist = nil, true
	}
}

// put decodes kv into w, dropping (and logging) objects that do not decode.
func (s *Source) put(w *watched, kv store.KV) {
	ns := strings.SplitN(strings.TrimPrefix(kv.Key, w.prefix), "/", 2)[0]
	o, err := decodeObject(kv.Value, ns, w.workload)
	if err != nil {
		s.logger.Warn("skipping object that does not decode", "kind", w.kind, "key", kv.Key, "err", err)
		delete(w.objs, kv.Key)
		return
	}
	w.objs[kv.Key] = o
}

// backoff returns an exponential delay with jitter, bounded by retryMax.
func backoff(failures int) time.Duration {
	d := retryMin << min(failures-1, 10)
	if d > retryMax {
		d = retryMax
	}
	// Jitter in [d/2, d).
	return d/2 + rand.N(d/2)
}
