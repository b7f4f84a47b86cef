package route

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/testutil/ldsgolden"
)

// goldenRoutes decodes every RouteConfiguration of one golden file: the
// RDS ones and those inline in listeners' HTTP connection managers.
func goldenRoutes(t testing.TB, file string) []*routev3.RouteConfiguration {
	t.Helper()
	listeners, out := ldsgolden.Load(t, file)
	for _, lis := range listeners {
		chains := append([]*listenerv3.FilterChain{lis.GetDefaultFilterChain()}, lis.GetFilterChains()...)
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				hcm := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().MessageIs(hcm) {
					if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
						t.Fatal(err)
					}
					if rc := hcm.GetRouteConfig(); rc != nil {
						out = append(out, rc)
					}
				}
			}
		}
	}
	return out
}

// goldenTable compiles the RouteConfiguration named name in a golden file.
func goldenTable(t testing.TB, file, name string) *Table {
	t.Helper()
	for _, rc := range goldenRoutes(t, filepath.Join(ldsgolden.Dir, file)) {
		if rc.GetName() == name {
			tb, err := Compile(rc)
			if err != nil {
				t.Fatal(err)
			}
			return tb
		}
	}
	t.Fatalf("%s: no route configuration %q", file, name)
	return nil
}

func TestGoldenAllCompile(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(ldsgolden.Dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files in %s: %v", ldsgolden.Dir, err)
	}
	total := 0
	for _, f := range files {
		rcs := goldenRoutes(t, f)
		for _, rc := range rcs {
			if _, err := Compile(rc); err != nil {
				t.Errorf("%s: %v", filepath.Base(f), err)
			}
		}
		total += len(rcs)
	}
	if total < 20 {
		t.Errorf("only %d route configurations found in the golden files", total)
	}
}

// mustMatch matches r and fails unless a route matched.
func mustMatch(t *testing.T, tb *Table, r *Request) *Route {
	t.Helper()
	rt, _, ok := tb.Match(r)
	if !ok {
		t.Fatalf("%s %s%s: no route", r.Method, r.Host, r.Path)
	}
	return rt
}

func TestGoldenReviews8020(t *testing.T) {
	tb := goldenTable(t, "reviews-80-20.json", "9080")
	rt := mustMatch(t, tb, &Request{Method: "GET", Host: "reviews:9080", Path: "/reviews/1"})
	if rt.Action != ActionWeightedClusters {
		t.Fatalf("action = %v", rt.Action)
	}
	counts := map[string]int{}
	for rnd := uint32(0); rnd < 10_000; rnd++ {
		name, _ := rt.PickCluster(rnd * 7919) // spread over the uint32 range
		counts[name]++
	}
	v1, v2 := counts["outbound|9080|v1|reviews.default.svc.cluster.local"], counts["outbound|9080|v2|reviews.default.svc.cluster.local"]
	if v1 != 8000 || v2 != 2000 {
		t.Errorf("v1=%d v2=%d, want 8000/2000 (%v)", v1, v2, counts)
	}
	if name, _ := rt.PickCluster(79); !strings.Contains(name, "|v1|") {
		t.Errorf("rnd 79 -> %s, want v1", name)
	}
	if name, _ := rt.PickCluster(80); !strings.Contains(name, "|v2|") {
		t.Errorf("rnd 80 -> %s, want v2", name)
	}
	if rt.Retry == nil || rt.Retry.NumRetries != 2 || !rt.Retry.AvoidPreviousHosts ||
		!rt.Retry.RetryOn.Has(RetryConnectFailure|RetryRefusedStream|RetryGRPCUnavailable|RetryGRPCCancelled|RetryRetriableStatusCodes) ||
		!rt.Retry.RetriableStatus(503) || rt.Retry.RetriableStatus(500) {
		t.Errorf("retry = %+v", rt.Retry)
	}
	if rt.Timeout != 0 {
		t.Errorf("timeout = %v, want 0 (none)", rt.Timeout)
	}
	// Unknown hosts pass through (ALLOW_ANY).
	rt = mustMatch(t, tb, &Request{Method: "GET", Host: "example.com", Path: "/"})
	if name, _ := rt.PickCluster(0); name != "PassthroughCluster" {
		t.Errorf("unknown host -> %s", name)
	}
}

