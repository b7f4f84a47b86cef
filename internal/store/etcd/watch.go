package etcd

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/internal/store"
)

// Watch streams changes under prefix with revision > fromRev. Compacted and
// future revisions are detected synchronously with a read at fromRev; a
// compaction racing with the start of the watch is reported in-stream as an
// EventError wrapping store.ErrCompacted.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) (<-chan store.Event, error) {
	if err := s.begin(ctx, "watch", prefix); err != nil {
		return nil, err
	}
	if fromRev < 0 {
		return nil, fmt.Errorf("etcd: watch %q from %d: negative revision", prefix, fromRev)
	}
	if fromRev == 0 {
		rev, err := s.Revision(ctx)
		if err != nil {
			return nil, err
		}
		fromRev = rev
	} else {
		// State at fromRev must still exist for (fromRev, now] to be complete.
		if _, err := s.kv.Get(ctx, s.prefix, clientv3.WithRev(fromRev), clientv3.WithLimit(1), clientv3.WithCountOnly()); err != nil {
			return nil, s.wrap(fmt.Sprintf("watch from %d", fromRev), prefix, err)
		}
	}

	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, s.wrap("watch", prefix, store.ErrClosed)
	}
	s.wg.Add(1)
	s.mu.RUnlock()

	// The etcd watch hangs off the store's context, not the caller's, so
	// that all watches share one gRPC stream (the stream is chosen by the
	// context's metadata) and RequestProgress reaches them all. The
	// caller's context only cancels it.
	wctx, cancel := context.WithCancel(s.ctx)
	stop := context.AfterFunc(ctx, cancel)
	wch := s.w.Watch(wctx, s.prefix+prefix,
		clientv3.WithPrefix(),
		clientv3.WithRev(fromRev+1),
		clientv3.WithPrevKV(),
		clientv3.WithCreatedNotify(),
		clientv3.WithProgressNotify(),
	)
	out := make(chan store.Event, s.opts.WatchBuffer)
	s.watches.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.watches.Add(-1)
		defer close(out)
		defer stop()
		defer cancel()
		s.forward(wctx, prefix, fromRev, wch, out)
	}()
	return out, nil
}

// forward translates etcd watch responses into store events on out. It
// returns when the etcd channel closes, on an error, or when out is full.
func (s *Store) forward(wctx context.Context, prefix string, fromRev int64, wch clientv3.WatchChan, out chan<- store.Event) {
	var (
		lastEvent    = fromRev // highest PUT/DELETE revision delivered
		lastProgress int64     // highest PROGRESS revision delivered
		created      = time.Now()
		caughtUpRev  int64 // revision current when the watch was created
		caughtUp     bool
	)
	grace := min(s.opts.ProgressInterval, time.Second)
	send := func(ev store.Event) bool {
		select {
		case out <- ev:
			return true
		default:
		}
		if ev.Type != store.EventProgress && ev.Revision <= caughtUpRev {
			// History that existed when the watch was created: like the
			// bolt backend's replay, it waits for the consumer (the amount
			// is bounded).
			select {
			case out <- ev:
				return true
			case <-wctx.Done():
				return false
			}
		}
		// A live event and a full buffer. etcd hands events over in
		// batches (and a consumer that just replayed history gets the
		// backlog at once), so allow a short grace before closing.
		// Nothing waits on this but this watch: etcd writes never block
		// on watchers.
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case out <- ev:
			return true
		case <-wctx.Done():
			return false
		case <-timer.C:
		}
		n := s.dropped.Add(1)
		s.logger.Warn("closed slow watcher", "prefix", prefix, "revision", ev.Revision, "buffer", s.opts.WatchBuffer, "dropped_total", n)
		return false
	}
	for wresp := range wch {
		if wresp.Created {
			caughtUpRev = wresp.Header.Revision
			caughtUp = fromRev >= caughtUpRev
			continue
		}
		if wresp.Canceled || wresp.Err() != nil {
			if wctx.Err() != nil || s.isClosed() {
				return
			}
			var err error
			if wresp.CompactRevision != 0 {
				err = fmt.Errorf("etcd: watch %q from %d (compacted at %d): %w", prefix, lastEvent, wresp.CompactRevision, store.ErrCompacted)
			} else {
				err = s.wrap("watch", prefix, wresp.Err())
			}
			s.logger.Debug("watch failed", "prefix", prefix, "err", err)
			select {
			case out <- store.Event{Type: store.EventError, Err: err, Revision: lastEvent}:
			default:
			}
			return
		}
		if wresp.IsProgressNotify() {
			rev := wresp.Header.Revision
			if !s.progressTrusted {
				rev = lastEvent
				caughtUp = true
			}
			if !caughtUp {
				if time.Since(created) < s.opts.ProgressInterval {
					continue // may still be replaying history; see package doc
				}
				caughtUp = true
			}
			if rev < lastEvent || rev < lastProgress {
				continue
			}
			if !send(store.Event{Type: store.EventProgress, Revision: rev}) {
				return
			}
			lastProgress = rev
			continue
		}
		for _, e := range wresp.Events {
			ev := s.toEvent(e)
			if ev.Revision <= lastEvent {
				continue // duplicate after a transparent resume
			}
			if ev.Revision <= lastProgress && s.progressTrusted {
				s.logger.Error("etcd delivered an event after a progress notification covering it (etcd server bug, see etcd-io/etcd#15220)",
					"prefix", prefix, "event_revision", ev.Revision, "progress_revision", lastProgress)
			}
			if !send(ev) {
				return
			}
			lastEvent = ev.Revision
			if !caughtUp && caughtUpRev > 0 && ev.Revision >= caughtUpRev {
				caughtUp = true
			}
		}
	}
}

func (s *Store) toEvent(e *clientv3.Event) store.Event {
	kv := s.toKV(e.Kv)
	if e.Type == mvccpb.DELETE {
		// The deletion's Kv has only the key and the revision; the last
		// value comes from PrevKv (absent if that revision was compacted).
		if e.PrevKv != nil {
			kv.Value = e.PrevKv.Value
			kv.CreateRevision = e.PrevKv.CreateRevision
		}
		return store.Event{Type: store.EventDelete, KV: kv, Revision: kv.ModRevision}
	}
	return store.Event{
		Type:     store.EventPut,
		KV:       kv,
		Created:  kv.CreateRevision == kv.ModRevision,
		Revision: kv.ModRevision,
	}
}

// progressLoop asks etcd for a progress notification on every watch once
// per ProgressInterval while any watch is open. etcd broadcasts the answer
// to all watches of the stream.
func (s *Store) progressLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.watches.Load() == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.ProgressInterval)
		err := s.w.RequestProgress(ctx)
		cancel()
		if err != nil && s.ctx.Err() == nil {
			s.logger.Debug("request progress", "err", err)
		}
	}
}
