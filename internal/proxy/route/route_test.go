package route

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// toCluster is a route forwarding everything under prefix to cluster.
func toCluster(name, prefix, cluster string) *routev3.Route {
	return &routev3.Route{
		Name:  name,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
	}
}

// vhost is a virtual host with one catch-all route to cluster name.
func vhost(name string, domains ...string) *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{toCluster(name, "/", name)}}
}

// compile compiles virtual hosts into a table or fails the test.
func compile(t testing.TB, vhs ...*routev3.VirtualHost) *Table {
	t.Helper()
	tb, err := Compile(&routev3.RouteConfiguration{Name: "test", VirtualHosts: vhs})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// mustAny packs m.
func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestVirtualHostSelection(t *testing.T) {
	tb := compile(t,
		vhost("exact", "api.example.com", "api.example.com:8080"),
		vhost("suffix-short", "*.com"),
		vhost("suffix-long", "*.example.com"),
		vhost("prefix", "internal.*"),
		vhost("fallback", "*"),
	)
	for host, want := range map[string]string{
		"api.example.com":        "exact",
		"API.Example.COM":        "exact",
		"api.example.com:8080":   "exact",
		"api.example.com:9999":   "exact", // port stripped
		"www.example.com":        "suffix-long",
		"www.example.com:443":    "suffix-long",
		"other.com":              "suffix-short",
		".example.com":           "suffix-short", // a wildcard never matches ""
		"internal.foo":           "prefix",
		"internal.":              "fallback",
		"unknown":                "fallback",
		"":                       "fallback",
		"[::1]:80":               "fallback",
		"10.0.0.1":               "fallback",
		strings.Repeat("A", 300): "fallback",
	} {
		vh := tb.VirtualHostFor(host)
		if vh == nil || vh.Name != want {
			t.Errorf("%q -> %v, want %s", host, vh, want)
		}
	}
	noDefault := compile(t, vhost("a", "a"))
	if _, vh, ok := noDefault.Match(&Request{Host: "b", Path: "/"}); ok || vh != nil {
		t.Errorf("unknown host matched %v", vh)
	}
	ip6 := compile(t, vhost("v6", "[fd00::1]", "[fd00::1]:80"), vhost("v4", "10.0.0.1"))
	for host, want := range map[string]string{"[fd00::1]:80": "v6", "[fd00::1]:81": "v6", "[FD00::1]": "v6", "10.0.0.1:8080": "v4"} {
		if vh := ip6.VirtualHostFor(host); vh == nil || vh.Name != want {
			t.Errorf("%q -> %v, want %s", host, vh, want)
		}
	}
}

func TestDomainErrors(t *testing.T) {
	for name, vhs := range map[string][]*routev3.VirtualHost{
		"duplicate":       {vhost("a", "x.com"), vhost("b", "X.com")},
		"duplicate *":     {vhost("a", "*"), vhost("b", "*")},
		"duplicate wild":  {vhost("a", "*.x"), vhost("b", "*.x")},
		"middle wildcard": {vhost("a", "a.*.com")},
		"two wildcards":   {vhost("a", "*.x.*")},
		"no domains":      {vhost("a")},
	} {
		if _, err := Compile(&routev3.RouteConfiguration{VirtualHosts: vhs}); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
}

func TestRouteMatchers(t *testing.T) {
	sm := func(s *matcherv3.StringMatcher) *routev3.HeaderMatcher_StringMatch {
		return &routev3.HeaderMatcher_StringMatch{StringMatch: s}
	}
	route := func(name string, m *routev3.RouteMatch) *routev3.Route {
		r := toCluster(name, "", name)
		r.Match = m
		return r
	}
	prefix := &routev3.RouteMatch_Prefix{Prefix: "/"}
	tb := compile(t, &routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{
		route("range", &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{{
			Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 10, End: 20}}}}}),
		route("absent", &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{{
			Name: "x-absent", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}}}),
		route("suffix-ci", &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{{
			Name: "x-s", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "END"}, IgnoreCase: true})}}}),
		route("contains-ci", &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{{
			Name: "x-c", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "MID"}, IgnoreCase: true})}}}),
		route("missing-empty", &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{{
			Name: "x-e", TreatMissingHeaderAsEmpty: true, HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: ""}})}},
			QueryParameters: []*routev3.QueryParameterMatcher{{Name: "empty", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}}}}),
		route("multi", &routev3.RouteMatch{PathSpecifier: prefix, Headers: []*routev3.HeaderMatcher{{
			Name: "x-m", HeaderMatchSpecifier: legacyExact("a,b")}}}),
		route("grpc", &routev3.RouteMatch{PathSpecifier: prefix, Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}}),
		route("exact", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/exact"}}),
		route("regex", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/r/[a-z]+"}}}),
		route("prefix", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/p"}}),
	}})
	for _, tc := range []struct {
		path string
		h    http.Header
		want string
	}{
		{"/", http.Header{"X-N": {"15"}, "X-Absent": {"1"}}, "range"},
		{"/", http.Header{"X-N": {"20"}, "X-Absent": {"1"}}, "none"},
		{"/", nil, "absent"},
		{"/", http.Header{"X-Absent": {""}, "X-S": {"the-end"}}, "suffix-ci"},
		{"/", http.Header{"X-Absent": {""}, "X-C": {"a-mid-b"}}, "contains-ci"},
		{"/?empty", http.Header{"X-Absent": {""}}, "missing-empty"},
		{"/", http.Header{"X-Absent": {""}, "X-M": {"a", "b"}}, "multi"},
		{"/", http.Header{"X-Absent": {""}, "Content-Type": {"application/grpc+proto"}}, "grpc"},
		{"/", http.Header{"X-Absent": {""}, "Content-Type": {"application/grpcx"}}, "none"},
		{"/exact?q", http.Header{"X-Absent": {""}}, "exact"},
		{"/exact/", http.Header{"X-Absent": {""}}, "none"},
		{"/r/abc", http.Header{"X-Absent": {""}}, "regex"},
		{"/r/abc1", http.Header{"X-Absent": {""}}, "none"},
		{"/pq#frag", http.Header{"X-Absent": {""}}, "prefix"},
		{"/P", http.Header{"X-Absent": {""}}, "none"},
	} {
		got := "none"
		if rt, _, ok := tb.Match(&Request{Host: "h", Path: tc.path, Headers: tc.h}); ok {
			got = rt.Name
		}
		if got != tc.want {
			t.Errorf("%s %v: matched %s, want %s", tc.path, tc.h, got, tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	base := func(mut func(r *routev3.Route)) *routev3.RouteConfiguration {
		r := toCluster("r1", "/", "c")
		mut(r)
		return &routev3.RouteConfiguration{Name: "rc", VirtualHosts: []*routev3.VirtualHost{{Name: "vh1", Domains: []string{"*"}, Routes: []*routev3.Route{r}}}}
	}
	action := func(r *routev3.Route) *routev3.RouteAction { return r.GetRoute() }
	for name, tc := range map[string]struct {
		rc          *routev3.RouteConfiguration
		unsupported bool
		contains    string
	}{
		"runtime fraction match": {base(func(r *routev3.Route) {
			r.Match.RuntimeFraction = &corev3.RuntimeFractionalPercent{}
		}), true, "runtime_fraction"},
		"cluster header": {base(func(r *routev3.Route) {
			action(r).ClusterSpecifier = &routev3.RouteAction_ClusterHeader{ClusterHeader: "x"}
		}), true, "cluster_header"},
		"rate limits": {base(func(r *routev3.Route) {
			action(r).RateLimits = []*routev3.RateLimit{{}}
		}), true, "rate_limits"},
		"unknown retry_on": {base(func(r *routev3.Route) {
			action(r).RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,sometimes"}
		}), false, "sometimes"},
		"retriable headers": {base(func(r *routev3.Route) {
			action(r).RetryPolicy = &routev3.RetryPolicy{RetriableHeaders: []*routev3.HeaderMatcher{{Name: "x"}}}
		}), true, "retriable_headers"},
		"formatter": {base(func(r *routev3.Route) {
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x", Value: "%REQ(y)%"}}}
		}), true, "formatter"},
		"host header": {base(func(r *routev3.Route) {
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "Host", Value: "h"}}}
		}), false, "host"},
		"zero weights": {base(func(r *routev3.Route) {
			action(r).ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(0)}}}}
		}), false, "sum to 0"},
		"bad regex": {base(func(r *routev3.Route) {
			r.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "("}}
		}), false, "regex"},
		"big body": {base(func(r *routev3.Route) {
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
				Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: strings.Repeat("x", 5000)}}}}
		}), false, "exceeds"},
		"file body": {base(func(r *routev3.Route) {
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
				Body: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/passwd"}}}}
		}), true, "filename"},
		"unknown filter": {base(func(r *routev3.Route) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.lua": mustAny(t, &routev3.Route{})}
		}), true, "envoy.filters.http.lua"},
		"fault header abort": {base(func(r *routev3.Route) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{faultFilter: mustAny(t, &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
				ErrorType: &faultv3.FaultAbort_HeaderAbort_{HeaderAbort: &faultv3.FaultAbort_HeaderAbort{}}}})}
		}), true, "header_abort"},
		"no action": {base(func(r *routev3.Route) { r.Action = nil }), false, "action"},
		"hedge":     {base(func(r *routev3.Route) { action(r).HedgePolicy = &routev3.HedgePolicy{} }), true, "hedge_policy"},
	} {
		_, err := Compile(tc.rc)
		switch {
		case err == nil:
			t.Errorf("%s: compiled", name)
		case errors.Is(err, ErrUnsupported) != tc.unsupported:
			t.Errorf("%s: errors.Is(ErrUnsupported) = %v: %v", name, !tc.unsupported, err)
		case !strings.Contains(err.Error(), tc.contains) || !strings.Contains(err.Error(), `"vh1"`) || !strings.Contains(err.Error(), `"r1"`):
			t.Errorf("%s: error %q does not name %q, the virtual host and the route", name, err, tc.contains)
		}
	}
	if _, err := Compile(&routev3.RouteConfiguration{Vhds: &routev3.Vhds{}}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("vhds: %v", err)
	}
}

