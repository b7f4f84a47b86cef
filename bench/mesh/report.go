package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
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
	vcpu                 float64     // CPUs used over the latency run
	mem                  []memStatus // every second of the latency run
	hwmKB, rssAfterMaxKB int64
}

// memStat is the median and the largest of one field over the samples.
func memStat(ms []memStatus, f func(memStatus) int64) (median, largest int64) {
	if len(ms) == 0 {
		return 0, 0
	}
	v := make([]int64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	slices.Sort(v)
	return v[len(v)/2], v[len(v)-1]
}

type weftUsage struct {
	qps      float64 // achieved rate of the latency run
	sidecars map[string]sidecarUsage
}

type report struct {
	started, finished  time.Time
	loadStart, loadEnd string
	opts               options
	results            map[string]*chainResult // the first round's
	rounds             []map[string]*chainResult
	weft               map[string][]*weftUsage // by chain, a round each
}

// chainTitle names chain c in the report: its kind's title, and a
// variant's flags.
func chainTitle(c string) string {
	kind, flags := chainKind(c)
	t := chainTitles[kind]
	if flags != nil {
		t += fmt.Sprintf(", sidecars with `%s`", strings.Join(flags, " "))
	}
	return t
}

var chainTitles = map[string]string{
	"baseline":      "baseline (A → B direct)",
	"nginx":         "nginx → mTLS → nginx",
	"haproxy":       "haproxy → mTLS → haproxy",
	"weft":          "weft sidecar → mTLS → weft sidecar",
	"weft-tcp":      "weft sidecar → mTLS → weft sidecar, port declared TCP (L4 relay, no HTTP)",
	"weft-explicit": "weft sidecar → mTLS → weft sidecar, explicit mode (no capture rules, as the nginx chain)",
}

func mib(kb int64) float64 { return float64(kb) / 1024 }
func mb(kb int64) float64  { return float64(kb) * 1024 / 1e6 }

func ms(s float64) string { return fmt.Sprintf("%.3f", s*1e3) }

func (r *report) markdown() string {
	var b strings.Builder
	o := r.opts
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Command: `go run ./bench/mesh` (fortio load -qps %d -c %d -t %s -uniform -nocatchup; max: -qps 0 -c %d -t %s; histogram resolution 10 µs; warm-up %s at 200 qps; GET /echo?size=1024, 1 KiB responses)\n\n",
		o.qps, o.conns, o.latencyDur, o.conns, o.maxDur, o.warmup)
	if o.scrape > 0 {
		fmt.Fprintf(&b, "Every weft sidecar's `/stats/prometheus` was scraped every %s (gzip, from the control plane's host, as Prometheus would) from the start of its chain's warm-up to the end of its maximum run.\n\n", o.scrape)
	} else {
		fmt.Fprintf(&b, "The weft sidecars' metrics were not scraped (`-scrape 0`).\n\n")
	}
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
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %.1f | %d | %.0f | %d |\n", chainTitle(c),
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
		fmt.Fprintf(&b, "| %s | %s | %s | %.0f %% |\n", chainTitle(c), proxyCol, per(res.maxCPU.seconds[loadComm]), res.maxCPU.idle*100)
	}
	if len(r.rounds) > 1 {
		r.roundsMarkdown(&b)
	}
	for _, c := range o.chains {
		if len(r.weft[c]) > 0 {
			r.sidecarsMarkdown(&b, c)
		}
	}
	return b.String()
}

