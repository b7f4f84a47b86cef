// Command schedidle reads the kernel's scheduler events (`perf sched
// record -a`, printed by `perf script`) and says why CPUs sat idle while
// a benchmark had work in flight. Every moment a CPU is idle falls in one
// of four classes:
//
//   - wake latency: a task was woken for this CPU and has not started
//     yet (on a VM, the time to bring a halted vCPU back);
//   - placement: another CPU has a runnable task waiting behind the one
//     it runs (the kernel put a woken task on a busy CPU and has not
//     moved it);
//   - dependency: the other CPU runs something and nothing else is
//     runnable (all work in flight waits for that one task);
//   - nothing runnable.
//
// It also prints, per process, how long woken tasks waited before they
// ran, and which processes ran and waited in the placement case. It is
// how docs/performance.md attributes the weft chain's idle CPU.
//
// Usage (during a maximum-throughput run):
//
//	perf sched record -a -o sched.data -- sleep 1
//	perf script -i sched.data -F pid,tid,cpu,time,event,trace | go run ./bench/schedidle
package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	r, err := analyse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "schedidle:", err)
		os.Exit(1)
	}
	r.print(os.Stdout)
}

// Classes of idle time.
const (
	wakeLatency = "wake latency (a task woken for this CPU has not started)"
	placement   = "placement (the other CPU has a runnable task waiting)"
	dependency  = "dependency (the other CPU runs; nothing else is runnable)"
	nothing     = "nothing runnable"
)

var classes = []string{wakeLatency, placement, dependency, nothing}

type event struct {
	pid, tid int // the task running when the event fired
	cpu      int
	t        time.Duration
	name     string
	fields   map[string]string
}

// parse reads one line of `perf script -F pid,tid,cpu,time,event,trace`:
//
//	14737/14737 [000] 46151.249806: sched:sched_switch: prev_comm=… prev_pid=18 …
func parse(line string) (event, bool) {
	var e event
	f := strings.Fields(line)
	if len(f) < 4 {
		return e, false
	}
	pt := strings.SplitN(f[0], "/", 2)
	if len(pt) != 2 || !strings.HasPrefix(f[1], "[") || !strings.HasPrefix(f[3], "sched:") {
		return e, false
	}
	var err error
	if e.pid, err = strconv.Atoi(pt[0]); err != nil {
		return e, false
	}
	if e.tid, err = strconv.Atoi(pt[1]); err != nil {
		return e, false
	}
	if e.cpu, err = strconv.Atoi(strings.Trim(f[1], "[]")); err != nil {
		return e, false
	}
	secs, err := strconv.ParseFloat(strings.TrimSuffix(f[2], ":"), 64)
	if err != nil {
		return e, false
	}
	e.t = time.Duration(secs * 1e9)
	e.name = strings.TrimSuffix(strings.TrimPrefix(f[3], "sched:"), ":")
	e.fields = map[string]string{}
	for _, kv := range f[4:] {
		if k, v, ok := strings.Cut(kv, "="); ok {
			e.fields[k] = v
		}
	}
	return e, true
}

type report struct {
	span     time.Duration // time covered, per CPU
	ncpu     int
	idle     map[string]time.Duration
	waitedOn map[string]time.Duration // placement: "running ← waiting" process pairs
	running  map[string]time.Duration // dependency: what the other CPU ran
	waits    map[string][]time.Duration
}

type tracker struct {
	cur      map[int]int           // CPU → running tid (0: idle)
	runnable map[int]int           // tid → CPU it waits on
	woken    map[int]time.Duration // tid → when it was woken
	proc     map[int]string        // tid → "comm:pid"
	comm     map[int]string        // tid → comm, until its pid is known
}

func (k *tracker) name(tid int) string {
	if tid == 0 {
		return "idle"
	}
	if p, ok := k.proc[tid]; ok {
		return p
	}
	if c, ok := k.comm[tid]; ok {
		return c + ":?"
	}
	return "?:" + strconv.Itoa(tid)
}

func analyse(in io.Reader) (*report, error) {
	r := &report{idle: map[string]time.Duration{}, waitedOn: map[string]time.Duration{},
		running: map[string]time.Duration{}, waits: map[string][]time.Duration{}}
	k := &tracker{cur: map[int]int{}, runnable: map[int]int{}, woken: map[int]time.Duration{},
		proc: map[int]string{}, comm: map[int]string{}}
	var events []event
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		e, ok := parse(sc.Text())
		if !ok {
			continue
		}
		events = append(events, e)
		// The task running when an event fires names its process.
		if e.tid != 0 {
			if c := e.fields["prev_comm"]; c != "" && e.name == "sched_switch" {
				k.proc[e.tid] = c + ":" + strconv.Itoa(e.pid)
			} else if _, ok := k.proc[e.tid]; !ok && e.name == "sched_stat_runtime" {
				k.proc[e.tid] = e.fields["comm"] + ":" + strconv.Itoa(e.pid)
			}
		}
		r.ncpu = max(r.ncpu, e.cpu+1)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("no sched events on standard input: pipe in `perf script -F pid,tid,cpu,time,event,trace` of a `perf sched record -a`")
	}
	if r.ncpu != 2 {
		// The classes compare a CPU with "the other one".
		return nil, fmt.Errorf("events from %d CPUs: schedidle handles a 2-CPU machine only", r.ncpu)
	}
	for c := range r.ncpu {
		k.cur[c] = -1 // unknown until its first switch
	}
	last := events[0].t
	for _, e := range events {
		if dt := e.t - last; dt > 0 {
			r.span += dt
			r.account(k, dt)
		}
		last = e.t
		k.apply(r, e)
	}
	return r, nil
}

