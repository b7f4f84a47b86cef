package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// renderTable formats the results as markdown, one column per client count.
func renderTable(o options, rs []*result) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "weft discovery (xDS) benchmark, %s, %s/%s, %d CPUs (GOMAXPROCS %d), %s, host %s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), host)
	fmt.Fprintf(&b, "Parameters: -changes %d -services %d -streams-per-conn %d -classes %d -debounce %s\n\n",
		o.changes, o.services, o.streamsPerConn, o.classes, o.debounce)
	b.WriteString("| Measurement |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %d clients |", r.clients)
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
	row("gRPC connections", func(r *result) string { return fmt.Sprint(r.conns) })
	row(fmt.Sprintf("Apply config (%d objects, one at a time)", 3*o.services), func(r *result) string { return fmtDur(r.applyTime) })
	row("Connect all clients and sync (first dial to last client's ACK of every type)", func(r *result) string { return fmtDur(r.syncTime) })
	row(fmt.Sprintf("**Change to last client's RDS ACK, p50 / p99 / max** (%d changes)", o.changes), func(r *result) string {
		return fmt.Sprintf("**%s / %s / %s**", fmtDur(r.changeP50), fmtDur(r.changeP99), fmtDur(r.changeMax))
	})
	row("Change to first client's RDS ACK, p50", func(r *result) string { return fmtDur(percentile(r.firsts, 50)) })
	row("The PUT's own response, p50", func(r *result) string { return fmtDur(percentile(r.puts, 50)) })
	row("CPU (user+sys, whole process) in the change phase: per change", func(r *result) string {
		return fmtDur(r.cpu / time.Duration(max(1, len(r.changes))))
	})
	row("Change phase: CPU total / wall", func(r *result) string { return fmtDur(r.cpu) + " / " + fmtDur(r.cpuWall) })
	row("Go heap before connecting / connected (after GC)", func(r *result) string {
		return fmtBytes(int64(r.before.heap)) + " / " + fmtBytes(int64(r.connected.heap))
	})
	row("**Go heap per client** (delta / N)", func(r *result) string { return "**" + fmtBytes(r.heapPerClient()) + "**" })
	row("RSS before connecting / connected", func(r *result) string {
		return fmtBytes(int64(r.before.rss)) + " / " + fmtBytes(int64(r.connected.rss))
	})
	row("**RSS per client** (delta / N)", func(r *result) string { return "**" + fmtBytes(r.rssPerClient()) + "**" })
	row("Peak RSS (connect and changes)", func(r *result) string { return fmtBytes(int64(r.peakRSS)) })
	row("Goroutines per client (server and client side)", func(r *result) string {
		return fmt.Sprintf("%.1f", float64(r.connected.goroutines-r.before.goroutines)/float64(r.clients))
	})
	row("Server pilot_xds (connected proxies)", func(r *result) string { return fmt.Sprint(r.synced.connected) })
	row("Server pilot_xds_pushes cds/eds/lds/rds until synced", func(r *result) string { return pushes(r.synced, nil) })
	row("Server pilot_xds_pushes cds/eds/lds/rds in the change phase", func(r *result) string { return pushes(r.afterChanges, r.synced) })
	row("Server pilot_proxy_convergence_time in the change phase: count, p50 / p99 (bucket estimate)", func(r *result) string {
		h := r.afterChanges.convergence.sub(r.synced.convergence)
		return fmt.Sprintf("%.0f, %s / %s", h.count, fmtSeconds(h.quantile(0.5)), fmtSeconds(h.quantile(0.99)))
	})
	row("Server pilot_xds_push_time in the change phase: mean", func(r *result) string {
		h := r.afterChanges.pushTime.sub(r.synced.pushTime)
		if h.count == 0 {
			return "-"
		}
		return fmtSeconds(h.sum/h.count) + fmt.Sprintf(" (%.0f pushes)", h.count)
	})
	return b.String()
}

// pushes formats the pilot_xds_pushes counters (minus old's, if given).
func pushes(m, old *pilotMetrics) string {
	var parts []string
	for _, t := range []string{"cds", "eds", "lds", "rds"} {
		v := m.pushes[t]
		if old != nil {
			v -= old.pushes[t]
		}
		parts = append(parts, fmt.Sprintf("%.0f", v))
	}
	return strings.Join(parts, " / ")
}
