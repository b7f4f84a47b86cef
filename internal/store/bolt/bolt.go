// Package bolt is a single-node store.Store backed by a bbolt file.
//
// Layout: three buckets in one file.
//
//   - "kv":   key -> createRev(8) | modRev(8) | value — the current state.
//   - "log":  revision (8 bytes, big-endian) -> one encoded event, so a watch
//     can replay history in revision order with a cursor.
//   - "meta": "rev" (current revision) and "compacted" (every log entry with
//     a smaller revision may be gone).
//
// Every write is one bbolt read-write transaction; bbolt fsyncs on commit
// (NoSync stays false), so a write is durable before it is acknowledged and
// the revision survives a restart.
//
// Writes, the fan-out of their events and the registration of new watchers
// are serialised by one mutex, which is what makes the hand-over from log
// replay to live events gap-free and duplicate-free. Fan-out never blocks the
// writer: each watcher owns a channel with store.Options.WatchBuffer slots and
// a watcher whose channel is full is closed (without an EventError) and
// counted in DroppedWatchers; it is expected to resume with Watch from the
// last revision it processed.
//
// Events are shared between the watchers that receive them: consumers must
// not modify Event.KV.Value.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/weftmesh/weft/internal/store"
)

var (
	bucketKV   = []byte("kv")
	bucketLog  = []byte("log")
	bucketMeta = []byte("meta")

	metaRev       = []byte("rev")
	metaCompacted = []byte("compacted")
)

// Event kinds as stored in the log.
const (
	logPut    byte = 1
	logDelete byte = 2
)

// replayChunk bounds how many log entries one read transaction collects.
const replayChunk = 1024

// Store is a bbolt-backed store.Store. It is safe for concurrent use.
type Store struct {
	db     *bbolt.DB
	opts   store.Options
	logger *slog.Logger

	// mu serialises writes with their fan-out and with the registration of
	// watchers. Guards subs and closed.
	mu     sync.Mutex
	subs   map[*watcher]struct{}
	closed bool

	rev       atomic.Int64 // current revision; written under mu after commit
	compacted atomic.Int64 // history below this revision may be gone
	compactMu sync.Mutex   // serialises Compact calls

	dropped atomic.Int64
	closing chan struct{}
	wg      sync.WaitGroup // replay goroutines and the progress ticker
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the bbolt file at path.
func Open(path string, opts store.Options, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	s := &Store{
		db:      db,
		opts:    opts.WithDefaults(),
		logger:  logger.With("component", "store/bolt"),
		subs:    make(map[*watcher]struct{}),
		closing: make(chan struct{}),
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketLog, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		s.rev.Store(getInt(meta, metaRev))
		s.compacted.Store(getInt(meta, metaCompacted))
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("bolt: init %s: %w", path, err)
	}
	s.logger.Debug("opened", "path", path, "revision", s.rev.Load(), "compacted", s.compacted.Load())
	s.wg.Add(1)
	go s.progressLoop()
	return s, nil
}

// DroppedWatchers returns how many watchers were closed for being too slow.
func (s *Store) DroppedWatchers() int64 { return s.dropped.Load() }

// Close closes every watch and the database file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for w := range s.subs {
		s.removeLocked(w)
	}
	close(s.closing)
	s.mu.Unlock()
	s.wg.Wait()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("bolt: close: %w", err)
	}
	return nil
}

// Revision returns the current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if err := s.check(ctx, "revision"); err != nil {
		return 0, err
	}
	return s.rev.Load(), nil
}

// Get returns the current value of key.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.check(ctx, "get"); err != nil {
		return store.KV{}, err
	}
	var kv store.KV
	var found bool
	err := s.db.View(func(tx *bbolt.Tx) error {
		kv, found = getKV(tx, key)
		return nil
	})
	if err != nil {
		return store.KV{}, fmt.Errorf("bolt: get %q: %w", key, err)
	}
	if !found {
		return store.KV{}, fmt.Errorf("bolt: get %q: %w", key, store.ErrNotFound)
	}
	return kv, nil
}

// List returns every key with the given prefix in byte order, and the
// revision of the snapshot it was read from.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	if err := s.check(ctx, "list"); err != nil {
		return nil, 0, err
	}
	var out []store.KV
	var rev int64
	p := []byte(prefix)
	err := s.db.View(func(tx *bbolt.Tx) error {
		rev = getInt(tx.Bucket(bucketMeta), metaRev)
		c := tx.Bucket(bucketKV).Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			kv, err := decodeKV(k, v)
			if err != nil {
				return err
			}
			out = append(out, kv)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("bolt: list %q: %w", prefix, err)
	}
	return out, rev, nil
}

