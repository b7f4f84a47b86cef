// Command xds benchmarks weft's discovery component (Pilot) at scale.
//
// For each client count N in -clients it starts a fresh weft server
// in-process (bolt store, temporary data directory, 100 ms push debounce),
// applies a realistic mesh config through the real HTTPS API with the admin
// token of the generated kubeconfig (-services ServiceEntries with 3 STATIC
// endpoints each, a DestinationRule with 2 subsets and a VirtualService with
// a weighted route per service), then connects N simulated sidecars over the
// plaintext xDS port: N ADS streams (state of the world) spread over
// ceil(N / -streams-per-conn) gRPC connections, each stream driven by one
// goroutine with its own node ID "sidecar~<ip>~bench-<i>.default~..." whose
// IP is no endpoint. Every client subscribes to CDS and LDS (wildcard), to
// EDS for the EDS clusters of the CDS response and to RDS for the route
// names of the listeners' HTTP connection managers, like Envoy, and ACKs
// every response at once.
//
// Measured per N:
//
//   - the time from the first dial until all N clients have ACKed a version
//     of every type;
//   - Go heap and process RSS before connecting and with N connected and
//     synced, as (delta)/N bytes per client (clients and server share the
//     process: see bench/README.md);
//   - -changes config changes made one at a time (a VirtualService's weights
//     flipped with a PUT): for each, the time from just before the PUT until
//     the last of the N clients has ACKed the RDS version that carries it
//     (p50/p99/max; includes the server's 100 ms debounce), with the CPU time
//     (getrusage user+sys) of the whole phase;
//   - the server's pilot_xds, pilot_xds_pushes and pilot_proxy_convergence_time
//     metrics, scraped from its monitoring listener.
//
// Everything listens on loopback and is bounded by timeouts; on failure the
// program prints "xds bench: FAILED: ..." and exits 1 (2 for bad flags).
//
// Usage:
//
//	go run ./bench/xds -clients 500,1000,5000 -changes 10 -out /tmp/xds-bench.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
)

// options are the command-line flags.
type options struct {
	clients        []int
	changes        int
	services       int
	streamsPerConn int
	classes        int
	debounce       time.Duration
	out            string
	timeout        time.Duration
	syncTimeout    time.Duration
	changeTimeout  time.Duration
	verbose        bool
	cpuProfile     string
	memProfile     string
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("xds", flag.ContinueOnError)
	clients := fs.String("clients", "500,1000,5000", "comma-separated simulated client counts; a fresh server for each")
	fs.IntVar(&o.changes, "changes", 10, "config changes timed per client count, one at a time")
	fs.IntVar(&o.services, "services", 50, "ServiceEntries (each with 3 endpoints, a DestinationRule and a VirtualService)")
	fs.IntVar(&o.streamsPerConn, "streams-per-conn", 100, "ADS streams per gRPC connection")
	fs.IntVar(&o.classes, "classes", 1, "distinct client label sets (app=bench-<i mod classes>); the server translates once per class")
	fs.DurationVar(&o.debounce, "debounce", 100*time.Millisecond, "the server's push debounce")
	fs.StringVar(&o.out, "out", "", "also write the markdown results to this file")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "overall time limit")
	fs.DurationVar(&o.syncTimeout, "sync-timeout", 5*time.Minute, "time limit for config to apply and for all clients to connect and sync")
	fs.DurationVar(&o.changeTimeout, "change-timeout", time.Minute, "time limit for one change to reach every client")
	fs.BoolVar(&o.verbose, "v", false, "log the server's info messages (one per proxy: noisy)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the change phase of the largest -clients to this file")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile with the largest -clients connected (after a GC) to this file")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-clients: %q is not a positive number", s)
		}
		o.clients = append(o.clients, n)
	}
	for name, v := range map[string]int{"-changes": o.changes, "-services": o.services, "-streams-per-conn": o.streamsPerConn, "-classes": o.classes} {
		if v < 1 {
			return o, fmt.Errorf("%s must be at least 1", name)
		}
	}
	if o.services > 250 {
		return o, errors.New("-services must be at most 250 (endpoint addresses are 10.1.<i>.1-3)")
	}
	if o.debounce <= 0 {
		return o, errors.New("-debounce must be positive")
	}
	return o, nil
}

func main() { harness.Main("xds bench", parseFlags, run) }

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeoutCause(ctx, o.timeout, fmt.Errorf("overall limit -timeout %s exceeded", o.timeout))
	defer cancel()

	largest := 0
	for _, n := range o.clients {
		largest = max(largest, n)
	}
	// Each gRPC connection is two descriptors in this process (both ends);
	// the API clients, the store and the listeners need a few more.
	conns := (largest + o.streamsPerConn - 1) / o.streamsPerConn
	nofile, err := harness.RaiseNoFile(uint64(2*conns + 1024))
	if err != nil {
		return err
	}
	harness.Logf("RLIMIT_NOFILE = %d, GOMAXPROCS %d", nofile, runtime.GOMAXPROCS(0))

	var results []*result
	for i, n := range o.clients {
		harness.Logf("=== %d clients ===", n)
		prof := profiles{}
		if n == largest && !hasLaterEqual(o.clients[i+1:], largest) {
			prof = profiles{cpu: o.cpuProfile, mem: o.memProfile}
		}
		res, err := benchN(ctx, o, n, prof)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				err = fmt.Errorf("%w (%v)", err, cause)
			}
			return fmt.Errorf("%d clients: %w", n, err)
		}
		results = append(results, res)
		harness.Logf("%d clients: sync %s, change p50 %s p99 %s max %s, %s/client (RSS)", n, harness.FmtDur(res.syncTime),
			harness.FmtDur(res.changeP50), harness.FmtDur(res.changeP99), harness.FmtDur(res.changeMax), harness.FmtBytes(res.rssPerClient()))
	}
	return harness.WriteReport(renderTable(o, results), o.out)
}

func hasLaterEqual(rest []int, n int) bool {
	for _, x := range rest {
		if x == n {
			return true
		}
	}
	return false
}

// profiles name the profile files to write during one run ("" for none).
type profiles struct{ cpu, mem string }

func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		harness.Logf("wrote CPU profile %s", path)
	}, nil
}

func writeHeapProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		return err
	}
	harness.Logf("wrote heap profile %s", path)
	return nil
}
