// Package dns is weft-proxy's DNS proxy (Istio's "DNS capture"): a small
// UDP and TCP server, on 127.0.0.1:15053 by default, that answers A and
// AAAA queries for the mesh's hostnames with their virtual IPs and
// forwards everything else to the host's own resolvers.
//
// With `weft-proxy iptables --capture-dns` the application's DNS traffic
// (UDP and TCP port 53) is redirected here; the proxy's own queries are
// exempt from capture (owner match on the proxy UID/GID), so forwarding to
// the resolvers in /etc/resolv.conf, even 127.0.0.53, reaches them and
// does not loop. A query that comes back to the server while it is being
// forwarded (a proxy running as a captured user) is detected and answered
// with SERVFAIL instead of looping.
//
// The names come from the proxy's applied xDS configuration (see
// FromSnapshot): the HTTP virtual hosts' domains and the TCP filter chains'
// destination addresses. The control plane gives services of every
// registry source (ServiceEntry, Consul, Nomad) that have no address an
// auto-allocated VIP in 240.240.0.0/16, so their names are in the table;
// names without a single-IP VIP (CIDR addresses, resolution NONE) and
// wildcard hosts are not answered from it: they are forwarded like any
// other name.
package dns

import (
	"net/netip"
	"sort"
	"strconv"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

// Table maps mesh hostnames to their virtual IPs. It is immutable once
// built; the server swaps whole tables (Server.Update).
type Table struct {
	hosts map[string]*record
}

// record is one name's addresses, each family sorted.
type record struct {
	v4, v6 []netip.Addr
}

// NewTable builds a table from hostnames and their addresses. Names are
// case-insensitive and may end with a dot; wildcard names, empty names and
// unspecified addresses are skipped, and a name left without addresses is
// not in the table.
func NewTable(hosts map[string][]netip.Addr) *Table {
	b := newTableBuilder()
	for name, addrs := range hosts {
		for _, a := range addrs {
			b.add(name, a)
		}
	}
	return b.build()
}

// Lookup returns the IPv4 and IPv6 addresses of name (case-insensitive,
// with or without the trailing dot); ok is false when the table does not
// hold the name.
func (t *Table) Lookup(name string) (v4, v6 []netip.Addr, ok bool) {
	r := t.get(canonical(name))
	if r == nil {
		return nil, nil, false
	}
	return r.v4, r.v6, true
}

// get looks a canonical name up; a nil table holds nothing.
func (t *Table) get(name string) *record {
	if t == nil {
		return nil
	}
	return t.hosts[name]
}

// Names returns the table's hostnames, sorted.
func (t *Table) Names() []string {
	if t == nil {
		return nil
	}
	out := make([]string, 0, len(t.hosts))
	for n := range t.hosts {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Len is the number of hostnames in the table.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.hosts)
}

// canonical lowercases name and drops its trailing dot.
func canonical(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// validName accepts what can be a DNS name: no wildcard, no empty label,
// no character a hostname cannot hold.
func validName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// tableBuilder collects name → address claims.
type tableBuilder struct {
	hosts map[string]map[netip.Addr]bool
}

func newTableBuilder() *tableBuilder {
	return &tableBuilder{hosts: map[string]map[netip.Addr]bool{}}
}

func (b *tableBuilder) add(name string, a netip.Addr) {
	name = canonical(name)
	a = a.Unmap()
	if !validName(name) || !a.IsValid() || a.IsUnspecified() {
		return
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return
	}
	set := b.hosts[name]
	if set == nil {
		set = map[netip.Addr]bool{}
		b.hosts[name] = set
	}
	set[a] = true
}

func (b *tableBuilder) build() *Table {
	t := &Table{hosts: make(map[string]*record, len(b.hosts))}
	for name, set := range b.hosts {
		r := &record{}
		for a := range set {
			if a.Is4() {
				r.v4 = append(r.v4, a)
			} else {
				r.v6 = append(r.v6, a)
			}
		}
		sortAddrs(r.v4)
		sortAddrs(r.v6)
		t.hosts[name] = r
	}
	return t
}

func sortAddrs(a []netip.Addr) {
	sort.Slice(a, func(i, j int) bool { return a[i].Less(a[j]) })
}

// FromSnapshot derives the table from an applied xDS snapshot:
//
//   - HTTP: every virtual host of the route configurations (RDS and those
//     inline in listeners) whose domains hold IP literals maps its other
//     domains, ports stripped, to those IPs. pilot puts a service's
//     hostname, its short forms and its VIPs into one virtual host.
//   - TCP: a service's own filter chain (named, like its tcp_proxy
//     cluster, outbound|<port>||<host>) maps host to the chain's
//     destination prefix ranges that are single addresses (/32, /128).
//     When a TCP route took all of a service's VIPs, the route's chain
//     (whose tcp_proxy clusters all name one host) maps that host, unless
//     the address belongs to another host's own chain or the host got
//     addresses elsewhere: destination subnets of a route are not VIPs of
//     its destination.
//
// Wildcard domains and CIDR ranges are skipped.
func FromSnapshot(s *xdsclient.Snapshot) *Table {
	b := newTableBuilder()
	if s == nil {
		return b.build()
	}
	for _, rc := range s.Routes {
		addRoutes(b, rc)
	}
	type claim struct {
		host string
		addr netip.Addr
	}
	var weak []claim
	owner := map[netip.Addr]string{}
	for _, l := range s.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				tc := f.GetTypedConfig()
				switch {
				case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
					h := &hcmv3.HttpConnectionManager{}
					if tc.UnmarshalTo(h) == nil {
						addRoutes(b, h.GetRouteConfig())
					}
				case tc.MessageIs(&tcpproxyv3.TcpProxy{}):
					tp := &tcpproxyv3.TcpProxy{}
					if tc.UnmarshalTo(tp) != nil {
						continue
					}
					host, own := tcpHost(fc, tp)
					if host == "" {
						continue
					}
					for _, a := range singleAddrs(fc.GetFilterChainMatch()) {
						if own {
							b.add(host, a)
							owner[a] = host
						} else {
							weak = append(weak, claim{host, a})
						}
					}
				}
			}
		}
		if dc := l.GetDefaultFilterChain(); dc != nil {
			for _, f := range dc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().MessageIs(h) && f.GetTypedConfig().UnmarshalTo(h) == nil {
					addRoutes(b, h.GetRouteConfig())
				}
			}
		}
	}
	known := map[string]bool{}
	for name := range b.hosts {
		known[name] = true
	}
	for _, c := range weak {
		if o, ok := owner[c.addr]; (ok && o != canonical(c.host)) || known[canonical(c.host)] {
			continue
		}
		b.add(c.host, c.addr)
	}
	return b.build()
}

