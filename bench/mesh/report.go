package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// fortioResult is what the report needs of fortio's JSON output.
type fortioResult struct {
	qps    float64
	count  int64
	ok     int64
	p      [3]float64 // p50, p90, p99 in seconds
	avg    float64
	actual time.Duration
}

func parseFortio(b []byte) (*fortioResult, error) {
	// -json - writes the JSON document to stdout; skip anything before it.
	if i := strings.IndexByte(string(b), '{'); i > 0 {
		b = b[i:]
	}
	var raw struct {
		ActualQPS         float64
		ActualDuration    int64
		RetCodes          map[string]int64
		DurationHistogram struct {
			Count       int64
			Avg         float64
			Percentiles []struct {
				Percentile float64
				Value      float64
			}
		}
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("fortio output: %v: %.300s", err, b)
	}
	r := &fortioResult{qps: raw.ActualQPS, count: raw.DurationHistogram.Count, ok: raw.RetCodes["200"],
		avg: raw.DurationHistogram.Avg, actual: time.Duration(raw.ActualDuration)}
	for _, pc := range raw.DurationHistogram.Percentiles {
		switch pc.Percentile {
		case 50:
			r.p[0] = pc.Value
		case 90:
			r.p[1] = pc.Value
		case 99:
			r.p[2] = pc.Value
		}
	}
	if r.count == 0 || r.p[2] == 0 {
		return nil, fmt.Errorf("fortio output without requests or percentiles: %.300s", b)
	}
	return r, nil
}

type chainResult struct {
	url      string
	lat, max *fortioResult
	// maxCPU is the CPU used over the maximum-throughput run, by
	// command, and the machine's idle share then.
	maxCPU cpuUse
}

// proxyComms are the proxies' command names (all their processes and
// threads count); loadComm is fortio's (load generator and echo server).
var proxyComms = []string{"nginx", "haproxy", "weft-proxy"}

const loadComm = "fortio"

type sidecarUsage struct {
	vcpu                        float64 // CPUs used over the latency run
	rssKB, hwmKB, rssAfterMaxKB int64
}

type weftUsage struct {
	qps      float64 // achieved rate of the latency run
	sidecars map[string]sidecarUsage
}

type report struct {
	started, finished  time.Time
	loadStart, loadEnd string
	opts               options
	results            map[string]*chainResult
	weft               map[string]*weftUsage // by chain
}

var chainTitle = map[string]string{
	"baseline":      "baseline (A → B direct)",
	"nginx":         "nginx → mTLS → nginx",
	"haproxy":       "haproxy → mTLS → haproxy",
	"weft":          "weft sidecar → mTLS → weft sidecar",
	"weft-tcp":      "weft sidecar → mTLS → weft sidecar, port declared TCP (L4 relay, no HTTP)",
	"weft-explicit": "weft sidecar → mTLS → weft sidecar, explicit mode (no capture rules, as the nginx chain)",
}

func ms(s float64) string { return fmt.Sprintf("%.3f", s*1e3) }

func (r *report) markdown() string {
	var b strings.Builder
	o := r.opts
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Command: `go run ./bench/mesh` (fortio load -qps %d -c %d -t %s -uniform -nocatchup; max: -qps 0 -c %d -t %s; histogram resolution 10 µs; warm-up %s at 200 qps; GET /echo?size=1024, 1 KiB responses)\n\n",
		o.qps, o.conns, o.latencyDur, o.conns, o.maxDur, o.warmup)
	if len(o.sidecarArgs) > 0 {
		fmt.Fprintf(&b, "weft sidecars started with extra flags `%s`.\n\n", strings.Join(o.sidecarArgs, " "))
	}
	fmt.Fprintf(&b, "Date: %s – %s UTC. Machine: %s, %d CPUs, %s/%s, %s; load average %s at the start, %s at the end.\n\n", r.started.UTC().Format("2006-01-02 15:04:05"),
		r.finished.UTC().Format("15:04:05"), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), r.loadStart, r.loadEnd)
	base := r.results["baseline"]
	fmt.Fprintf(&b, "| chain | p50 ms | p90 ms | p99 ms | added p50 ms | added p90 ms | added p99 ms | achieved qps | non-200 | max qps (-qps 0) | max-run non-200 |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range o.chains {
		res := r.results[c]
		if res == nil {
			continue
		}
		added := [3]string{"—", "—", "—"}
		if c != "baseline" && base != nil {
			for i := range added {
				added[i] = fmt.Sprintf("%+.3f", (res.lat.p[i]-base.lat.p[i])*1e3)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %.1f | %d | %.0f | %d |\n", chainTitle[c],
			ms(res.lat.p[0]), ms(res.lat.p[1]), ms(res.lat.p[2]), added[0], added[1], added[2],
			res.lat.qps, res.lat.count-res.lat.ok, res.max.qps, res.max.count-res.max.ok)
	}
	fmt.Fprintf(&b, "\nWhere the CPU went over the maximum-throughput runs (utime+stime of every process by command from /proc/<pid>/stat; idle and iowait from /proc/stat; µs per request = CPU seconds / requests completed):\n\n")
	fmt.Fprintf(&b, "| chain | proxies' CPU µs per request (both hops) | fortio's (client and app) | machine idle |\n|---|---:|---:|---:|\n")
	for _, c := range o.chains {
		res := r.results[c]
		if res == nil || res.max.count == 0 {
			continue
		}
		var proxies float64
		for _, p := range proxyComms {
			proxies += res.maxCPU.seconds[p]
		}
		per := func(sec float64) string { return fmt.Sprintf("%.1f", sec/float64(res.max.count)*1e6) }
		proxyCol := per(proxies)
		if c == "baseline" {
			proxyCol = "—"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.0f %% |\n", chainTitle[c], proxyCol, per(res.maxCPU.seconds[loadComm]), res.maxCPU.idle*100)
	}
	for _, c := range o.chains {
		w := r.weft[c]
		if w == nil {
			continue
		}
		fmt.Fprintf(&b, "\n%s: sidecars over the %s latency run at %.1f achieved rps (CPU from /proc/<pid>/stat utime+stime; memory from /proc/<pid>/status):\n\n", chainTitle[c], o.latencyDur, w.qps)
		fmt.Fprintf(&b, "| sidecar | vCPU | vCPU per 1,000 rps | VmRSS after latency run | VmRSS after max run | VmHWM (peak) |\n")
		fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|\n")
		for _, h := range []string{"a", "b"} {
			s, ok := w.sidecars[h]
			if !ok {
				continue
			}
			name := map[string]string{"a": "A (client side, outbound)", "b": "B (server side, inbound)"}[h]
			fmt.Fprintf(&b, "| %s | %.3f | %.3f | %.1f MiB | %.1f MiB | %.1f MiB |\n", name, s.vcpu, s.vcpu/(w.qps/1000),
				float64(s.rssKB)/1024, float64(s.rssAfterMaxKB)/1024, float64(s.hwmKB)/1024)
		}
	}
	return b.String()
}
