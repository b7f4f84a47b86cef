package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/store"
)

// result holds the figures of one client count.
type result struct {
	clients, conns int

	applyTime time.Duration // creating the config through the API
	syncTime  time.Duration // first dial to all clients synced

	before, connected procStats
	peakRSS           uint64 // VmHWM from connecting to the end of the changes

	changes   []time.Duration // PUT start to the last client's RDS ACK
	firsts    []time.Duration // PUT start to the first client's RDS ACK
	puts      []time.Duration // the PUT's own response time
	changeP50 time.Duration
	changeP99 time.Duration
	changeMax time.Duration
	cpu       time.Duration // user+sys CPU of the change phase
	cpuWall   time.Duration // wall time of the change phase

	// Server metrics: after syncing, and the change phase's increase.
	synced, afterChanges *pilotMetrics
}

func (r *result) heapPerClient() int64 {
	return (int64(r.connected.heap) - int64(r.before.heap)) / int64(r.clients)
}

func (r *result) rssPerClient() int64 {
	return (int64(r.connected.rss) - int64(r.before.rss)) / int64(r.clients)
}

// benchN runs the whole benchmark for n clients against a fresh server.
func benchN(parent context.Context, o options, n int, prof profiles) (res *result, err error) {
	dir, err := os.MkdirTemp("", "weft-xds-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	monAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	cfg := server.Config{
		DataDir:            filepath.Join(dir, "server"),
		Listen:             "127.0.0.1:0",
		MonitorListen:      monAddr,
		Store:              store.Config{Backend: "bolt"},
		CompactionInterval: -1, // no compaction landing in a measurement
		ShutdownTimeout:    5 * time.Second,
		Version:            "bench",
		Discovery: server.DiscoveryConfig{
			Listen:          "127.0.0.1:0",
			PlaintextListen: "127.0.0.1:0",
			Debounce:        o.debounce,
		},
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
	addrCtx, cancelAddr := context.WithTimeout(parent, 30*time.Second)
	defer cancelAddr()
	_, xdsAddr, err := srv.XDSAddrs(addrCtx)
	if err != nil {
		return nil, fmt.Errorf("server xDS addresses: %w", err)
	}
	if xdsAddr == "" {
		return nil, errors.New("the server has no plaintext xDS listener")
	}
	a := newAPI("https://"+srv.APIAddr, srv.Token, srv.TLS)
	defer a.close()
	metricsURL := "http://" + monAddr + "/metrics"
	harness.Logf("server: API %s, xDS (plaintext) %s, metrics %s", srv.APIAddr, xdsAddr, metricsURL)

	res = &result{clients: n, conns: (n + o.streamsPerConn - 1) / o.streamsPerConn}
	var m *mesh
	err = phase(parent, o.syncTimeout, "apply config", func(ctx context.Context) error {
		start := time.Now()
		var err error
		if m, err = applyMesh(ctx, a, o.services); err != nil {
			return err
		}
		res.applyTime = time.Since(start)
		return settle(ctx, xdsAddr, o)
	})
	if err != nil {
		return nil, err
	}

	res.before = readProcStats()
	harness.ResetPeakRSS()
	var f *fleet
	defer func() {
		if f != nil {
			f.stop()
		}
	}()
	err = phase(parent, o.syncTimeout, "connect and sync", func(ctx context.Context) error {
		start := time.Now()
		var err error
		if f, err = startFleet(parent, xdsAddr, n, o.streamsPerConn, o.classes); err != nil {
			return err
		}
		if err := f.waitSynced(ctx); err != nil {
			return err
		}
		res.syncTime = time.Since(start)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if o.classes == 1 {
		if err := sameRDS(f); err != nil {
			return nil, err
		}
	}
	res.connected = readProcStats()
	if err := writeHeapProfile(prof.mem); err != nil {
		return nil, err
	}
	if res.synced, err = scrapeMetrics(parent, metricsURL); err != nil {
		return nil, err
	}
	if int(res.synced.connected) != n {
		return nil, fmt.Errorf("server reports pilot_xds %v connected proxies, want %d", res.synced.connected, n)
	}

	err = phase(parent, time.Duration(o.changes+1)*o.changeTimeout, "changes", func(ctx context.Context) error {
		stopProf, err := startCPUProfile(prof.cpu)
		if err != nil {
			return err
		}
		defer stopProf()
		cpu0, err := cpuTime()
		if err != nil {
			return err
		}
		wall0 := time.Now()
		for k := 0; k < o.changes; k++ {
			if err := change(ctx, o, a, m, f, k%o.services, res); err != nil {
				return fmt.Errorf("change %d: %w", k+1, err)
			}
			// Let the server finish book-keeping the ACKs before the next.
			time.Sleep(o.debounce)
		}
		res.cpuWall = time.Since(wall0)
		cpu1, err := cpuTime()
		if err != nil {
			return err
		}
		res.cpu = cpu1 - cpu0
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.peakRSS = harness.ProcStatus("VmHWM:")
	if res.afterChanges, err = scrapeMetrics(parent, metricsURL); err != nil {
		return nil, err
	}
	res.changeP50, res.changeP99 = harness.Percentile(res.changes, 50), harness.Percentile(res.changes, 99)
	res.changeMax = harness.Percentile(res.changes, 100)
	return res, nil
}

// settle waits until the applied config has reached the discovery
// component and no further push follows: one probe client must see every
// VirtualService's initial weights, then no response for a second.
func settle(ctx context.Context, xdsAddr string, o options) error {
	f, err := startFleet(ctx, xdsAddr, 1, 1, 1)
	if err != nil {
		return err
	}
	defer f.stop()
	if err := f.waitSynced(ctx); err != nil {
		return fmt.Errorf("probe client: %w", err)
	}
	p := f.clients[0]
	quiet := max(time.Second, 5*o.debounce)
	for {
		v := p.routes.Load()
		ok := v != nil
		for i := 0; ok && i < o.services; i++ {
			ok = v.w1[serviceHost(i)] == initialWeight
		}
		if ok && time.Since(time.Unix(0, p.lastResponse.Load())) >= quiet {
			var parts []string
			for t := 0; t < numTypes; t++ {
				parts = append(parts, fmt.Sprintf("%s %d resources %s", shortType(t), p.count[t].Load(), harness.FmtBytes(p.size[t].Load())))
			}
			harness.Logf("config settled; one client's resources: %s", strings.Join(parts, ", "))
			return nil
		}
		select {
		case err := <-f.errc:
			return fmt.Errorf("probe client: %w", err)
		case <-ctx.Done():
			seen := 0
			if v != nil {
				seen = len(v.w1)
			}
			return fmt.Errorf("the probe client's routes never showed all %d VirtualServices (it sees %d hosts with weighted routes): %w",
				o.services, seen, context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sameRDS checks that every client holds the same RDS version (they are
// all of one proxy class).
func sameRDS(f *fleet) error {
	want := f.clients[0].rdsVersion.Load()
	for _, c := range f.clients {
		if got := c.rdsVersion.Load(); got == nil || *got != *want {
			return fmt.Errorf("client %d has RDS version %v, client 0 %q: clients of one class should agree", c.index, got, *want)
		}
	}
	return nil
}

// change flips VirtualService i and waits until every client has ACKed the
// RDS version carrying it. The probe client (0) identifies that version by
// decoding the routes.
func change(ctx context.Context, o options, a *api, m *mesh, f *fleet, i int, res *result) error {
	ctx, cancel := context.WithTimeoutCause(ctx, o.changeTimeout, fmt.Errorf("the change did not reach every client within -change-timeout %s", o.changeTimeout))
	defer cancel()
	probe := f.clients[0]
	base := probe.routes.Load().version
	start := time.Now()
	w1, err := m.flip(ctx, a, i)
	if err != nil {
		return err
	}
	put := time.Since(start)
	host := serviceHost(i)
	var target string
	waiting := append([]*client(nil), f.clients...)
	var first, last int64
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if target == "" {
			if v := probe.routes.Load(); v.version != base && v.w1[host] == w1 {
				target = v.version
			}
		}
		if target != "" {
			rest := waiting[:0]
			for _, c := range waiting {
				at := c.rdsAckedAt.Load()
				if v := c.rdsVersion.Load(); v != nil && *v == target {
					first, last = minNonZero(first, at), max(last, at)
					continue
				}
				rest = append(rest, c)
			}
			waiting = rest
			if len(waiting) == 0 {
				break
			}
		}
		select {
		case err := <-f.errc:
			return err
		case <-ctx.Done():
			if target == "" {
				return fmt.Errorf("probe client never saw weight %d for %s (RDS version still %q): %w", w1, host, base, context.Cause(ctx))
			}
			return fmt.Errorf("%d of %d clients have not ACKed RDS version %s: %w", len(waiting), len(f.clients), target, context.Cause(ctx))
		case <-tick.C:
		}
	}
	d := time.Unix(0, last).Sub(start)
	res.changes = append(res.changes, d)
	res.firsts = append(res.firsts, time.Unix(0, first).Sub(start))
	res.puts = append(res.puts, put)
	harness.Logf("  change %d (%s -> %d/%d): PUT %s, first client %s, last client %s", len(res.changes), serviceName(i), w1, 100-w1,
		harness.FmtDur(put), harness.FmtDur(time.Unix(0, first).Sub(start)), harness.FmtDur(d))
	return nil
}

func minNonZero(a, b int64) int64 {
	if a == 0 || b < a {
		return b
	}
	return a
}

// phase runs f under limit.
func phase(parent context.Context, limit time.Duration, name string, f func(context.Context) error) error {
	return harness.Phase(parent, name, limit, fmt.Errorf("phase %q exceeded its limit of %s", name, limit), f)
}