func TestGoldenReviewsJason(t *testing.T) {
	tb := goldenTable(t, "reviews-jason.json", "9080")
	for _, tc := range []struct {
		user, want string
	}{
		{"jason", "outbound|9080|v2|reviews.default.svc.cluster.local"},
		{"Jason", "outbound|9080|v3|reviews.default.svc.cluster.local"},
		{"", "outbound|9080|v3|reviews.default.svc.cluster.local"},
	} {
		h := http.Header{}
		if tc.user != "" {
			h.Set("End-User", tc.user)
		}
		rt := mustMatch(t, tb, &Request{Method: "GET", Host: "reviews.default.svc.cluster.local:9080", Path: "/", Headers: h})
		if name, _ := rt.PickCluster(0); name != tc.want {
			t.Errorf("end-user %q -> %s, want %s", tc.user, name, tc.want)
		}
	}
}

func TestGoldenFaultAbort(t *testing.T) {
	tb := goldenTable(t, "fault-abort.json", "9080")
	jason := http.Header{"End-User": {"jason"}}
	rt := mustMatch(t, tb, &Request{Method: "GET", Host: "ratings:9080", Path: "/ratings/0", Headers: jason})
	for _, rnd := range []uint32{0, 1, 999_999, 1 << 31, ^uint32(0)} {
		if d, st, g := rt.Fault.Decide(rnd); d != 0 || st != 500 || g != -1 {
			t.Errorf("Decide(%d) = %v %d %d, want 0 500 -1", rnd, d, st, g)
		}
	}
	rt = mustMatch(t, tb, &Request{Method: "GET", Host: "ratings:9080", Path: "/ratings/0"})
	if rt.Fault != nil {
		t.Errorf("non-jason route has fault %+v", rt.Fault)
	}
	rt = mustMatch(t, tb, &Request{Method: "GET", Host: "details:9080", Path: "/"})
	if _, st, _ := rt.Fault.Decide(42); st != 555 {
		t.Errorf("details abort = %d, want 555", st)
	}
}

func TestGoldenFaultDelay(t *testing.T) {
	tb := goldenTable(t, "fault-delay.json", "9080")
	rt := mustMatch(t, tb, &Request{Method: "GET", Host: "ratings", Path: "/", Headers: http.Header{"End-User": {"jason"}}})
	if d, st, g := rt.Fault.Decide(12345); d != 7*time.Second || st != 0 || g != -1 {
		t.Errorf("Decide = %v %d %d, want 7s 0 -1", d, st, g)
	}
}

func TestGoldenHTTPMatch(t *testing.T) {
	tb := goldenTable(t, "http-match.json", "8000")
	host := "httpbin.default.svc.cluster.local:8000"
	full := http.Header{"X-Exact": {"yes"}, "X-Prefix": {"abcdef"}, "X-Present": {""}, "X-Regex": {"v12"}}
	for _, tc := range []struct {
		name, method, scheme, path string
		h                          http.Header
		want                       string
	}{
		{"exact, case-insensitive", "GET", "", "/GET", nil, "exact.get"},
		{"exact, query ignored", "GET", "", "/get?x=1", nil, "exact.get"},
		{"exact, wrong method", "POST", "", "/get", nil, "rest"},
		{"headers all", "GET", "https", "/headers?q=1&r=abc", full, "headers"},
		{"headers debug inverted", "GET", "https", "/headers?q=1&r=abc", with(full, "X-Debug", "1"), "rest"},
		{"headers debug other value", "GET", "https", "/headers?q=1&r=abc", with(full, "X-Debug", "0"), "headers"},
		{"headers http scheme", "GET", "http", "/headers?q=1&r=abc", full, "rest"},
		{"headers bad query", "GET", "https", "/headers?q=1&r=ABC", full, "rest"},
		{"headers escaped query", "GET", "https", "/headers?%71=%31&r=abc", full, "headers"},
		{"headers missing present", "GET", "https", "/headers?q=1&r=abc", without(full, "X-Present"), "rest"},
		{"headers regex", "GET", "https", "/headers?q=1&r=abc", with(full, "X-Regex", "v1x"), "rest"},
		{"regex path", "GET", "", "/status/418", nil, "by-port"},
		{"regex path is anchored", "GET", "", "/status/4180", nil, "rest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := mustMatch(t, tb, &Request{Method: tc.method, Scheme: tc.scheme, Host: host, Path: tc.path, Headers: tc.h})
			if rt.Name != tc.want {
				t.Errorf("matched %q, want %q", rt.Name, tc.want)
			}
		})
	}
}

