package route

import (
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/testutil/ldsgolden"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// benchConfig is a route configuration shaped like weft's outbound ones:
// 50 services, each with the domain forms translate emits and 10 routes
// (header, exact, regex, query and prefix matches, a weighted split, and
// the catch-all last), plus the "*" pass-through.
func benchConfig() *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: "8080"}
	for i := range 50 {
		host := fmt.Sprintf("svc%d.default.svc.cluster.local", i)
		short := fmt.Sprintf("svc%d", i)
		ip := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
		vh := &routev3.VirtualHost{Name: host + ":8080", Domains: []string{
			host, host + ":8080", short + ".default", short + ".default:8080", short, short + ":8080", ip, ip + ":8080"}}
		cluster := "outbound|8080||" + host
		for j := range 9 {
			r := toCluster(fmt.Sprintf("r%d", j), fmt.Sprintf("/api/v%d/", j), cluster)
			switch j % 5 {
			case 0:
				r.Match.Headers = []*routev3.HeaderMatcher{{Name: "end-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "jason"}}}}}
			case 1:
				r.Match.PathSpecifier = &routev3.RouteMatch_Path{Path: fmt.Sprintf("/exact/%d", j)}
			case 2:
				r.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: fmt.Sprintf("/items/%d/[0-9]+", j)}}
			case 3:
				r.Match.QueryParameters = []*routev3.QueryParameterMatcher{{Name: "debug", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "1"}}}}}
			case 4:
				r.GetRoute().ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
					Clusters: []*routev3.WeightedCluster_ClusterWeight{
						{Name: "outbound|8080|v1|" + host, Weight: wrapperspb.UInt32(80)},
						{Name: "outbound|8080|v2|" + host, Weight: wrapperspb.UInt32(20)}}}}
			}
			vh.Routes = append(vh.Routes, r)
		}
		vh.Routes = append(vh.Routes, toCluster("default", "/", cluster))
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	rc.VirtualHosts = append(rc.VirtualHosts, vhost("allow_any", "*"))
	return rc
}

func BenchmarkMatch(b *testing.B) {
	tb, err := Compile(benchConfig())
	if err != nil {
		b.Fatal(err)
	}
	hdr := http.Header{"End-User": {"mary"}, "Accept": {"*/*"}, "User-Agent": {"bench"}}
	for _, bc := range []struct {
		name string
		r    Request
		want string
	}{
		{"first-route", Request{Method: "GET", Host: "svc17:8080", Path: "/api/v0/x", Headers: http.Header{"End-User": {"jason"}}}, "r0"},
		{"catch-all", Request{Method: "GET", Host: "svc42.default.svc.cluster.local:8080", Path: "/products/7?page=2", Headers: hdr}, "default"},
		{"regex", Request{Method: "GET", Host: "svc3", Path: "/items/7/12345", Headers: hdr}, "r7"},
		{"query", Request{Method: "GET", Host: "10.0.0.9:8080", Path: "/api/v8/list?x=2&debug=1", Headers: hdr}, "r8"},
		{"upper-case-host", Request{Method: "GET", Host: "SVC5.Default:8080", Path: "/", Headers: hdr}, "default"},
		{"port-stripped", Request{Method: "GET", Host: "svc5.default:9999", Path: "/", Headers: hdr}, "default"},
		{"unknown-host", Request{Method: "GET", Host: "example.com", Path: "/", Headers: hdr}, "allow_any"},
	} {
		rt, _, ok := tb.Match(&bc.r)
		if !ok || rt.Name != bc.want {
			b.Fatalf("%s: matched %v, want %s", bc.name, rt, bc.want)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			r := &bc.r
			for b.Loop() {
				if _, _, ok := tb.Match(r); !ok {
					b.Fatal("no match")
				}
			}
		})
	}
}

func BenchmarkRouteOps(b *testing.B) {
	tb := goldenTable(b, "http-actions.json", "80")
	split, _, _ := tb.Match(&Request{Host: "web.default.svc.cluster.local", Path: "/split"})
	b.Run("PickCluster", func(b *testing.B) {
		b.ReportAllocs()
		var rnd uint32
		for b.Loop() {
			rnd += 2654435761
			split.PickCluster(rnd)
		}
	})
	hashed := goldenTable(b, "hash-policy.json", "9080")
	rt, _, _ := hashed.Match(&Request{Host: "ratings", Path: "/"})
	r := &Request{Path: "/", Headers: http.Header{"X-User": {"alice"}}, SourceIP: netip.MustParseAddr("10.0.0.1")}
	b.Run("HashKey", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rt.HashKey(r)
		}
	})
}

func BenchmarkCompile(b *testing.B) {
	rc := benchConfig()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(rc); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzMatch(f *testing.F) {
	rcs := goldenRoutes(f, filepath.Join(ldsgolden.Dir, "http-match.json"))
	rcs = append(rcs, goldenRoutes(f, filepath.Join(ldsgolden.Dir, "http-actions.json"))...)
	rcs = append(rcs, benchConfig())
	var tables []*Table
	for _, rc := range rcs {
		tb, err := Compile(rc)
		if err != nil {
			f.Fatal(err)
		}
		tables = append(tables, tb)
	}
	for _, s := range [][3]string{
		{"httpbin:8000", "/headers?q=1&r=abc", "yes"},
		{"web.default.svc.cluster.local", "/old?a=1", ""},
		{"[::1]:80", "/split%2F?%zz=1&q", "abc"},
		{"SVC5.Default:8080", "/items/2/1#x", "jason"},
		{"", "", ""},
		{":", "?", "\x00"},
		{"[", "#?#", ","},
	} {
		f.Add(s[0], s[1], s[2], uint32(7))
	}
	f.Fuzz(func(t *testing.T, host, path, value string, rnd uint32) {
		h := http.Header{"X-Exact": {value}, "X-Regex": {value}, "End-User": {value}, "Cookie": {value}, "X-User": {value, path}}
		for _, scheme := range []string{"", "https"} {
			r := &Request{Method: "GET", Scheme: scheme, Host: host, Path: path, Headers: h}
			for _, tb := range tables {
				rt, _, ok := tb.Match(r)
				if !ok {
					continue
				}
				rt.PickCluster(rnd)
				rt.RewritePath(path)
				rt.RedirectFor(r)
				rt.HashKey(r)
				rt.Fault.Decide(rnd)
				if rt.CORS != nil {
					rt.CORS.Preflight(value, "GET", "")
				}
				_, c := rt.PickCluster(rnd)
				rt.ApplyRequestHeaders(h.Clone(), c)
			}
		}
	})
}
