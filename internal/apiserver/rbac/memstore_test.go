package rbac

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"

	"github.com/weftmesh/weft/internal/store"
)

// memStore is a minimal in-memory store.Store for tests.
type memStore struct {
	mu  sync.Mutex
	rev int64
	kvs map[string]store.KV
}

var _ store.Store = (*memStore)(nil)

func newMemStore() *memStore { return &memStore{kvs: map[string]store.KV{}} }

func (m *memStore) Get(_ context.Context, key string) (store.KV, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kv, ok := m.kvs[key]
	if !ok {
		return store.KV{}, store.ErrNotFound
	}
	kv.Value = append([]byte(nil), kv.Value...)
	return kv, nil
}

func (m *memStore) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
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

func (m *memStore) Create(_ context.Context, key string, value []byte) (store.KV, error) {
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

func (m *memStore) Update(_ context.Context, key string, value []byte, expectedRev int64) (store.KV, error) {
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

func (m *memStore) Delete(_ context.Context, key string, expectedRev int64) (store.KV, error) {
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

func (m *memStore) Watch(context.Context, string, int64) (<-chan store.Event, error) {
	return nil, errors.New("memStore: watch not supported")
}

func (m *memStore) Revision(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev, nil
}

func (m *memStore) Compact(context.Context, int64) error { return nil }

func (m *memStore) Close() error { return nil }