func TestFraction(t *testing.T) {
	for _, tc := range []struct {
		fp   *typev3.FractionalPercent
		hits int // out of rnd 0..999_999
	}{
		{nil, 0},
		{&typev3.FractionalPercent{Numerator: 25}, 250_000},
		{&typev3.FractionalPercent{Numerator: 250, Denominator: typev3.FractionalPercent_TEN_THOUSAND}, 25_000},
		{&typev3.FractionalPercent{Numerator: 1, Denominator: typev3.FractionalPercent_MILLION}, 1},
		{&typev3.FractionalPercent{Numerator: 500}, 1_000_000}, // clamped
	} {
		f, err := compileFraction(tc.fp)
		if err != nil {
			t.Fatal(err)
		}
		hits := 0
		for rnd := uint32(0); rnd < 1_000_000; rnd++ {
			if f.Hit(rnd) {
				hits++
			}
		}
		if hits != tc.hits {
			t.Errorf("%v: %d hits, want %d", tc.fp, hits, tc.hits)
		}
	}
}

func TestHeaderOps(t *testing.T) {
	hv := func(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
	}
	ops, err := compileHeaderOps([]*corev3.HeaderValueOption{
		hv("x-append", "2", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		hv("x-absent", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hv("x-present", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hv("x-over", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
		hv("x-if-exists", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
		hv("x-not-there", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
		hv("x-empty", "", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
		{Header: &corev3.HeaderValue{Key: "x-kept", Value: ""}, KeepEmptyValue: true},
		{Header: &corev3.HeaderValue{Key: "x-legacy", Value: "v"}, Append: wrapperspb.Bool(false)},
		hv("x-pct", "50%%", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
		hv("x-removed", "re-added", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
	}, []string{"x-removed"}, true)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"X-Append": {"1"}, "X-Present": {"old"}, "X-Over": {"a", "b"}, "X-If-Exists": {"old"},
		"X-Legacy": {"old"}, "X-Removed": {"old"}}
	ops.Apply(h)
	want := http.Header{"X-Append": {"1", "2"}, "X-Absent": {"new"}, "X-Present": {"old"}, "X-Over": {"new"},
		"X-If-Exists": {"new"}, "X-Kept": {""}, "X-Legacy": {"v"}, "X-Pct": {"50%"}, "X-Removed": {"re-added"}}
	if len(h) != len(want) {
		t.Errorf("headers = %v, want %v", h, want)
	}
	for k, v := range want {
		if strings.Join(h[k], "|") != strings.Join(v, "|") {
			t.Errorf("%s = %q, want %q", k, h[k], v)
		}
	}
}

func TestHeaderLevelOrder(t *testing.T) {
	set := func(v string) []*corev3.HeaderValueOption {
		return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-level", Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
	}
	for _, mostSpecificWins := range []bool{false, true} {
		r := toCluster("r", "/", "c")
		r.RequestHeadersToAdd = set("route")
		vh := &routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{r}, RequestHeadersToAdd: set("vhost")}
		tb, err := Compile(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{vh},
			RequestHeadersToAdd: set("config"), MostSpecificHeaderMutationsWins: mostSpecificWins})
		if err != nil {
			t.Fatal(err)
		}
		rt := mustMatch(t, tb, &Request{Host: "x", Path: "/"})
		h := http.Header{}
		_, c := rt.PickCluster(0)
		rt.ApplyRequestHeaders(h, c)
		want := map[bool]string{false: "config", true: "route"}[mostSpecificWins]
		if h.Get("X-Level") != want {
			t.Errorf("most specific wins %v: %q, want %q", mostSpecificWins, h.Get("X-Level"), want)
		}
	}
}

func TestRedirect(t *testing.T) {
	redirect := func(rd *routev3.RedirectAction, prefix string) *Route {
		r := toCluster("r", prefix, "")
		r.Action = &routev3.Route_Redirect{Redirect: rd}
		tb := compile(t, &routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{r}})
		return tb.VirtualHosts[0].Routes[0]
	}
	for _, tc := range []struct {
		name   string
		rd     *routev3.RedirectAction
		prefix string
		r      Request
		want   string
		code   int
	}{
		{"https upgrade drops :80", &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}},
			"/", Request{Host: "a.com:80", Path: "/x?y=1"}, "https://a.com/x?y=1", 301},
		{"https upgrade keeps :8080", &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}},
			"/", Request{Host: "a.com:8080", Path: "/x"}, "https://a.com:8080/x", 301},
		{"new port replaces", &routev3.RedirectAction{PortRedirect: 9000, ResponseCode: routev3.RedirectAction_PERMANENT_REDIRECT},
			"/", Request{Host: "[::1]:80", Path: "/x"}, "http://[::1]:9000/x", 308},
		{"strip query", &routev3.RedirectAction{StripQuery: true, HostRedirect: "b.com"},
			"/", Request{Host: "a.com", Path: "/x?y=1", Scheme: "https"}, "https://b.com/x", 301},
		{"path with query wins", &routev3.RedirectAction{StripQuery: true, PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/n?k=v"}},
			"/", Request{Host: "a.com", Path: "/x?y=1"}, "http://a.com/n?k=v", 301},
		{"prefix rewrite", &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/new/"}, ResponseCode: routev3.RedirectAction_SEE_OTHER},
			"/old/", Request{Host: "a.com", Path: "/old/x?q"}, "http://a.com/new/x?q", 303},
		{"regex rewrite", &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_RegexRewrite{RegexRewrite: &matcherv3.RegexMatchAndSubstitute{
			Pattern: &matcherv3.RegexMatcher{Regex: "^/u/([0-9]+)$"}, Substitution: "/users/\\1"}}},
			"/", Request{Host: "a.com", Path: "/u/42"}, "http://a.com/users/42", 301},
	} {
		loc, code, ok := redirect(tc.rd, tc.prefix).RedirectFor(&tc.r)
		if !ok || loc != tc.want || code != tc.code {
			t.Errorf("%s: %q %d, want %q %d", tc.name, loc, code, tc.want, tc.code)
		}
	}
}

// TestRequireTLS: require_tls ALL (Istio's Gateway tls.httpsRedirect)
// answers every request that is not https, before any route matches, with
// Envoy's redirect: 301 to https, the Host as received (its port kept),
// path and query unchanged. https requests, and virtual hosts with NONE,
// route as usual; EXTERNAL_ONLY is refused.
func TestRequireTLS(t *testing.T) {
	secure := vhost("secure", "secure.example.com", "secure.example.com:*")
	secure.Routes = []*routev3.Route{toCluster("api", "/api", "api")} // nothing else matches
	secure.RequireTls = routev3.VirtualHost_ALL
	plain := vhost("plain", "*")
	plain.RequireTls = routev3.VirtualHost_NONE
	tb := compile(t, secure, plain)
	if !tb.VirtualHosts[0].RequireTLS || tb.VirtualHosts[1].RequireTLS {
		t.Fatalf("RequireTLS %v %v, want true false", tb.VirtualHosts[0].RequireTLS, tb.VirtualHosts[1].RequireTLS)
	}
	for _, tc := range []struct {
		r    Request
		want string // Location; "" routes to the cluster
	}{
		{Request{Host: "secure.example.com", Path: "/api/x?y=1&z"}, "https://secure.example.com/api/x?y=1&z"},
		{Request{Host: "secure.example.com:80", Path: "/", Scheme: "http"}, "https://secure.example.com:80/"},
		{Request{Host: "Secure.Example.com:8080", Path: "/no/route"}, "https://Secure.Example.com:8080/no/route"},
		{Request{Host: "secure.example.com", Path: "/api/x", Scheme: "https"}, ""},
		{Request{Host: "secure.example.com", Path: "/api/x", Scheme: "HTTPS"}, ""},
		{Request{Host: "other.example.com", Path: "/x"}, ""},
	} {
		rt, _, ok := tb.Match(&tc.r)
		if !ok {
			t.Errorf("%+v: no route", tc.r)
			continue
		}
		loc, code, redirect := rt.RedirectFor(&tc.r)
		switch {
		case tc.want == "" && (redirect || rt.Action != ActionCluster):
			t.Errorf("%+v: redirected to %q, want routed", tc.r, loc)
		case tc.want != "" && (rt.Action != ActionRedirect || loc != tc.want || code != http.StatusMovedPermanently):
			t.Errorf("%+v: %v %q %d, want a 301 to %q", tc.r, rt.Action, loc, code, tc.want)
		}
	}
	if _, _, ok := tb.Match(&Request{Host: "secure.example.com", Path: "/no/route", Scheme: "https"}); ok {
		t.Error("over https the require_tls virtual host matched a path none of its routes has")
	}
	ext := vhost("ext", "*")
	ext.RequireTls = routev3.VirtualHost_EXTERNAL_ONLY
	if _, err := Compile(&routev3.RouteConfiguration{Name: "rc", VirtualHosts: []*routev3.VirtualHost{ext}}); !errors.Is(err, ErrUnsupported) ||
		!strings.Contains(err.Error(), "EXTERNAL_ONLY") {
		t.Errorf("EXTERNAL_ONLY: %v, want ErrUnsupported naming it", err)
	}
}

func TestDefaultsAndInheritance(t *testing.T) {
	fault := func(pct uint32) *anypb.Any {
		return mustAny(t, &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_HttpStatus{HttpStatus: 503},
			Percentage: &typev3.FractionalPercent{Numerator: pct}}})
	}
	plain := toCluster("plain", "/plain", "c")
	override := toCluster("override", "/override", "c")
	override.TypedPerFilterConfig = map[string]*anypb.Any{faultFilter: fault(100)}
	disabled := toCluster("disabled", "/disabled", "c")
	disabled.TypedPerFilterConfig = map[string]*anypb.Any{
		faultFilter: mustAny(t, &routev3.FilterConfig{Disabled: true}),
		corsFilter:  mustAny(t, &routev3.FilterConfig{Disabled: true}),
		"x.lua":     mustAny(t, &routev3.FilterConfig{IsOptional: true, Config: mustAny(t, &routev3.Route{})}),
	}
	ownRetry := toCluster("own-retry", "/own", "c")
	ownRetry.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Second)}}
	ownRetry.GetRoute().Timeout = durationpb.New(0)
	vh := &routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{plain, override, disabled, ownRetry},
		RetryPolicy: &routev3.RetryPolicy{RetryOn: "gateway-error"},
		TypedPerFilterConfig: map[string]*anypb.Any{faultFilter: fault(10), corsFilter: mustAny(t, &corsv3.CorsPolicy{
			AllowOriginStringMatch: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "https://o"}}}})},
	}
	tb := compile(t, vh)
	get := func(p string) *Route { return mustMatch(t, tb, &Request{Host: "x", Path: p}) }
	if rt := get("/plain"); rt.Fault.AbortFraction != (Fraction{10, 100}) || rt.CORS == nil || !rt.CORS.ForwardNotMatchingPreflights ||
		rt.Retry.RetryOn != RetryGatewayError || rt.Retry.NumRetries != 1 || rt.Timeout != DefaultTimeout || rt.Retry.BackoffBase != 25*time.Millisecond {
		t.Errorf("plain = fault %+v cors %v retry %+v timeout %v", rt.Fault, rt.CORS, rt.Retry, rt.Timeout)
	}
	if rt := get("/override"); rt.Fault.AbortFraction != (Fraction{100, 100}) {
		t.Errorf("override fault = %+v", rt.Fault)
	}
	if rt := get("/disabled"); rt.Fault != nil || rt.CORS != nil {
		t.Errorf("disabled = %+v %+v", rt.Fault, rt.CORS)
	}
	if rt := get("/own"); rt.Retry.RetryOn != Retry5xx || rt.Retry.BackoffMax != 10*time.Second || rt.Timeout != 0 {
		t.Errorf("own retry = %+v timeout %v", rt.Retry, rt.Timeout)
	}
	var nilFault *Fault
	if d, st, g := nilFault.Decide(0); d != 0 || st != 0 || g != -1 {
		t.Errorf("nil fault decided %v %d %d", d, st, g)
	}
}

