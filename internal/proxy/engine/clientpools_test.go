package engine

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestPruneClientPools: the per-client (TPROXY) upstream pools of a client
// unused for long are dropped from both the engine's and the runtime's
// maps; other clients' pools and the shared pool stay; a later request
// from the dropped client gets a fresh pool.
func TestPruneClientPools(t *testing.T) {
	addr := freeAddr(t)
	e, err := newEngine(nil, httpListener("out", addr, "backend", nil), staticCluster("backend", freeAddr(t), false))
	if err != nil {
		t.Fatal(err)
	}
	defer e.shutdown()
	rt := e.cur.Load()
	c := rt.clusters["backend"]
	old, recent := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	e.transport(rt, c, source{}, false)
	first := e.transport(rt, c, source{addr: old}, false)
	e.transport(rt, c, source{addr: recent}, false)
	pools := func() map[netip.Addr]int {
		n := map[netip.Addr]int{}
		e.transports.Range(func(k, _ any) bool { n[k.(transportKey).src]++; return true })
		rt.transports.Range(func(k, _ any) bool { n[k.(runtimeTransportKey).src]++; return true })
		return n
	}
	if n := pools(); n[old] != 2 || n[recent] != 2 || n[netip.Addr{}] != 2 {
		t.Fatalf("pools before pruning: %v", n)
	}

	v, _ := e.clientPools.Load(old)
	v.(*atomic.Int64).Store(clock() - int64(time.Hour)) // long unused
	if got := e.pruneClientPools(clock() - int64(clientPoolIdle)); got != 1 {
		t.Fatalf("pruned %d clients, want 1", got)
	}
	if n := pools(); n[old] != 0 || n[recent] != 2 || n[netip.Addr{}] != 2 {
		t.Fatalf("pools after pruning: %v", n)
	}
	if _, ok := e.clientPools.Load(old); ok {
		t.Fatal("the pruned client's last-use entry is still there")
	}
	if again := e.transport(rt, c, source{addr: old}, false); again == first {
		t.Fatal("the pruned client got its old pool back")
	}
	if n := pools(); n[old] != 2 {
		t.Fatalf("pools after the client came back: %v", n)
	}
}