// with returns a copy of h with k set to v.
func with(h http.Header, k, v string) http.Header {
	out := h.Clone()
	out.Set(k, v)
	return out
}

// without returns a copy of h without k.
func without(h http.Header, k string) http.Header {
	out := h.Clone()
	out.Del(k)
	return out
}

func TestGoldenHTTPActions(t *testing.T) {
	tb := goldenTable(t, "http-actions.json", "80")
	host := "web.default.svc.cluster.local"
	req := func(path string) *Request {
		return &Request{Method: "GET", Host: host, Path: path, Headers: http.Header{}}
	}

	rt := mustMatch(t, tb, req("/old?a=1"))
	if loc, code, ok := rt.RedirectFor(req("/old?a=1")); !ok || loc != "https://new.example.com:8443/new?a=1" || code != 302 {
		t.Errorf("redirect = %q %d %v", loc, code, ok)
	}
	rt = mustMatch(t, tb, &Request{Host: host + ":80", Path: "/derive/x"})
	if loc, code, _ := rt.RedirectFor(&Request{Host: host + ":80", Path: "/derive/x"}); loc != "http://"+host+":80/derived" || code != 301 {
		t.Errorf("derived redirect = %q %d", loc, code)
	}
	rt = mustMatch(t, tb, req("/health"))
	if rt.Action != ActionDirectResponse || rt.DirectResponse.Status != 200 || string(rt.DirectResponse.Body) != "ok" {
		t.Errorf("direct response = %v %+v", rt.Action, rt.DirectResponse)
	}
	rt = mustMatch(t, tb, req("/api/v1/users?x=1"))
	if got := rt.RewritePath("/api/v1/users?x=1"); got != "/v2/users?x=1" || rt.UpstreamHost(nil) != "backend.internal" {
		t.Errorf("prefix rewrite = %q host %q", got, rt.UpstreamHost(nil))
	}
	rt = mustMatch(t, tb, req("/api"))
	if got := rt.RewritePath("/api?y"); got != "/v2?y" {
		t.Errorf("exact rewrite = %q", got)
	}
	rt = mustMatch(t, tb, req("/rx/a/b"))
	if got := rt.RewritePath("/rx/a/b?z=1"); got != "/a/b?z=1" {
		t.Errorf("regex rewrite = %q", got)
	}

	rt = mustMatch(t, tb, req("/split"))
	name, c := rt.PickCluster(0)
	if name != "outbound|80|blue|web.default.svc.cluster.local" || rt.UpstreamHost(c) != "" {
		t.Errorf("split rnd 0 = %s host %q", name, rt.UpstreamHost(c))
	}
	h := http.Header{"X-Drop": {"1"}, "X-Color": {"red"}, "X-Added": {"0"}}
	rt.ApplyRequestHeaders(h, c)
	if h.Get("X-Drop") != "" || h.Get("X-Color") != "blue" || h.Get("X-Route") != "split" || len(h["X-Added"]) != 2 {
		t.Errorf("request headers = %v", h)
	}
	resp := http.Header{"Server": {"x"}}
	rt.ApplyResponseHeaders(resp, c)
	if resp.Get("Server") != "" || resp.Get("X-Served-By") != "web" || resp.Get("X-Color") != "blue" {
		t.Errorf("response headers = %v", resp)
	}
	if name, c := rt.PickCluster(70); name != "outbound|80|green|web.default.svc.cluster.local" || rt.UpstreamHost(c) != "green.web" {
		t.Errorf("split rnd 70 = %s host %q", name, rt.UpstreamHost(c))
	}

	rt = mustMatch(t, tb, req("/policies"))
	if rt.Timeout != 5*time.Second || rt.Retry.NumRetries != 4 || rt.Retry.PerTryTimeout != 2*time.Second {
		t.Errorf("timeouts/retries = %v %+v", rt.Timeout, rt.Retry)
	}
	want := Retry5xx | RetryGatewayError | RetryReset | RetryConnectFailure | RetryRetriable4xx | RetryRefusedStream |
		RetryRetriableStatusCodes | RetryGRPCCancelled | RetryGRPCDeadlineExceeded
	if rt.Retry.RetryOn != want || !rt.Retry.RetriableStatus(409) || !rt.Retry.RetriableGRPC(4) || rt.Retry.RetriableGRPC(14) {
		t.Errorf("retry on = %b, want %b", rt.Retry.RetryOn, want)
	}
	if len(rt.Mirrors) != 3 || rt.Mirrors[0].Fraction != (Fraction{255000, 1_000_000}) || rt.Mirrors[2].Fraction != (Fraction{1_000_000, 1_000_000}) {
		t.Errorf("mirrors = %+v", rt.Mirrors)
	}
	if ph, ok := rt.CORS.Preflight("https://a.example.org", "POST", "x-custom"); !ok ||
		ph.Get("Access-Control-Allow-Origin") != "https://a.example.org" || ph.Get("Access-Control-Max-Age") != "86400" ||
		ph.Get("Access-Control-Allow-Credentials") != "true" || ph.Get("Access-Control-Allow-Methods") != "GET,POST" {
		t.Errorf("preflight = %v %v", ph, ok)
	}
	if _, ok := rt.CORS.Preflight("https://evil.com", "POST", ""); ok || rt.CORS.ForwardNotMatchingPreflights {
		t.Errorf("preflight from evil.com allowed, or forwarded")
	}
	if rh, ok := rt.CORS.ResponseHeaders("https://example.com"); !ok || rh.Get("Access-Control-Expose-Headers") != "x-expose" {
		t.Errorf("simple = %v %v", rh, ok)
	}

	rt = mustMatch(t, tb, req("/noretry"))
	if rt.Retry != nil {
		t.Errorf("noretry has retry %+v", rt.Retry)
	}
	rt = mustMatch(t, tb, req("/grpc"))
	if rt.Fault.Delay != time.Second || rt.Fault.DelayFraction != (Fraction{5000, 1_000_000}) || rt.Fault.AbortGRPC != 14 {
		t.Errorf("grpc fault = %+v", rt.Fault)
	}
	if !rt.Retry.RetryOn.Has(RetryGRPCUnavailable|RetryGRPCResourceExhausted) || !rt.Retry.RetriableGRPC(8) {
		t.Errorf("grpc retry = %+v", rt.Retry)
	}
}

