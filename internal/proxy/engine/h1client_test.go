package engine

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// newH1 is an h1Transport dialling plain TCP, counting its dials.
func newH1(dials *atomic.Int64) *h1Transport {
	std := &http.Transport{DisableCompression: true}
	return &h1Transport{fallback: std, maxIdle: 16, idleTimeout: time.Minute, dial: func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}}
}

func get(t *testing.T, rt http.RoundTripper, ctx context.Context, url string) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestH1TransportReusesConnections(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok "+r.Header.Get("X-Test"))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	var dials atomic.Int64
	tr := newH1(&dials)
	defer tr.CloseIdleConnections()
	for i := range 50 {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x?y=1", nil)
		req.Header.Set("X-Test", "v")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok v" {
			t.Fatalf("request %d: %q", i, b)
		}
	}
	if dials.Load() != 1 || conns.Load() != 1 {
		t.Fatalf("%d dials, %d server connections for 50 sequential requests, want 1", dials.Load(), conns.Load())
	}
}

// A pooled connection the server closed while idle is replaced without
// failing the request.
func TestH1TransportReplaysOnStaleConnection(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer srv.Close()
	var dials atomic.Int64
	tr := newH1(&dials)
	defer tr.CloseIdleConnections()
	if code, body, err := get(t, tr, context.Background(), srv.URL); err != nil || code != 200 || body != "ok" {
		t.Fatalf("first request: %d %q %v", code, body, err)
	}
	srv.CloseClientConnections() // the pooled connection is now dead
	if code, body, err := get(t, tr, context.Background(), srv.URL); err != nil || code != 200 || body != "ok" {
		t.Fatalf("request on a stale connection: %d %q %v", code, body, err)
	}
	if dials.Load() != 2 {
		t.Fatalf("%d dials, want 2", dials.Load())
	}
}

// Connection: close, a body abandoned half-way and a cancelled request
// all keep their connection out of the pool.
func TestH1TransportDoesNotReuseSpentConnections(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "bye")
		case "/big":
			_, _ = io.WriteString(w, strings.Repeat("x", 1<<20))
		case "/hang":
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	defer srv.Close()
	defer close(release)
	var dials atomic.Int64
	tr := newH1(&dials)
	defer tr.CloseIdleConnections()

	if _, body, err := get(t, tr, context.Background(), srv.URL+"/close"); err != nil || body != "bye" {
		t.Fatalf("/close: %q %v", body, err)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/big", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	resp.Body.Close() // abandoned: the rest of the megabyte is not drained
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := get(t, tr, ctx, srv.URL+"/hang"); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("/hang: %v, want a deadline error", err)
	}
	if code, body, err := get(t, tr, context.Background(), srv.URL+"/"); err != nil || code != 200 || body != "ok" {
		t.Fatalf("after: %d %q %v", code, body, err)
	}
	if dials.Load() != 4 {
		t.Fatalf("%d dials, want 4 (none of the three spent connections reused)", dials.Load())
	}
	tr.mu.Lock()
	idle := len(tr.idle[strings.TrimPrefix(srv.URL, "http://")])
	tr.mu.Unlock()
	if idle != 1 {
		t.Fatalf("%d idle connections, want 1", idle)
	}
}

// An idle connection is closed after the idle timeout.
func TestH1TransportIdleTimeout(t *testing.T) {
	closed := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			close(closed)
		}
	}
	srv.Start()
	defer srv.Close()
	var dials atomic.Int64
	tr := newH1(&dials)
	tr.idleTimeout = 20 * time.Millisecond
	if _, _, err := get(t, tr, context.Background(), srv.URL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not closed")
	}
	tr.mu.Lock()
	n := len(tr.idle)
	tr.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d addresses still pooled", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Informational answers before the response are skipped; requests with a
// body go to the fallback transport.
func TestH1TransportEarlyHintsAndFallback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write(b)
			return
		}
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "final")
	}))
	defer srv.Close()
	var dials atomic.Int64
	tr := newH1(&dials)
	defer tr.CloseIdleConnections()
	if code, body, err := get(t, tr, context.Background(), srv.URL); err != nil || code != 200 || body != "final" {
		t.Fatalf("GET after 103: %d %q %v", code, body, err)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("payload"))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "payload" || dials.Load() != 1 {
		t.Fatalf("POST: %q with %d fast-path dials, want the echo through the fallback", b, dials.Load())
	}
}

// Chunked bodies with trailers, HEAD and 204 answers keep the connection;
// a body delimited by the close does not.
func TestH1TransportResponseFraming(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "chunk")
			w.Header().Set("X-Sum", "42")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Content-Length", "3")
			_, _ = io.WriteString(w, "abc")
		}
	}))
	defer srv.Close()
	var dials atomic.Int64
	tr := newH1(&dials)
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/chunked", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "chunk" || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("/chunked: %q %v, trailer %v", b, err, resp.Trailer)
	}
	req, _ = http.NewRequest(http.MethodHead, srv.URL+"/", nil)
	resp, err = tr.RoundTrip(req)
	if err != nil || resp.ContentLength != 3 || resp.Body != http.NoBody {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	if code, body, err := get(t, tr, context.Background(), srv.URL+"/empty"); err != nil || code != 204 || body != "" {
		t.Fatalf("/empty: %d %q %v", code, body, err)
	}
	if code, body, err := get(t, tr, context.Background(), srv.URL+"/"); err != nil || code != 200 || body != "abc" {
		t.Fatalf("/: %d %q %v", code, body, err)
	}
	if dials.Load() != 1 {
		t.Fatalf("%d dials, want 1", dials.Load())
	}

	// A raw server: a body without length, ended by the close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				_, _ = c.Read(buf)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
			}()
		}
	}()
	for range 2 {
		if code, body, err := get(t, tr, context.Background(), "http://"+ln.Addr().String()+"/"); err != nil || code != 200 || body != "until the end" {
			t.Fatalf("close-delimited: %d %q %v", code, body, err)
		}
	}
	if dials.Load() != 3 {
		t.Fatalf("%d dials, want 3 (close-delimited bodies spend their connection)", dials.Load())
	}
}
