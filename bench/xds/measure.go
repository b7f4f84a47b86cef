package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
)

// procStats is the process's memory at one moment, after a GC.
type procStats struct {
	heap       uint64 // live heap (HeapAlloc right after a GC)
	rss        uint64 // VmRSS, after returning free memory to the OS
	goroutines int
}

// readProcStats collects garbage, returns free memory to the OS and reads
// the heap, the RSS and the goroutine count.
func readProcStats() procStats {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return procStats{heap: ms.HeapAlloc, rss: harness.ProcStatus("VmRSS:"), goroutines: runtime.NumGoroutine()}
}

// cpuTime is the user+system CPU time the process has used so far.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// freeLoopbackAddr returns a loopback address with a port that was free a
// moment ago (the server gives no way to learn its monitoring address).
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// histogram is a cumulative Prometheus histogram.
type histogram struct {
	les    []float64 // upper bounds, ascending, +Inf last
	counts []float64 // cumulative counts
	sum    float64
	count  float64
}

// pilotMetrics are the server's discovery metrics at one moment.
type pilotMetrics struct {
	connected   float64            // pilot_xds
	pushes      map[string]float64 // pilot_xds_pushes by type
	convergence histogram          // pilot_proxy_convergence_time
	pushTime    histogram          // pilot_xds_push_time
}

// scrapeMetrics reads the pilot metrics from a /metrics endpoint.
func scrapeMetrics(ctx context.Context, url string) (*pilotMetrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	return m, nil
}

// parseMetrics reads the few series it needs from the Prometheus text
// format.
func parseMetrics(r io.Reader) (*pilotMetrics, error) {
	m := &pilotMetrics{pushes: map[string]float64{}}
	seen := false
	type bucket struct{ le, n float64 }
	buckets := map[string][]bucket{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		series, val := line[:sp], line[sp+1:]
		name, labels, _ := strings.Cut(series, "{")
		if !strings.HasPrefix(name, "pilot_") {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample %q", line)
		}
		seen = true
		h := &m.convergence
		base := "pilot_proxy_convergence_time"
		if strings.HasPrefix(name, "pilot_xds_push_time") {
			h, base = &m.pushTime, "pilot_xds_push_time"
		}
		switch name {
		case "pilot_xds":
			m.connected = v
		case "pilot_xds_pushes":
			m.pushes[label(labels, "type")] = v
		case base + "_sum":
			h.sum = v
		case base + "_count":
			h.count = v
		case base + "_bucket":
			le, err := strconv.ParseFloat(label(labels, "le"), 64)
			if err != nil {
				return nil, fmt.Errorf("bad bucket %q", line)
			}
			buckets[base] = append(buckets[base], bucket{le, v})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !seen {
		return nil, fmt.Errorf("no pilot_ metrics in the response")
	}
	for base, bs := range buckets {
		h := &m.convergence
		if base == "pilot_xds_push_time" {
			h = &m.pushTime
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
		for _, b := range bs {
			h.les, h.counts = append(h.les, b.le), append(h.counts, b.n)
		}
	}
	return m, nil
}

// label returns the value of one label in `a="x",b="y"}`.
func label(labels, name string) string {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(name)+2:]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return rest[:j]
}

// sub returns h - old (the observations made in between).
func (h histogram) sub(old histogram) histogram {
	out := histogram{les: h.les, sum: h.sum - old.sum, count: h.count - old.count}
	for i, c := range h.counts {
		if i < len(old.counts) {
			c -= old.counts[i]
		}
		out.counts = append(out.counts, c)
	}
	return out
}

// quantile estimates a quantile as Prometheus's histogram_quantile does
// (linear within the bucket); NaN when empty.
func (h histogram) quantile(q float64) float64 {
	if h.count == 0 || len(h.counts) == 0 {
		return math.NaN()
	}
	rank := q * h.count
	prevLe, prevN := 0.0, 0.0
	for i, n := range h.counts {
		if n >= rank {
			le := h.les[i]
			if math.IsInf(le, 1) {
				return prevLe // above the largest finite bucket
			}
			if n == prevN {
				return le
			}
			return prevLe + (le-prevLe)*(rank-prevN)/(n-prevN)
		}
		prevLe, prevN = h.les[i], n
	}
	return prevLe
}

func fmtSeconds(s float64) string {
	if math.IsNaN(s) {
		return "-"
	}
	return harness.FmtDur(time.Duration(s * float64(time.Second)))
}
