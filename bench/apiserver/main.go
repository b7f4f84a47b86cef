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
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/store"
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

func main() { harness.Main("apiserver bench", parseFlags, run) }

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	nofile, err := harness.RaiseNoFile(uint64(o.watchers + o.concurrency + 1024))
	if err != nil {
		return err
	}
	harness.Logf("RLIMIT_NOFILE = %d", nofile)

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
		harness.Logf("=== %s ===", backend)
		res, err := benchBackend(ctx, o, backend)
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (overall limit -timeout %s or interrupted: %v)", err, o.timeout, context.Cause(ctx))
			}
			return fmt.Errorf("%s: %w", backend, err)
		}
		results = append(results, res)
	}
	return harness.WriteReport(renderTable(o, results), o.out)
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
		harness.Logf("etcd %s ready at %s (data %s)", e.version, e.clientURL, e.dir)
	}

	srv, err := harness.StartServer(parent, cfg, o.verbose)
	if err != nil {
		return nil, err
	}
	defer func() {
		if e := srv.Stop(); e != nil && err == nil {
			err = e
		}
	}()
	api := newAPI("https://"+srv.APIAddr, srv.Token, srv.TLS)
	defer api.closeAll()
	harness.Logf("server on %s, store %s", srv.APIAddr, backend)

	harness.ResetPeakRSS()
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
	res.peakRSS = harness.ProcStatus("VmHWM:")
	return res, nil
}

// phase runs f under -phase-timeout.
func phase(parent context.Context, o options, name string, f func(context.Context) error) error {
	return harness.Phase(parent, name, o.phaseTimeout, fmt.Errorf("phase %q exceeded -phase-timeout %s", name, o.phaseTimeout), f)
}

// renderTable formats the results as markdown.
func renderTable(o options, rs []*result) string {
	t := harness.NewTable("weft config API benchmark",
		fmt.Sprintf("-objects %d -watchers %d -writes %d -concurrency %d -lists %d -fanout %d -watch-conns %d -watch-batch %d",
			o.objects, o.watchers, o.writes, o.concurrency, o.lists, o.fanout, o.watchConns, o.watchBatch),
		rs, func(r *result) string { return r.backend })
	t.Row(fmt.Sprintf("Create %d VirtualServices, %d clients: total", o.writes, o.concurrency), func(r *result) string { return harness.FmtDur(r.writeTotal) })
	t.Row("Create throughput", func(r *result) string { return fmt.Sprintf("%.0f writes/s", r.writeRate) })
	t.Row("Create latency p50 / p99", func(r *result) string { return harness.FmtDur(r.writeP50) + " / " + harness.FmtDur(r.writeP99) })
	t.Row("Fill up to -objects (more creates, for reference)", func(r *result) string {
		if r.fillCount == 0 {
			return "-"
		}
		return fmt.Sprintf("%d in %s (%.0f/s)", r.fillCount, harness.FmtDur(r.fillTotal), float64(r.fillCount)/r.fillTotal.Seconds())
	})
	t.Row(fmt.Sprintf("LIST %d objects (%d requests) p50 / p99", o.objects, o.lists), func(r *result) string { return harness.FmtDur(r.listP50) + " / " + harness.FmtDur(r.listP99) })
	t.Row("LIST response size", func(r *result) string {
		return fmt.Sprintf("%s (%d bytes)", harness.FmtBytes(r.listBytes), r.listBytes)
	})
	t.Row(fmt.Sprintf("Open and confirm %d watch streams", o.watchers), func(r *result) string { return harness.FmtDur(r.watchersOpen) })
	t.Row(fmt.Sprintf("Write to last of %d watchers p50 / max (%d writes)", o.watchers, o.fanout), func(r *result) string { return harness.FmtDur(r.fanoutP50) + " / " + harness.FmtDur(r.fanoutMax) })
	t.Row("Write to first watcher p50", func(r *result) string { return harness.FmtDur(r.fanoutFirst) })
	t.Row("Fan-out write's own response p50", func(r *result) string { return harness.FmtDur(r.fanoutAckP50) })
	t.Row(fmt.Sprintf("Go heap in use with %d watchers open (after GC)", o.watchers), func(r *result) string { return harness.FmtBytes(int64(r.heapWatching)) })
	t.Row("Peak RSS of the bench process (server + clients)", func(r *result) string { return harness.FmtBytes(int64(r.peakRSS)) })
	return t.String()
}
