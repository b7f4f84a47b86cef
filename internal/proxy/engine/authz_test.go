package engine

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	// The RBAC HTTP filter, as weft-proxy links it.
	_ "github.com/weftmesh/weft/internal/proxy/httpfilter/rbac"
	"github.com/weftmesh/weft/internal/proxy/route"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustAnyT(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// denyAdmin is Istio's DENY for paths [/admin, /admin/*].
func denyAdmin() *rbacv3.RBAC {
	path := func(sm *matcherv3.StringMatcher) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: sm}}}}
	}
	return &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"deny-admin": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: []*rbacv3.Permission{
			path(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "/admin"}}),
			path(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/admin/"}}),
		}}}}},
		Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
	}}}
}

// hcmChain is an HCM chain with the deny-admin RBAC filter, the given
// path normalisation, and one route: exact "/x" answers 200.
func hcmChain(t *testing.T, norm bool, merge bool, unescape bool) *chain {
	t.Helper()
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: "test",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/x"}},
				Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200}},
			}}}}}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, &rbachttpv3.RBAC{Rules: denyAdmin()})}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, &routerv3.Router{})}},
		},
		MergeSlashes: merge,
	}
	if norm {
		h.NormalizePath = wrapperspb.Bool(true)
	}
	if unescape {
		h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
	}
	ch, err := compileChain(&listenerv3.FilterChain{Filters: []*listenerv3.Filter{
		{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, h)}}}})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// TestPathNormalisedBeforeRBACAndRouting: the RBAC filter and the router
// see the normalised path; unnormalisable paths get 400.
func TestPathNormalisedBeforeRBACAndRouting(t *testing.T) {
	e := New(slog.New(slog.DiscardHandler), Options{})
	e.cur.Store(&runtime{routes: map[string]*route.Table{}})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	do := func(ch *chain, target string) (int, string) {
		cc := &chainConn{Conn: a, chain: ch.http}
		method := "GET"
		if target == "lowercase-method" {
			method, target = "get", "/x"
		}
		r := httptest.NewRequest(method, target, nil)
		r = r.WithContext(context.WithValue(r.Context(), connKey{}, cc))
		w := httptest.NewRecorder()
		e.serveHTTP(w, r)
		body, _ := io.ReadAll(w.Body)
		return w.Code, string(body)
	}
	base, none := hcmChain(t, true, false, false), hcmChain(t, false, false, false)
	decode := hcmChain(t, true, true, true)
	tests := []struct {
		ch     *chain
		target string
		code   int
	}{
		{base, "/admin", 403},
		{base, "/admin/x", 403},
		{base, "/./admin", 403},
		{base, "/x/../admin", 403},
		{base, "/%61dmin", 403},
		{base, "/admin#x", 403},
		{base, "/a\\..\\admin", 403},
		{base, "//admin", 404},     // a different path under BASE
		{base, "/admin%2fx", 404},  // %2F is data, not a separator
		{base, "/ADMIN", 404},      // case matters
		{base, "/y/../x?q=1", 200}, // the router sees /x too
		{base, "/%78", 200},
		{base, "/a%00", 400},
		{base, "lowercase-method", 400},
		{none, "/x/../admin", 404},
		{none, "/%61dmin", 404},
		{none, "/admin#x", 403}, // fragments are always dropped
		{decode, "//admin", 403},
		{decode, "/admin%2fx", 403},
		{decode, "/admin%5Cx", 403},
		{decode, "/ADMIN", 404},
	}
	for _, tt := range tests {
		code, body := do(tt.ch, tt.target)
		if code != tt.code {
			t.Errorf("%s (norm=%+v): %d %q, want %d", tt.target, tt.ch.http.pathNorm, code, body, tt.code)
		}
		if code == 403 && body != "RBAC: access denied" {
			t.Errorf("%s: body %q", tt.target, body)
		}
	}
}

