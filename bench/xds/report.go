package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
)

// renderTable formats the results as markdown, one column per client count.
func renderTable(o options, rs []*result) string {
	t := harness.NewTable("weft discovery (xDS) benchmark",
		fmt.Sprintf("-changes %d -services %d -streams-per-conn %d -classes %d -debounce %s", o.changes, o.services, o.streamsPerConn, o.classes, o.debounce),
		rs, func(r *result) string { return fmt.Sprintf("%d clients", r.clients) })
	t.Row("gRPC connections", func(r *result) string { return fmt.Sprint(r.conns) })
	t.Row(fmt.Sprintf("Apply config (%d objects, one at a time)", 3*o.services), func(r *result) string { return harness.FmtDur(r.applyTime) })
	t.Row("Connect all clients and sync (first dial to last client's ACK of every type)", func(r *result) string { return harness.FmtDur(r.syncTime) })
	t.Row(fmt.Sprintf("**Change to last client's RDS ACK, p50 / p99 / max** (%d changes)", o.changes), func(r *result) string {
		return fmt.Sprintf("**%s / %s / %s**", harness.FmtDur(r.changeP50), harness.FmtDur(r.changeP99), harness.FmtDur(r.changeMax))
	})
	t.Row("Change to first client's RDS ACK, p50", func(r *result) string { return harness.FmtDur(harness.Percentile(r.firsts, 50)) })
	t.Row("The PUT's own response, p50", func(r *result) string { return harness.FmtDur(harness.Percentile(r.puts, 50)) })
	t.Row("CPU (user+sys, whole process) in the change phase: per change", func(r *result) string {
		return harness.FmtDur(r.cpu / time.Duration(max(1, len(r.changes))))
	})
	t.Row("Change phase: CPU total / wall", func(r *result) string { return harness.FmtDur(r.cpu) + " / " + harness.FmtDur(r.cpuWall) })
	t.Row("Go heap before connecting / connected (after GC)", func(r *result) string {
		return harness.FmtBytes(int64(r.before.heap)) + " / " + harness.FmtBytes(int64(r.connected.heap))
	})
	t.Row("**Go heap per client** (delta / N)", func(r *result) string { return "**" + harness.FmtBytes(r.heapPerClient()) + "**" })
	t.Row("RSS before connecting / connected", func(r *result) string {
		return harness.FmtBytes(int64(r.before.rss)) + " / " + harness.FmtBytes(int64(r.connected.rss))
	})
	t.Row("**RSS per client** (delta / N)", func(r *result) string { return "**" + harness.FmtBytes(r.rssPerClient()) + "**" })
	t.Row("Peak RSS (connect and changes)", func(r *result) string { return harness.FmtBytes(int64(r.peakRSS)) })
	t.Row("Goroutines per client (server and client side)", func(r *result) string {
		return fmt.Sprintf("%.1f", float64(r.connected.goroutines-r.before.goroutines)/float64(r.clients))
	})
	t.Row("Server pilot_xds (connected proxies)", func(r *result) string { return fmt.Sprint(r.synced.connected) })
	t.Row("Server pilot_xds_pushes cds/eds/lds/rds until synced", func(r *result) string { return pushes(r.synced, nil) })
	t.Row("Server pilot_xds_pushes cds/eds/lds/rds in the change phase", func(r *result) string { return pushes(r.afterChanges, r.synced) })
	t.Row("Server pilot_proxy_convergence_time in the change phase: count, p50 / p99 (bucket estimate)", func(r *result) string {
		h := r.afterChanges.convergence.sub(r.synced.convergence)
		return fmt.Sprintf("%.0f, %s / %s", h.count, fmtSeconds(h.quantile(0.5)), fmtSeconds(h.quantile(0.99)))
	})
	t.Row("Server pilot_xds_push_time in the change phase: mean", func(r *result) string {
		h := r.afterChanges.pushTime.sub(r.synced.pushTime)
		if h.count == 0 {
			return "-"
		}
		return fmtSeconds(h.sum/h.count) + fmt.Sprintf(" (%.0f pushes)", h.count)
	})
	return t.String()
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
