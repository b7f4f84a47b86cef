// Command mesh measures weft's sidecar data path against a baseline and
// against nginx and haproxy two-hop mutual-TLS chains, the way Istio's
// performance benchmarks do, with fortio.
//
// It builds the topology of test/e2e/capture in network namespaces on a
// bridge: a control plane namespace running `weft server`, client host A
// and server host B. fortio's echo server runs on B (`fortio server
// -http-port 8080`) and fortio's load client on A as an ordinary user
// (setpriv, UID 65534), so that in the mesh case its traffic is captured.
// The chains, measured one after the other (only the measured chain's
// proxies run):
//
//   - baseline: A -> B directly (no capture rules, no proxies);
//   - nginx: A -> nginx on A (loopback) -> mTLS with client certificates ->
//     nginx on B -> B (throwaway ECDSA P-256 CA generated here);
//   - haproxy: the same with haproxy;
//   - weft: A -> sidecar A -> mTLS -> sidecar B -> B, capture rules
//     (`weft-proxy iptables -u 1337`) on both hosts, sidecars as UID 1337
//     with workload certificates from bootstrap tokens, STRICT mTLS; the
//     client calls a ServiceEntry VIP;
//   - weft-tcp (only when asked for): the weft chain with the service port
//     declared TCP, so the sidecars relay bytes over mTLS without HTTP
//     processing — the floor under the weft chain, for diagnosis;
//   - weft-explicit (only when asked for): the weft chain without capture
//     rules, in nginx's shape: the client calls sidecar A on
//     127.0.0.1:8080 (--explicit), which calls sidecar B's inbound port
//     (--inbound-ports 8080=15080) over mTLS; B forwards to the app.
//
// For each chain: a short warm-up, then `fortio load -qps 1000 -c 16 -t 30s
// -uniform -nocatchup` on /echo?size=1024 (1 KiB responses) for latency,
// then `-qps 0 -c 16 -t 10s` for maximum throughput. For weft it also
// reads each sidecar's CPU (utime+stime from /proc/<pid>/stat over the
// 1,000-qps run) and memory (VmRSS, VmHWM) after it.
//
// It needs root, ip(8), iptables, setpriv, nginx, haproxy and fortio (PATH
// or $GOPATH/bin: go install fortio.org/fortio@v1.66.0). Everything it
// creates (namespaces, processes, rules, temporary files) is removed on
// exit, also on failure or SIGINT/SIGTERM.
//
// Usage:
//
//	go run ./bench/mesh -out bench/results/mesh.md
//	go run ./bench/mesh -chains weft,weft-tcp -sidecar-args "GOGC=100"
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	qps, conns  int
	latencyDur  time.Duration
	maxDur      time.Duration
	warmup      time.Duration
	chains      []string
	rounds      int
	out, fortio string
	// sidecarArgs are extra weft-proxy sidecar flags (-sidecar-args).
	sidecarArgs []string
	// scrape is how often the weft sidecars' metrics are scraped during
	// their chain's runs (-scrape); 0: never.
	scrape time.Duration
}