func TestFaultDecideIndependent(t *testing.T) {
	f := &Fault{Delay: time.Second, DelayFraction: Fraction{50, 100}, AbortStatus: 503, AbortGRPC: -1, AbortFraction: Fraction{50, 100}}
	var both, delays, aborts int
	const n = 100_000
	for i := uint32(0); i < n; i++ {
		d, st, _ := f.Decide(i * 2654435761)
		if d > 0 {
			delays++
		}
		if st == 503 {
			aborts++
		}
		if d > 0 && st == 503 {
			both++
		}
	}
	// Independent 50% draws: about a quarter get both.
	if delays < n*45/100 || delays > n*55/100 || aborts < n*45/100 || aborts > n*55/100 || both < n*20/100 || both > n*30/100 {
		t.Errorf("delays %d aborts %d both %d of %d", delays, aborts, both, n)
	}
}

func TestHashPolicies(t *testing.T) {
	r := toCluster("r", "/", "c")
	r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{
		{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: "sid", Ttl: durationpb.New(time.Hour)}}, Terminal: true},
		{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: "u"}}},
		{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}},
	}
	tb := compile(t, &routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{r}})
	rt := tb.VirtualHosts[0].Routes[0]
	ip := netip.MustParseAddr("10.1.2.3")
	key := func(r *Request) uint64 {
		k, ok := rt.HashKey(r)
		if !ok {
			t.Fatalf("no hash for %+v", r)
		}
		return k
	}
	cookie := http.Header{"Cookie": {"a=1; sid=\"abc\"; b=2"}}
	if key(&Request{Path: "/?u=1", Headers: cookie, SourceIP: ip}) != key(&Request{Path: "/?u=2", Headers: cookie}) {
		t.Error("terminal cookie hash depends on later policies")
	}
	q1 := key(&Request{Path: "/?u=1", SourceIP: ip, Headers: http.Header{}})
	if q1 == key(&Request{Path: "/?u=2", SourceIP: ip, Headers: http.Header{}}) || q1 == key(&Request{Path: "/?u=1", SourceIP: netip.MustParseAddr("10.1.2.4"), Headers: http.Header{}}) {
		t.Error("combined hash ignores a policy")
	}
	if key(&Request{Path: "/", SourceIP: netip.MustParseAddr("::ffff:10.1.2.3")}) != key(&Request{Path: "/", SourceIP: ip}) {
		t.Error("IPv4-mapped source differs from IPv4")
	}
	if _, ok := rt.HashKey(&Request{Path: "/"}); ok {
		t.Error("hash without inputs")
	}
	if p := rt.HashPolicies[0]; p.Kind != HashCookie || p.CookieTTL != time.Hour {
		t.Errorf("cookie policy = %+v", p)
	}
}

