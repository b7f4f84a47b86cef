package main

import (
	"strings"
	"testing"
	"time"
)

// A hand-made trace of a 2-CPU machine: every class of idle time once,
// with known lengths.
const trace = `
  100/100 [000] 10.000000: sched:sched_switch: prev_comm=app prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=proxy next_pid=201 next_prio=120
    0/0   [001] 10.000000: sched:sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=swapper/1 next_pid=0 next_prio=120
  200/201 [000] 10.000010: sched:sched_waking: comm=proxy pid=301 prio=120 target_cpu=000
  200/201 [000] 10.000030: sched:sched_switch: prev_comm=proxy prev_pid=201 prev_prio=120 prev_state=S ==> next_comm=proxy next_pid=301 next_prio=120
  300/301 [000] 10.000040: sched:sched_waking: comm=app pid=100 prio=120 target_cpu=001
  300/301 [000] 10.000045: sched:sched_stat_runtime: comm=proxy pid=301 runtime=1000 [ns]
    0/0   [001] 10.000060: sched:sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=app next_pid=100 next_prio=120
  100/100 [001] 10.000100: sched:sched_switch: prev_comm=app prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
  300/301 [000] 10.000150: sched:sched_switch: prev_comm=proxy prev_pid=301 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120
    0/0   [000] 10.000200: sched:sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=swapper/0 next_pid=0 next_prio=120
`

func TestAnalyse(t *testing.T) {
	r, err := analyse(strings.NewReader(trace))
	if err != nil {
		t.Fatal(err)
	}
	us := func(n int) time.Duration { return time.Duration(n) * time.Microsecond }
	if r.span != us(200) {
		t.Errorf("span %v, want 200µs", r.span)
	}
	// CPU 1 is idle from 0 to 100 µs and from 100 µs on:
	//   0–10: CPU 0 runs proxy 201, nothing waits: dependency;
	//   10–30: proxy 301 waits on CPU 0 behind 201: placement;
	//   30–40: CPU 0 runs 301, nothing waits: dependency;
	//   40–60: app 100 was woken for CPU 1: wake latency;
	//   100–150: CPU 0 runs 301: dependency;
	//   150–200: both idle.
	// CPU 0 is idle from 150 to 200 µs: nothing runnable.
	want := map[string]time.Duration{dependency: us(10 + 10 + 50), placement: us(20), wakeLatency: us(20), nothing: us(50 + 50)}
	for c, d := range want {
		if got := r.idle[c]; got != d {
			t.Errorf("%s: %v, want %v", c, got, d)
		}
	}
	if got := r.waitedOn["proxy:200 ← proxy:300"]; got != us(20) {
		t.Errorf("placement by process: %v", r.waitedOn)
	}
	if got := r.waits["proxy:300"]; len(got) != 1 || got[0] != us(20) {
		t.Errorf("proxy 301 woken → running: %v, want [20µs]", got)
	}
	if got := r.waits["app:100"]; len(got) != 1 || got[0] != us(20) {
		t.Errorf("app woken → running: %v, want [20µs]", got)
	}
	var b strings.Builder
	r.print(&b)
	if !strings.Contains(b.String(), "| placement (the other CPU has a runnable task waiting) | 5.0 % |") {
		t.Errorf("report:\n%s", b.String())
	}
}

func TestAnalyseRefusesOtherInput(t *testing.T) {
	if _, err := analyse(strings.NewReader("not perf output\n")); err == nil || !strings.Contains(err.Error(), "perf script") {
		t.Errorf("err %v, want one naming the perf script command", err)
	}
}
