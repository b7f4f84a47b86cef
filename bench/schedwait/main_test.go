package main

import (
	"bytes"
	"runtime/trace"
	"strings"
	"testing"
	"time"
)

// TestAnalyze traces goroutines that wake each other through channels and
// checks that their waits are found, ordered, and printed.
func TestAnalyze(t *testing.T) {
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skipf("tracing unavailable: %v", err)
	}
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
		close(pong)
	}()
	for i := range 200 {
		ping <- i
		<-pong
	}
	close(ping)
	<-pong
	time.Sleep(10 * time.Millisecond)
	trace.Stop()

	a, err := analyze(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.waits) < 200 {
		t.Fatalf("%d waits found, want at least 200 (one per ping)", len(a.waits))
	}
	for i := 1; i < len(a.waits); i++ {
		if a.waits[i].d() > a.waits[i-1].d() {
			t.Fatal("waits not ordered longest first")
		}
	}
	if a.percentile(0.5) > a.percentile(0.99) || a.percentile(0.99) != a.waits[len(a.waits)/100].d() {
		t.Fatalf("percentiles: p50 %v p99 %v", a.percentile(0.5), a.percentile(0.99))
	}
	var out bytes.Buffer
	a.print(&out, 2)
	if s := out.String(); !strings.Contains(s, "runnable-to-running waits") || strings.Count(s, "made runnable by") != 2 {
		t.Fatalf("report:\n%s", s)
	}
}
