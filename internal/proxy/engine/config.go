// Package engine runs weft-proxy's data plane: it compiles each xDS
// snapshot (listeners, routes, clusters) into an immutable runtime config,
// swaps it in atomically, and serves connections with it — explicit
// listeners bound to ports, and capture listeners that dispatch by the
// connection's original destination to HTTP or TCP filter chains.
package engine

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"github.com/weftmesh/weft/internal/proxy/pathnorm"
	"github.com/weftmesh/weft/internal/proxy/rbac"
	"github.com/weftmesh/weft/internal/proxy/route"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/types/known/anypb"
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
	// applicationProtocols match the connection's requested application
	// protocols (TLS ALPN, or http_inspector's "http/1.1", "h2c"; empty
	// matches any).
	applicationProtocols []string
	// tls terminates mesh TLS before the filters (nil: plaintext).
	tls *downstreamTLS
	// rbac are the network RBAC filters, evaluated once per connection
	// before the HCM or tcp_proxy; a denied connection is closed.
	rbac []*netRBAC
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
	// filters run in order before the router (see internal/proxy/httpfilter).
	filters []httpfilter.Filter
	// pathNorm is applied to every request path before filters and routing.
	pathNorm pathnorm.Options
	// logs are the HCM's access logs (nil: none).
	logs *accessLogs
	// useRemoteAddress is the HCM's use_remote_address: the connection's
	// peer is the client (Istio sets it on gateways, never on sidecars).
	// Only then is x-forwarded-for appended (unless skip_xff_append) and
	// x-forwarded-proto overwritten, as Envoy does; otherwise both pass
	// as they came, x-forwarded-proto set only where it is missing.
	useRemoteAddress, appendXFF bool
	// xfcc is what becomes of x-forwarded-client-cert (xfcc.go).
	xfcc xfccConfig
	// tracing reports sampled requests as spans (tracing.go); nil: none.
	tracing *tracingConfig
	// inbound: the listener's traffic_direction is INBOUND, so requests
	// are reported as the destination's (metrics reporter, SERVER spans)
	// even when the proxy answers them before choosing a cluster.
	inbound bool
	// server is what becomes of responses' Server header.
	server serverHeader
	// suppressEnvoyHeaders is the router's suppress_envoy_headers: no
	// x-envoy-upstream-service-time, no x-envoy-overloaded.
	suppressEnvoyHeaders bool
	// noRequestID is generate_request_id false: a request without
	// x-request-id goes on without one.
	noRequestID bool
	// stats is the istio.stats filter's changes to the metrics (nil:
	// Istio's standard metrics).
	stats *statsConfig
	// countStat keeps the filters' Envoy statistics (bindChainStats; nil:
	// none).
	countStat func(stat string)
}

// serverHeader is an HCM's server_header_transformation and server_name
// (Envoy's defaults: OVERWRITE, "envoy"): OVERWRITE puts value on every
// response, APPEND_IF_ABSENT only on those without a Server header,
// PASS_THROUGH leaves the header as the upstream sent it.
// The zero value is Envoy's default.
type serverHeader struct {
	mode  hcmv3.HttpConnectionManager_ServerHeaderTransformation
	value []string // {server_name}; nil: {"envoy"}
}

var envoyServerName = []string{"envoy"}

// header is the Server header value the connection manager sets.
func (s *serverHeader) header() []string {
	if s.value == nil {
		return envoyServerName[:1:1]
	}
	return s.value[:1:1]
}

