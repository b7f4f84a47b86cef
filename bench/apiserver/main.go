// Command apiserver benchmarks weft's config API server end to end.
//
// For each selected store backend it starts a real weft server in-process
// (bolt: a temporary data directory; etcd: a real single-member etcd started
// from /usr/bin/etcd with fsync on, in a temporary directory, killed and
// removed at exit) and measures through the real HTTPS API with HTTP/2
// clients authenticated by the bearer token of the generated kubeconfig:
//
//  1. writes: -writes VirtualService creates issued by -concurrency clients
//     (one HTTP/2 connection each); total time, writes/s, p50/p99 latency;
//  2. list: the namespace is filled to -objects VirtualServices, then
//     -lists full LIST requests are timed one after the other (p50/p99 and
//     response size);
//  3. watch fan-out: -watchers concurrent watch streams (resourceVersion =
//     the current one) are opened on the VirtualService collection and
//     confirmed with barrier writes that every stream must receive; then
//     -fanout single creates are made one at a time and, for each, the time
//     from just before the request to the moment the last watcher has read
//     the event is recorded (p50/max).
//
// Everything listens on loopback only and is bounded by timeouts; on failure
// the program prints a clear message and exits non-zero. The results are
// printed as a markdown table and, with -out FILE, also written to FILE.
//
// Usage:
//
//	go run ./bench/apiserver -store both -objects 10000 -watchers 1000 -writes 2000 -concurrency 16
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/store"
	_ "github.com/weftmesh/weft/internal/store/all" // link the bolt and etcd backends
)

// options are the command-line flags.
type options struct {
	stores       []string
	objects      int
	watchers     int
	writes       int
	concurrency  int
	lists        int
	fanout       int
	watchConns   int
	watchBatch   int
	etcdBin      string
	out          string
	timeout      time.Duration
	phaseTimeout time.Duration
	verbose      bool
	cpuProfile   string
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("apiserver", flag.ContinueOnError)
	storeFlag := fs.String("store", "both", "store backend to benchmark: bolt, etcd or both")
	fs.IntVar(&o.objects, "objects", 10000, "VirtualServices in the namespace for the list and watch benchmarks")
	fs.IntVar(&o.watchers, "watchers", 1000, "concurrent watch streams for the fan-out benchmark")
	fs.IntVar(&o.writes, "writes", 2000, "creates timed by the write benchmark")
	fs.IntVar(&o.concurrency, "concurrency", 16, "concurrent writing clients (one HTTP/2 connection each)")
	fs.IntVar(&o.lists, "lists", 20, "full LIST requests timed by the list benchmark")
	fs.IntVar(&o.fanout, "fanout", 10, "single writes timed by the watch fan-out benchmark")
	fs.IntVar(&o.watchConns, "watch-conns", 10, "HTTP/2 connections the watch streams are spread over")
	fs.IntVar(&o.watchBatch, "watch-batch", 50, "watch streams opened per barrier while establishing watchers "+
		"(every watch request lists the whole collection on the server, so opening them all at once costs memory)")
	fs.StringVar(&o.etcdBin, "etcd", "/usr/bin/etcd", "etcd binary for -store etcd")
	fs.StringVar(&o.out, "out", "", "also write the markdown results to this file")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "overall time limit")
	fs.DurationVar(&o.phaseTimeout, "phase-timeout", 5*time.Minute, "time limit of each benchmark phase")
	fs.BoolVar(&o.verbose, "v", false, "log the server's info messages")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (server and clients) to this file")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	switch *storeFlag {
	case "bolt", "etcd":
		o.stores = []string{*storeFlag}
	case "both":
		o.stores = []string{"bolt", "etcd"}
	default:
		return o, fmt.Errorf("-store must be bolt, etcd or both, not %q", *storeFlag)
	}
	for name, v := range map[string]int{"-objects": o.objects, "-watchers": o.watchers, "-writes": o.writes,
		"-concurrency": o.concurrency, "-lists": o.lists, "-fanout": o.fanout, "-watch-conns": o.watchConns, "-watch-batch": o.watchBatch} {
		if v < 1 {
			return o, fmt.Errorf("%s must be at least 1", name)
		}
	}
	if o.writes > o.objects {
		return o, fmt.Errorf("-writes (%d) must not exceed -objects (%d): the list benchmark fills up to -objects", o.writes, o.objects)
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "apiserver bench:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "apiserver bench: FAILED:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	nofile, err := raiseNoFile(uint64(o.watchers + o.concurrency + 1024))
	if err != nil {
		return err
	}
	logf("RLIMIT_NOFILE = %d", nofile)

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	var results []*result
	for _, backend := range o.stores {
		logf("=== %s ===", backend)
		res, err := benchBackend(ctx, o, backend)
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (overall limit -timeout %s or interrupted: %v)", err, o.timeout, context.Cause(ctx))
			}
			return fmt.Errorf("%s: %w", backend, err)
		}
		results = append(results, res)
	}
	table := renderTable(o, results)
	fmt.Println()
	fmt.Print(table)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(table), 0o644); err != nil {
			return fmt.Errorf("writing -out: %w", err)
		}
		logf("wrote %s", o.out)
	}
	return nil
}