// sidecarsMarkdown is weft chain c's sidecars' CPU and memory in every
// round, and the extremes over the rounds.
func (r *report) sidecarsMarkdown(b *strings.Builder, c string) {
	us := r.weft[c]
	fmt.Fprintf(b, "\n%s: sidecars over the %s latency run (CPU from /proc/<pid>/stat utime+stime; memory from /proc/<pid>/status, every second from %s into the run, or once at the end of a shorter run):\n\n", chainTitle(c), r.opts.latencyDur, memSettle)
	fmt.Fprintf(b, "| round | sidecar | achieved rps | vCPU | vCPU per 1,000 rps | VmRSS over the latency run, median / largest | RssAnon / RssFile, median | VmRSS after max run | VmHWM (peak) |\n")
	fmt.Fprintf(b, "|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	var perK []float64
	var med, big, rssMax int64
	for i, w := range us {
		for _, h := range []string{"a", "b"} {
			s, ok := w.sidecars[h]
			if !ok {
				continue
			}
			name := map[string]string{"a": "A (client side, outbound)", "b": "B (server side, inbound)"}[h]
			rssMed, rssBig := memStat(s.mem, func(m memStatus) int64 { return m.rss })
			anon, _ := memStat(s.mem, func(m memStatus) int64 { return m.anon })
			file, _ := memStat(s.mem, func(m memStatus) int64 { return m.file })
			fmt.Fprintf(b, "| %d | %s | %.1f | %.3f | %.3f | %.1f / %.1f MiB | %.1f / %.1f MiB | %.1f MiB | %.1f MiB |\n", i+1, name, w.qps, s.vcpu, s.vcpu/(w.qps/1000),
				mib(rssMed), mib(rssBig), mib(anon), mib(file), mib(s.rssAfterMaxKB), mib(s.hwmKB))
			perK = append(perK, s.vcpu/(w.qps/1000))
			med, big, rssMax = max(med, rssMed), max(big, rssBig), max(rssMax, s.rssAfterMaxKB)
		}
	}
	if len(perK) == 0 {
		return
	}
	fmt.Fprintf(b, "\nOver %d round(s): %.3f–%.3f vCPU per 1,000 rps; VmRSS over a latency run (sampled every second): median at most %.1f MiB (%.1f MB), largest sample %.1f MiB (%.1f MB); after the maximum run at most %.1f MiB (%.1f MB).\n",
		len(us), slices.Min(perK), slices.Max(perK), mib(med), mb(med), mib(big), mb(big), mib(rssMax), mb(rssMax))
}

// roundsMarkdown is the comparison over several rounds: each chain's
// added latency (against the same round's baseline) and maximum
// throughput, as the median and every round's value, and for each chain
// the rounds in which it did at least as well as nginx's.
func (r *report) roundsMarkdown(b *strings.Builder) {
	n := len(r.rounds)
	fmt.Fprintf(b, "\nOver %d rounds (every chain measured once a round, in the order above; medians, then each round's value):\n\n", n)
	fmt.Fprintf(b, "| chain | added p50 ms | added p90 ms | added p99 ms | max qps |\n|---|---|---|---|---|\n")
	// added[c][i] are chain c's added p50, p90, p99 and its max qps, by round.
	added := map[string][4][]float64{}
	for _, c := range r.opts.chains {
		if c == "baseline" {
			continue
		}
		var v [4][]float64
		for _, res := range r.rounds {
			base, cr := res["baseline"], res[c]
			if base == nil || cr == nil {
				continue
			}
			for i := range 3 {
				v[i] = append(v[i], (cr.lat.p[i]-base.lat.p[i])*1e3)
			}
			v[3] = append(v[3], cr.max.qps)
		}
		added[c] = v
		cells := make([]string, 4)
		for i := range cells {
			format := "%+.3f"
			if i == 3 {
				format = "%.0f"
			}
			each := make([]string, len(v[i]))
			for k, x := range v[i] {
				each[k] = fmt.Sprintf(format, x)
			}
			cells[i] = fmt.Sprintf("**"+format+"** (%s)", median(v[i]), strings.Join(each, " / "))
		}
		fmt.Fprintf(b, "| %s | %s |\n", chainTitle(c), strings.Join(cells, " | "))
	}
	ng, ok := added["nginx"]
	if !ok {
		return
	}
	fmt.Fprintf(b, "\nRounds in which each chain did at least as well as nginx's (added latency no more, throughput no less):\n\n")
	fmt.Fprintf(b, "| chain | p50 | p90 | p99 | max qps |\n|---|---:|---:|---:|---:|\n")
	for _, c := range r.opts.chains {
		v, ok := added[c]
		if !ok || c == "nginx" {
			continue
		}
		var wins [4]int
		for i := range wins {
			for k := range v[i] {
				if k < len(ng[i]) && ((i < 3 && v[i][k] <= ng[i][k]) || (i == 3 && v[i][k] >= ng[i][k])) {
					wins[i]++
				}
			}
		}
		fmt.Fprintf(b, "| %s | %d of %d | %d of %d | %d of %d | %d of %d |\n", chainTitle(c), wins[0], n, wins[1], n, wins[2], n, wins[3], n)
	}
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
