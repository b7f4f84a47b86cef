package engine

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// Per-client upstream pools (TPROXY keeps each client's address on the way
// to the app, so connections are pooled per client) would otherwise stay
// in the engine's maps for as long as it runs: one set per client address
// ever seen. A janitor drops the pools of clients unused for
// clientPoolIdle, after their idle connections have expired (90 s).

const (
	clientPoolIdle  = 3 * time.Minute
	clientPoolSweep = time.Minute
)

// touchClientPools records that addr's pools were used now, and starts the
// janitor with the first client.
func (e *Engine) touchClientPools(addr netip.Addr) {
	now := clock()
	if v, ok := e.clientPools.Load(addr); ok {
		v.(*atomic.Int64).Store(now)
		return
	}
	last := new(atomic.Int64)
	last.Store(now)
	e.clientPools.Store(addr, last)
	if e.poolJanitor.CompareAndSwap(false, true) {
		go e.sweepClientPools()
	}
}

// sweepClientPools runs pruneClientPools every clientPoolSweep until the
// engine stops.
func (e *Engine) sweepClientPools() {
	tick := time.NewTicker(clientPoolSweep)
	defer tick.Stop()
	for {
		select {
		case <-e.quit:
			return
		case <-tick.C:
			e.pruneClientPools(clock() - int64(clientPoolIdle))
		}
	}
}

// pruneClientPools drops the pools of every client last used before the
// clock() value before, closing their idle connections; it returns how
// many clients it dropped. A request still holding such a pool finishes
// on it; its connection then expires with the orphaned pool.
func (e *Engine) pruneClientPools(before int64) int {
	stale := map[netip.Addr]bool{}
	e.clientPools.Range(func(k, v any) bool {
		if v.(*atomic.Int64).Load() < before {
			stale[k.(netip.Addr)] = true
			e.clientPools.Delete(k)
		}
		return true
	})
	if len(stale) == 0 {
		return 0
	}
	e.transports.Range(func(k, t any) bool {
		if stale[k.(transportKey).src] {
			e.transports.Delete(k)
			if c, ok := t.(interface{ CloseIdleConnections() }); ok {
				c.CloseIdleConnections()
			}
		}
		return true
	})
	if rt := e.cur.Load(); rt != nil {
		rt.transports.Range(func(k, _ any) bool {
			if stale[k.(runtimeTransportKey).src] {
				rt.transports.Delete(k)
			}
			return true
		})
	}
	return len(stale)
}
