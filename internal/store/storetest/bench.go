package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

// BenchCreate measures one acknowledged (durable) Create.
func BenchCreate(b *testing.B, s store.Store) {
	ctx := context.Background()
	value := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Create(ctx, fmt.Sprintf("bench/create/%09d", i), value); err != nil {
			b.Fatalf("Create: %v", err)
		}
	}
}

// BenchList measures listing a prefix holding n keys (256-byte values). The
// keys are written by 16 concurrent writers before the timer starts.
func BenchList(b *testing.B, s store.Store, n int) {
	ctx := context.Background()
	prefix := fmt.Sprintf("bench/list%d/", n)
	value := make([]byte, 256)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if _, err := s.Create(ctx, fmt.Sprintf("%s%09d", prefix, i), value); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		b.Fatalf("populate: %v", err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		kvs, _, err := s.List(ctx, prefix)
		if err != nil {
			b.Fatalf("List: %v", err)
		}
		if len(kvs) != n {
			b.Fatalf("List returned %d keys, want %d", len(kvs), n)
		}
	}
}

// BenchWatchFanout measures the time from the start of one write until all
// of n watchers on its prefix have received the event.
func BenchWatchFanout(b *testing.B, s store.Store, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := fmt.Sprintf("bench/fanout%d/", n)
	var got atomic.Int64
	done := make(chan struct{}, 1)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		ch, err := s.Watch(ctx, prefix, 0)
		if err != nil {
			b.Fatalf("Watch %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range ch {
				if ev.Type == store.EventPut && got.Add(1) == int64(n) {
					done <- struct{}{}
				}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()

	key := prefix + "k"
	if _, err := s.Create(ctx, key, []byte("0")); err != nil {
		b.Fatalf("Create: %v", err)
	}
	wait := func() {
		select {
		case <-done:
		case <-time.After(WaitTimeout):
			b.Fatalf("only %d of %d watchers got the event within %s", got.Load(), n, WaitTimeout)
		}
	}
	wait()
	value := []byte("v")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got.Store(0)
		if _, err := s.Update(ctx, key, value, 0); err != nil {
			b.Fatalf("Update: %v", err)
		}
		wait()
	}
	b.StopTimer()
}
