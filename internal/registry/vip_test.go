package registry

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAllocateVIPs(t *testing.T) {
	svcs := []Service{
		{Hostname: "a.example", Namespace: "ns", CreationTime: 2},
		{Hostname: "b.example", Namespace: "ns", CreationTime: 1},
		{Hostname: "fixed.example", Namespace: "ns", Addresses: []string{"10.9.9.9"}},
		{Hostname: "*.wild.example", Namespace: "ns"},
		{Hostname: "none.example", Namespace: "ns", Resolution: ResolutionNone},
	}
	allocateVIPs(svcs)
	seen := map[string]bool{}
	for _, s := range svcs[:2] {
		if len(s.Addresses) != 1 {
			t.Fatalf("%s got %v", s.Hostname, s.Addresses)
		}
		ip := netip.MustParseAddr(s.Addresses[0])
		if !AutoVIPPrefix.Contains(ip) || seen[ip.String()] {
			t.Fatalf("%s got %s (outside 240.240/16 or duplicate)", s.Hostname, ip)
		}
		seen[ip.String()] = true
	}
	if svcs[2].Addresses[0] != "10.9.9.9" || len(svcs[3].Addresses) != 0 || len(svcs[4].Addresses) != 0 {
		t.Fatalf("allocation touched services it must not: %+v", svcs[2:])
	}
	// Stable: the same input gives the same addresses.
	again := []Service{{Hostname: "b.example", Namespace: "ns", CreationTime: 1}, {Hostname: "a.example", Namespace: "ns", CreationTime: 2}}
	allocateVIPs(again)
	if again[0].Addresses[0] != svcs[1].Addresses[0] || again[1].Addresses[0] != svcs[0].Addresses[0] {
		t.Fatalf("allocation is not stable: %v %v vs %v %v", again[0].Addresses, again[1].Addresses, svcs[1].Addresses, svcs[0].Addresses)
	}
	// A collision moves the newer service to the next free address.
	clash := []Service{{Hostname: "a.example", Namespace: "ns", CreationTime: 1}, {Hostname: "a.example", Namespace: "ns", CreationTime: 2}}
	allocateVIPs(clash)
	if clash[0].Addresses[0] == clash[1].Addresses[0] {
		t.Fatalf("two services share %s", clash[0].Addresses[0])
	}
}

// TestAggregatorAllocatesVIPsAcrossSources: services of every source without
// addresses get distinct VIPs in 240.240.0.0/16, the same ones whatever
// order the sources report in (as on another control-plane replica); set
// addresses are kept and never handed out; the sources' own states are not
// written to.
func TestAggregatorAllocatesVIPsAcrossSources(t *testing.T) {
	states := func() map[string]State {
		return map[string]State{
			"serviceentry": {Services: []Service{
				{Hostname: "ratings.mesh", Namespace: "bookinfo", CreationTime: 5},
				{Hostname: "fixed.mesh", Namespace: "bookinfo", Addresses: []string{"240.240.0.7"}},
			}},
			"consul": {Services: []Service{
				{Hostname: "web.service.consul", Namespace: "default"},
				{Hostname: "api.service.consul", Namespace: "default"},
				// The same name from two sources: two VIPs, no clash.
				{Hostname: "ratings.mesh", Namespace: "bookinfo"},
			}},
			"nomad": {Services: []Service{{Hostname: "cache.service.nomad", Namespace: "default"}}},
		}
	}
	vips := func(order []string) (map[string]string, map[string]State) {
		a := NewAggregator()
		in := states()
		for _, src := range order {
			a.Update(src, in[src])
		}
		out := map[string]string{}
		for _, s := range a.Snapshot().Services {
			if len(s.Addresses) != 1 {
				t.Fatalf("%s/%s from %s: addresses %v, want one", s.Namespace, s.Hostname, s.Source, s.Addresses)
			}
			out[s.Source+":"+s.Hostname] = s.Addresses[0]
		}
		return out, in
	}
	got, in := vips([]string{"serviceentry", "consul", "nomad"})
	if len(got) != 6 {
		t.Fatalf("got %d services, want 6: %v", len(got), got)
	}
	seen := map[string]string{}
	for k, a := range got {
		ip := netip.MustParseAddr(a)
		if !AutoVIPPrefix.Contains(ip) {
			t.Errorf("%s: %s outside %s", k, ip, AutoVIPPrefix)
		}
		if prev, dup := seen[a]; dup {
			t.Errorf("%s and %s share %s", prev, k, a)
		}
		seen[a] = k
	}
	if got["serviceentry:fixed.mesh"] != "240.240.0.7" {
		t.Errorf("fixed.mesh: %s, want its own 240.240.0.7", got["serviceentry:fixed.mesh"])
	}
	for src, st := range in {
		for _, s := range st.Services {
			if len(s.Addresses) > 0 && s.Hostname != "fixed.mesh" {
				t.Errorf("source %s's own state was written to: %s has %v", src, s.Hostname, s.Addresses)
			}
		}
	}
	for _, order := range [][]string{{"nomad", "consul", "serviceentry"}, {"consul", "serviceentry", "nomad"}} {
		again, _ := vips(order)
		if d := cmp.Diff(again, got); d != "" {
			t.Errorf("order %v gives other VIPs (-got +want):\n%s", order, d)
		}
	}
}