func main() {
	var o options
	var chains string
	flag.IntVar(&o.qps, "qps", 1000, "request rate of the latency run")
	flag.IntVar(&o.conns, "c", 16, "connections (fortio -c)")
	flag.DurationVar(&o.latencyDur, "t", 30*time.Second, "duration of the latency run")
	flag.DurationVar(&o.maxDur, "tmax", 10*time.Second, "duration of the maximum-throughput run (-qps 0)")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "warm-up before each chain's runs (not measured)")
	flag.StringVar(&chains, "chains", "baseline,nginx,haproxy,weft", "chains to measure, in order (baseline is always measured)")
	flag.StringVar(&o.out, "out", "", "also write the markdown report to this file")
	flag.IntVar(&o.rounds, "rounds", 1, "measure every chain this many times, in alternation (a round runs each chain once); the report adds each chain's medians over the rounds")
	var sidecarArgs string
	flag.StringVar(&sidecarArgs, "sidecar-args", "", "extra weft-proxy sidecar flags, space-separated, after any NAME=value environment words (e.g. \"GOGC=100 --concurrency 2\")")
	flag.DurationVar(&o.scrape, "scrape", 15*time.Second, "scrape every weft sidecar's /stats/prometheus this often during its chain's runs, gzip-compressed from the control plane's host, as Prometheus does in a mesh (its default interval); 0: never")
	flag.StringVar(&o.fortio, "fortio", "", "fortio binary (default: PATH, then $GOPATH/bin)")
	flag.Parse()
	o.sidecarArgs = strings.Fields(sidecarArgs)
	o.chains = []string{"baseline"}
	for _, c := range strings.Split(chains, ",") {
		c = strings.TrimSpace(c)
		kind, args := chainKind(c)
		switch kind {
		case "baseline", "":
		case "nginx", "haproxy":
			if args != nil {
				fmt.Fprintf(os.Stderr, "mesh: chain %q: only weft chains take @flags\n", c)
				os.Exit(2)
			}
			o.chains = append(o.chains, c)
		case weftCapture, weftTCP, weftExplicit:
			o.chains = append(o.chains, c)
		default:
			fmt.Fprintf(os.Stderr, "mesh: unknown chain %q (baseline, nginx, haproxy, weft, weft-tcp, weft-explicit; a weft chain may add sidecar flags after @)\n", c)
			os.Exit(2)
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "mesh: must run as root (it creates network namespaces, iptables rules and runs processes as other users); try: sudo $(go env GOROOT)/bin/go run ./bench/mesh")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	runCleanups()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %v", err)
		}
		fmt.Fprintln(os.Stderr, "mesh:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func findFortio(flagged string) (string, error) {
	if flagged != "" {
		return flagged, nil
	}
	if p, err := exec.LookPath("fortio"); err == nil {
		return p, nil
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "fortio")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("fortio not found: go install fortio.org/fortio@v1.66.0")
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func copyFile(dst, src string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func run(ctx context.Context, o options) error {
	need := []string{"ip", "iptables-restore", "iptables-save", "setpriv", "getconf", "curl"}
	for _, c := range o.chains {
		if c == "nginx" || c == "haproxy" {
			need = append(need, c)
		}
	}
	for _, tool := range need {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed (apt-get install -y iproute2 iptables util-linux curl nginx-light haproxy)", tool)
		}
	}
	fortioSrc, err := findFortio(o.fortio)
	if err != nil {
		return err
	}
	// Binaries and files live in a directory the unprivileged users
	// (the client, the sidecars) can reach.
	dir, err := os.MkdirTemp("", "weft-bench-mesh-")
	if err != nil {
		return err
	}
	atExit(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(dir, "fortio"), fortioSrc, 0o755); err != nil {
		return err
	}
	logf("building weft and weft-proxy")
	for bin, pkg := range map[string]string{"weft": "cmd/weft", "weft-proxy": "cmd/weft-proxy"} {
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		out, err := exec.CommandContext(bctx, "go", "build", "-o", filepath.Join(dir, bin), "github.com/weftmesh/weft/"+pkg).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("building %s: %v\n%s", pkg, err, out)
		}
	}
	if err := writeCerts(dir, "10.82.0.3"); err != nil {
		return fmt.Errorf("certificates: %v", err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	t, err := buildTopology(ctx, hex.EncodeToString(b))
	if err != nil {
		return err
	}
	logf("topology up: %s, %s, %s", t.ns["cp"], t.ns["a"], t.ns["b"])
	fortio := filepath.Join(dir, "fortio")
	echo, err := bg(dir, "fortio-server", t.ns["b"], "setpriv", "--reuid="+clientUID, "--regid="+clientUID, "--clear-groups",
		fortio, "server", "-http-port", appPort, "-grpc-port", "disabled", "-redirect-port", "disabled", "-loglevel", "Warning")
	if err != nil {
		return err
	}
	directURL := "http://" + t.addr["b"] + ":" + appPort + "/echo?size=1024"
	if err := eventually(ctx, "fortio echo server answering", readyTimeout, func() error {
		_, err := in(ctx, commandTimeout, t.ns["a"], fortio, "curl", "-quiet", directURL)
		return err
	}, echo); err != nil {
		return err
	}

	rep := &report{started: time.Now(), loadStart: loadavg(), opts: o}
	weftRes := map[string][]*weftUsage{}
	for round := range o.rounds {
		results := map[string]*chainResult{}
		rep.rounds = append(rep.rounds, results)
		if err := measureRound(ctx, o, dir, t, fortio, directURL, round, results, weftRes); err != nil {
			return err
		}
	}
	rep.results = rep.rounds[0]
	rep.weft = weftRes
	rep.finished, rep.loadEnd = time.Now(), loadavg()
	md := rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// measureRound runs every chain once, in order, into results; the weft
// sidecars' usage is appended to weftRes.
func measureRound(ctx context.Context, o options, dir string, t *topology, fortio, directURL string, round int,
	results map[string]*chainResult, weftRes map[string][]*weftUsage) error {
	if o.rounds > 1 {
		logf("round %d of %d", round+1, o.rounds)
	}
	for _, c := range o.chains {
		logf("chain %s", c)
		var err error
		var procs []*proc
		url := directURL
		var mesh *weftMesh
		kind, variant := chainKind(c)
		switch kind {
		case "nginx", "haproxy":
			procs, url, err = startProxyChain(ctx, dir, t, c)
		case weftCapture, weftTCP, weftExplicit:
			tag := fmt.Sprintf("%s-%d", kind, slices.Index(o.chains, c))
			if round > 0 {
				tag = fmt.Sprintf("%s-r%d", tag, round+1)
			}
			mesh, url, err = startWeft(ctx, dir, t, slices.Concat(o.sidecarArgs, variant), kind, tag)
		}
		if err != nil {
			return fmt.Errorf("%s chain: %v", c, err)
		}
		res, usage, err := measure(ctx, o, t, fortio, url, mesh)
		if err != nil {
			return fmt.Errorf("%s chain: %v", c, err)
		}
		results[c] = res
		if usage != nil {
			weftRes[c] = append(weftRes[c], usage)
		}
		logf("%s: p50 %.3f ms p90 %.3f ms p99 %.3f ms at %.0f qps; max %.0f qps", c,
			res.lat.p[0]*1e3, res.lat.p[1]*1e3, res.lat.p[2]*1e3, res.lat.qps, res.max.qps)
		for _, p := range procs {
			p.stop()
		}
		if mesh != nil {
			mesh.stop()
		}
	}
	return nil
}

// measure runs the warm-up, the latency run (with the sidecars' CPU
// sampled around it) and the maximum-throughput run.
func measure(ctx context.Context, o options, t *topology, fortio, url string, mesh *weftMesh) (_ *chainResult, _ *weftUsage, rerr error) {
	load := func(qps int, d time.Duration) (*fortioResult, error) {
		args := []string{"setpriv", "--reuid=" + clientUID, "--regid=" + clientUID, "--clear-groups",
			fortio, "load", "-qps", fmt.Sprint(qps), "-c", fmt.Sprint(o.conns), "-t", d.String(),
			"-p", "50,90,99", "-r", "0.00001", "-loglevel", "Warning", "-json", "-"}
		if qps > 0 {
			args = append(args, "-uniform", "-nocatchup")
		}
		out, err := in(ctx, d+60*time.Second, t.ns["a"], append(args, url)...)
		if err != nil {
			return nil, err
		}
		return parseFortio([]byte(out))
	}
	if mesh != nil && o.scrape > 0 {
		stop := scrapeSidecars(ctx, t, o.scrape)
		defer func() {
			if n, err := stop(); err != nil && rerr == nil {
				rerr = fmt.Errorf("scraping the sidecars' metrics: %v", err)
			} else if err == nil {
				logf("scraped each sidecar's metrics %d times", n)
			}
		}()
	}
	if o.warmup > 0 {
		if _, err := load(200, o.warmup); err != nil {
			return nil, nil, fmt.Errorf("warm-up: %v", err)
		}
	}
	var usage *weftUsage
	var before map[string]int64
	var t0 time.Time
	if mesh != nil {
		before = map[string]int64{}
		for h, pid := range mesh.pids {
			ticks, err := cpuTicks(pid)
			if err != nil {
				return nil, nil, err
			}
			before[h] = ticks
		}
		t0 = time.Now()
	}
	var stopSampling func() map[string][]memStatus
	if mesh != nil {
		stopSampling = sampleMemory(mesh.pids, memSettle, time.Second)
	}
	lat, err := load(o.qps, o.latencyDur)
	var samples map[string][]memStatus
	if stopSampling != nil {
		samples = stopSampling()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("latency run: %v", err)
	}
	if mesh != nil {
		wall := time.Since(t0).Seconds()
		hz := float64(clockTicks())
		usage = &weftUsage{qps: lat.qps, sidecars: map[string]sidecarUsage{}}
		for h, pid := range mesh.pids {
			ticks, err := cpuTicks(pid)
			if err != nil {
				return nil, nil, err
			}
			if len(samples[h]) == 0 { // a run shorter than memSettle: its end
				m, err := memKB(pid)
				if err != nil {
					return nil, nil, err
				}
				samples[h] = []memStatus{m}
			}
			// VmHWM only grows: the last sample holds the run's peak.
			usage.sidecars[h] = sidecarUsage{vcpu: float64(ticks-before[h]) / hz / wall, mem: samples[h], hwmKB: samples[h][len(samples[h])-1].hwm}
		}
	}
	snap, err := takeCPUSnapshot()
	if err != nil {
		return nil, nil, err
	}
	max, err := load(0, o.maxDur)
	if err != nil {
		return nil, nil, fmt.Errorf("throughput run: %v", err)
	}
	end, err := takeCPUSnapshot()
	if err != nil {
		return nil, nil, err
	}
	maxCPU := snap.until(end)
	if mesh != nil {
		for h, pid := range mesh.pids {
			m, err := memKB(pid)
			if err == nil {
				s := usage.sidecars[h]
				s.rssAfterMaxKB, s.hwmKB = m.rss, m.hwm
				usage.sidecars[h] = s
			}
		}
	}
	return &chainResult{url: url, lat: lat, max: max, maxCPU: maxCPU}, usage, nil
}

// scrapeSidecars fetches both sidecars' /stats/prometheus now and every
// interval until stop is called, from the control plane's host with
// Accept-Encoding: gzip, as a Prometheus server scraping the mesh would:
// serving a scrape is part of what a sidecar costs. stop returns how many
// rounds of scrapes ran and the first failure.
func scrapeSidecars(ctx context.Context, t *topology, every time.Duration) (stop func() (int, error)) {
	var n int
	var first error
	halt := repeat(0, every, func() {
		for _, h := range []string{"a", "b"} {
			url := "http://" + t.addr[h] + ":15020/stats/prometheus"
			if _, err := in(ctx, commandTimeout, t.ns["cp"], "curl", "-sSf", "-o", "/dev/null", "--max-time", "5",
				"-H", "Accept-Encoding: gzip", url); err != nil && first == nil {
				first = err
			}
		}
		n++
	})
	return func() (int, error) {
		halt()
		return n, first
	}
}

// memSettle is how long into the latency run the sidecars' memory starts
// being sampled: a chain's first seconds still hold start-up's peak (the
// sidecars drop the pages only start-up used 5 s after their first
// configuration, which is often after the 3 s warm-up has begun), which
// VmHWM reports.
const memSettle = 10 * time.Second

// sampleMemory reads every pid's memory after settle and then every
// interval until stop is called, and returns the samples by key.
// Resident memory moves within a run (heap growth and collection, binary
// pages faulted in by a scrape and trimmed again): one reading at the end
// would depend on where it falls.
func sampleMemory(pids map[string]int, settle, every time.Duration) (stop func() map[string][]memStatus) {
	out := map[string][]memStatus{}
	halt := repeat(settle, every, func() {
		for k, pid := range pids {
			if m, err := memKB(pid); err == nil {
				out[k] = append(out[k], m)
			}
		}
	})
	return func() map[string][]memStatus {
		halt()
		return out
	}
}

// repeat calls f after delay and then every interval, in a goroutine,
// until stop is called; stop returns once f no longer runs.
func repeat(delay, every time.Duration, f func()) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-done:
			return
		case <-time.After(delay):
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			f()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
