// Package storetest is the conformance suite every store.Store backend runs:
// CRUD and sentinel errors, revision accounting, ordered prefix listing,
// compare-and-swap under contention, watch ordering, resumption, progress,
// compaction, restart, slow-watcher isolation and cancellation. It also holds
// shared benchmarks, and MemStore, a minimal store for unit tests of the
// store's consumers.
//
// The suite never sleeps to synchronise: it waits on channels with a bounded
// timeout (WaitTimeout) and fails with a description of what it waited for.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

// Options returns the store.Options that open (and reopen) must pass to the
// backend: a short progress interval so progress tests are quick, and a small
// watch buffer so the slow-watcher test stays cheap.
func Options() store.Options {
	return store.Options{ProgressInterval: 200 * time.Millisecond, WatchBuffer: 128}
}

// Dropper is implemented by backends that count watchers closed for being
// too slow; the suite checks the counter when it is available.
type Dropper interface {
	DroppedWatchers() int64
}

// Run runs the conformance suite. open returns a fresh, empty store built
// with Options() and registers its Close with t.Cleanup. reopen closes s and
// opens the same data again (a restart), also with Options().
//
// Revision assertions are exact ("+1 per write"): the backend under test must
// not be written to by anyone else while a subtest runs.
func Run(t *testing.T, open func(t *testing.T) store.Store, reopen func(t *testing.T, s store.Store) store.Store) {
	t.Run("CRUD", func(t *testing.T) { testCRUD(t, open(t)) })
	t.Run("List", func(t *testing.T) { testList(t, open(t)) })
	t.Run("CAS", func(t *testing.T) { testCAS(t, open(t)) })
	t.Run("WatchOrder", func(t *testing.T) { testWatchOrder(t, open(t)) })
	t.Run("WatchResume", func(t *testing.T) { testWatchResume(t, open(t)) })
	t.Run("WatchReplayLarge", func(t *testing.T) { testWatchReplayLarge(t, open(t)) })
	t.Run("WatchFromNow", func(t *testing.T) { testWatchFromNow(t, open(t)) })
	t.Run("WatchProgress", func(t *testing.T) { testWatchProgress(t, open(t)) })
	t.Run("Compaction", func(t *testing.T) { testCompaction(t, open(t)) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, open(t), reopen) })
	t.Run("SlowWatcher", func(t *testing.T) { testSlowWatcher(t, open(t)) })
	t.Run("WatchCancel", func(t *testing.T) { testWatchCancel(t, open(t)) })
	t.Run("Close", func(t *testing.T) { testClose(t, open(t)) })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustRev(t *testing.T, s store.Store) int64 {
	t.Helper()
	rev, err := s.Revision(ctxT(t))
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return rev
}

func wantRev(t *testing.T, s store.Store, want int64, what string) {
	t.Helper()
	if got := mustRev(t, s); got != want {
		t.Fatalf("%s: Revision() = %d, want %d", what, got, want)
	}
}

func mustCreate(t *testing.T, s store.Store, key, value string) store.KV {
	t.Helper()
	kv, err := s.Create(ctxT(t), key, []byte(value))
	if err != nil {
		t.Fatalf("Create(%q): %v", key, err)
	}
	return kv
}

func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

func wantKV(t *testing.T, got store.KV, key, value string, createRev, modRev int64, what string) {
	t.Helper()
	if got.Key != key || string(got.Value) != value || got.CreateRevision != createRev || got.ModRevision != modRev {
		t.Fatalf("%s: got %q=%q create=%d mod=%d; want %q=%q create=%d mod=%d",
			what, got.Key, got.Value, got.CreateRevision, got.ModRevision, key, value, createRev, modRev)
	}
}

func watch(t *testing.T, s store.Store, ctx context.Context, prefix string, from int64) *stream {
	t.Helper()
	ch, err := s.Watch(ctx, prefix, from)
	if err != nil {
		t.Fatalf("Watch(%q, %d): %v", prefix, from, err)
	}
	return newStream(t, fmt.Sprintf("%q from %d", prefix, from), ch)
}