// tcpChain is a tcp_proxy: one cluster or weighted clusters.
type tcpChain struct {
	statPrefix string
	clusters   []weighted
	total      uint64
	// logs are the tcp_proxy's access logs (nil: none).
	logs *accessLogs
	// stats is the chain's istio.stats filter (nil: standard metrics).
	stats *statsConfig
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
	// transparent listeners set IP_TRANSPARENT (TPROXY capture).
	transparent bool
	// originalSrc: the original_src listener filter; connections to
	// upstreams keep the client's address and carry srcMark.
	originalSrc bool
	srcMark     uint32
	chains      []*chain
	defChain    *chain
	// inspect says what the listener filters must learn about each
	// connection before a chain can be chosen (inspect.go).
	inspect inspectNeeds
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
	// bundle is the SDS trust bundle (ROOTCA); nil without one.
	bundle []*x509.Certificate
	// sdsCreds are the gateway credentials discovery sent
	// (kubernetes://…), compiled (credentials.go).
	sdsCreds map[string]any
	// transports caches the engine's upstream transport of each cluster
	// for the request path.
	transports sync.Map // *cluster.Cluster -> http.RoundTripper
	// logPaths are the access log files acquired for this runtime when
	// it was applied (released when it is replaced).
	logPaths []string
}

func compileRuntime(s *xdsclient.Snapshot) (*runtime, error) {
	rt := &runtime{snap: s, listeners: map[string]*listenerSpec{}, virtual: map[uint32][]*listenerSpec{},
		routes: map[string]*route.Table{}, clusters: map[string]*cluster.Cluster{}}
	var err error
	if rt.bundle, err = compileBundle(s); err != nil {
		return nil, err
	}
	if rt.sdsCreds, err = compileSDSCredentials(s); err != nil {
		return nil, err
	}
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
		bind:        l.GetBindToPort() == nil || l.GetBindToPort().GetValue(),
		useOrigDst:  l.GetUseOriginalDst().GetValue(),
		transparent: l.GetTransparent().GetValue(),
	}
	if err := ls.compileInspection(l); err != nil {
		return nil, err
	}
	for _, lf := range l.GetListenerFilters() {
		switch lf.GetName() {
		case "envoy.filters.listener.original_dst":
			ls.origDstFilter = true
		case "envoy.filters.listener.original_src":
			var cfg originalsrcv3.OriginalSrc
			if tc := lf.GetTypedConfig(); tc != nil {
				if err := tc.UnmarshalTo(&cfg); err != nil {
					return nil, fmt.Errorf("listener filter original_src: %w", err)
				}
			}
			if cfg.GetBindPort() {
				return nil, fmt.Errorf("listener filter original_src: bind_port is not supported (the source port is left to the kernel)")
			}
			ls.originalSrc, ls.srcMark = true, cfg.GetMark()
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
	for _, ch := range ls.allChains() {
		if ch.http != nil {
			ch.http.inbound = l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND
		}
	}
	ls.inspect.fromChains(append(append([]*chain{}, ls.chains...), ls.defChain))
	return ls, nil
}

func compileChain(fc *listenerv3.FilterChain) (*chain, error) {
	m := fc.GetFilterChainMatch()
	ch := &chain{name: fc.GetName(), port: m.GetDestinationPort().GetValue(), serverNames: m.GetServerNames(),
		transportProtocol: m.GetTransportProtocol(), applicationProtocols: m.GetApplicationProtocols()}
	switch ch.transportProtocol {
	case "", "tls", "raw_buffer":
	default:
		return nil, fmt.Errorf("transport_protocol %q is not supported (tls or raw_buffer)", ch.transportProtocol)
	}
	var netStats *statsConfig // a network istio.stats filter, for the tcp_proxy
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
			hc := &httpChain{statPrefix: h.GetStatPrefix(), rdsName: h.GetRds().GetRouteConfigName(),
				useRemoteAddress: h.GetUseRemoteAddress().GetValue()}
			hc.appendXFF = hc.useRemoteAddress && !h.GetSkipXffAppend()
			hc.noRequestID = h.GetGenerateRequestId() != nil && !h.GetGenerateRequestId().GetValue()
			stats, err := hcmStats(h)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hc.stats = stats
			hc.server = serverHeader{mode: h.GetServerHeaderTransformation()}
			if n := h.GetServerName(); n != "" {
				hc.server.value = []string{n}
			}
			xfcc, err := compileXFCC(h)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hc.xfcc = xfcc
			if hc.tracing, err = compileTracing(h); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			pn, err := compilePathNorm(h)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hc.pathNorm = pn
			if rc := h.GetRouteConfig(); rc != nil {
				t, err := route.Compile(rc)
				if err != nil {
					return nil, fmt.Errorf("filter %s inline route_config: %w", f.GetName(), err)
				}
				hc.inline = t
			}
			fs, err := compileHTTPFilters(h.GetHttpFilters())
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hc.filters = fs
			if hc.suppressEnvoyHeaders, err = routerSuppressesEnvoyHeaders(h.GetHttpFilters()); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			if hc.logs, err = compileAccessLogs(h.GetAccessLog()); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			if hc.rdsName == "" && hc.inline == nil {
				return nil, fmt.Errorf("filter %s: neither rds nor route_config", f.GetName())
			}
			ch.http = hc
		case tc.MessageIs(&netrbacv3.RBAC{}):
			if ch.http != nil || ch.tcp != nil {
				return nil, fmt.Errorf("filter %s: network RBAC must come before the terminal filter", f.GetName())
			}
			e, err := compileNetworkRBAC(tc)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			if e != nil {
				ch.rbac = append(ch.rbac, e)
			}
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
			logs, err := compileAccessLogs(tp.GetAccessLog())
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			t.logs = logs
			ch.tcp = t
		case tc.GetTypeUrl() == statsTypeURL:
			if ch.http != nil || ch.tcp != nil {
				return nil, fmt.Errorf("filter %s: istio.stats must come before the terminal filter", f.GetName())
			}
			sc, err := compileStats(tc)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			netStats = sc
		default:
			return nil, fmt.Errorf("network filter %s (%s) is not supported", f.GetName(), tc.GetTypeUrl())
		}
	}
	if ch.http == nil && ch.tcp == nil {
		return nil, fmt.Errorf("a filter chain needs an http_connection_manager or a tcp_proxy")
	}
	if ch.tcp != nil {
		ch.tcp.stats = netStats
	}
	return ch, nil
}