// raiseNoFile raises the soft RLIMIT_NOFILE to at least want (up to the hard
// limit) and fails if the result is below want.
func raiseNoFile(want uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("setrlimit NOFILE to %d: %w", rl.Max, err)
		}
	}
	if rl.Cur < want {
		return rl.Cur, fmt.Errorf("RLIMIT_NOFILE is %d (hard limit %d), need %d: raise the hard limit (ulimit -Hn)", rl.Cur, rl.Max, want)
	}
	return rl.Cur, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// result holds one backend's figures.
type result struct {
	backend string

	writeTotal    time.Duration
	writeRate     float64
	writeP50      time.Duration
	writeP99      time.Duration
	fillCount     int
	fillTotal     time.Duration
	listCount     int // items in the LIST response
	listP50       time.Duration
	listP99       time.Duration
	listBytes     int64
	watchersOpen  time.Duration // opening and confirming all watchers
	fanoutP50     time.Duration // last watcher
	fanoutMax     time.Duration
	fanoutFirst   time.Duration // p50 of the first watcher's receipt
	fanoutAckP50  time.Duration // p50 of the write's own response
	watchersCount int
	heapWatching  uint64 // Go heap in use with all watchers open, after a GC
	peakRSS       uint64 // VmHWM of the process during this backend's run
}

// benchBackend starts a server on backend and runs the three benchmarks.
func benchBackend(parent context.Context, o options, backend string) (res *result, err error) {
	dir, err := os.MkdirTemp("", "weft-bench-"+backend+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	cfg := server.Config{
		DataDir:       filepath.Join(dir, "server"),
		Listen:        "127.0.0.1:0",
		MonitorListen: "",
		Store:         store.Config{Backend: backend},
		// The API alone is measured here; bench/xds measures discovery.
		Components: []string{"api"},
		// No compaction during the run: it would only add noise.
		CompactionInterval: -1,
		ShutdownTimeout:    5 * time.Second,
		Version:            "bench",
	}
	if backend == "etcd" {
		e, err := startEtcd(parent, o.etcdBin, filepath.Join(dir, "etcd"))
		if err != nil {
			return nil, err
		}
		defer e.stop()
		cfg.Store.Endpoints = []string{e.clientURL}
		cfg.Store.Prefix = "/weft-bench"
		logf("etcd %s ready at %s (data %s)", e.version, e.clientURL, e.dir)
	}

	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	openCtx, cancelOpen := context.WithTimeout(parent, time.Minute)
	defer cancelOpen()
	srv, err := server.New(openCtx, cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("starting server: %w", err)
	}
	srvCtx, stopSrv := context.WithCancel(parent)
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(srvCtx) }()
	defer func() {
		stopSrv()
		select {
		case e := <-runErr:
			if e != nil && err == nil {
				err = fmt.Errorf("server: %w", e)
			}
		case <-time.After(30 * time.Second):
			if err == nil {
				err = errors.New("server did not stop within 30s")
			}
		}
	}()
	addrCtx, cancelAddr := context.WithTimeout(parent, 30*time.Second)
	defer cancelAddr()
	var addr string
	select {
	case e := <-runErr:
		return nil, fmt.Errorf("server exited at start: %v", e)
	case addr = <-waitAddr(addrCtx, srv):
	}
	if addr == "" {
		return nil, errors.New("server did not report its address within 30s")
	}
	kc, err := kubeconfig.Load(filepath.Join(cfg.DataDir, server.KubeconfigFile))
	if err != nil {
		return nil, err
	}
	rk, err := kc.Resolve("")
	if err != nil {
		return nil, err
	}
	api := newAPI("https://"+addr, rk.Token, rk.TLS)
	defer api.closeAll()
	logf("server on %s, store %s", addr, backend)

	resetPeakRSS()
	res = &result{backend: backend}
	if err := phase(parent, o, "writes", func(ctx context.Context) error { return benchWrites(ctx, o, api, res) }); err != nil {
		return nil, err
	}
	if err := phase(parent, o, "list", func(ctx context.Context) error { return benchList(ctx, o, api, res) }); err != nil {
		return nil, err
	}
	if err := phase(parent, o, "watch fan-out", func(ctx context.Context) error { return benchWatch(ctx, o, api, res) }); err != nil {
		return nil, err
	}
	res.peakRSS = peakRSS()
	return res, nil
}

