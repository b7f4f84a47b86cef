package engine

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/proxy/memtrim"
)

// Sidecar processes for BenchmarkSidecarProcesses: the test binary re-run
// with benchRoleEnv set serves one sidecar and nothing else.
const (
	benchRoleEnv = "WEFT_ENGINE_BENCH_ROLE" // "inbound" or "outbound"
	benchDirEnv  = "WEFT_ENGINE_BENCH_DIR"  // PEM files
	benchListen  = "WEFT_ENGINE_BENCH_LISTEN"
	benchTarget  = "WEFT_ENGINE_BENCH_TARGET"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(benchRoleEnv); role != "" {
		if err := runBenchSidecar(role); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// runBenchSidecar serves one sidecar of the two-hop topology until stdin
// closes.
func runBenchSidecar(role string) error {
	dir := os.Getenv(benchDirEnv)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, role+".pem"), filepath.Join(dir, role+"-key.pem"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	id := &testCerts{cert: &cert, roots: roots}
	listen, target := netip.MustParseAddrPort(os.Getenv(benchListen)), netip.MustParseAddrPort(os.Getenv(benchTarget))
	l, c := httpListener("virtualInbound", listen, "inbound|8080||", inboundTLS()), staticCluster("inbound|8080||", target, false)
	if role == "outbound" {
		const svc = "outbound|8080||server.default.svc.cluster.local"
		l, c = httpListener("0.0.0.0_8080", listen, svc, nil), staticCluster(svc, target, true)
	}
	e, err := newEngine(id, l, c)
	if err != nil {
		return fmt.Errorf("%s sidecar: %w", role, err)
	}
	if prefix := os.Getenv("WEFT_ENGINE_BENCH_CPUPROFILE"); prefix != "" {
		f, err := os.Create(prefix + role + ".prof")
		if err != nil {
			return err
		}
		defer f.Close()
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	e.shutdown()
	return nil
}

// writeIdentity writes a testCerts' certificate and key as PEM files.
func writeIdentity(tb testing.TB, dir, name string, id *testCerts) {
	tb.Helper()
	var cert []byte
	for _, der := range id.cert.Certificate {
		cert = append(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalECPrivateKey(id.cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), cert, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// startBenchSidecar runs one sidecar process and waits until it serves.
func startBenchSidecar(b *testing.B, dir, role string, listen, target netip.AddrPort) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	procs := os.Getenv("WEFT_ENGINE_BENCH_GOMAXPROCS")
	if procs == "" {
		procs = "1" // weft-proxy's default --concurrency
	}
	gogc := os.Getenv("WEFT_ENGINE_BENCH_GOGC")
	if gogc == "" {
		gogc = "50" // weft-proxy's default (sidecar.DefaultGCPercent)
	}
	godebug, ok := os.LookupEnv("WEFT_ENGINE_BENCH_GODEBUG")
	if !ok {
		godebug = "schedtrace=2147483647" // what weft-proxy re-executes itself with (sidecar.ReexecForSysmon)
	}
	cmd.Env = []string{"GODEBUG=" + godebug}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "GOMAXPROCS="+procs, "GOGC="+gogc, benchRoleEnv+"="+role, benchDirEnv+"="+dir,
		benchListen+"="+listen.String(), benchTarget+"="+target.String())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		b.Fatalf("%s sidecar: %q %v", role, line, err)
	}
	return cmd
}

// procCPU is a process's utime+stime.
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ
}

// procRSS is a process's VmRSS (or another field of its status) in KiB.
func procRSS(b *testing.B, pid int, field string) float64 {
	b.Helper()
	kb, err := memtrim.StatusKB(pid, field)
	if err != nil {
		b.Fatal(err)
	}
	return float64(kb)
}

// BenchmarkSidecarProcesses is bench/mesh's weft chain without the network
// namespaces and iptables: two sidecar processes (this test binary re-run)
// with mTLS between them, a 1 KiB backend and a client in this process
// sending 1,000 requests a second over 16 keep-alive connections (each
// connection paced, as fortio -uniform). It reports each sidecar's CPU per
// request (µs of utime+stime; 1,000 µs/s = 1 vCPU, so vCPU per 1,000 rps
// is the figure / 1,000), its VmRSS and the client's latency percentiles.
// Run it with -benchtime 10000x (10 s). Environment knobs:
// WEFT_ENGINE_BENCH_RATE (requests a second, 0 as fast as possible),
// WEFT_ENGINE_BENCH_GOMAXPROCS (the sidecars', default 1 as weft-proxy's
// --concurrency), WEFT_ENGINE_BENCH_GODEBUG (the sidecars', default
// weft-proxy's schedtrace setting), WEFT_ENGINE_BENCH_MESH_H2=1 (HTTP/2
// between the sidecars), WEFT_ENGINE_BENCH_GOGC (default 50, as
// weft-proxy's),
// WEFT_ENGINE_BENCH_CPUPROFILE (a
// path prefix: each sidecar writes <prefix><role>.prof).
func BenchmarkSidecarProcesses(b *testing.B) {
	const conns = 16
	rate := 1000
	if v, err := strconv.Atoi(os.Getenv("WEFT_ENGINE_BENCH_RATE")); err == nil {
		rate = v // 0: as fast as possible (fortio -qps 0)
	}
	dir := b.TempDir()
	clientID, serverID := newTestMesh(b)
	writeIdentity(b, dir, "outbound", clientID)
	writeIdentity(b, dir, "inbound", serverID)
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE",
		Bytes: serverID.ca}), 0o600); err != nil {
		b.Fatal(err)
	}
	backend := startBackend(b, 1024)
	inAddr, outAddr := freeAddr(b), freeAddr(b)
	in := startBenchSidecar(b, dir, "inbound", inAddr, backend)
	out := startBenchSidecar(b, dir, "outbound", outAddr, inAddr)

	tr := &http.Transport{MaxIdleConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	target := "http://" + outAddr.String() + "/echo?size=1024"
	get := func() error {
		resp, err := client.Get(target)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", target, resp.Status)
		}
		return nil
	}
	for range 200 { // warm up every connection
		if err := get(); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([][]time.Duration, conns)
	cpuIn, cpuOut := procCPU(b, in.Process.Pid), procCPU(b, out.Process.Pid)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for c := range conns {
		n := b.N / conns
		if c < b.N%conns {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var interval time.Duration
			if rate > 0 {
				interval = time.Second * conns / time.Duration(rate)
			}
			next := start.Add(interval * time.Duration(c) / conns)
			for range n {
				if d := time.Until(next); interval > 0 && d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
				next = next.Add(interval)
				t0 := time.Now()
				if err := get(); err != nil {
					b.Error(err)
					cancel()
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	b.StopTimer()
	dIn, dOut := procCPU(b, in.Process.Pid)-cpuIn, procCPU(b, out.Process.Pid)-cpuOut
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(dOut.Microseconds())/float64(b.N), "out-cpu-µs/op")
	b.ReportMetric(float64(dIn.Microseconds())/float64(b.N), "in-cpu-µs/op")
	b.ReportMetric(float64(b.N)/wall.Seconds(), "rps")
	b.ReportMetric(procRSS(b, out.Process.Pid, "VmRSS")/1024, "out-rss-MiB")
	b.ReportMetric(procRSS(b, out.Process.Pid, "RssAnon")/1024, "out-anon-MiB")
	b.ReportMetric(procRSS(b, in.Process.Pid, "VmRSS")/1024, "in-rss-MiB")
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.9), "p90-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
