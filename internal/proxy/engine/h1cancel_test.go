package engine

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// slowBackend answers /slow after delay (or when its request is
// cancelled), counting requests and cancellations; started receives each
// request's arrival.
type slowBackend struct {
	hits, cancelled atomic.Int64
	started         chan struct{}
	addr            netip.AddrPort
}

func startSlowBackend(t *testing.T, delay time.Duration) *slowBackend {
	b := &slowBackend{started: make(chan struct{}, 16)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// net/http notices a client gone (r.Context()) only once the
		// request body has been read.
		_, _ = io.Copy(io.Discard, r.Body)
		b.hits.Add(1)
		b.started <- struct{}{}
		select {
		case <-time.After(delay):
			fmt.Fprint(w, "done")
		case <-r.Context().Done():
			b.cancelled.Add(1)
		}
	}))
	t.Cleanup(srv.Close)
	b.addr = netip.MustParseAddrPort(srv.Listener.Addr().String())
	return b
}

func (b *slowBackend) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-b.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the backend")
	}
}

// TestH1ClientGoneCancelsUpstream: a client that closes its connection
// while its request waits on a slow upstream gets that upstream exchange
// aborted (the backend sees its request cancelled), and the request is not
// retried although the route retries connection failures.
func TestH1ClientGoneCancelsUpstream(t *testing.T) {
	backend := startSlowBackend(t, 30*time.Second)
	addr := freeAddr(t)
	startEngine(t, nil, httpListener("out", addr, "backend", nil), staticCluster("backend", backend.addr, false))

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "GET /slow HTTP/1.1\r\nHost: backend\r\n\r\n")
	backend.waitStarted(t)
	time.Sleep(2 * h1WatchDelay) // the watch is running
	_ = c.Close()

	deadline := time.Now().Add(5 * time.Second)
	for backend.cancelled.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if backend.cancelled.Load() != 1 {
		t.Fatalf("backend: %d requests cancelled after the client left, want 1", backend.cancelled.Load())
	}
	time.Sleep(300 * time.Millisecond) // a retry would have arrived by now
	if n := backend.hits.Load(); n != 1 {
		t.Fatalf("backend saw %d requests, want 1 (no retry for a client that left)", n)
	}
}

// TestH1ClientGoneAfterBody: a client that sends a request with a body
// and leaves while the upstream is slow gets that upstream exchange
// cancelled too, once its body has been read (the watch starts then), and
// the request is not retried.
func TestH1ClientGoneAfterBody(t *testing.T) {
	backend := startSlowBackend(t, 30*time.Second)
	addr := freeAddr(t)
	startEngine(t, nil, httpListener("out", addr, "backend", nil), staticCluster("backend", backend.addr, false))

	for _, body := range []string{
		"Content-Length: 5\r\n\r\nhello",
		"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	} {
		before := backend.cancelled.Load()
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "POST /slow HTTP/1.1\r\nHost: backend\r\n"+body)
		backend.waitStarted(t)
		time.Sleep(2 * h1WatchDelay) // the watch is running
		_ = c.Close()
		deadline := time.Now().Add(5 * time.Second)
		for backend.cancelled.Load() == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if backend.cancelled.Load() != before+1 {
			t.Fatalf("%q: the backend's request was not cancelled after the client left", body)
		}
	}
	time.Sleep(300 * time.Millisecond) // a retry would have arrived by now
	if n := backend.hits.Load(); n != 2 {
		t.Fatalf("backend saw %d requests, want 2 (no retry for a client that left)", n)
	}
}

// TestH1SlowRequestClientStays: a request outliving the watch delay is
// answered, and the connection then carries the next request (the watch
// hands the connection back intact), with or without a body; a request
// pipelined behind a slow one is data, not a departure, and is answered
// after it.
func TestH1SlowRequestClientStays(t *testing.T) {
	backend := startSlowBackend(t, 3*h1WatchDelay)
	addr := freeAddr(t)
	startEngine(t, nil, httpListener("out", addr, "backend", nil), staticCluster("backend", backend.addr, false))

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	read := func(i int) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "done" {
			t.Fatalf("response %d: %d %q", i, resp.StatusCode, body)
		}
	}
	const get = "GET /slow HTTP/1.1\r\nHost: backend\r\n\r\n"
	fmt.Fprint(c, get)
	read(1)
	fmt.Fprint(c, get)
	backend.waitStarted(t)
	backend.waitStarted(t)
	time.Sleep(2 * h1WatchDelay) // pipelined while the second is served
	fmt.Fprint(c, get)
	read(2)
	read(3)
	// A request with a body is watched once its body has been read: it
	// is answered too, and the connection carries the next one.
	const post = "POST /slow HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n\r\nhello"
	fmt.Fprint(c, post)
	read(4)
	fmt.Fprint(c, post)
	read(5)
	if n := backend.cancelled.Load(); n != 0 {
		t.Fatalf("%d requests cancelled, want none", n)
	}
}