func TestRewrite(t *testing.T) {
	r := toCluster("r", "/", "c")
	r.Match.CaseSensitive = wrapperspb.Bool(false)
	r.Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/API/"}
	r.GetRoute().PrefixRewrite = "/"
	rx := toCluster("rx", "/x/", "c")
	rx.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "([a-z])-([a-z])"}, Substitution: "\\2\\1$"}
	tb := compile(t, &routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{r, rx}})
	if got := mustMatch(t, tb, &Request{Path: "/api/v1"}).RewritePath("/api/v1?q=/api/"); got != "/v1?q=/api/" {
		t.Errorf("prefix rewrite = %q", got)
	}
	if got := mustMatch(t, tb, &Request{Path: "/x/a-b/c-d"}).RewritePath("/x/a-b/c-d"); got != "/x/ba$/dc$" {
		t.Errorf("regex rewrite = %q", got)
	}
	bad := toCluster("bad", "/", "c")
	bad.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "a"}, Substitution: "\\1"}
	if _, err := Compile(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{bad}}}}); err == nil {
		t.Error("substitution with a missing group compiled")
	}
}

func TestFaultFromProto(t *testing.T) {
	f, err := compileFault(&faultv3.HTTPFault{
		Delay: &commonfaultv3.FaultDelay{FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(2 * time.Second)},
			Percentage: &typev3.FractionalPercent{Numerator: 100}},
		Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: 0}, Percentage: &typev3.FractionalPercent{Numerator: 100}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if d, st, g := f.Decide(7); d != 2*time.Second || st != 0 || g != 0 {
		t.Errorf("Decide = %v %d %d, want 2s 0 0", d, st, g)
	}
	if _, err := compileFault(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 600}}}); err == nil {
		t.Error("abort 600 compiled")
	}
}

// legacyExact builds the deprecated exact_match specifier, which must keep
// working.
func legacyExact(v string) *routev3.HeaderMatcher_ExactMatch {
	//lint:ignore SA1019 the deprecated specifier must keep working
	return &routev3.HeaderMatcher_ExactMatch{ExactMatch: v}
}
