package main

import (
	"bytes"
	"maps"
	"os"
	"runtime/trace"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestAnalyze traces goroutines that wake each other through channels,
// and writes to a pipe, and checks that their waits are found, ordered,
// and printed, and the writes timed.
func TestAnalyze(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skipf("tracing unavailable: %v", err)
	}
	for range 20 {
		if _, err := pw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
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
	if n := len(a.syscalls["syscall.write"]); n < 20 {
		t.Fatalf("%d timed write calls, want at least 20 (syscalls %v)", n, slices.Collect(maps.Keys(a.syscalls)))
	}
	var out bytes.Buffer
	a.print(&out, 2)
	if s := out.String(); !strings.Contains(s, "runnable-to-running waits") || strings.Count(s, "made runnable by") != 2 ||
		!strings.Contains(s, "syscall.write") {
		t.Fatalf("report:\n%s", s)
	}
}
