package rbac

import (
	"net/http/httptest"
	"net/netip"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"google.golang.org/protobuf/types/known/anypb"
)

func build(t testing.TB, c *rbacfilterv3.RBAC) httpfilter.Filter {
	t.Helper()
	a, err := anypb.New(c)
	if err != nil {
		t.Fatal(err)
	}
	f, err := httpfilter.Build(a)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func pathRules(action rbacv3.RBAC_Action, prefix string) *rbacv3.RBAC {
	return &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{"p": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{
			Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}}}}}}},
		Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
	}}}
}

func call(target string) *httpfilter.Call {
	return &httpfilter.Call{Request: httptest.NewRequest("GET", target, nil),
		Conn: &httpfilter.Conn{Source: netip.MustParseAddrPort("10.0.0.1:1"), Destination: netip.MustParseAddrPort("10.0.0.2:80")}}
}

func TestDecode(t *testing.T) {
	deny := build(t, &rbacfilterv3.RBAC{Rules: pathRules(rbacv3.RBAC_DENY, "/admin")})
	rep := deny.Decode(call("/admin/x"))
	if rep == nil || rep.Status != 403 || rep.Body != "RBAC: access denied" || rep.Flags != "RBAC" {
		t.Fatalf("denied: %+v", rep)
	}
	if rep := deny.Decode(call("/public")); rep != nil {
		t.Fatalf("allowed: %+v", rep)
	}
	allow := build(t, &rbacfilterv3.RBAC{Rules: pathRules(rbacv3.RBAC_ALLOW, "/public")})
	if allow.Decode(call("/public")) != nil || allow.Decode(call("/other")) == nil {
		t.Fatal("ALLOW")
	}
	logF := build(t, &rbacfilterv3.RBAC{Rules: pathRules(rbacv3.RBAC_LOG, "/admin"), ShadowRules: pathRules(rbacv3.RBAC_DENY, "/admin")})
	c := call("/admin")
	if rep := logF.Decode(c); rep != nil {
		t.Fatalf("LOG refused: %+v", rep)
	}
	if v, _ := c.GetMetadata(MetadataNamespace, "access_log_hint"); v != true {
		t.Errorf("access_log_hint %v", v)
	}
	if v, _ := c.GetMetadata(MetadataNamespace, "shadow_engine_result"); v != "denied" {
		t.Errorf("shadow_engine_result %v", v)
	}
	// Istio's dry-run: shadow rules only, under a stat prefix. Nothing
	// is enforced; the verdict and policy go under the prefixed keys.
	dry := build(t, &rbacfilterv3.RBAC{ShadowRules: pathRules(rbacv3.RBAC_DENY, "/admin"), ShadowRulesStatPrefix: "istio_dry_run_deny_"})
	c = call("/admin")
	if rep := dry.Decode(c); rep != nil {
		t.Fatalf("dry-run refused: %+v", rep)
	}
	res, _ := c.GetMetadata(MetadataNamespace, "istio_dry_run_deny_shadow_engine_result")
	pol, _ := c.GetMetadata(MetadataNamespace, "istio_dry_run_deny_shadow_effective_policy_id")
	if res != "denied" || pol != "p" {
		t.Errorf("dry-run metadata: result %v, policy %v; want denied by p", res, pol)
	}
	// No rules: no enforcement.
	if rep := build(t, &rbacfilterv3.RBAC{}).Decode(call("/admin")); rep != nil {
		t.Fatalf("no rules: %+v", rep)
	}
}

func BenchmarkDecode(b *testing.B) {
	f := build(b, &rbacfilterv3.RBAC{Rules: pathRules(rbacv3.RBAC_DENY, "/admin")})
	c := call("/public/page")
	b.ReportAllocs()
	for b.Loop() {
		if f.Decode(c) != nil {
			b.Fatal("denied")
		}
	}
}
