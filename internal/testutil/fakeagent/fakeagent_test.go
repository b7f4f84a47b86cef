package fakeagent

import (
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// counter is a minimal fake: GET /v1/n answers its value as a blocking
// query whose index is the value.
type counter struct {
	*Agent
	mu sync.Mutex
	n  uint64
}

func newCounter(t *testing.T) *counter {
	c := &counter{n: 1}
	c.Agent = New(Options{HeaderPrefix: "X-Test", TokenParam: true}, func(w http.ResponseWriter, r *http.Request) {
		if !c.Authorized(r) {
			http.Error(w, "denied", http.StatusForbidden)
			return
		}
		c.Block(w, r, func() (uint64, any) {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.n, c.n
		})
	})
	t.Cleanup(c.Close)
	return c
}

func (c *counter) inc() uint64 {
	c.mu.Lock()
	c.n++
	n := c.n
	c.mu.Unlock()
	c.Changed()
	return n
}

func TestBlock(t *testing.T) {
	c := newCounter(t)
	if ix, body := c.Get(t, "/v1/n"); ix != 1 || string(body) != "1" {
		t.Fatalf("GET = %d %s, want 1 1", ix, body)
	}
	start := time.Now()
	if ix, _ := c.Get(t, "/v1/n?index=1&wait=100ms"); ix != 1 || time.Since(start) < 100*time.Millisecond {
		t.Errorf("timed-out blocking query: index %d after %v", ix, time.Since(start))
	}
	done := make(chan uint64, 1)
	go func() {
		ix, _ := c.Get(t, "/v1/n?index=1&wait=10s")
		done <- ix
	}()
	if !c.AwaitBlocked("/v1/n", 1, 5*time.Second) {
		t.Fatal("query did not block")
	}
	want := c.inc()
	select {
	case ix := <-done:
		if ix != want {
			t.Errorf("woken with index %d, want %d", ix, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked query not woken by Changed")
	}
	if n := c.Blocked("/v1/n"); n != 0 {
		t.Errorf("Blocked = %d after the answer", n)
	}
}

func TestStopStartAndToken(t *testing.T) {
	c := newCounter(t)
	c.RequireToken("secret")
	for _, tc := range []struct {
		path, header string
		status       int
	}{
		{"/v1/n", "", http.StatusForbidden},
		{"/v1/n", "secret", http.StatusOK},
		{"/v1/n?token=secret", "", http.StatusOK},
		{"/v1/n?index=x", "secret", http.StatusBadRequest},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.URL()+tc.path, nil)
		req.Header.Set("X-Test-Token", tc.header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("GET %s (token %q): %d, want %d", tc.path, tc.header, resp.StatusCode, tc.status)
		}
	}
	if reqs := c.Requests(); len(reqs) != 4 || reqs[1].Token != "secret" || reqs[2].Token != "secret" {
		t.Errorf("Requests = %+v", reqs)
	}
	c.RequireToken("")

	c.Stop()
	if _, err := http.Get(c.URL() + "/v1/n"); err == nil {
		t.Fatal("GET succeeded while stopped")
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	want := c.inc()
	if ix, _ := c.Get(t, "/v1/n?index="+strconv.FormatUint(want-1, 10)); ix != want {
		t.Errorf("after Start: index %d, want %d", ix, want)
	}
}
