package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
)

// eventWait bounds how long one write may take to reach every watcher.
const eventWait = 2 * time.Minute

// tracker collects, per resourceVersion, how many watchers have received the
// event and when the first and the last did.
type tracker struct {
	mu       sync.Mutex
	cond     *sync.Cond
	arrivals map[int64]*arrival
	err      error // first watcher failure
}

type arrival struct {
	count       int
	first, last time.Time
}

func newTracker() *tracker {
	t := &tracker{arrivals: map[int64]*arrival{}}
	t.cond = sync.NewCond(&t.mu)
	return t
}

func (t *tracker) record(rv int64, at time.Time) {
	t.mu.Lock()
	a := t.arrivals[rv]
	if a == nil {
		a = &arrival{first: at}
		t.arrivals[rv] = a
	}
	a.count++
	if at.After(a.last) {
		a.last = at
	}
	if at.Before(a.first) {
		a.first = at
	}
	t.mu.Unlock()
	t.cond.Broadcast()
}

func (t *tracker) fail(err error) {
	t.mu.Lock()
	if t.err == nil {
		t.err = err
	}
	t.mu.Unlock()
	t.cond.Broadcast()
}

// wait blocks until n watchers have received rv, a watcher failed, or ctx
// or eventWait ends.
func (t *tracker) wait(ctx context.Context, rv int64, n int) (arrival, error) {
	ctx, cancel := context.WithTimeout(ctx, eventWait)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t.mu.Lock()
		t.cond.Broadcast()
		t.mu.Unlock()
	})
	defer stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if t.err != nil {
			return arrival{}, t.err
		}
		a := t.arrivals[rv]
		if a != nil && a.count > n {
			return arrival{}, fmt.Errorf("revision %d delivered %d times to %d watchers", rv, a.count, n)
		}
		if a != nil && a.count == n {
			return *a, nil
		}
		if ctx.Err() != nil {
			got := 0
			if a != nil {
				got = a.count
			}
			return arrival{}, fmt.Errorf("only %d of %d watchers received revision %d within %s: %w", got, n, rv, eventWait, ctx.Err())
		}
		t.cond.Wait()
	}
}

// watchEvent is the part of a watch event line the benchmark reads.
type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Message string `json:"message"` // of an ERROR event's Status
	} `json:"object"`
}

// watch opens one watch stream from rv and reports every event it reads to
// t until ctx ends. Any other end of the stream is a failure.
func (a *api) watch(ctx context.Context, cl *http.Client, id int, rv int64, t *tracker) {
	req, err := a.newRequest(ctx, http.MethodGet, collectionPath+"?watch=1&resourceVersion="+strconv.FormatInt(rv, 10), nil)
	if err != nil {
		t.fail(err)
		return
	}
	resp, err := cl.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			t.fail(fmt.Errorf("watcher %d: %w", id, err))
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.fail(fmt.Errorf("watcher %d: %s: %s", id, resp.Status, bytes.TrimSpace(body)))
		return
	}
	if resp.ProtoMajor != 2 {
		t.fail(fmt.Errorf("watcher %d: server answered over %s, not HTTP/2", id, resp.Proto))
		return
	}
	br := bufio.NewReaderSize(resp.Body, 16<<10)
	last := rv
	for {
		line, err := br.ReadBytes('\n')
		at := time.Now()
		if err != nil {
			if ctx.Err() == nil {
				if err == io.EOF {
					err = errWatchEnded
				}
				t.fail(fmt.Errorf("watcher %d after revision %d: %w (see the server log for \"closed slow watcher\")", id, last, err))
			}
			return
		}
		var ev watchEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			t.fail(fmt.Errorf("watcher %d: undecodable event %.200q: %w", id, line, err))
			return
		}
		switch ev.Type {
		case "ADDED", "MODIFIED", "DELETED":
		case "ERROR":
			t.fail(fmt.Errorf("watcher %d: ERROR event: %s", id, ev.Object.Message))
			return
		default:
			t.fail(fmt.Errorf("watcher %d: unexpected %q event", id, ev.Type))
			return
		}
		n, err := strconv.ParseInt(ev.Object.Metadata.ResourceVersion, 10, 64)
		if err != nil {
			t.fail(fmt.Errorf("watcher %d: bad resourceVersion %q", id, ev.Object.Metadata.ResourceVersion))
			return
		}
		if n <= last {
			t.fail(fmt.Errorf("watcher %d: revision %d after %d (duplicate or out of order)", id, n, last))
			return
		}
		last = n
		t.record(n, at)
	}
}