// account classifies dt of idle time on each idle CPU.
func (r *report) account(k *tracker, dt time.Duration) {
	for c := range r.ncpu {
		if k.cur[c] != 0 {
			continue
		}
		o := 1 - c
		var own, other []int
		for tid, cpu := range k.runnable {
			switch cpu {
			case c:
				own = append(own, tid)
			case o:
				other = append(other, tid)
			}
		}
		switch {
		case len(own) > 0:
			r.idle[wakeLatency] += dt
		case len(other) > 0:
			r.idle[placement] += dt
			names := make([]string, len(other))
			for i, tid := range other {
				names[i] = k.name(tid)
			}
			slices.Sort(names)
			r.waitedOn[k.name(k.cur[o])+" ← "+strings.Join(slices.Compact(names), ", ")] += dt
		case k.cur[o] > 0:
			r.idle[dependency] += dt
			r.running[k.name(k.cur[o])] += dt
		case k.cur[o] == 0:
			r.idle[nothing] += dt
		}
	}
}

func (k *tracker) apply(r *report, e event) {
	atoi := func(key string) int {
		n, _ := strconv.Atoi(e.fields[key])
		return n
	}
	switch e.name {
	case "sched_waking":
		tid := atoi("pid")
		if _, seen := k.comm[tid]; !seen {
			k.comm[tid] = e.fields["comm"]
		}
		for _, running := range k.cur {
			if running == tid {
				return
			}
		}
		k.runnable[tid] = atoi("target_cpu")
		k.woken[tid] = e.t
	case "sched_migrate_task":
		tid := atoi("pid")
		if _, ok := k.runnable[tid]; ok {
			k.runnable[tid] = atoi("dest_cpu")
		}
	case "sched_switch":
		prev, next := atoi("prev_pid"), atoi("next_pid")
		k.comm[prev], k.comm[next] = e.fields["prev_comm"], e.fields["next_comm"]
		if prev != 0 && strings.HasPrefix(e.fields["prev_state"], "R") {
			k.runnable[prev] = e.cpu // preempted: still runnable here
		} else {
			delete(k.runnable, prev)
		}
		delete(k.runnable, next)
		if w, ok := k.woken[next]; ok {
			delete(k.woken, next)
			name := k.name(next)
			r.waits[name] = append(r.waits[name], e.t-w)
		}
		k.cur[e.cpu] = next
	}
}

func (r *report) print(w io.Writer) {
	total := r.span * time.Duration(r.ncpu)
	pct := func(d time.Duration) float64 { return 100 * float64(d) / float64(total) }
	var idle time.Duration
	for _, d := range r.idle {
		idle += d
	}
	fmt.Fprintf(w, "%s of events on %d CPUs; idle %.1f %% of the CPU time\n\n", r.span.Round(time.Millisecond), r.ncpu, pct(idle))
	fmt.Fprintln(w, "| idle, by class | share of all CPU time |\n|---|---:|")
	for _, c := range classes {
		fmt.Fprintf(w, "| %s | %.1f %% |\n", c, pct(r.idle[c]))
	}
	top := func(title string, m map[string]time.Duration) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
		fmt.Fprintf(w, "\n| %s | share of all CPU time |\n|---|---:|\n", title)
		for _, k := range keys[:min(len(keys), 8)] {
			fmt.Fprintf(w, "| %s | %.1f %% |\n", k, pct(m[k]))
		}
	}
	top("placement: running ← waiting on the other CPU", r.waitedOn)
	top("dependency: running on the other CPU", r.running)
	names := make([]string, 0, len(r.waits))
	for k := range r.waits {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(len(r.waits[b]), len(r.waits[a])) })
	fmt.Fprintln(w, "\n| process | wake-ups | woken → running p50 | p90 | p99 | mean |\n|---|---:|---:|---:|---:|---:|")
	for _, n := range names[:min(len(names), 8)] {
		ws := r.waits[n]
		slices.Sort(ws)
		var sum time.Duration
		for _, d := range ws {
			sum += d
		}
		q := func(p float64) string { return us(ws[min(len(ws)-1, int(p*float64(len(ws))))]) }
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s |\n", n, len(ws), q(0.5), q(0.9), q(0.99), us(sum/time.Duration(len(ws))))
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }
