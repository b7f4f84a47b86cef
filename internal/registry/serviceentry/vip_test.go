package serviceentry

import (
	"net/netip"
	"testing"

	"github.com/weftmesh/weft/internal/registry"
)

func TestAllocateVIPs(t *testing.T) {
	svcs := []registry.Service{
		{Hostname: "a.example", Namespace: "ns", CreationTime: 2},
		{Hostname: "b.example", Namespace: "ns", CreationTime: 1},
		{Hostname: "fixed.example", Namespace: "ns", Addresses: []string{"10.9.9.9"}},
		{Hostname: "*.wild.example", Namespace: "ns"},
		{Hostname: "none.example", Namespace: "ns", Resolution: registry.ResolutionNone},
	}
	allocateVIPs(svcs)
	seen := map[string]bool{}
	for _, s := range svcs[:2] {
		if len(s.Addresses) != 1 {
			t.Fatalf("%s got %v", s.Hostname, s.Addresses)
		}
		ip := netip.MustParseAddr(s.Addresses[0])
		if !autoVIPPrefix.Contains(ip) || seen[ip.String()] {
			t.Fatalf("%s got %s (outside 240.240/16 or duplicate)", s.Hostname, ip)
		}
		seen[ip.String()] = true
	}
	if svcs[2].Addresses[0] != "10.9.9.9" || len(svcs[3].Addresses) != 0 || len(svcs[4].Addresses) != 0 {
		t.Fatalf("allocation touched services it must not: %+v", svcs[2:])
	}
	// Stable: the same input gives the same addresses.
	again := []registry.Service{{Hostname: "b.example", Namespace: "ns", CreationTime: 1}, {Hostname: "a.example", Namespace: "ns", CreationTime: 2}}
	allocateVIPs(again)
	if again[0].Addresses[0] != svcs[1].Addresses[0] || again[1].Addresses[0] != svcs[0].Addresses[0] {
		t.Fatalf("allocation is not stable: %v %v vs %v %v", again[0].Addresses, again[1].Addresses, svcs[1].Addresses, svcs[0].Addresses)
	}
	// A collision moves the newer service to the next free address.
	clash := []registry.Service{{Hostname: "a.example", Namespace: "ns", CreationTime: 1}, {Hostname: "a.example", Namespace: "ns", CreationTime: 2}}
	allocateVIPs(clash)
	if clash[0].Addresses[0] == clash[1].Addresses[0] {
		t.Fatalf("two services share %s", clash[0].Addresses[0])
	}
}
