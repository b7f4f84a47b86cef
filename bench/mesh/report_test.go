package main

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRoundsMarkdown: added latency is taken against each round's own
// baseline, medians are of the rounds' values, and a chain's rounds at
// least as good as nginx's are counted per percentile.
func TestRoundsMarkdown(t *testing.T) {
	res := func(p50, p90, p99, maxQPS float64) *chainResult {
		return &chainResult{lat: &fortioResult{p: [3]float64{p50 / 1e3, p90 / 1e3, p99 / 1e3}}, max: &fortioResult{qps: maxQPS}}
	}
	r := &report{opts: options{chains: []string{"baseline", "nginx", "weft"}}}
	for _, round := range []struct{ base, nginx, weft *chainResult }{
		{res(0.1, 0.2, 0.3, 60000), res(0.3, 0.4, 0.6, 20000), res(0.31, 0.39, 0.7, 18000)},
		{res(0.2, 0.3, 0.4, 60000), res(0.4, 0.5, 0.7, 21000), res(0.39, 0.5, 0.8, 21500)},
		{res(0.1, 0.2, 0.3, 60000), res(0.3, 0.4, 0.6, 22000), res(0.3, 0.45, 0.5, 17000)},
	} {
		r.rounds = append(r.rounds, map[string]*chainResult{"baseline": round.base, "nginx": round.nginx, "weft": round.weft})
	}
	var b strings.Builder
	r.roundsMarkdown(&b)
	for _, want := range []string{
		"| nginx → mTLS → nginx | **+0.200** (+0.200 / +0.200 / +0.200) | **+0.200** (+0.200 / +0.200 / +0.200) | **+0.300** (+0.300 / +0.300 / +0.300) | **21000** (20000 / 21000 / 22000) |",
		"| weft sidecar → mTLS → weft sidecar | **+0.200** (+0.210 / +0.190 / +0.200) | **+0.200** (+0.190 / +0.200 / +0.250) | **+0.400** (+0.400 / +0.400 / +0.200) | **18000** (18000 / 21500 / 17000) |",
		"| weft sidecar → mTLS → weft sidecar | 2 of 3 | 2 of 3 | 1 of 3 | 1 of 3 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median = %v, want 2.5", m)
	}
}

// TestChainVariant: a weft chain with flags after @ keeps its kind, passes
// its flags and is named with them in the report.
func TestChainVariant(t *testing.T) {
	kind, flags := chainKind("weft-explicit@GOGC=100 --concurrency 2")
	if kind != weftExplicit || strings.Join(flags, "|") != "GOGC=100|--concurrency|2" {
		t.Errorf("chainKind: %q %q", kind, flags)
	}
	if kind, flags := chainKind("nginx"); kind != "nginx" || flags != nil {
		t.Errorf("chainKind(nginx): %q %q", kind, flags)
	}
	if got, want := chainTitle("weft@GOGC=1000"), "weft sidecar → mTLS → weft sidecar, sidecars with `GOGC=1000`"; got != want {
		t.Errorf("chainTitle = %q, want %q", got, want)
	}
}

// TestSidecarsMarkdown: every round's sidecars are reported with the
// median and the largest of their memory samples, and the summary gives
// the range of CPU and the largest medians and samples over all rounds
// (not the first round's).
func TestSidecarsMarkdown(t *testing.T) {
	mem := func(rss ...int64) []memStatus {
		var out []memStatus
		for _, kb := range rss {
			out = append(out, memStatus{rss: kb, anon: 11 * 1024, file: kb - 11*1024})
		}
		return out
	}
	r := &report{opts: options{latencyDur: 30 * time.Second}, weft: map[string][]*weftUsage{"weft": {
		{qps: 1000, sidecars: map[string]sidecarUsage{"a": {vcpu: 0.08, mem: mem(22*1024, 21*1024, 25*1024), rssAfterMaxKB: 23 * 1024, hwmKB: 30 * 1024},
			"b": {vcpu: 0.07, mem: mem(22 * 1024), rssAfterMaxKB: 22 * 1024, hwmKB: 30 * 1024}}},
		{qps: 1000, sidecars: map[string]sidecarUsage{"a": {vcpu: 0.09, mem: mem(24*1024+410, 20*1024, 23*1024+410, 23*1024), rssAfterMaxKB: 23 * 1024, hwmKB: 31 * 1024},
			"b": {vcpu: 0.075, mem: mem(23 * 1024), rssAfterMaxKB: 25 * 1024, hwmKB: 31 * 1024}}},
	}}}
	var b strings.Builder
	r.sidecarsMarkdown(&b, "weft")
	for _, want := range []string{
		"| 1 | A (client side, outbound) | 1000.0 | 0.080 | 0.080 | 22.0 / 25.0 MiB | 11.0 / 11.0 MiB | 23.0 MiB | 30.0 MiB |",
		"| 2 | A (client side, outbound) | 1000.0 | 0.090 | 0.090 | 23.4 / 24.4 MiB | 11.0 / 12.4 MiB | 23.0 MiB | 31.0 MiB |",
		"| 2 | B (server side, inbound) | 1000.0 | 0.075 | 0.075 | 23.0 / 23.0 MiB | 11.0 / 12.0 MiB | 25.0 MiB | 31.0 MiB |",
		"Over 2 round(s): 0.070–0.090 vCPU per 1,000 rps; VmRSS over a latency run (sampled every second): median at most 23.4 MiB (24.5 MB), largest sample 25.0 MiB (26.2 MB); after the maximum run at most 25.0 MiB (26.2 MB).",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
}

// TestRepeat: f runs at once (no delay) and then periodically, never
// after stop returns, and not at all when stopped before its delay.
func TestRepeat(t *testing.T) {
	var mu sync.Mutex
	n := 0
	count := func() int { mu.Lock(); defer mu.Unlock(); return n }
	stop := repeat(0, time.Millisecond, func() { mu.Lock(); n++; mu.Unlock() })
	for deadline := time.Now().Add(5 * time.Second); count() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("f ran %d times in 5 s every millisecond", count())
		}
	}
	stop()
	after := count()
	time.Sleep(20 * time.Millisecond)
	if count() != after {
		t.Fatalf("f ran after stop: %d → %d", after, count())
	}
	ran := false
	repeat(time.Hour, time.Millisecond, func() { ran = true })()
	if ran {
		t.Fatal("f ran before its delay")
	}
}

// TestMemKB reads this process's memory: every field is there.
func TestMemKB(t *testing.T) {
	m, err := memKB(os.Getpid())
	if err != nil || m.rss <= 0 || m.hwm < m.rss || m.anon <= 0 || m.file <= 0 || m.anon+m.file > m.rss+4 {
		t.Fatalf("memKB(self) = %+v, %v", m, err)
	}
}