// benchWatch opens o.watchers watch streams in batches of o.watchBatch, each
// batch confirmed by a barrier write that every stream opened so far must
// receive, then times o.fanout single writes to the last watcher.
func benchWatch(ctx context.Context, o options, a *api, res *result) error {
	writer := a.client()
	if err := a.ping(ctx, writer); err != nil {
		return err
	}
	conns := make([]*http.Client, o.watchConns)
	for i := range conns {
		conns[i] = a.client()
		if err := a.ping(ctx, conns[i]); err != nil {
			return err
		}
	}
	t := newTracker()
	wctx, cancelWatches := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancelWatches()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			harness.Logf("warning: watch streams did not end within 30s of cancelling them")
		}
	}()

	// The resourceVersion of the last write is the current one: nothing
	// else writes meanwhile.
	rv, err := a.create(ctx, writer, "barrier-start")
	if err != nil {
		return err
	}
	start := time.Now()
	opened := 0
	for batch := 0; opened < o.watchers; batch++ {
		n := min(o.watchBatch, o.watchers-opened)
		for i := opened; i < opened+n; i++ {
			wg.Add(1)
			go func(id int, cl *http.Client, from int64) {
				defer wg.Done()
				a.watch(wctx, cl, id, from, t)
			}(i, conns[i%len(conns)], rv)
		}
		opened += n
		if rv, err = a.create(ctx, writer, fmt.Sprintf("barrier-%04d", batch)); err != nil {
			return err
		}
		if _, err := t.wait(ctx, rv, opened); err != nil {
			return fmt.Errorf("establishing watchers (batch %d, %d opened): %w", batch, opened, err)
		}
	}
	res.watchersOpen = time.Since(start)
	res.watchersCount = opened
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	res.heapWatching = ms.HeapInuse
	harness.Logf("  %d watch streams on %d connections established in %s; heap in use %s, %d goroutines",
		opened, len(conns), harness.FmtDur(res.watchersOpen), harness.FmtBytes(int64(ms.HeapInuse)), runtime.NumGoroutine())

	var lastLat, firstLat, ackLat []time.Duration
	for i := 0; i < o.fanout; i++ {
		t0 := time.Now()
		rv, err := a.create(ctx, writer, fmt.Sprintf("fanout-%04d", i))
		ack := time.Since(t0)
		if err != nil {
			return err
		}
		arr, err := t.wait(ctx, rv, opened)
		if err != nil {
			return fmt.Errorf("fan-out write %d: %w", i, err)
		}
		lastLat = append(lastLat, arr.last.Sub(t0))
		firstLat = append(firstLat, arr.first.Sub(t0))
		ackLat = append(ackLat, ack)
		harness.Logf("  fan-out write %d (rv %d): response %s, first watcher %s, last watcher %s",
			i, rv, harness.FmtDur(ack), harness.FmtDur(arr.first.Sub(t0)), harness.FmtDur(arr.last.Sub(t0)))
	}
	res.fanoutP50, res.fanoutMax = harness.Percentile(lastLat, 50), harness.Percentile(lastLat, 100)
	res.fanoutFirst = harness.Percentile(firstLat, 50)
	res.fanoutAckP50 = harness.Percentile(ackLat, 50)
	t.mu.Lock()
	err = t.err
	t.mu.Unlock()
	if err != nil {
		return err
	}
	return nil
}