// resetPeakRSS resets the kernel's record of the process's peak RSS
// (best effort; Linux only).
func resetPeakRSS() {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS returns VmHWM from /proc/self/status in bytes, or 0.
func peakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

func waitAddr(ctx context.Context, srv *server.Server) <-chan string {
	ch := make(chan string, 1)
	go func() {
		a, _ := srv.Addr(ctx)
		ch <- a
	}()
	return ch
}

// phase runs f under -phase-timeout and labels its error.
func phase(parent context.Context, o options, name string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeoutCause(parent, o.phaseTimeout, fmt.Errorf("phase %q exceeded -phase-timeout %s", name, o.phaseTimeout))
	defer cancel()
	start := time.Now()
	logf("phase %s: start", name)
	if err := f(ctx); err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	logf("phase %s: done in %s", name, time.Since(start).Round(time.Millisecond))
	return nil
}

// renderTable formats the results as markdown.
func renderTable(o options, rs []*result) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "weft config API benchmark, %s, %s/%s, %d CPUs (GOMAXPROCS %d), %s, host %s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), host)
	fmt.Fprintf(&b, "Parameters: -objects %d -watchers %d -writes %d -concurrency %d -lists %d -fanout %d -watch-conns %d -watch-batch %d\n\n",
		o.objects, o.watchers, o.writes, o.concurrency, o.lists, o.fanout, o.watchConns, o.watchBatch)
	b.WriteString("| Measurement |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %s |", r.backend)
	}
	b.WriteString("\n|---|")
	for range rs {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	row := func(name string, f func(r *result) string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range rs {
			fmt.Fprintf(&b, " %s |", f(r))
		}
		b.WriteString("\n")
	}
	row(fmt.Sprintf("Create %d VirtualServices, %d clients: total", o.writes, o.concurrency), func(r *result) string { return fmtDur(r.writeTotal) })
	row("Create throughput", func(r *result) string { return fmt.Sprintf("%.0f writes/s", r.writeRate) })
	row("Create latency p50 / p99", func(r *result) string { return fmtDur(r.writeP50) + " / " + fmtDur(r.writeP99) })
	row("Fill up to -objects (more creates, for reference)", func(r *result) string {
		if r.fillCount == 0 {
			return "-"
		}
		return fmt.Sprintf("%d in %s (%.0f/s)", r.fillCount, fmtDur(r.fillTotal), float64(r.fillCount)/r.fillTotal.Seconds())
	})
	row(fmt.Sprintf("LIST %d objects (%d requests) p50 / p99", o.objects, o.lists), func(r *result) string { return fmtDur(r.listP50) + " / " + fmtDur(r.listP99) })
	row("LIST response size", func(r *result) string { return fmt.Sprintf("%s (%d bytes)", fmtBytes(r.listBytes), r.listBytes) })
	row(fmt.Sprintf("Open and confirm %d watch streams", o.watchers), func(r *result) string { return fmtDur(r.watchersOpen) })
	row(fmt.Sprintf("Write to last of %d watchers p50 / max (%d writes)", o.watchers, o.fanout), func(r *result) string { return fmtDur(r.fanoutP50) + " / " + fmtDur(r.fanoutMax) })
	row("Write to first watcher p50", func(r *result) string { return fmtDur(r.fanoutFirst) })
	row("Fan-out write's own response p50", func(r *result) string { return fmtDur(r.fanoutAckP50) })
	row(fmt.Sprintf("Go heap in use with %d watchers open (after GC)", o.watchers), func(r *result) string { return fmtBytes(int64(r.heapWatching)) })
	row("Peak RSS of the bench process (server + clients)", func(r *result) string { return fmtBytes(int64(r.peakRSS)) })
	return b.String()
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
