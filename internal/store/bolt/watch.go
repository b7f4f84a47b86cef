package bolt

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/weftmesh/weft/internal/store"
)

// watcher is one Watch call. Before it is registered in Store.subs its
// channel belongs to the replay goroutine; afterwards every send and the
// close happen under Store.mu.
type watcher struct {
	prefix  string
	bprefix []byte
	ch      chan store.Event

	// Guarded by Store.mu once registered.
	lastRev int64       // highest revision delivered (event or progress)
	active  bool        // got an event since the last progress tick
	done    bool        // channel closed
	stop    func() bool // deregisters the context.AfterFunc
}

// Watch streams changes under prefix with revision > fromRev. Validation
// (closed, future, compacted) is synchronous; history is replayed from the
// log by a goroutine that then hands over to live fan-out under the write
// mutex, so no revision is skipped or delivered twice.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) (<-chan store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: watch %q: %w", prefix, err)
	}
	if fromRev < 0 {
		return nil, fmt.Errorf("bolt: watch %q from %d: negative revision", prefix, fromRev)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("bolt: watch %q: %w", prefix, store.ErrClosed)
	}
	cur := s.rev.Load()
	if fromRev == 0 {
		fromRev = cur
	}
	if fromRev > cur {
		s.mu.Unlock()
		return nil, fmt.Errorf("bolt: watch %q from %d (current %d): %w", prefix, fromRev, cur, store.ErrFutureRevision)
	}
	if c := s.compacted.Load(); fromRev+1 < c {
		s.mu.Unlock()
		return nil, fmt.Errorf("bolt: watch %q from %d (compacted %d): %w", prefix, fromRev, c, store.ErrCompacted)
	}
	w := &watcher{prefix: prefix, bprefix: []byte(prefix), ch: make(chan store.Event, s.opts.WatchBuffer)}
	if fromRev == cur {
		s.registerLocked(ctx, w, cur)
		s.mu.Unlock()
		return w.ch, nil
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.replay(ctx, w, fromRev)
	return w.ch, nil
}

func (s *Store) registerLocked(ctx context.Context, w *watcher, rev int64) {
	w.lastRev = rev
	s.subs[w] = struct{}{}
	w.stop = context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.removeLocked(w)
		s.mu.Unlock()
	})
}

// removeLocked closes w's channel and forgets it. Idempotent.
func (s *Store) removeLocked(w *watcher) {
	if w.done {
		return
	}
	w.done = true
	delete(s.subs, w)
	if w.stop != nil {
		w.stop()
	}
	close(w.ch)
}

// dropLocked closes a watcher whose buffer is full.
func (s *Store) dropLocked(w *watcher) {
	s.removeLocked(w)
	n := s.dropped.Add(1)
	s.logger.Warn("closed slow watcher", "prefix", w.prefix, "last_revision", w.lastRev, "buffer", s.opts.WatchBuffer, "dropped_total", n)
}

// broadcastLocked hands ev to every matching registered watcher without
// blocking. Called under mu right after the commit of ev.
func (s *Store) broadcastLocked(ev store.Event) {
	for w := range s.subs {
		if !strings.HasPrefix(ev.KV.Key, w.prefix) {
			continue
		}
		select {
		case w.ch <- ev:
			w.lastRev = ev.Revision
			w.active = true
		default:
			s.dropLocked(w)
		}
	}
}

// replay sends the logged events after from, then registers w for live
// events. Most of the history is read and sent without holding mu (sends
// block, bounded by ctx and Close); the last stretch is read under mu so that
// nothing can be committed between the end of the replay and registration.
func (s *Store) replay(ctx context.Context, w *watcher, from int64) {
	defer s.wg.Done()
	last := from
	fail := func(err error) {
		select {
		case w.ch <- store.Event{Type: store.EventError, Err: err, Revision: last}:
		case <-ctx.Done():
		case <-s.closing:
		}
		close(w.ch)
	}
	for pass := 0; ; pass++ {
		evs, scanned, snapRev, err := s.readLog(w.bprefix, last)
		if err != nil {
			fail(err)
			return
		}
		for _, ev := range evs {
			select {
			case w.ch <- ev:
			case <-ctx.Done():
				close(w.ch)
				return
			case <-s.closing:
				close(w.ch)
				return
			}
		}
		last = scanned
		if last < snapRev {
			continue // more in this snapshot
		}
		if behind := s.rev.Load() - last; behind > int64(s.opts.WatchBuffer/2) && pass < 4 {
			continue // still far behind: another pass without the lock
		}
		break
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || ctx.Err() != nil {
		close(w.ch)
		return
	}
	// Writers are held off from here on; the store's revision is fixed.
	for last < s.rev.Load() {
		evs, scanned, _, err := s.readLog(w.bprefix, last)
		if err != nil {
			// Sending may not block under mu; a full buffer just closes.
			select {
			case w.ch <- store.Event{Type: store.EventError, Err: err, Revision: last}:
			default:
			}
			close(w.ch)
			return
		}
		for _, ev := range evs {
			select {
			case w.ch <- ev:
			default:
				w.done = true
				close(w.ch)
				n := s.dropped.Add(1)
				s.logger.Warn("closed slow watcher during replay", "prefix", w.prefix, "revision", ev.Revision, "dropped_total", n)
				return
			}
		}
		last = scanned
	}
	s.registerLocked(ctx, w, last)
}

// readLog reads, from one consistent snapshot, up to replayChunk log entries
// after revision after, returning those under prefix, the revision of the
// last entry scanned, and the snapshot's current revision.
func (s *Store) readLog(prefix []byte, after int64) (evs []store.Event, scanned, snapRev int64, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		snapRev = getInt(meta, metaRev)
		if c := getInt(meta, metaCompacted); after+1 < c {
			return fmt.Errorf("bolt: watch from %d (compacted %d): %w", after, c, store.ErrCompacted)
		}
		scanned = after
		c := tx.Bucket(bucketLog).Cursor()
		n := 0
		for k, v := c.Seek(revKey(after + 1)); k != nil && n < replayChunk; k, v = c.Next() {
			ev, ok, err := decodeEvent(k, v, prefix)
			if err != nil {
				return fmt.Errorf("bolt: watch: log entry %x: %w", k, err)
			}
			scanned = int64(binary.BigEndian.Uint64(k))
			n++
			if ok {
				evs = append(evs, ev)
			}
		}
		if n < replayChunk {
			scanned = snapRev
		}
		return nil
	})
	return evs, scanned, snapRev, err
}

// progressLoop sends EventProgress with the current revision to every
// registered watcher that is idle or behind the store's revision. It runs
// under mu, so the progress is ordered after every event it covers.
func (s *Store) progressLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		cur := s.rev.Load()
		for w := range s.subs {
			if w.active && w.lastRev == cur {
				w.active = false
				continue
			}
			w.active = false
			select {
			case w.ch <- store.Event{Type: store.EventProgress, Revision: cur}:
				w.lastRev = cur
			default:
				s.dropLocked(w)
			}
		}
		s.mu.Unlock()
	}
}
