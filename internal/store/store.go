// Package store defines weft's persistence contract: a flat, ordered key space
// with a single monotonically increasing revision, compare-and-swap writes and
// watches that can resume from any revision that has not been compacted.
//
// The contract follows etcd's MVCC model, expressed in Kubernetes terms:
//
//   - Every successful write (create, update, delete) advances the store's
//     revision by exactly one. A key's ModRevision is the revision of the write
//     that produced its current value; CreateRevision is the revision that
//     created it.
//   - Update and Delete take the ModRevision the caller last saw. Zero means
//     "whatever is there now" (the key must still exist). A mismatch returns
//     ErrConflict and writes nothing.
//   - Watch(ctx, prefix, fromRev) delivers, in revision order and without gaps,
//     every change to keys under prefix with a revision strictly greater than
//     fromRev (fromRev == 0 means "from now on"). If any revision in
//     (fromRev, now] may have been discarded by Compact, Watch fails with
//     ErrCompacted.
//   - A write is acknowledged only once it is durable.
//
// Backends live in sub-packages and all pass the storetest conformance suite.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Backends wrap them with context; callers test with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: Create on a key that already exists.
	ErrExists = errors.New("already exists")
	// ErrConflict: the expected ModRevision did not match.
	ErrConflict = errors.New("revision conflict")
	// ErrCompacted: the requested revision has been compacted away.
	ErrCompacted = errors.New("revision compacted")
	// ErrFutureRevision: the requested revision is newer than the store's.
	ErrFutureRevision = errors.New("revision is in the future")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store closed")
)

// KV is one key with its value and revisions.
type KV struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
}

// EventType says what an Event reports.
type EventType int

const (
	// EventPut is a create or an update of KV.Key.
	EventPut EventType = iota + 1
	// EventDelete is a deletion; KV holds the last value and ModRevision is
	// the revision of the deletion.
	EventDelete
	// EventProgress says that every change up to and including Revision has
	// been delivered on this watch. KV is empty.
	EventProgress
	// EventError carries Err; the channel is closed right after it.
	EventError
)

// String returns the event type's name.
func (t EventType) String() string {
	switch t {
	case EventPut:
		return "PUT"
	case EventDelete:
		return "DELETE"
	case EventProgress:
		return "PROGRESS"
	case EventError:
		return "ERROR"
	}
	return "UNKNOWN"
}

// Event is one change delivered by Watch.
type Event struct {
	Type EventType
	// KV is the new value for EventPut, the last value for EventDelete.
	KV KV
	// Created is true for the EventPut that created the key.
	Created bool
	// Revision is the revision of the change (KV.ModRevision) or, for
	// EventProgress, the revision up to which the watch is complete.
	Revision int64
	// Err is set for EventError (for example ErrCompacted).
	Err error
}

// Reader reads current state.
type Reader interface {
	// Get returns the current value of key, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key with the given prefix in key order, and the
	// store revision the list is consistent with.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
}

// Writer changes state. Every successful call advances the revision by one.
type Writer interface {
	// Create stores key only if it does not exist (ErrExists otherwise).
	Create(ctx context.Context, key string, value []byte) (KV, error)
	// Update replaces key's value if its ModRevision equals expectedRev, or if
	// expectedRev is 0. ErrNotFound if the key is gone, ErrConflict on a
	// revision mismatch.
	Update(ctx context.Context, key string, value []byte, expectedRev int64) (KV, error)
	// Delete removes key under the same precondition as Update and returns
	// its last value with ModRevision set to the deletion's revision.
	Delete(ctx context.Context, key string, expectedRev int64) (KV, error)
}

// Watcher streams changes.
type Watcher interface {
	// Watch streams changes under prefix with revision > fromRev (see the
	// package doc). The channel is closed when ctx ends, the store closes, or
	// the consumer falls too far behind; a consumer that sees the channel
	// close without an EventError resumes with Watch from the last revision
	// it processed.
	Watch(ctx context.Context, prefix string, fromRev int64) (<-chan Event, error)
}

// Store is the full contract a backend implements.
type Store interface {
	Reader
	Writer
	Watcher
	// Revision returns the store's current revision.
	Revision(ctx context.Context) (int64, error)
	// Compact discards history before rev: afterwards Watch(fromRev) with
	// fromRev+1 < rev fails with ErrCompacted. Current values are kept.
	Compact(ctx context.Context, rev int64) error
	// Close releases the backend. Pending watches are closed.
	Close() error
}

// Options are the knobs every backend understands.
type Options struct {
	// ProgressInterval is how often an idle watch gets an EventProgress.
	// Default 5s.
	ProgressInterval time.Duration
	// WatchBuffer is how many undelivered events a watch may hold before it
	// is closed as too slow. Default 1024.
	WatchBuffer int
}

// WithDefaults fills zero fields with their defaults.
func (o Options) WithDefaults() Options {
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 5 * time.Second
	}
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = 1024
	}
	return o
}