func TestGoldenHashPolicy(t *testing.T) {
	tb := goldenTable(t, "hash-policy.json", "9080")
	rt := mustMatch(t, tb, &Request{Method: "GET", Host: "ratings", Path: "/"})
	a, okA := rt.HashKey(&Request{Headers: http.Header{"X-User": {"alice"}}})
	a2, _ := rt.HashKey(&Request{Headers: http.Header{"X-User": {"alice"}}})
	b, _ := rt.HashKey(&Request{Headers: http.Header{"X-User": {"bob"}}})
	if !okA || a != a2 || a == b {
		t.Errorf("hash alice=%x/%x bob=%x ok=%v", a, a2, b, okA)
	}
	if _, ok := rt.HashKey(&Request{Headers: http.Header{}}); ok {
		t.Error("hash without the header")
	}
	if rt.Retry.AvoidPreviousHosts {
		t.Error("hashed route avoids previous hosts")
	}
}

func TestGoldenRegistryOnly(t *testing.T) {
	tb := goldenTable(t, "registry-only.json", "9080")
	rt, vh, ok := tb.Match(&Request{Method: "GET", Host: "unknown.example.com", Path: "/x"})
	if !ok || vh.Name != "block_all" || rt.Action != ActionDirectResponse || rt.DirectResponse.Status != 502 {
		t.Fatalf("unknown host = %v %v", vh, rt)
	}
}
