package engine

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

// denyPath is DENY rules refusing the exact path p.
func denyPath(p string) *rbacv3.RBAC {
	return &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"deny": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: p}}}}}}},
		Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
	}}}
}

// TestRBACShadowStats: a dry-run DENY policy's verdicts (the HTTP RBAC
// filter's shadow rules under istiod's prefix) are counted as Istio's
// dry-run task reads them:
// envoy_http_inbound_0_0_0_0_80_rbac{authz_dry_run_action="deny",authz_dry_run_result="denied"},
// and an enforced policy's in the same family with authz_enforce_result.
func TestRBACShadowStats(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	addr := freeAddr(t)
	l := withHCM(t, httpListener("in", addr, "backend", nil), func(h *hcmv3.HttpConnectionManager) {
		h.StatPrefix = "inbound_0.0.0.0_80"
		dry := &rbachttpv3.RBAC{ShadowRules: denyAdmin(), ShadowRulesStatPrefix: "istio_dry_run_deny_"}
		enforced := &rbachttpv3.RBAC{Rules: denyPath("/secret")}
		h.HttpFilters = append([]*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, dry)}},
			{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(t, enforced)}},
		}, h.HttpFilters...)
	})
	reg := prometheus.NewRegistry()
	e := New(slog.New(slog.DiscardHandler), Options{Registerer: reg})
	t.Cleanup(e.shutdown)
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"in": l},
		Clusters: map[string]*clusterv3.Cluster{"backend": staticCluster("backend", netip.MustParseAddrPort(backend.Listener.Addr().String()), false)}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/admin", "/admin/x", "/"} {
		if st := getStatus(t, "http://"+addr.String()+p); st != 200 {
			t.Fatalf("%s: %d; a dry-run policy enforces nothing", p, st)
		}
	}
	if st := getStatus(t, "http://"+addr.String()+"/secret"); st != 403 {
		t.Fatalf("/secret: %d, want 403", st)
	}
	want := map[string]float64{"denied": 2, "allowed": 2}
	v, ok := e.rbacStats.http.shadow.Load("inbound_0.0.0.0_80")
	if !ok {
		t.Fatalf("no envoy_http_inbound_0_0_0_0_80_rbac; series %q", metricSeries(t, reg, "envoy_http_inbound_0_0_0_0_80_rbac"))
	}
	for result, n := range want {
		if got := testutil.ToFloat64(v.(*prometheus.CounterVec).WithLabelValues("deny", result)); got != n {
			t.Errorf("%s: %v, want %v", result, got, n)
		}
	}
	ev, _ := e.rbacStats.http.enforced.Load("inbound_0.0.0.0_80")
	for result, n := range map[string]float64{"allowed": 3, "denied": 1} {
		if ev == nil {
			t.Fatal("no enforced verdicts counted")
		}
		if got := testutil.ToFloat64(ev.(*prometheus.CounterVec).WithLabelValues(result)); got != n {
			t.Errorf("enforced %s: %v, want %v", result, got, n)
		}
	}
	if got := metricSeries(t, reg, "envoy_http_inbound_0_0_0_0_80_rbac"); len(got) != 4 {
		t.Errorf("gathered series %q, want two shadow and two enforced verdicts in one family", got)
	}
}
