package storetest

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"

	"github.com/weftmesh/weft/internal/store"
)

// MemStore is a minimal in-memory store.Store for unit tests of the store's
// consumers (authn tokens, RBAC): CRUD with revisions and compare-and-swap,
// but no Watch (it returns an error) and no compaction. It is not a backend
// and does not pass the conformance suite. Create it with NewMemStore.
type MemStore struct {
	mu  sync.Mutex
	rev int64
	kvs map[string]store.KV
}

var _ store.Store = (*MemStore)(nil)

// NewMemStore returns an empty MemStore at revision 0.
func NewMemStore() *MemStore { return &MemStore{kvs: map[string]store.KV{}} }

// Get returns a copy of the value at key, or store.ErrNotFound.
func (m *MemStore) Get(_ context.Context, key string) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kv, ok := m.kvs[key]
	if !ok {
		return store.KV{}, store.ErrNotFound
	}
	kv.Value = append([]byte(nil), kv.Value...)
	return kv, nil
}

// List returns the keys under prefix in key order and the current revision.
func (m *MemStore) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.KV
	for k, kv := range m.kvs {
		if strings.HasPrefix(k, prefix) {
			kv.Value = append([]byte(nil), kv.Value...)
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, m.rev, nil
}

// Create stores a new key, or returns store.ErrExists.
func (m *MemStore) Create(_ context.Context, key string, value []byte) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.kvs[key]; ok {
		return store.KV{}, store.ErrExists
	}
	m.rev++
	kv := store.KV{Key: key, Value: append([]byte(nil), value...), CreateRevision: m.rev, ModRevision: m.rev}
	m.kvs[key] = kv
	return kv, nil
}

// Update replaces the value at key if its ModRevision is expectedRev (0:
// any), else returns store.ErrConflict.
func (m *MemStore) Update(_ context.Context, key string, value []byte, expectedRev int64) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kv, ok := m.kvs[key]
	if !ok {
		return store.KV{}, store.ErrNotFound
	}
	if expectedRev != 0 && kv.ModRevision != expectedRev {
		return store.KV{}, store.ErrConflict
	}
	m.rev++
	kv.Value, kv.ModRevision = append([]byte(nil), value...), m.rev
	m.kvs[key] = kv
	return kv, nil
}

// Delete removes key if its ModRevision is expectedRev (0: any).
func (m *MemStore) Delete(_ context.Context, key string, expectedRev int64) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kv, ok := m.kvs[key]
	if !ok {
		return store.KV{}, store.ErrNotFound
	}
	if expectedRev != 0 && kv.ModRevision != expectedRev {
		return store.KV{}, store.ErrConflict
	}
	m.rev++
	delete(m.kvs, key)
	kv.ModRevision = m.rev
	return kv, nil
}

// Watch is not supported: it always returns an error.
func (m *MemStore) Watch(context.Context, string, int64) (<-chan store.Event, error) {
	return nil, errors.New("storetest.MemStore: watch not supported")
}

// Revision returns the revision of the last write.
func (m *MemStore) Revision(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev, nil
}

// Compact does nothing.
func (m *MemStore) Compact(context.Context, int64) error { return nil }

// Close does nothing.
func (m *MemStore) Close() error { return nil }
