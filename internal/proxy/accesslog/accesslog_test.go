package accesslog

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var entry = Entry{
	Start: time.Date(2026, 11, 23, 15, 4, 5, 310_000_000, time.UTC), Method: "GET", Path: "/echo?size=1024",
	Protocol: "HTTP/1.1", Code: 200, BytesSent: 1024, Duration: 3 * time.Millisecond, UpstreamTime: 2 * time.Millisecond,
	ForwardedFor: "10.0.0.7", UserAgent: "fortio.org/fortio-1.66.0", RequestID: "6b1f0c9e-0b4e-4b8f-9d0e-6a8f7c1d2e3f",
	Authority: "server.default.svc.cluster.local:8080", UpstreamHost: "10.0.0.8:8080",
	UpstreamCluster: "outbound|8080||server.default.svc.cluster.local",
}

func TestText(t *testing.T) {
	var out bytes.Buffer
	l := New(&out, Text, 0)
	l.Log(&entry)
	noUpstream := Entry{Start: entry.Start, Method: "GET", Path: "/", Protocol: "HTTP/2", Code: 503, Flags: "UH", UpstreamTime: -1}
	l.Log(&noUpstream)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	want := `[2026-11-23T15:04:05.310Z] "GET /echo?size=1024 HTTP/1.1" 200 - 0 1024 3 2 "10.0.0.7" "fortio.org/fortio-1.66.0" "6b1f0c9e-0b4e-4b8f-9d0e-6a8f7c1d2e3f" "server.default.svc.cluster.local:8080" "10.0.0.8:8080"
[2026-11-23T15:04:05.310Z] "GET / HTTP/2" 503 UH 0 0 0 - "-" "-" "-" "-" "-"
`
	if diff := cmp.Diff(out.String(), want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
}

func TestJSON(t *testing.T) {
	var out bytes.Buffer
	l := New(&out, JSON, 0)
	l.Log(&entry)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, out.Bytes())
	}
	want := map[string]any{
		"start_time": "2026-11-23T15:04:05.310Z", "method": "GET", "path": "/echo?size=1024", "protocol": "HTTP/1.1",
		"response_code": 200.0, "response_flags": nil, "bytes_received": 0.0, "bytes_sent": 1024.0, "duration": 3.0,
		"upstream_service_time": 2.0, "x_forwarded_for": "10.0.0.7", "user_agent": "fortio.org/fortio-1.66.0",
		"request_id": "6b1f0c9e-0b4e-4b8f-9d0e-6a8f7c1d2e3f", "authority": "server.default.svc.cluster.local:8080",
		"upstream_host": "10.0.0.8:8080", "upstream_cluster": "outbound|8080||server.default.svc.cluster.local",
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
}

// blockingWriter holds every write until released.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestFullQueueDrops: a stuck writer never blocks Log; what does not fit
// the queue is dropped and counted, the rest is written once it moves.
func TestFullQueueDrops(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	l := New(w, Text, 4)
	const n = 100
	for range n {
		l.Log(&entry) // must not block
	}
	if l.Dropped() == 0 {
		t.Fatal("nothing dropped with a stuck writer and a queue of 4")
	}
	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(w.buf.String(), "\n")
	if uint64(lines)+l.Dropped() != n {
		t.Fatalf("%d written + %d dropped, want %d", lines, l.Dropped(), n)
	}
	l.Log(&entry) // after Close: ignored, no panic
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"": Text, "text": Text, "json": JSON} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseFormat("yaml"); err == nil {
		t.Error("yaml accepted")
	}
}

func BenchmarkLog(b *testing.B) {
	l := New(&bytes.Buffer{}, Text, 0)
	defer l.Close()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(&entry)
	}
}