// TestNetworkRBAC: a network RBAC filter before tcp_proxy decides once per
// connection, by destination port here.
func TestNetworkRBAC(t *testing.T) {
	deny := &netrbacv3.RBAC{StatPrefix: "tcp.", Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"p": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: 9000}}},
		Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: &corev3.CidrRange{AddressPrefix: "127.0.0.0", PrefixLen: wrapperspb.UInt32(8)}}}},
	}}}}
	fc := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{
		{Name: "rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, deny)}},
		{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}})}},
	}}
	ch, err := compileChain(fc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// c's RemoteAddr is the listener: 127.0.0.1, inside the denied range.
	if ok, pol, md := allowConn(ch, c, netip.MustParseAddrPort("10.0.0.1:9000"), nil); ok || pol != "p" || md != nil {
		t.Errorf("port 9000: allowed=%v policy=%q metadata %v, want denied by p, no shadow verdict", ok, pol, md)
	}
	if ok, _, _ := allowConn(ch, c, netip.MustParseAddrPort("10.0.0.1:9001"), nil); !ok {
		t.Error("port 9001 denied")
	}
	// Each enforced verdict is counted under the filter's stat_prefix
	// (envoy_tcp_rbac{authz_enforce_result}).
	var stats rbacStats
	allowConn(ch, c, netip.MustParseAddrPort("10.0.0.1:9000"), &stats)
	allowConn(ch, c, netip.MustParseAddrPort("10.0.0.1:9001"), &stats)
	v, ok := stats.tcp.enforced.Load("tcp.")
	if !ok {
		t.Fatal("no envoy_tcp_rbac counted")
	}
	for result, n := range map[string]float64{"allowed": 1, "denied": 1} {
		if got := testutil.ToFloat64(v.(*prometheus.CounterVec).WithLabelValues(result)); got != n {
			t.Errorf("envoy_tcp_rbac{authz_enforce_result=%q} %v, want %v", result, got, n)
		}
	}
	// The same rules as shadow rules (an istiod dry-run DENY) refuse
	// nothing; their verdict is the connection's dynamic metadata.
	dry := &netrbacv3.RBAC{StatPrefix: "tcp.", ShadowRules: deny.GetRules(), ShadowRulesStatPrefix: "istio_dry_run_deny_"}
	dryCh, err := compileChain(&listenerv3.FilterChain{Filters: []*listenerv3.Filter{
		{Name: "rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, dry)}}, fc.Filters[1]}})
	if err != nil {
		t.Fatal(err)
	}
	for port, want := range map[uint16]map[string]any{
		9000: {"istio_dry_run_deny_shadow_engine_result": "denied", "istio_dry_run_deny_shadow_effective_policy_id": "p"},
		9001: {"istio_dry_run_deny_shadow_engine_result": "allowed"},
	} {
		ok, _, md := allowConn(dryCh, c, netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), nil)
		if diff := cmp.Diff(md, map[string]map[string]any{"envoy.filters.network.rbac": want}); !ok || diff != "" {
			t.Errorf("dry run, port %d: allowed=%v, metadata (-got +want)\n%s", port, ok, diff)
		}
	}
	// Network RBAC after the terminal filter, or unsupported rules: NACK.
	fc.Filters[0], fc.Filters[1] = fc.Filters[1], fc.Filters[0]
	if _, err := compileChain(fc); err == nil {
		t.Error("RBAC after tcp_proxy accepted")
	}
}

// TestInboundDenialReporter: a request an inbound listener's RBAC denies
// (before any cluster is chosen) is counted as the destination's, as
// Istio's inbound sidecar reports it; the same chain on an outbound
// listener reports it as the source's.
func TestInboundDenialReporter(t *testing.T) {
	for dir, want := range map[corev3.TrafficDirection]string{
		corev3.TrafficDirection_INBOUND: "destination", corev3.TrafficDirection_OUTBOUND: "source"} {
		reg := prometheus.NewRegistry()
		e := New(slog.New(slog.DiscardHandler), Options{Registerer: reg})
		e.cur.Store(&runtime{routes: map[string]*route.Table{}})
		fc := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{Name: "hcm",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, &hcmv3.HttpConnectionManager{
				StatPrefix: "test", RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "r"}},
				HttpFilters: []*hcmv3.HttpFilter{
					{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, &rbachttpv3.RBAC{Rules: denyAdmin()})}},
					{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, &routerv3.Router{})}},
				}})}}}}
		ls, err := compileListener(&listenerv3.Listener{Name: "l", TrafficDirection: dir,
			Address: socketAddr(netip.MustParseAddrPort("127.0.0.1:1")), FilterChains: []*listenerv3.FilterChain{fc}})
		if err != nil {
			t.Fatal(err)
		}
		a, b := net.Pipe()
		cc := &chainConn{Conn: a, chain: ls.chains[0].http}
		r := httptest.NewRequest("GET", "/admin", nil)
		r = r.WithContext(context.WithValue(r.Context(), connKey{}, cc))
		w := httptest.NewRecorder()
		e.serveHTTP(w, r)
		a.Close()
		b.Close()
		if w.Code != 403 {
			t.Fatalf("%v: status %d, want 403", dir, w.Code)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, mf := range mfs {
			if mf.GetName() != "istio_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "reporter" {
						got = append(got, lp.GetValue())
					}
				}
			}
		}
		if len(got) != 1 || got[0] != want {
			t.Errorf("%v listener: istio_requests_total reporters %v, want [%s]", dir, got, want)
		}
	}
}