// Create stores key only if it does not exist.
func (s *Store) Create(ctx context.Context, key string, value []byte) (store.KV, error) {
	var kv store.KV
	err := s.write(ctx, "create", key, func(tx *bbolt.Tx, rev int64) (store.Event, error) {
		if _, found := getKV(tx, key); found {
			return store.Event{}, store.ErrExists
		}
		kv = store.KV{Key: key, Value: clone(value), CreateRevision: rev, ModRevision: rev}
		return store.Event{Type: store.EventPut, KV: kv, Created: true, Revision: rev}, putKV(tx, kv)
	})
	if err != nil {
		return store.KV{}, err
	}
	return kv, nil
}

// Update replaces key's value if its ModRevision is expectedRev (or
// expectedRev is 0).
func (s *Store) Update(ctx context.Context, key string, value []byte, expectedRev int64) (store.KV, error) {
	var kv store.KV
	err := s.write(ctx, "update", key, func(tx *bbolt.Tx, rev int64) (store.Event, error) {
		old, found := getKV(tx, key)
		if !found {
			return store.Event{}, store.ErrNotFound
		}
		if expectedRev != 0 && old.ModRevision != expectedRev {
			return store.Event{}, store.ErrConflict
		}
		kv = store.KV{Key: key, Value: clone(value), CreateRevision: old.CreateRevision, ModRevision: rev}
		return store.Event{Type: store.EventPut, KV: kv, Revision: rev}, putKV(tx, kv)
	})
	if err != nil {
		return store.KV{}, err
	}
	return kv, nil
}

// Delete removes key if its ModRevision is expectedRev (or expectedRev is 0)
// and returns the last value with ModRevision set to the deletion's revision.
func (s *Store) Delete(ctx context.Context, key string, expectedRev int64) (store.KV, error) {
	var kv store.KV
	err := s.write(ctx, "delete", key, func(tx *bbolt.Tx, rev int64) (store.Event, error) {
		old, found := getKV(tx, key)
		if !found {
			return store.Event{}, store.ErrNotFound
		}
		if expectedRev != 0 && old.ModRevision != expectedRev {
			return store.Event{}, store.ErrConflict
		}
		kv = old
		kv.ModRevision = rev
		return store.Event{Type: store.EventDelete, KV: kv, Revision: rev}, tx.Bucket(bucketKV).Delete([]byte(key))
	})
	if err != nil {
		return store.KV{}, err
	}
	return kv, nil
}

// write runs fn in one read-write transaction at revision current+1, appends
// the event fn returns to the log, commits (fsync) and fans the event out.
func (s *Store) write(ctx context.Context, op, key string, fn func(tx *bbolt.Tx, rev int64) (store.Event, error)) error {
	if key == "" {
		return fmt.Errorf("bolt: %s: empty key", op)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: %s %q: %w", op, key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("bolt: %s %q: %w", op, key, store.ErrClosed)
	}
	rev := s.rev.Load() + 1
	var ev store.Event
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		if ev, err = fn(tx, rev); err != nil {
			return err
		}
		if err := tx.Bucket(bucketLog).Put(revKey(rev), encodeEvent(ev)); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(metaRev, revKey(rev))
	})
	if err != nil {
		return fmt.Errorf("bolt: %s %q: %w", op, key, err)
	}
	s.rev.Store(rev)
	// Watchers share one copy of the value, separate from the caller's.
	ev.KV.Value = clone(ev.KV.Value)
	s.broadcastLocked(ev)
	return nil
}