// netRBAC is a network RBAC filter: its rules (nil: none, nothing
// refused) and shadow rules (nil: none), whose verdict goes to the
// connection's dynamic metadata under netRBACMetadata, keys after
// shadowPrefix (shadow_rules_stat_prefix: istiod's dry-run prefixes).
type netRBAC struct {
	rules, shadow *rbac.Engine
	shadowPrefix  string
	statPrefix    string // the filter's stat_prefix ("tcp." from pilot)
}

// netRBACMetadata is the network RBAC filter's dynamic metadata namespace.
const netRBACMetadata = "envoy.filters.network.rbac"

// compileNetworkRBAC builds a network RBAC filter (nil when it has
// neither rules nor shadow rules).
func compileNetworkRBAC(tc *anypb.Any) (*netRBAC, error) {
	c := &netrbacv3.RBAC{}
	if err := tc.UnmarshalTo(c); err != nil {
		return nil, err
	}
	if c.GetMatcher() != nil || c.GetShadowMatcher() != nil {
		return nil, fmt.Errorf("rbac: matcher and shadow_matcher are not supported (use rules)")
	}
	n := &netRBAC{shadowPrefix: c.GetShadowRulesStatPrefix(), statPrefix: c.GetStatPrefix()}
	var err error
	if c.GetShadowRules() != nil {
		if n.shadow, err = rbac.Compile(c.GetShadowRules()); err != nil {
			return nil, fmt.Errorf("rbac shadow_rules: %w", err)
		}
	}
	if c.GetRules() != nil {
		if n.rules, err = rbac.Compile(c.GetRules()); err != nil {
			return nil, fmt.Errorf("rbac rules: %w", err)
		}
	}
	if n.rules == nil && n.shadow == nil {
		return nil, nil
	}
	return n, nil
}