// addRoutes adds the names and VIPs of rc's virtual hosts.
func addRoutes(b *tableBuilder, rc *routev3.RouteConfiguration) {
	for _, vh := range rc.GetVirtualHosts() {
		var names []string
		var addrs []netip.Addr
		for _, d := range vh.GetDomains() {
			if strings.Contains(d, "*") {
				continue
			}
			host := stripPort(d)
			if a, err := netip.ParseAddr(host); err == nil {
				addrs = append(addrs, a)
				continue
			}
			names = append(names, host)
		}
		for _, n := range names {
			for _, a := range addrs {
				b.add(n, a)
			}
		}
	}
}

// stripPort drops a ":port" suffix and IPv6 brackets from a Host header
// value ("reviews:9080", "[fd00::1]:80", "[fd00::1]", "fd00::1").
func stripPort(d string) string {
	if strings.HasPrefix(d, "[") {
		if end := strings.IndexByte(d, ']'); end > 0 {
			return d[1:end]
		}
		return d
	}
	if i := strings.LastIndexByte(d, ':'); i >= 0 && strings.Count(d, ":") == 1 {
		if _, err := strconv.ParseUint(d[i+1:], 10, 16); err == nil {
			return d[:i]
		}
	}
	return d
}

// tcpHost returns the host a TCP chain forwards to: the one host every
// outbound cluster of tp names ("" when they name several, or none).
// own reports whether the chain is the host's own chain (named after its
// cluster, pilot's default chain, "#<n>" dedup suffix aside).
func tcpHost(fc *listenerv3.FilterChain, tp *tcpproxyv3.TcpProxy) (host string, own bool) {
	var clusters []string
	if c := tp.GetCluster(); c != "" {
		clusters = append(clusters, c)
	}
	for _, wc := range tp.GetWeightedClusters().GetClusters() {
		clusters = append(clusters, wc.GetName())
	}
	for _, c := range clusters {
		h, ok := outboundHost(c)
		if !ok || (host != "" && h != host) {
			return "", false
		}
		host = h
	}
	if host == "" {
		return "", false
	}
	name := fc.GetName()
	if i := strings.LastIndexByte(name, '#'); i >= 0 {
		name = name[:i]
	}
	return host, name == tp.GetCluster()
}

// outboundHost parses pilot's outbound cluster name
// outbound|<port>|<subset>|<host>.
func outboundHost(cluster string) (string, bool) {
	parts := strings.Split(cluster, "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[3] == "" {
		return "", false
	}
	if _, err := strconv.ParseUint(parts[1], 10, 16); err != nil {
		return "", false
	}
	return parts[3], true
}

// singleAddrs returns the destination prefix ranges of m that are one
// address.
func singleAddrs(m *listenerv3.FilterChainMatch) []netip.Addr {
	var out []netip.Addr
	for _, p := range m.GetPrefixRanges() {
		a, err := netip.ParseAddr(p.GetAddressPrefix())
		if err != nil {
			continue
		}
		a = a.Unmap()
		bits := a.BitLen()
		if p.GetPrefixLen() != nil {
			bits = int(p.GetPrefixLen().GetValue())
		}
		if bits == a.BitLen() {
			out = append(out, a)
		}
	}
	return out
}
