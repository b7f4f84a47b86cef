// Command schedwait reads a Go execution trace (a sidecar's
// /debug/pprof/trace?seconds=N) and reports how long goroutines waited
// between becoming runnable and running: percentiles over all waits, the
// time spent in GC mark phases, how long each kind of system call took
// from entry to return (time the thread waited for a CPU included; a
// write on loopback that wakes its reader often waits for it), and the
// longest waits with what ran on the processor meanwhile. It is how
// docs/performance.md found what holds up the sidecar's tail latency.
//
// Usage:
//
//	ip netns exec <ns> curl -o a.trace 'http://127.0.0.1:15000/debug/pprof/trace?seconds=5'
//	go run ./bench/schedwait -top 5 a.trace
package main

import (
	"cmp"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	top := flag.Int("top", 5, "longest waits to detail")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: schedwait [-top N] TRACE")
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "schedwait:", err)
		os.Exit(1)
	}
	defer f.Close()
	a, err := analyze(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "schedwait:", err)
		os.Exit(1)
	}
	a.print(os.Stdout, *top)
}

// wait is one goroutine's stay in the runnable state.
type wait struct {
	g          trace.GoID
	from, to   trace.Time
	duringMark bool
	readiedBy  string // the stack that made it runnable ("" for the network poller)
}

func (w wait) d() time.Duration { return w.to.Sub(w.from) }

// span is one stretch of a goroutine running, and how it ended.
type span struct {
	g          trace.GoID
	start, end trace.Time
	ended      string
}

type analysis struct {
	start      trace.Time
	waits      []wait // longest first
	spans      []span
	markTime   time.Duration
	markCycles int
	// syscalls are system calls' durations, by the function that made
	// them (syscall.write, …).
	syscalls map[string][]time.Duration
}

func analyze(r io.Reader) (*analysis, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, err
	}
	a := &analysis{syscalls: map[string][]time.Duration{}}
	type call struct {
		fn    string
		start trace.Time
	}
	inSyscall := map[trace.GoID]call{}
	runnable := map[trace.GoID]wait{}
	running := map[trace.GoID]int{} // index into a.spans
	var marking bool
	var markStart trace.Time
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if a.start == 0 {
			a.start = ev.Time()
		}
		switch ev.Kind() {
		case trace.EventRangeBegin, trace.EventRangeEnd:
			if ev.Range().Name != "GC concurrent mark phase" {
				continue
			}
			if marking = ev.Kind() == trace.EventRangeBegin; marking {
				markStart = ev.Time()
			} else {
				a.markTime += ev.Time().Sub(markStart)
				a.markCycles++
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			g := st.Resource.Goroutine()
			from, to := st.Goroutine()
			if from == trace.GoRunning {
				if i, ok := running[g]; ok {
					a.spans[i].end, a.spans[i].ended = ev.Time(), fmt.Sprintf("%v: %s", to, frames(ev.Stack(), 2))
					delete(running, g)
				}
			}
			if from == trace.GoSyscall {
				if c, ok := inSyscall[g]; ok {
					a.syscalls[c.fn] = append(a.syscalls[c.fn], ev.Time().Sub(c.start))
					delete(inSyscall, g)
				}
			}
			switch to {
			case trace.GoSyscall:
				inSyscall[g] = call{fn: frames(ev.Stack(), 1), start: ev.Time()}
			case trace.GoRunnable:
				runnable[g] = wait{g: g, from: ev.Time(), duringMark: marking, readiedBy: frames(ev.Stack(), 3)}
			case trace.GoRunning:
				if w, ok := runnable[g]; ok && from == trace.GoRunnable {
					w.to = ev.Time()
					a.waits = append(a.waits, w)
					delete(runnable, g)
				}
				running[g] = len(a.spans)
				a.spans = append(a.spans, span{g: g, start: ev.Time()})
			}
		}
	}
	sort.Slice(a.waits, func(i, j int) bool { return a.waits[i].d() > a.waits[j].d() })
	for _, ds := range a.syscalls {
		slices.Sort(ds)
	}
	return a, nil
}

// frames is the innermost n functions of a stack, innermost first.
func frames(s trace.Stack, n int) string {
	var fns []string
	for fr := range s.Frames() {
		if len(fns) == n {
			break
		}
		fns = append(fns, fr.Func)
	}
	return strings.Join(fns, " < ")
}

// percentile is the wait that q of all waits do not exceed.
func (a *analysis) percentile(q float64) time.Duration {
	if len(a.waits) == 0 {
		return 0
	}
	i := int(float64(len(a.waits)) * (1 - q))
	return a.waits[min(i, len(a.waits)-1)].d()
}

func (a *analysis) print(w io.Writer, top int) {
	fmt.Fprintf(w, "%d runnable-to-running waits; %d GC mark phases, %v in all\n", len(a.waits), a.markCycles, a.markTime)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		fmt.Fprintf(w, "p%-5v %v\n", q*100, a.percentile(q))
	}
	names := slices.Sorted(maps.Keys(a.syscalls))
	if len(names) > 0 {
		fmt.Fprintf(w, "\nsystem calls, entry to return (waiting for a CPU included):\n")
	}
	for _, fn := range names {
		ds := a.syscalls[fn]
		q := func(p float64) time.Duration { return ds[min(int(float64(len(ds))*p), len(ds)-1)] }
		fmt.Fprintf(w, "  %-24s %7d calls; p50 %v p90 %v p99 %v max %v\n", cmp.Or(fn, "(no stack)"), len(ds), q(0.5), q(0.9), q(0.99), ds[len(ds)-1])
	}
	for _, wt := range a.waits[:min(top, len(a.waits))] {
		by := wt.readiedBy
		if by == "" {
			by = "network poller"
		}
		fmt.Fprintf(w, "\n%v: g%d at %.3fs, during GC mark %v, made runnable by %s; meanwhile:\n",
			wt.d(), wt.g, float64(wt.from-a.start)/1e9, wt.duringMark, by)
		for _, s := range a.spans {
			if s.end > wt.from && s.start < wt.to && s.g != wt.g {
				fmt.Fprintf(w, "  %+9.1fµs g%d ran %v, then %s\n", float64(s.start-wt.from)/1e3, s.g, s.end.Sub(s.start), s.ended)
			}
		}
	}
}
