// Package engine runs weft-proxy's data plane: it compiles each xDS
// snapshot (listeners, routes, clusters) into an immutable runtime config,
// swaps it in atomically, and serves connections with it — explicit
// listeners bound to ports, and capture listeners that dispatch by the
// connection's original destination to HTTP or TCP filter chains.
package engine

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/route"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

// chain is one compiled filter chain.
type chain struct {
	name string
	// Match: destination port (0 any), destination prefixes (empty any),
	// SNI server names (empty any).
	port        uint32
	prefixes    []netip.Prefix
	serverNames []string
	// transportProtocol is "tls" or "raw_buffer" ("" matches both).
	transportProtocol string
	// tls terminates mesh TLS before the filters (nil: plaintext).
	tls *downstreamTLS
	// Exactly one of http and tcp is set.
	http *httpChain
	tcp  *tcpChain
}

// httpChain is an HttpConnectionManager: its route table by RDS name or
// inline.
type httpChain struct {
	statPrefix string
	rdsName    string
	inline     *route.Table
}

// tcpChain is a tcp_proxy: one cluster or weighted clusters.
type tcpChain struct {
	statPrefix string
	clusters   []weighted
	total      uint64
}

type weighted struct {
	name   string
	weight uint32
}

// listenerSpec is one compiled Listener.
type listenerSpec struct {
	name       string
	addr       netip.AddrPort
	bind       bool
	useOrigDst bool
	// origDstFilter: the original_dst listener filter restores each
	// connection's original destination for filter chain matching
	// (virtualInbound), without handing the connection to another listener.
	origDstFilter bool
	chains        []*chain
	defChain      *chain
}

// runtime is one applied config. Immutable.
type runtime struct {
	snap      *xdsclient.Snapshot
	listeners map[string]*listenerSpec
	// virtual holds listeners not bound to a port, by port, for dispatch
	// from a capture listener.
	virtual  map[uint32][]*listenerSpec
	routes   map[string]*route.Table
	clusters map[string]*cluster.Cluster
	// transports caches the engine's upstream transport of each cluster
	// for the request path.
	transports sync.Map // *cluster.Cluster -> http.RoundTripper
}

func compileRuntime(s *xdsclient.Snapshot) (*runtime, error) {
	rt := &runtime{snap: s, listeners: map[string]*listenerSpec{}, virtual: map[uint32][]*listenerSpec{},
		routes: map[string]*route.Table{}, clusters: map[string]*cluster.Cluster{}}
	for name, rc := range s.Routes {
		t, err := route.Compile(rc)
		if err != nil {
			return nil, fmt.Errorf("route configuration %s: %w", name, err)
		}
		rt.routes[name] = t
	}
	for name, c := range s.Clusters {
		la := s.Endpoints[edsName(c)]
		cc, err := cluster.Compile(c, la)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", name, err)
		}
		rt.clusters[name] = cc
	}
	names := make([]string, 0, len(s.Listeners))
	for n := range s.Listeners {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ls, err := compileListener(s.Listeners[n])
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", n, err)
		}
		if ls == nil {
			continue // API listeners are for proxyless clients
		}
		for _, ch := range append(append([]*chain{}, ls.chains...), ls.defChain) {
			if ch != nil && ch.http != nil && ch.http.rdsName != "" {
				if _, ok := rt.routes[ch.http.rdsName]; !ok {
					return nil, fmt.Errorf("listener %s: route configuration %q was not received", n, ch.http.rdsName)
				}
			}
		}
		rt.listeners[n] = ls
		if !ls.bind {
			rt.virtual[uint32(ls.addr.Port())] = append(rt.virtual[uint32(ls.addr.Port())], ls)
		}
	}
	return rt, nil
}

func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