// Compact discards log entries with a revision below rev. Compacting to a
// revision at or below the current compaction point is a no-op.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if err := s.check(ctx, "compact"); err != nil {
		return err
	}
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	if cur := s.rev.Load(); rev > cur {
		return fmt.Errorf("bolt: compact %d (current %d): %w", rev, cur, store.ErrFutureRevision)
	}
	if rev <= s.compacted.Load() {
		return nil
	}
	// Publish the compaction point first, in its own transaction: a replay
	// snapshot then either sees the old point with all entries, or the new
	// point (and fails) — never a hole it would not notice.
	err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaCompacted, revKey(rev))
	})
	if err != nil {
		return fmt.Errorf("bolt: compact %d: %w", rev, err)
	}
	s.compacted.Store(rev)
	// Delete in bounded transactions so writers are not held up for long.
	end := revKey(rev)
	deleted := 0
	for {
		n := 0
		err := s.db.Update(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketLog).Cursor()
			for k, _ := c.First(); k != nil && bytes.Compare(k, end) < 0 && n < 10000; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("bolt: compact %d: %w", rev, err)
		}
		deleted += n
		if n < 10000 {
			break
		}
		if err := ctx.Err(); err != nil {
			// The compaction point is recorded; the rest goes next time.
			return fmt.Errorf("bolt: compact %d: %w", rev, err)
		}
	}
	s.logger.Debug("compacted", "revision", rev, "deleted", deleted)
	return nil
}

func (s *Store) check(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: %s: %w", op, err)
	}
	select {
	case <-s.closing:
		return fmt.Errorf("bolt: %s: %w", op, store.ErrClosed)
	default:
		return nil
	}
}

// --- encoding ---

func revKey(rev int64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(rev))
	return b
}

func getInt(b *bbolt.Bucket, key []byte) int64 {
	v := b.Get(key)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

func getKV(tx *bbolt.Tx, key string) (store.KV, bool) {
	v := tx.Bucket(bucketKV).Get([]byte(key))
	if v == nil {
		return store.KV{}, false
	}
	kv, err := decodeKV([]byte(key), v)
	if err != nil {
		return store.KV{}, false
	}
	return kv, true
}

func putKV(tx *bbolt.Tx, kv store.KV) error {
	v := make([]byte, 16+len(kv.Value))
	binary.BigEndian.PutUint64(v[0:8], uint64(kv.CreateRevision))
	binary.BigEndian.PutUint64(v[8:16], uint64(kv.ModRevision))
	copy(v[16:], kv.Value)
	return tx.Bucket(bucketKV).Put([]byte(kv.Key), v)
}

func decodeKV(k, v []byte) (store.KV, error) {
	if len(v) < 16 {
		return store.KV{}, fmt.Errorf("corrupt value for key %q", k)
	}
	return store.KV{
		Key:            string(k),
		Value:          clone(v[16:]),
		CreateRevision: int64(binary.BigEndian.Uint64(v[0:8])),
		ModRevision:    int64(binary.BigEndian.Uint64(v[8:16])),
	}, nil
}

// encodeEvent: kind(1) | createRev(uvarint) | len(key)(uvarint) | key | value.
// The revision is the log key.
func encodeEvent(ev store.Event) []byte {
	kind := logPut
	if ev.Type == store.EventDelete {
		kind = logDelete
	}
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(ev.KV.Key)+len(ev.KV.Value))
	b = append(b, kind)
	b = binary.AppendUvarint(b, uint64(ev.KV.CreateRevision))
	b = binary.AppendUvarint(b, uint64(len(ev.KV.Key)))
	b = append(b, ev.KV.Key...)
	return append(b, ev.KV.Value...)
}

var errCorruptLog = errors.New("corrupt log entry")

// decodeEvent decodes a log entry, returning ok=false if its key does not
// have prefix (without copying the value).
func decodeEvent(k, v []byte, prefix []byte) (ev store.Event, ok bool, err error) {
	if len(k) != 8 || len(v) < 1 {
		return ev, false, errCorruptLog
	}
	rev := int64(binary.BigEndian.Uint64(k))
	kind := v[0]
	rest := v[1:]
	createRev, n := binary.Uvarint(rest)
	if n <= 0 {
		return ev, false, errCorruptLog
	}
	rest = rest[n:]
	klen, n := binary.Uvarint(rest)
	if n <= 0 || uint64(len(rest)-n) < klen {
		return ev, false, errCorruptLog
	}
	rest = rest[n:]
	key := rest[:klen]
	if !bytes.HasPrefix(key, prefix) {
		return ev, false, nil
	}
	ev = store.Event{
		Type:     store.EventPut,
		Revision: rev,
		KV: store.KV{
			Key:            string(key),
			Value:          clone(rest[klen:]),
			CreateRevision: int64(createRev),
			ModRevision:    rev,
		},
	}
	switch kind {
	case logPut:
		ev.Created = int64(createRev) == rev
	case logDelete:
		ev.Type = store.EventDelete
	default:
		return ev, false, errCorruptLog
	}
	return ev, true, nil
}
