package fakeconsul

import (
	"strconv"
	"testing"
	"time"
)

func TestBlockingSemantics(t *testing.T) {
	s := New()
	t.Cleanup(s.Close)
	s.Register(Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80, Tags: []string{"b", "a"}})
	ix, body := s.Get(t, "/v1/catalog/services")
	if string(body) != `{"web":["a","b"]}` {
		t.Errorf("catalog body %s", body)
	}

	// index == current: blocks until wait elapses, same index back.
	start := time.Now()
	ix2, _ := s.Get(t, "/v1/catalog/services?index="+strconv.FormatUint(ix, 10)+"&wait=100ms")
	if el := time.Since(start); ix2 != ix || el < 100*time.Millisecond {
		t.Errorf("timed-out blocking query returned index %d after %v; want %d after >=100ms", ix2, el, ix)
	}

	// A health change wakes the health query, not the catalog's index.
	done := make(chan uint64, 1)
	go func() {
		got, _ := s.Get(t, "/v1/health/service/web?index="+strconv.FormatUint(ix, 10)+"&wait=10s")
		done <- got
	}()
	if !s.AwaitBlocked("/v1/health/service/web", 1, 5*time.Second) {
		t.Fatal("health query did not block")
	}
	newIx, _ := s.SetCheck("n1", "web", Critical)
	select {
	case got := <-done:
		if got != newIx {
			t.Errorf("woken with index %d, want %d", got, newIx)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked health query not woken by a check change")
	}
	if ix3, _ := s.Get(t, "/v1/catalog/services"); ix3 != ix {
		t.Errorf("a check change moved the catalog index %d -> %d", ix, ix3)
	}
	_, body = s.Get(t, "/v1/health/service/web?passing")
	if string(body) != `[]` {
		t.Errorf("?passing returned a critical instance: %s", body)
	}
}