func compileListener(l *listenerv3.Listener) (*listenerSpec, error) {
	if l.GetApiListener() != nil {
		return nil, nil
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("only socket addresses are supported")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return nil, fmt.Errorf("protocol %s is not supported (TCP only)", sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", sa.GetAddress(), err)
	}
	ls := &listenerSpec{
		name: l.GetName(), addr: netip.AddrPortFrom(ip, uint16(sa.GetPortValue())),
		bind:       l.GetBindToPort() == nil || l.GetBindToPort().GetValue(),
		useOrigDst: l.GetUseOriginalDst().GetValue(),
	}
	for _, lf := range l.GetListenerFilters() {
		if lf.GetName() == "envoy.filters.listener.original_dst" {
			ls.origDstFilter = true
		}
	}
	for i, fc := range l.GetFilterChains() {
		ch, err := compileChain(fc)
		if err != nil {
			return nil, fmt.Errorf("filter_chains[%d] %s: %w", i, fc.GetName(), err)
		}
		ls.chains = append(ls.chains, ch)
	}
	if dc := l.GetDefaultFilterChain(); dc != nil {
		ch, err := compileChain(dc)
		if err != nil {
			return nil, fmt.Errorf("default_filter_chain: %w", err)
		}
		ls.defChain = ch
	}
	return ls, nil
}

func compileChain(fc *listenerv3.FilterChain) (*chain, error) {
	m := fc.GetFilterChainMatch()
	ch := &chain{name: fc.GetName(), port: m.GetDestinationPort().GetValue(), serverNames: m.GetServerNames(),
		transportProtocol: m.GetTransportProtocol()}
	switch ch.transportProtocol {
	case "", "tls", "raw_buffer":
	default:
		return nil, fmt.Errorf("transport_protocol %q is not supported (tls or raw_buffer)", ch.transportProtocol)
	}
	for _, pr := range m.GetPrefixRanges() {
		ip, err := netip.ParseAddr(pr.GetAddressPrefix())
		if err != nil {
			return nil, fmt.Errorf("prefix %q: %w", pr.GetAddressPrefix(), err)
		}
		bits := int(ip.BitLen())
		if pr.GetPrefixLen() != nil {
			bits = int(pr.GetPrefixLen().GetValue())
		}
		p, err := ip.Prefix(bits)
		if err != nil {
			return nil, fmt.Errorf("prefix %s/%d: %w", ip, bits, err)
		}
		ch.prefixes = append(ch.prefixes, p)
	}
	if ts := fc.GetTransportSocket(); ts != nil {
		d, err := compileDownstreamTLS(ts)
		if err != nil {
			return nil, err
		}
		ch.tls = d
	}
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc == nil:
			return nil, fmt.Errorf("filter %s has no typed_config", f.GetName())
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			h := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(h); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hc := &httpChain{statPrefix: h.GetStatPrefix(), rdsName: h.GetRds().GetRouteConfigName()}
			if rc := h.GetRouteConfig(); rc != nil {
				t, err := route.Compile(rc)
				if err != nil {
					return nil, fmt.Errorf("filter %s inline route_config: %w", f.GetName(), err)
				}
				hc.inline = t
			}
			if hc.rdsName == "" && hc.inline == nil {
				return nil, fmt.Errorf("filter %s: neither rds nor route_config", f.GetName())
			}
			ch.http = hc
		case tc.MessageIs(&tcpproxyv3.TcpProxy{}):
			tp := &tcpproxyv3.TcpProxy{}
			if err := tc.UnmarshalTo(tp); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			t := &tcpChain{statPrefix: tp.GetStatPrefix()}
			if c := tp.GetCluster(); c != "" {
				t.clusters = []weighted{{name: c, weight: 1}}
			}
			for _, wc := range tp.GetWeightedClusters().GetClusters() {
				t.clusters = append(t.clusters, weighted{name: wc.GetName(), weight: wc.GetWeight()})
			}
			for _, w := range t.clusters {
				t.total += uint64(w.weight)
			}
			if len(t.clusters) == 0 || t.total == 0 {
				return nil, fmt.Errorf("filter %s: tcp_proxy without a cluster", f.GetName())
			}
			ch.tcp = t
		default:
			return nil, fmt.Errorf("network filter %s (%s) is not supported", f.GetName(), tc.GetTypeUrl())
		}
	}
	if ch.http == nil && ch.tcp == nil {
		return nil, fmt.Errorf("a filter chain needs an http_connection_manager or a tcp_proxy")
	}
	return ch, nil
}

// pick chooses the tcp_proxy cluster for a random draw.
func (t *tcpChain) pick(rnd uint64) string {
	r := rnd % t.total
	for _, w := range t.clusters {
		if r < uint64(w.weight) {
			return w.name
		}
		r -= uint64(w.weight)
	}
	return t.clusters[len(t.clusters)-1].name
}

// match selects the filter chain for a connection the way Envoy does,
// one criterion after another, each narrowing to its most specific
// matches: destination port (chains naming the port, else chains naming
// none — never a fallback from a named port to portless chains),
// destination prefix (longest match), server name, transport protocol
// (exact before unset). When nothing is left, the default chain (which
// may be nil: the connection is closed).
func (ls *listenerSpec) match(dst netip.AddrPort, sni, transport string) *chain {
	var cands []*chain
	for _, ch := range ls.chains {
		if ch.port == uint32(dst.Port()) {
			cands = append(cands, ch)
		}
	}
	if len(cands) == 0 {
		for _, ch := range ls.chains {
			if ch.port == 0 {
				cands = append(cands, ch)
			}
		}
	}
	cands = narrow(cands, func(ch *chain) int {
		if len(ch.prefixes) == 0 {
			return 0
		}
		best := -1
		for _, p := range ch.prefixes {
			if p.Contains(dst.Addr().Unmap()) && p.Bits()+1 > best {
				best = p.Bits() + 1
			}
		}
		return best
	})
	cands = narrow(cands, func(ch *chain) int {
		switch {
		case len(ch.serverNames) == 0:
			return 0
		case matchesSNI(ch.serverNames, sni):
			return 1
		}
		return -1
	})
	cands = narrow(cands, func(ch *chain) int {
		switch ch.transportProtocol {
		case "":
			return 0
		case transport:
			return 1
		}
		return -1
	})
	if len(cands) == 0 {
		return ls.defChain
	}
	return cands[0]
}

// narrow keeps the candidates with the highest non-negative score.
func narrow(cands []*chain, score func(*chain) int) []*chain {
	best := -1
	var out []*chain
	for _, ch := range cands {
		switch s := score(ch); {
		case s > best:
			best, out = s, []*chain{ch}
		case s == best && s >= 0:
			out = append(out, ch)
		}
	}
	if best < 0 {
		return nil
	}
	return out
}

func matchesSNI(names []string, sni string) bool {
	for _, n := range names {
		if n == sni || (len(n) > 1 && n[0] == '*' && len(sni) > len(n)-1 && sni[len(sni)-len(n)+1:] == n[1:]) {
			return true
		}
	}
	return false
}

// sniffs reports whether chain selection needs the transport protocol.
func (ls *listenerSpec) sniffs() bool {
	for _, ch := range append(append([]*chain{}, ls.chains...), ls.defChain) {
		if ch != nil && (ch.transportProtocol != "" || ch.tls != nil) {
			return true
		}
	}
	return false
}
