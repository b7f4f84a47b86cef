package registry

import (
	"hash/fnv"
	"net/netip"
	"sort"
	"strings"
)

// AutoVIPPrefix is where services without addresses get a virtual IP, as
// Istio's DNS auto-allocation does (240.240.0.0/16, a range reserved for
// future use that no real host has).
var AutoVIPPrefix = netip.MustParsePrefix("240.240.0.0/16")

// allocateVIPs gives every service without addresses (and not a wildcard,
// not resolution NONE), whatever its source — ServiceEntry, Consul, Nomad —
// a stable address in 240.240.0.0/16 so that its hostname resolves through
// the sidecar's DNS proxy and its listener can match by destination. The
// Aggregator runs it over the merged services of every source. The
// address is a hash of namespace/hostname; collisions move to the next
// free address in a fixed order (oldest service first, then namespace,
// hostname and source), so every replica that sees the same services
// computes the same table whatever order the sources reported in.
// Addresses a source set are never touched and are never handed out. It
// assigns new Addresses slices and never writes into existing ones.
func allocateVIPs(svcs []Service) {
	used := map[netip.Addr]bool{}
	var need []int
	for i, s := range svcs {
		for _, a := range s.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				used[ip] = true
			}
		}
		if len(s.Addresses) == 0 && s.Resolution != ResolutionNone && !strings.Contains(s.Hostname, "*") {
			need = append(need, i)
		}
	}
	sort.SliceStable(need, func(a, b int) bool {
		sa, sb := svcs[need[a]], svcs[need[b]]
		if sa.CreationTime != sb.CreationTime {
			return sa.CreationTime < sb.CreationTime
		}
		if sa.Namespace != sb.Namespace {
			return sa.Namespace < sb.Namespace
		}
		if sa.Hostname != sb.Hostname {
			return sa.Hostname < sb.Hostname
		}
		return sa.Source < sb.Source
	})
	base := AutoVIPPrefix.Addr().As4()
	const size = 1 << 16
	for _, i := range need {
		h := fnv.New32a()
		h.Write([]byte(svcs[i].Namespace + "/" + svcs[i].Hostname))
		n := h.Sum32() % size
		for tries := 0; tries < size; tries++ {
			off := (n + uint32(tries)) % size
			if off == 0 || off == size-1 {
				continue // skip the network and broadcast-looking ends
			}
			ip := netip.AddrFrom4([4]byte{base[0], base[1], byte(off >> 8), byte(off)})
			if !used[ip] {
				used[ip] = true
				svcs[i].Addresses = []string{ip.String()}
				break
			}
		}
	}
}
