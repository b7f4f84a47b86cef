package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/storetest"
	"github.com/weftmesh/weft/internal/testutil/etcdtest"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var prefixSeq atomic.Int64

func openStore(t testing.TB, endpoints []string, prefix string, opts store.Options) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Endpoints: endpoints, Prefix: prefix, DialTimeout: 10 * time.Second, Options: opts}, quietLogger())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestConformance runs the suite against one single-member cluster. Each
// subtest gets its own key prefix; they run one after the other, so the
// cluster-wide revision and compaction only ever move under one subtest.
func TestConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	storetest.Run(t,
		func(t *testing.T) store.Store {
			prefix := fmt.Sprintf("/weft-test/%d/", prefixSeq.Add(1))
			return openStore(t, c.Endpoints(), prefix, storetest.Options())
		},
		func(t *testing.T, s store.Store) store.Store {
			es := s.(*Store)
			if err := es.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return openStore(t, c.Endpoints(), es.prefix, storetest.Options())
		})
}

func TestOpenUnreachable(t *testing.T) {
	// Nothing listens on port 1 of loopback.
	start := time.Now()
	_, err := Open(context.Background(), Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond}, quietLogger())
	if err == nil {
		t.Fatal("Open of an unreachable cluster succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Open took %s, want about the 500ms DialTimeout", d)
	}
	t.Logf("error: %v", err)
}

// TestMemberFailure kills the leader of a 3-member cluster while writes are
// going on: writes and reads keep working, and every acknowledged write is
// still there (and in the watch history) after the member comes back.
func TestMemberFailure(t *testing.T) {
	c := etcdtest.Start(t, 3)
	s := openStore(t, c.Endpoints(), "/weft-ha/", storetest.Options())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	startRev, err := s.Revision(ctx)
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}

	var mu sync.Mutex
	acked := map[string]int64{} // key -> ModRevision of the acknowledged Create
	write := func(key string) error {
		// Retry transient errors (leader change); a retried Create that
		// finds the key already there was acknowledged by the first try.
		deadline := time.Now().Add(20 * time.Second)
		for {
			wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
			kv, err := s.Create(wctx, key, []byte(key))
			wcancel()
			if err == nil {
				mu.Lock()
				acked[key] = kv.ModRevision
				mu.Unlock()
				return nil
			}
			if errors.Is(err, store.ErrExists) {
				got, gerr := s.Get(ctx, key)
				if gerr == nil && string(got.Value) == key {
					mu.Lock()
					acked[key] = got.ModRevision
					mu.Unlock()
					return nil
				}
				return fmt.Errorf("create %s: %v / %v", key, err, gerr)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("create %s: %w", key, err)
			}
		}
	}
	writers := func(phase string, n int) {
		var wg sync.WaitGroup
		errc := make(chan error, 4)
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < n; i++ {
					if err := write(fmt.Sprintf("%s/%d/%03d", phase, w, i)); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatal(err)
		}
	}

	writers("before", 25)
	leader := leaderIndex(t, c)
	t.Logf("killing leader m%d", leader)
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		c.Stop(leader)
	}()
	writers("during", 25) // races with the kill
	<-killed
	writers("after", 25)
	for key := range acked {
		if _, err := s.Get(ctx, key); err != nil {
			t.Fatalf("read %s with a member down: %v", key, err)
		}
	}

	c.Restart(leader)
	// Every member, including the restarted one, has every acknowledged write.
	for i := 0; i < 3; i++ {
		ms := openStore(t, []string{c.Endpoint(i)}, "/weft-ha/", storetest.Options())
		kvs, _, err := ms.List(ctx, "")
		if err != nil {
			t.Fatalf("List via m%d: %v", i, err)
		}
		have := map[string]bool{}
		for _, kv := range kvs {
			have[kv.Key] = true
		}
		for key := range acked {
			if !have[key] {
				t.Fatalf("acknowledged write %s missing on m%d", key, i)
			}
		}
	}
	if len(acked) != 3*4*25 {
		t.Fatalf("%d writes acknowledged, want %d", len(acked), 300)
	}

	// The watch history has every acknowledged write, in revision order.
	ch, err := s.Watch(ctx, "", startRev)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	seen := 0
	last := startRev
	timeout := time.After(storetest.WaitTimeout)
	for seen < len(acked) {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d events", seen)
			}
			if ev.Type == store.EventProgress {
				continue
			}
			if ev.Type != store.EventPut || ev.Revision <= last || acked[ev.KV.Key] != ev.Revision {
				t.Fatalf("unexpected event %+v (last rev %d, acked rev %d)", ev, last, acked[ev.KV.Key])
			}
			last = ev.Revision
			seen++
		case <-timeout:
			t.Fatalf("watch replayed %d of %d writes within %s", seen, len(acked), storetest.WaitTimeout)
		}
	}
}

func leaderIndex(t *testing.T, c *etcdtest.Cluster) int {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	defer cli.Close()
	for i, ep := range c.Endpoints() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		if err != nil {
			t.Fatalf("Status(%s): %v", ep, err)
		}
		if st.Header.MemberId == st.Leader {
			return i
		}
	}
	t.Fatal("no leader found")
	return -1
}

func benchStore(b *testing.B) *Store {
	c := etcdtest.Start(b, 1)
	return openStore(b, c.Endpoints(), "/weft-bench/", store.Options{})
}

func BenchmarkCreate(b *testing.B)          { storetest.BenchCreate(b, benchStore(b)) }
func BenchmarkList10k(b *testing.B)         { storetest.BenchList(b, benchStore(b), 10000) }
func BenchmarkWatchFanout1000(b *testing.B) { storetest.BenchWatchFanout(b, benchStore(b), 1000) }

func TestVersionAtLeastFixed(t *testing.T) {
	for v, want := range map[string]bool{"3.4.23": false, "3.4.25": true, "3.5.7": false, "3.5.8": true, "3.6.0": true, "3.7.3": true, "3.3.27": false, "garbage": false, "4.0.0": true} {
		if got := versionAtLeastFixed(v); got != want {
			t.Errorf("versionAtLeastFixed(%q) = %v, want %v", v, got, want)
		}
	}
}
