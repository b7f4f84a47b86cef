package fakenomad

import (
	"strconv"
	"testing"
	"time"
)

func TestBlockingSemantics(t *testing.T) {
	s := New()
	t.Cleanup(s.Close)
	s.Register(Registration{ID: "r1", ServiceName: "web", Namespace: "prod", Address: "10.0.0.1", Port: 80, Tags: []string{"x"}})
	s.Register(Registration{ID: "r2", ServiceName: "db", Address: "10.0.0.2", Port: 5432})
	ix, body := s.Get(t, "/v1/services?namespace=*")
	if want := `[{"Namespace":"default","Services":[{"ServiceName":"db","Tags":[]}]},{"Namespace":"prod","Services":[{"ServiceName":"web","Tags":["x"]}]}]`; string(body) != want {
		t.Errorf("list body %s, want %s", body, want)
	}
	if _, body := s.Get(t, "/v1/services"); string(body) != `[{"Namespace":"default","Services":[{"ServiceName":"db","Tags":[]}]}]` {
		t.Errorf("default-namespace list %s", body)
	}
	start := time.Now()
	if ix2, _ := s.Get(t, "/v1/service/web?namespace=prod&index="+strconv.FormatUint(ix, 10)+"&wait=100ms"); ix2 != ix || time.Since(start) < 100*time.Millisecond {
		t.Errorf("timed-out blocking query: index %d after %v", ix2, time.Since(start))
	}
	done := make(chan uint64, 1)
	go func() {
		got, _ := s.Get(t, "/v1/service/web?namespace=prod&index="+strconv.FormatUint(ix, 10)+"&wait=10s")
		done <- got
	}()
	if !s.AwaitBlocked("/v1/service/web", 1, 5*time.Second) {
		t.Fatal("query did not block")
	}
	newIx, _ := s.Deregister("r2") // any registration change moves the table index
	select {
	case got := <-done:
		if got != newIx {
			t.Errorf("woken with index %d, want %d", got, newIx)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked query not woken")
	}
}