// compilePathNorm reads the HCM's path normalisation settings: Envoy's
// normalize_path (default off), merge_slashes and
// path_with_escaped_slashes_action (KEEP_UNCHANGED or
// UNESCAPE_AND_FORWARD; the redirect and reject actions are refused).
func compilePathNorm(h *hcmv3.HttpConnectionManager) (pathnorm.Options, error) {
	o := pathnorm.Options{Normalize: h.GetNormalizePath().GetValue(), MergeSlashes: h.GetMergeSlashes()}
	switch a := h.GetPathWithEscapedSlashesAction(); a {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	case hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		o.UnescapeSlashes = true
	default:
		return o, fmt.Errorf("path_with_escaped_slashes_action %s is not supported (KEEP_UNCHANGED or UNESCAPE_AND_FORWARD)", a)
	}
	if h.GetPathNormalizationOptions() != nil {
		return o, fmt.Errorf("path_normalization_options are not supported (use normalize_path and merge_slashes)")
	}
	return o, nil
}

// nativeHTTPFilters are implemented by the engine itself from route
// config; they are not built through the httpfilter registry.
var nativeHTTPFilters = map[string]bool{
	"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router":   true,
	"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault": true,
	"type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors":       true,
	statsTypeURL: true, // read by hcmStats
}

// compileHTTPFilters builds an HCM's http_filters from the registry. The
// router must come last; an unknown filter is an error unless it is marked
// is_optional, and a disabled one is skipped.
func compileHTTPFilters(hfs []*hcmv3.HttpFilter) ([]httpfilter.Filter, error) {
	var out []httpfilter.Filter
	for i, hf := range hfs {
		tc := hf.GetTypedConfig()
		if tc == nil {
			return nil, fmt.Errorf("http_filters[%d] %s has no typed_config", i, hf.GetName())
		}
		if nativeHTTPFilters[tc.GetTypeUrl()] {
			if strings.HasSuffix(tc.GetTypeUrl(), ".Router") && i != len(hfs)-1 {
				return nil, fmt.Errorf("http_filters[%d] %s: the router must be the last filter", i, hf.GetName())
			}
			continue
		}
		if hf.GetDisabled() {
			continue
		}
		f, err := httpfilter.Build(tc)
		if errors.Is(err, httpfilter.ErrUnknown) && hf.GetIsOptional() {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("http_filters[%d] %s: %w", i, hf.GetName(), err)
		}
		out = append(out, f)
	}
	return out, nil
}

// routerSuppressesEnvoyHeaders reads the router filter's
// suppress_envoy_headers (false without a router).
func routerSuppressesEnvoyHeaders(hfs []*hcmv3.HttpFilter) (bool, error) {
	for i, hf := range hfs {
		if tc := hf.GetTypedConfig(); tc.MessageIs(&routerv3.Router{}) {
			r := &routerv3.Router{}
			if err := tc.UnmarshalTo(r); err != nil {
				return false, fmt.Errorf("http_filters[%d] %s: %w", i, hf.GetName(), err)
			}
			return r.GetSuppressEnvoyHeaders(), nil
		}
	}
	return false, nil
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
// destination prefix (longest match), server name (exact, else the
// longest wildcard suffix, before unset), transport protocol
// (exact before unset), application protocols (any of the connection's
// requested protocols in the chain's list, before unset). When nothing is
// left, the default chain (which may be nil: the connection is closed).
func (ls *listenerSpec) match(dst netip.AddrPort, sni, transport string, protocols ...string) *chain {
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
		if len(ch.serverNames) == 0 {
			return 0
		}
		return sniScore(ch.serverNames, sni)
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
	cands = narrow(cands, func(ch *chain) int {
		if len(ch.applicationProtocols) == 0 {
			return 0
		}
		for _, p := range protocols {
			if slices.Contains(ch.applicationProtocols, p) {
				return 1
			}
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

// sniScore ranks how a chain's server names match sni as Envoy does: an
// exact name beats every wildcard ("*.example.com", which matches any
// name ending in ".example.com"), a longer wildcard a shorter one; -1 when
// none matches.
func sniScore(names []string, sni string) int {
	best := -1
	for _, n := range names {
		switch {
		case n == sni && sni != "":
			return math.MaxInt32
		case len(n) > 1 && n[0] == '*' && len(sni) > len(n)-1 && sni[len(sni)-len(n)+1:] == n[1:]:
			best = max(best, len(n))
		}
	}
	return best
}
