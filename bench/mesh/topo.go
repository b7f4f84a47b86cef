package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/internal/proxy/memtrim"
)

// cleanups run in reverse order on exit (normal, failure or signal).
var cleanups []func()

func atExit(f func()) { cleanups = append(cleanups, f) }

func runCleanups() {
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanups = nil
}

// sh runs a command on the host, bounded.
func sh(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// in runs a command in a namespace, bounded by timeout, returning stdout
// (and stderr in the error).
func in(ctx context.Context, timeout time.Duration, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, lastBytes(stderr.Bytes(), 1500))
	}
	return stdout.String(), nil
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// proc is a background process in a namespace, in its own process group
// (so nginx's and haproxy's workers die with it), logging to a file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// bg starts args in namespace ns; the process is killed on exit or by stop.
func bg(dir, name, ns string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	atExit(p.stop)
	return p, nil
}

// stop kills the process group and waits (bounded) for the leader.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// exited reports an early exit with the tail of the log.
func (p *proc) exited() error {
	select {
	case <-p.done:
		b, _ := os.ReadFile(p.log)
		return fmt.Errorf("%s exited: %s", p.name, lastBytes(b, 1500))
	default:
		return nil
	}
}

// eventually retries f (bounded) until it succeeds; watch are processes
// whose early death ends the wait.
func eventually(ctx context.Context, what string, limit time.Duration, f func() error, watch ...*proc) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return nil
		}
		for _, p := range watch {
			if e := p.exited(); e != nil {
				return fmt.Errorf("%s: %v", what, e)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %v", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // polling processes in other namespaces
		}
	}
}

// topology is the hub namespace with its bridge and the three hosts.
type topology struct {
	id   string
	ns   map[string]string // cp, a, b -> namespace name
	addr map[string]string // cp, a, b -> address on the bridge
}

const vip = "240.240.0.10"

func buildTopology(ctx context.Context, id string) (*topology, error) {
	t := &topology{id: id, ns: map[string]string{}, addr: map[string]string{"cp": "10.82.0.1", "a": "10.82.0.2", "b": "10.82.0.3"}}
	hub := "weft-bench-" + id + "-hub"
	add := func(n string) error {
		if err := sh(ctx, "ip", "netns", "add", n); err != nil {
			return err
		}
		atExit(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		return nil
	}
	if err := add(hub); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", hub, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", hub, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if err := sh(ctx, s...); err != nil {
			return nil, err
		}
	}
	for _, h := range []string{"cp", "a", "b"} {
		n := "weft-bench-" + id + "-" + h
		t.ns[h] = n
		if err := add(n); err != nil {
			return nil, err
		}
		v, p := "wb"+id+h, "wh"+id+h
		steps := [][]string{
			{"ip", "-n", n, "link", "set", "lo", "up"},
			{"ip", "link", "add", v, "netns", n, "type", "veth", "peer", "name", p, "netns", hub},
			{"ip", "-n", hub, "link", "set", p, "master", "br0"},
			{"ip", "-n", hub, "link", "set", p, "up"},
			{"ip", "-n", n, "addr", "add", t.addr[h] + "/24", "dev", v},
			{"ip", "-n", n, "link", "set", v, "up"},
		}
		if h == "a" {
			// The service VIP must be routable for the client's connect
			// to reach the OUTPUT chain.
			steps = append(steps, []string{"ip", "-n", n, "route", "add", "240.240.0.0/16", "dev", v})
		}
		for _, s := range steps {
			if err := sh(ctx, s...); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// cpuTicks is utime+stime of a process (all its threads) in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(3) ... utime(14) stime(15); f[0] is field 3.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad utime/stime")
	}
	return u + st, nil
}

// memStatus is a process's memory from /proc/<pid>/status, in kB.
type memStatus struct {
	rss, hwm   int64 // VmRSS, VmHWM
	anon, file int64 // RssAnon, RssFile (the binary's and libraries' pages)
}

// memKB reads pid's memStatus.
func memKB(pid int) (m memStatus, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	for key, v := range map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.hwm, "RssAnon": &m.anon, "RssFile": &m.file} {
		if *v, err = memtrim.StatusField(b, key); err != nil {
			return m, fmt.Errorf("/proc/%d/status: %w", pid, err)
		}
	}
	return m, nil
}

// clockTicks is sysconf(_SC_CLK_TCK), 100 on Linux unless getconf says
// otherwise.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// procPID finds the process named comm: the leader itself (ip netns exec
// and setpriv exec without forking) or one of its descendants.
func procPID(leader int, comm string) (int, error) {
	queue := []int{leader}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == comm {
			return pid, nil
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, t := range tasks {
			b, _ := os.ReadFile(t)
			for _, c := range strings.Fields(string(b)) {
				if n, err := strconv.Atoi(c); err == nil {
					queue = append(queue, n)
				}
			}
		}
	}
	return 0, fmt.Errorf("no %s process under pid %d", comm, leader)
}

// cpuSnapshot is the CPU time of every process by command name (comm),
// and of the whole machine, at one moment.
type cpuSnapshot struct {
	byComm map[string]int64 // utime+stime in clock ticks
	// reaped is cutime+cstime of this program: its children that ended
	// (the fortio load client, exec'd by ip netns exec and setpriv).
	reaped     int64
	busy, idle int64 // /proc/stat, all CPUs, in clock ticks
}

func takeCPUSnapshot() (cpuSnapshot, error) {
	s := cpuSnapshot{byComm: map[string]int64{}}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(d + "/comm")
		if err != nil {
			continue // gone meanwhile
		}
		ticks, err := cpuTicks(pid)
		if err != nil {
			continue
		}
		s.byComm[strings.TrimSpace(string(b))] += ticks
	}
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return s, err
	}
	if i := strings.LastIndexByte(string(self), ')'); i >= 0 {
		if f := strings.Fields(string(self[i+1:])); len(f) > 14 {
			cu, _ := strconv.ParseInt(f[13], 10, 64)
			cs, _ := strconv.ParseInt(f[14], 10, 64)
			s.reaped = cu + cs
		}
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return s, fmt.Errorf("unexpected /proc/stat: %q", line)
	}
	for i, v := range f[1:9] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			s.idle += n
		} else {
			s.busy += n
		}
	}
	return s, nil
}

// cpuUse is what happened between two snapshots: CPU seconds by command
// (of the processes that exited meanwhile, only this program's children
// count, as fortio: the load client) and the machine's idle share.
type cpuUse struct {
	seconds map[string]float64
	idle    float64
}

func (a cpuSnapshot) until(b cpuSnapshot) cpuUse {
	hz := float64(clockTicks())
	u := cpuUse{seconds: map[string]float64{}}
	for c, t := range b.byComm {
		if d := t - a.byComm[c]; d > 0 {
			u.seconds[c] = float64(d) / hz
		}
	}
	u.seconds[loadComm] += float64(b.reaped-a.reaped) / hz
	if total := (b.busy - a.busy) + (b.idle - a.idle); total > 0 {
		u.idle = float64(b.idle-a.idle) / float64(total)
	}
	return u
}