func testCRUD(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	r0 := mustRev(t, s)

	_, err := s.Get(ctx, "k")
	wantErr(t, err, store.ErrNotFound, "Get missing")

	kv := mustCreate(t, s, "k", "v1")
	wantKV(t, kv, "k", "v1", r0+1, r0+1, "Create")
	wantRev(t, s, r0+1, "after Create")

	_, err = s.Create(ctx, "k", []byte("again"))
	wantErr(t, err, store.ErrExists, "Create existing")
	wantRev(t, s, r0+1, "after failed Create")

	got, err := s.Get(ctx, "k")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	wantKV(t, got, "k", "v1", r0+1, r0+1, "Get")

	kv, err = s.Update(ctx, "k", []byte("v2"), r0+1)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	wantKV(t, kv, "k", "v2", r0+1, r0+2, "Update")

	_, err = s.Update(ctx, "k", []byte("stale"), r0+1)
	wantErr(t, err, store.ErrConflict, "Update with stale revision")
	got, _ = s.Get(ctx, "k")
	wantKV(t, got, "k", "v2", r0+1, r0+2, "Get after conflict")
	wantRev(t, s, r0+2, "after failed Update")

	kv, err = s.Update(ctx, "k", []byte("v3"), 0)
	if err != nil {
		t.Fatalf("unconditional Update: %v", err)
	}
	wantKV(t, kv, "k", "v3", r0+1, r0+3, "unconditional Update")

	_, err = s.Update(ctx, "missing", []byte("x"), 0)
	wantErr(t, err, store.ErrNotFound, "Update missing")
	_, err = s.Update(ctx, "missing", []byte("x"), r0+1)
	wantErr(t, err, store.ErrNotFound, "Update missing with revision")

	_, err = s.Delete(ctx, "k", r0+2)
	wantErr(t, err, store.ErrConflict, "Delete with stale revision")
	wantRev(t, s, r0+3, "after failed Delete")

	kv, err = s.Delete(ctx, "k", r0+3)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantKV(t, kv, "k", "v3", r0+1, r0+4, "Delete result")
	_, err = s.Get(ctx, "k")
	wantErr(t, err, store.ErrNotFound, "Get deleted")
	_, err = s.Delete(ctx, "k", 0)
	wantErr(t, err, store.ErrNotFound, "Delete missing")
	_, err = s.Delete(ctx, "k", r0+4)
	wantErr(t, err, store.ErrNotFound, "Delete missing with revision")

	kv = mustCreate(t, s, "k", "reborn")
	wantKV(t, kv, "k", "reborn", r0+5, r0+5, "re-Create")
	kv, err = s.Delete(ctx, "k", 0)
	if err != nil {
		t.Fatalf("unconditional Delete: %v", err)
	}
	wantKV(t, kv, "k", "reborn", r0+5, r0+6, "unconditional Delete")

	kv = mustCreate(t, s, "empty", "")
	got, err = s.Get(ctx, "empty")
	if err != nil || len(got.Value) != 0 || got.ModRevision != kv.ModRevision {
		t.Fatalf("Get empty value: %+v, %v", got, err)
	}
	wantRev(t, s, r0+7, "end")

	// A write's value must not alias the caller's buffer.
	buf := []byte("orig")
	if _, err := s.Create(ctx, "alias", buf); err != nil {
		t.Fatalf("Create alias: %v", err)
	}
	copy(buf, "XXXX")
	if got, _ := s.Get(ctx, "alias"); string(got.Value) != "orig" {
		t.Fatalf("stored value aliases the caller's buffer: %q", got.Value)
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	keys := []string{"a/2", "b/1", "a/10", "ab/1", "a/b/x", "a", "a/1"}
	revs := map[string]int64{}
	for _, k := range keys {
		revs[k] = mustCreate(t, s, k, "v-"+k).ModRevision
	}
	check := func(prefix string, want []string) {
		t.Helper()
		kvs, rev, err := s.List(ctx, prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		if cur := mustRev(t, s); rev != cur {
			t.Fatalf("List(%q) revision = %d, want current %d", prefix, rev, cur)
		}
		var got []string
		for _, kv := range kvs {
			got = append(got, kv.Key)
			wantKV(t, kv, kv.Key, "v-"+kv.Key, revs[kv.Key], revs[kv.Key], "List("+prefix+") item")
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("List(%q) = %v, want %v", prefix, got, want)
		}
	}
	check("a/", []string{"a/1", "a/10", "a/2", "a/b/x"})
	check("a", []string{"a", "a/1", "a/10", "a/2", "a/b/x", "ab/1"})
	check("", []string{"a", "a/1", "a/10", "a/2", "a/b/x", "ab/1", "b/1"})
	check("b/", []string{"b/1"})
	check("zz/", nil)

	if _, err := s.Delete(ctx, "a/10", 0); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	check("a/", []string{"a/1", "a/2", "a/b/x"})
}

func testCAS(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const workers, increments = 8, 50
	created := mustCreate(t, s, "counter", "0")

	var wg sync.WaitGroup
	errc := make(chan error, workers)
	var conflicts sync.Map
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for i := 0; i < increments; i++ {
				for {
					kv, err := s.Get(ctx, "counter")
					if err != nil {
						errc <- fmt.Errorf("get: %w", err)
						return
					}
					v, err := strconv.Atoi(string(kv.Value))
					if err != nil {
						errc <- fmt.Errorf("bad counter %q", kv.Value)
						return
					}
					_, err = s.Update(ctx, "counter", []byte(strconv.Itoa(v+1)), kv.ModRevision)
					if err == nil {
						break
					}
					if !errors.Is(err, store.ErrConflict) {
						errc <- fmt.Errorf("update: %w", err)
						return
					}
					n++
				}
			}
			conflicts.Store(w, n)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	kv, err := s.Get(ctx, "counter")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if string(kv.Value) != strconv.Itoa(workers*increments) {
		t.Fatalf("counter = %s, want %d (lost updates)", kv.Value, workers*increments)
	}
	if kv.ModRevision != created.ModRevision+workers*increments {
		t.Fatalf("counter ModRevision = %d, want %d", kv.ModRevision, created.ModRevision+workers*increments)
	}
	total := 0
	conflicts.Range(func(_, v any) bool { total += v.(int); return true })
	t.Logf("%d conflicts retried", total)
}

func testWatchOrder(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	w := watch(t, s, ctx, "w/", 0)

	a := mustCreate(t, s, "w/a", "v1")
	mustCreate(t, s, "other/x", "not for us")
	a2, err := s.Update(ctx, "w/a", []byte("v2"), a.ModRevision)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	b := mustCreate(t, s, "w/b", "b")
	del, err := s.Delete(ctx, "w/a", 0)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}

	w.expect(store.EventPut, "w/a", "v1", a.ModRevision, a.ModRevision, true)
	w.expect(store.EventPut, "w/a", "v2", a2.ModRevision, a.ModRevision, false)
	w.expect(store.EventPut, "w/b", "b", b.ModRevision, b.ModRevision, true)
	w.expect(store.EventDelete, "w/a", "v2", del.ModRevision, a.ModRevision, false)

	// A burst written concurrently with reading arrives complete and in order.
	const n = 100
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if _, err := s.Update(ctx, "w/b", []byte(strconv.Itoa(i)), 0); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < n; i++ {
		ev := w.next()
		if ev.Type != store.EventPut || ev.KV.Key != "w/b" || string(ev.KV.Value) != strconv.Itoa(i) || ev.Created {
			t.Fatalf("burst event %d: got %s %q=%q created=%v", i, ev.Type, ev.KV.Key, ev.KV.Value, ev.Created)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("burst Update: %v", err)
	}
}

func testWatchResume(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustCreate(t, s, "first", "so that revisions start above 1")
	var revs []int64
	for i := 1; i <= 5; i++ {
		revs = append(revs, mustCreate(t, s, fmt.Sprintf("r/%d", i), strconv.Itoa(i)).ModRevision)
		mustCreate(t, s, fmt.Sprintf("other/%d", i), "x")
	}
	// Resume after r/2: exactly r/3..r/5, then live events.
	w := watch(t, s, ctx, "r/", revs[1])
	for i := 3; i <= 5; i++ {
		w.expect(store.EventPut, fmt.Sprintf("r/%d", i), strconv.Itoa(i), revs[i-1], revs[i-1], true)
	}
	// Resume from a revision that is not one of ours (other/2).
	w2 := watch(t, s, ctx, "r/", revs[1]+1)
	w2.expect(store.EventPut, "r/3", "3", revs[2], revs[2], true)

	r6 := mustCreate(t, s, "r/6", "6")
	w.expect(store.EventPut, "r/6", "6", r6.ModRevision, r6.ModRevision, true)
	w2.expect(store.EventPut, "r/4", "4", revs[3], revs[3], true)
	w2.expect(store.EventPut, "r/5", "5", revs[4], revs[4], true)
	w2.expect(store.EventPut, "r/6", "6", r6.ModRevision, r6.ModRevision, true)

	// Explicit current revision behaves like "from now".
	cur := mustRev(t, s)
	w3 := watch(t, s, ctx, "r/", cur)
	r7 := mustCreate(t, s, "r/7", "7")
	w3.expect(store.EventPut, "r/7", "7", r7.ModRevision, r7.ModRevision, true)

	// Resuming from just before the first write replays everything.
	w4 := watch(t, s, ctx, "r/", revs[0]-1)
	for i := 1; i <= 5; i++ {
		w4.expect(store.EventPut, fmt.Sprintf("r/%d", i), strconv.Itoa(i), revs[i-1], revs[i-1], true)
	}

	_, err := s.Watch(ctx, "r/", mustRev(t, s)+100)
	wantErr(t, err, store.ErrFutureRevision, "Watch from the future")
}

// testWatchReplayLarge replays far more history than the watch buffer to a
// consumer that keeps up, while writes continue: every event arrives once,
// in order, across the hand-over from history to live events.
func testWatchReplayLarge(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	start := mustCreate(t, s, "first", "x").ModRevision
	const before, during, writers = 1200, 300, 8
	writeN := func(phase string, n int) error {
		var wg sync.WaitGroup
		errc := make(chan error, writers)
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += writers {
					if _, err := s.Create(ctx, fmt.Sprintf("big/%s/%05d", phase, i), []byte("v")); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errc)
		return <-errc
	}
	if err := writeN("before", before); err != nil {
		t.Fatalf("write: %v", err)
	}
	w := watch(t, s, ctx, "big/", start)
	errc := make(chan error, 1)
	go func() { errc <- writeN("during", during) }()
	seen := map[string]bool{}
	for len(seen) < before+during {
		ev := w.next() // checks strictly increasing revisions
		if ev.Type != store.EventPut || !ev.Created || seen[ev.KV.Key] {
			t.Fatalf("event %d: %s %q created=%v duplicate=%v", len(seen), ev.Type, ev.KV.Key, ev.Created, seen[ev.KV.Key])
		}
		seen[ev.KV.Key] = true
	}
	if err := <-errc; err != nil {
		t.Fatalf("write during replay: %v", err)
	}
	kv := mustCreate(t, s, "big/last", "v")
	w.expect(store.EventPut, "big/last", "v", kv.ModRevision, kv.ModRevision, true)
}

func testWatchFromNow(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustCreate(t, s, "n/old", "old")
	w := watch(t, s, ctx, "n/", 0)
	kv := mustCreate(t, s, "n/new", "new")
	w.expect(store.EventPut, "n/new", "new", kv.ModRevision, kv.ModRevision, true)
}

func testWatchProgress(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustCreate(t, s, "first", "so that revisions start above 1")
	w := watch(t, s, ctx, "p/", 0)
	kv := mustCreate(t, s, "p/a", "a")
	w.expect(store.EventPut, "p/a", "a", kv.ModRevision, kv.ModRevision, true)
	p := w.progress(kv.ModRevision)
	t.Logf("progress %d after event %d", p.Revision, kv.ModRevision)

	// Writes outside the prefix advance the progress without events,
	// unless the backend says its progress only follows delivered events.
	other := mustCreate(t, s, "q/other", "x")
	want := other.ModRevision
	if pa, ok := s.(ProgressAdvancer); ok && !pa.ProgressAdvances() {
		t.Logf("backend progress follows delivered events only")
		want = kv.ModRevision
	}
	w.progress(want)

	// A watch resumed from the past also gets progress, after its replay.
	w2 := watch(t, s, ctx, "p/", kv.ModRevision-1)
	w2.expect(store.EventPut, "p/a", "a", kv.ModRevision, kv.ModRevision, true)
	w2.progress(want)
}

// ProgressAdvancer is implemented by backends whose EventProgress may stay
// at the last delivered event instead of following the store's revision
// (etcd servers with etcd-io/etcd#15220). Both are correct; only the
// latter lets idle watches resume past compaction.
type ProgressAdvancer interface {
	ProgressAdvances() bool
}

func testCompaction(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	var revs []int64
	for i := 1; i <= 5; i++ {
		revs = append(revs, mustCreate(t, s, fmt.Sprintf("c/%d", i), strconv.Itoa(i)).ModRevision)
	}
	upd, err := s.Update(ctx, "c/1", []byte("1b"), 0)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	del, err := s.Delete(ctx, "c/2", 0)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	at := revs[2] // compact away everything before c/3
	if err := s.Compact(ctx, at); err != nil {
		t.Fatalf("Compact(%d): %v", at, err)
	}

	_, err = s.Watch(ctx, "c/", at-2)
	wantErr(t, err, store.ErrCompacted, "Watch from before the compacted revision")
	_, err = s.Watch(ctx, "c/", 1)
	wantErr(t, err, store.ErrCompacted, "Watch from revision 1 after compaction")

	w := watch(t, s, ctx, "c/", at-1)
	for i := 3; i <= 5; i++ {
		w.expect(store.EventPut, fmt.Sprintf("c/%d", i), strconv.Itoa(i), revs[i-1], revs[i-1], true)
	}
	w.expect(store.EventPut, "c/1", "1b", upd.ModRevision, revs[0], false)
	w.expect(store.EventDelete, "c/2", "2", del.ModRevision, revs[1], false)

	kvs, _, err := s.List(ctx, "c/")
	if err != nil {
		t.Fatalf("List after compaction: %v", err)
	}
	if len(kvs) != 4 || string(kvs[0].Value) != "1b" || kvs[0].CreateRevision != revs[0] {
		t.Fatalf("values after compaction: %+v", kvs)
	}

	// Compacting again, or to an older revision, is a no-op.
	if err := s.Compact(ctx, at); err != nil {
		t.Fatalf("Compact(%d) again: %v", at, err)
	}
	if err := s.Compact(ctx, at-1); err != nil {
		t.Fatalf("Compact(%d) older: %v", at-1, err)
	}
	err = s.Compact(ctx, mustRev(t, s)+10)
	wantErr(t, err, store.ErrFutureRevision, "Compact the future")

	// Compact up to the current revision: a watch from now still works.
	cur := mustRev(t, s)
	if err := s.Compact(ctx, cur); err != nil {
		t.Fatalf("Compact(current %d): %v", cur, err)
	}
	_, err = s.Watch(ctx, "c/", cur-2)
	wantErr(t, err, store.ErrCompacted, "Watch after full compaction")
	w2 := watch(t, s, ctx, "c/", cur-1)
	w3 := watch(t, s, ctx, "c/", 0)
	kv := mustCreate(t, s, "c/6", "6")
	w2.expect(store.EventDelete, "c/2", "2", del.ModRevision, revs[1], false)
	w2.expect(store.EventPut, "c/6", "6", kv.ModRevision, kv.ModRevision, true)
	w3.expect(store.EventPut, "c/6", "6", kv.ModRevision, kv.ModRevision, true)
}

func testRestart(t *testing.T, s store.Store, reopen func(t *testing.T, s store.Store) store.Store) {
	ctx := ctxT(t)
	mustCreate(t, s, "first", "so that revisions start above 1")
	a := mustCreate(t, s, "s/a", "a")
	b := mustCreate(t, s, "s/b", "b")
	a2, err := s.Update(ctx, "s/a", []byte("a2"), a.ModRevision)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	del, err := s.Delete(ctx, "s/b", b.ModRevision)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// The compaction point survives the restart too.
	if err := s.Compact(ctx, a.ModRevision+1); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	before := mustRev(t, s)
	listBefore, _, err := s.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}

	s = reopen(t, s)
	wantRev(t, s, before, "after reopen")
	got, err := s.Get(ctx, "s/a")
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	wantKV(t, got, "s/a", "a2", a.ModRevision, a2.ModRevision, "Get after reopen")
	_, err = s.Get(ctx, "s/b")
	wantErr(t, err, store.ErrNotFound, "deleted key after reopen")
	listAfter, rev, err := s.List(ctx, "")
	if err != nil {
		t.Fatalf("List after reopen: %v", err)
	}
	if rev != before || fmt.Sprint(listAfter) != fmt.Sprint(listBefore) {
		t.Fatalf("List after reopen = %v @%d, want %v @%d", listAfter, rev, listBefore, before)
	}

	_, err = s.Watch(ctx, "s/", a.ModRevision-1)
	wantErr(t, err, store.ErrCompacted, "Watch from before the compaction after reopen")

	// Resume a watch from before the restart.
	w := watch(t, s, ctx, "s/", a.ModRevision)
	w.expect(store.EventPut, "s/b", "b", b.ModRevision, b.ModRevision, true)
	w.expect(store.EventPut, "s/a", "a2", a2.ModRevision, a.ModRevision, false)
	w.expect(store.EventDelete, "s/b", "b", del.ModRevision, b.ModRevision, false)
	c := mustCreate(t, s, "s/c", "c")
	if c.ModRevision != before+1 {
		t.Fatalf("first write after reopen at revision %d, want %d", c.ModRevision, before+1)
	}
	w.expect(store.EventPut, "s/c", "c", c.ModRevision, c.ModRevision, true)
}

func testSlowWatcher(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	buf := Options().WatchBuffer
	n := 2*buf + 10
	var droppedBefore int64
	d, hasDropper := s.(Dropper)
	if hasDropper {
		droppedBefore = d.DroppedWatchers()
	}

	slow := watch(t, s, ctx, "slow/", 0) // never read until the end

	// A healthy watcher on the same prefix must see every event.
	fastCh, err := s.Watch(ctx, "slow/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	fastDone := make(chan error, 1)
	go func() {
		seen := 0
		for ev := range fastCh {
			switch ev.Type {
			case store.EventProgress:
				continue
			case store.EventPut:
				seen++
			default:
				fastDone <- fmt.Errorf("fast watcher: unexpected %s: %v", ev.Type, ev.Err)
				return
			}
			if seen == n {
				fastDone <- nil
				return
			}
		}
		fastDone <- fmt.Errorf("fast watcher closed after %d of %d events", seen, n)
	}()

	for i := 0; i < n; i++ {
		wctx, cancel := context.WithTimeout(ctx, WaitTimeout)
		_, err := s.Create(wctx, fmt.Sprintf("slow/%04d", i), []byte("x"))
		cancel()
		if err != nil {
			t.Fatalf("write %d with a stalled watcher: %v", i, err)
		}
	}

	select {
	case err := <-fastDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(WaitTimeout):
		t.Fatalf("fast watcher did not see all %d events within %s", n, WaitTimeout)
	}

	if hasDropper {
		// A backend may give a full watcher a grace period (etcd does);
		// reading now would rescue it, so first wait for the drop.
		tick := time.NewTicker(10 * time.Millisecond)
		deadline := time.Now().Add(WaitTimeout)
		for d.DroppedWatchers() <= droppedBefore {
			if time.Now().After(deadline) {
				t.Fatalf("DroppedWatchers still %d after %s, want > %d", d.DroppedWatchers(), WaitTimeout, droppedBefore)
			}
			<-tick.C
		}
		tick.Stop()
	}
	evs := slow.closed()
	puts := 0
	for _, ev := range evs {
		if ev.Type == store.EventError {
			t.Fatalf("slow watcher got an EventError (%v); it must just be closed", ev.Err)
		}
		if ev.Type == store.EventPut {
			puts++
		}
	}
	if puts >= n {
		t.Fatalf("slow watcher got all %d events; expected it to be closed", n)
	}
	t.Logf("slow watcher closed after %d of %d events (%d buffered)", puts, n, len(evs))
}

func testWatchCancel(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustCreate(t, s, "first", "so that revisions start above 1")
	wctx, cancel := context.WithCancel(ctx)
	w := watch(t, s, wctx, "x/", 0)
	kv := mustCreate(t, s, "x/a", "a")
	w.expect(store.EventPut, "x/a", "a", kv.ModRevision, kv.ModRevision, true)
	cancel()
	for _, ev := range w.closed() {
		if ev.Type == store.EventError {
			t.Fatalf("cancelled watch got EventError: %v", ev.Err)
		}
	}

	// Cancelling a watch that is replaying history also closes it.
	for i := 0; i < 20; i++ {
		mustCreate(t, s, fmt.Sprintf("x/b%d", i), "b")
	}
	rctx, rcancel := context.WithCancel(ctx)
	r := watch(t, s, rctx, "x/", kv.ModRevision-1)
	r.expect(store.EventPut, "x/a", "a", kv.ModRevision, kv.ModRevision, true)
	rcancel()
	r.closed()

	// Writes keep working afterwards.
	mustCreate(t, s, "x/after", "ok")
}

func testClose(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustCreate(t, s, "z/a", "a")
	w := watch(t, s, ctx, "z/", 0)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, ev := range w.closed() {
		if ev.Type == store.EventPut || ev.Type == store.EventDelete {
			t.Fatalf("event after Close: %+v", ev)
		}
	}
	_, err := s.Get(ctx, "z/a")
	wantErr(t, err, store.ErrClosed, "Get after Close")
	_, err = s.Create(ctx, "z/b", nil)
	wantErr(t, err, store.ErrClosed, "Create after Close")
	_, err = s.Watch(ctx, "z/", 0)
	wantErr(t, err, store.ErrClosed, "Watch after Close")
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
