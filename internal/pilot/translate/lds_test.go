package translate

import (
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// The golden cases (testdata/lds/<case>.yaml → .json; go test -update
// rewrites the goldens). Each test also checks the facts that matter in
// code, so a wrong golden cannot be accepted unnoticed.

const (
	reviewsHost = "reviews.default.svc.cluster.local"
	ratingsHost = "ratings.default.svc.cluster.local"
	detailsHost = "details.default.svc.cluster.local"
)

// routesOf returns the routes of virtual host "<host>:<port>" in the
// sidecar route configuration of port.
func routesOf(t *testing.T, r *ldsResult, host string, port uint32) []*routev3.Route {
	t.Helper()
	rc := OutboundRouteName(port)
	return r.vhost(t, rc, host+":"+rc).GetRoutes()
}

// hcmOf unpacks the HTTP connection manager of a filter chain.
func hcmOf(t *testing.T, fc *listenerv3.FilterChain) *hcmv3.HttpConnectionManager {
	t.Helper()
	f := fc.GetFilters()[0]
	if f.GetName() != hcmFilterName {
		t.Fatalf("chain %q: filter %q, want the HTTP connection manager", fc.GetName(), f.GetName())
	}
	return ldsUnpack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
}

// tcpProxyOf unpacks the tcp_proxy of a filter chain.
func tcpProxyOf(t *testing.T, fc *listenerv3.FilterChain) *tcpproxyv3.TcpProxy {
	t.Helper()
	f := fc.GetFilters()[0]
	if f.GetName() != tcpProxyFilterName {
		t.Fatalf("chain %q: filter %q, want tcp_proxy", fc.GetName(), f.GetName())
	}
	return ldsUnpack(t, f.GetTypedConfig(), &tcpproxyv3.TcpProxy{})
}

// chainNamed finds a filter chain of l.
func chainNamed(t *testing.T, l *listenerv3.Listener, name string) *listenerv3.FilterChain {
	t.Helper()
	for _, fc := range l.GetFilterChains() {
		if fc.GetName() == name {
			return fc
		}
	}
	t.Fatalf("listener %s has no chain %q", l.GetName(), name)
	return nil
}

// wantDefaultRetry checks Istio's default retry policy.
func wantDefaultRetry(t *testing.T, rp *routev3.RetryPolicy) {
	t.Helper()
	if rp.GetNumRetries().GetValue() != 2 || rp.GetRetryOn() != defaultRetryOn ||
		!slices.Equal(rp.GetRetriableStatusCodes(), []uint32{503}) || len(rp.GetRetryHostPredicate()) != 1 {
		t.Errorf("retry policy = %v, want Istio's default", rp)
	}
}

func TestLDSBookinfoDefault(t *testing.T) {
	r := runLDSCase(t, "bookinfo-default")
	if got := len(r.listeners); got != 3 {
		t.Errorf("%d listeners, want virtualOutbound, virtualInbound, 0.0.0.0_9080", got)
	}
	vo := r.listener(t, VirtualOutboundListener)
	if !vo.GetUseOriginalDst().GetValue() || vo.GetAddress().GetSocketAddress().GetPortValue() != OutboundCapturePort {
		t.Errorf("virtualOutbound = %v", vo)
	}
	if c := tcpProxyOf(t, vo.GetDefaultFilterChain()).GetCluster(); c != PassthroughCluster {
		t.Errorf("virtualOutbound default chain to %q, want %s", c, PassthroughCluster)
	}
	out := r.listener(t, "0.0.0.0_9080")
	if out.GetBindToPort().GetValue() || out.GetBindToPort() == nil {
		t.Errorf("0.0.0.0_9080 must not bind (bind_to_port false)")
	}
	h := hcmOf(t, out.GetFilterChains()[0])
	if h.GetRds().GetRouteConfigName() != "9080" || h.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("HCM rds = %v, want ADS route config 9080", h.GetRds())
	}
	var names []string
	for _, f := range h.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	if want := []string{faultFilterName, corsFilterName, routerFilterName}; !slices.Equal(names, want) {
		t.Errorf("http filters %v, want %v", names, want)
	}
	// The sample's VirtualService is bound to bookinfo-gateway: sidecars
	// route productpage by default.
	pp := routesOf(t, r, "productpage.default.svc.cluster.local", 9080)
	if len(pp) != 1 || pp[0].GetRoute().GetCluster() != OutboundCluster(9080, "", "productpage.default.svc.cluster.local") {
		t.Errorf("productpage routes = %v, want the default route only", pp)
	}
	wantDefaultRetry(t, pp[0].GetRoute().GetRetryPolicy())
	if pp[0].GetRoute().GetTimeout().AsDuration() != 0 {
		t.Errorf("default timeout = %v, want 0 (none)", pp[0].GetRoute().GetTimeout())
	}
	vh := r.vhost(t, "9080", reviewsHost+":9080")
	for _, d := range []string{reviewsHost, reviewsHost + ":9080", "reviews", "reviews:9080", "reviews.default", "10.0.0.13", "10.0.0.13:9080"} {
		if !slices.Contains(vh.GetDomains(), d) {
			t.Errorf("reviews domains %v lack %q", vh.GetDomains(), d)
		}
	}
	in := r.listener(t, VirtualInboundListener)
	fc := chainNamed(t, in, InboundCluster(9080))
	if fc.GetFilterChainMatch().GetDestinationPort().GetValue() != 9080 {
		t.Errorf("inbound chain match = %v", fc.GetFilterChainMatch())
	}
	inRoute := hcmOf(t, fc).GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
	if inRoute.GetRoute().GetCluster() != InboundCluster(9080) {
		t.Errorf("inbound route to %q", inRoute.GetRoute().GetCluster())
	}
	if c := tcpProxyOf(t, in.GetDefaultFilterChain()).GetCluster(); c != InboundPassthroughCluster {
		t.Errorf("inbound passthrough to %q", c)
	}
	if len(r.warnings) != 0 {
		t.Errorf("warnings: %q", r.warnings)
	}
}

func TestLDSReviews8020(t *testing.T) {
	r := runLDSCase(t, "reviews-80-20")
	routes := routesOf(t, r, reviewsHost, 9080)
	if len(routes) != 1 {
		t.Fatalf("%d routes, want 1", len(routes))
	}
	wc := routes[0].GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetName() != OutboundCluster(9080, "v1", reviewsHost) || wc[0].GetWeight().GetValue() != 80 ||
		wc[1].GetName() != OutboundCluster(9080, "v2", reviewsHost) || wc[1].GetWeight().GetValue() != 20 {
		t.Errorf("weighted clusters = %v, want v1 80 / v2 20", wc)
	}
	wantDefaultRetry(t, routes[0].GetRoute().GetRetryPolicy())
}

func TestLDSReviewsJason(t *testing.T) {
	r := runLDSCase(t, "reviews-jason")
	routes := routesOf(t, r, reviewsHost, 9080)
	if len(routes) != 2 {
		t.Fatalf("%d routes, want 2", len(routes))
	}
	h := routes[0].GetMatch().GetHeaders()
	if len(h) != 1 || h[0].GetName() != "end-user" || h[0].GetStringMatch().GetExact() != "jason" {
		t.Errorf("first route headers = %v, want end-user exact jason", h)
	}
	if c := routes[0].GetRoute().GetCluster(); c != OutboundCluster(9080, "v2", reviewsHost) {
		t.Errorf("jason goes to %q", c)
	}
	if c := routes[1].GetRoute().GetCluster(); c != OutboundCluster(9080, "v3", reviewsHost) || !isCatchAll(routes[1].GetMatch()) {
		t.Errorf("second route = %v, want catch-all to v3", routes[1])
	}
}

// faultOf unpacks a route's fault config (nil when it has none).
func faultOf(t *testing.T, r *routev3.Route) *faultv3.HTTPFault {
	t.Helper()
	a, ok := r.GetTypedPerFilterConfig()[faultFilterName]
	if !ok {
		return nil
	}
	return ldsUnpack(t, a, &faultv3.HTTPFault{})
}

func TestLDSFaultAbort(t *testing.T) {
	r := runLDSCase(t, "fault-abort")
	details := routesOf(t, r, detailsHost, 9080)
	if len(details) != 1 {
		t.Fatalf("details: %d routes, want 1 (the second rule is unreachable)", len(details))
	}
	f := faultOf(t, details[0])
	if f.GetAbort().GetHttpStatus() != 555 || f.GetAbort().GetPercentage().GetNumerator() != 1000000 ||
		f.GetAbort().GetPercentage().GetDenominator() != typev3.FractionalPercent_MILLION {
		t.Errorf("details fault = %v, want abort 555 at 100%%", f)
	}
	ratings := routesOf(t, r, ratingsHost, 9080)
	if len(ratings) != 2 {
		t.Fatalf("ratings: %d routes, want 2", len(ratings))
	}
	// abort.percent: 100 (removed from the API) arrives as percentage 100.
	if f := faultOf(t, ratings[0]); f.GetAbort().GetHttpStatus() != 500 || f.GetAbort().GetPercentage().GetNumerator() != 1000000 {
		t.Errorf("ratings jason fault = %v, want abort 500 at 100%%", f)
	}
	if faultOf(t, ratings[1]) != nil {
		t.Errorf("ratings catch-all must not inject faults")
	}
}

func TestLDSFaultDelay(t *testing.T) {
	r := runLDSCase(t, "fault-delay")
	ratings := routesOf(t, r, ratingsHost, 9080)
	f := faultOf(t, ratings[0])
	d := f.GetDelay()
	if d.GetFixedDelay().AsDuration().Seconds() != 7 || d.GetPercentage().GetNumerator() != 100 ||
		d.GetPercentage().GetDenominator() != typev3.FractionalPercent_HUNDRED {
		t.Errorf("delay = %v, want 7s at 100/HUNDRED (deprecated percent)", d)
	}
}

func TestLDSHTTPMatch(t *testing.T) {
	r := runLDSCase(t, "http-match")
	const host = "httpbin.default.svc.cluster.local"
	for _, port := range []uint32{8000, 8080} {
		routes := routesOf(t, r, host, port)
		var names []string
		for _, rt := range routes {
			names = append(names, rt.GetName())
		}
		// "never" (sourceLabels of another workload) and "unreachable"
		// (after the catch-all "rest") are left out.
		if want := []string{"exact.get", "headers", "by-port", "sources", "rest"}; !slices.Equal(names, want) {
			t.Fatalf("port %d routes %v, want %v", port, names, want)
		}
		get := routes[0].GetMatch()
		if get.GetPath() != "/get" || get.GetCaseSensitive().GetValue() || get.GetCaseSensitive() == nil ||
			get.GetHeaders()[0].GetName() != ":method" {
			t.Errorf("exact.get match = %v", get)
		}
		hm := routes[1].GetMatch()
		var inverted []string
		for _, h := range hm.GetHeaders() {
			if h.GetInvertMatch() {
				inverted = append(inverted, h.GetName())
			}
		}
		if !slices.Equal(inverted, []string{"x-debug"}) || len(hm.GetQueryParameters()) != 2 || len(hm.GetHeaders()) != 7 {
			t.Errorf("headers match = %v", hm)
		}
		byPort := routes[2].GetMatch()
		if port == 8000 && byPort.GetSafeRegex().GetRegex() != "/status/[0-9]{3}" ||
			port == 8080 && byPort.GetPrefix() != "/only-8080" {
			t.Errorf("port %d by-port match = %v", port, byPort)
		}
		if p := routes[3].GetMatch().GetPrefix(); p != "/from-productpage" {
			t.Errorf("sources match = %q, want only the entry for this proxy's labels", p)
		}
		// destination.port 8000 wins over the listener port.
		if c := routes[4].GetRoute().GetCluster(); c != OutboundCluster(8000, "", host) {
			t.Errorf("rest goes to %q", c)
		}
		// A multi-port service without destination.port: the listener's port.
		if c := routes[2].GetRoute().GetCluster(); c != OutboundCluster(port, "", host) {
			t.Errorf("by-port goes to %q", c)
		}
	}
}

func TestLDSHTTPActions(t *testing.T) {
	r := runLDSCase(t, "http-actions")
	routes := routesOf(t, r, "web.default.svc.cluster.local", 80)
	byName := map[string][]*routev3.Route{}
	for _, rt := range routes {
		byName[rt.GetName()] = append(byName[rt.GetName()], rt)
	}
	rd := byName["redirect"][0].GetRedirect()
	if rd.GetPathRedirect() != "/new" || rd.GetHostRedirect() != "new.example.com" || rd.GetSchemeRedirect() != "https" ||
		rd.GetPortRedirect() != 8443 || rd.GetResponseCode() != routev3.RedirectAction_FOUND {
		t.Errorf("redirect = %v", rd)
	}
	if p := byName["redirect-derive"][0].GetRedirect().GetPortRedirect(); p != 80 {
		t.Errorf("derivePort FROM_REQUEST_PORT gave port %d, want 80", p)
	}
	if dr := byName["direct"][0].GetDirectResponse(); dr.GetStatus() != 200 || dr.GetBody().GetInlineString() != "ok" {
		t.Errorf("direct response = %v", dr)
	}
	rw := byName["rewrite"]
	if len(rw) != 2 || rw[0].GetRoute().GetPrefixRewrite() != "/v2" || rw[0].GetRoute().GetHostRewriteLiteral() != "backend.internal" ||
		rw[1].GetRoute().GetRegexRewrite().GetSubstitution() != "/v2" || rw[1].GetRoute().GetPrefixRewrite() != "" {
		t.Errorf("rewrite routes = %v, want prefix rewrite for the prefix match and a full-path rewrite for the exact one", rw)
	}
	if rr := byName["regex-rewrite"][0].GetRoute().GetRegexRewrite(); rr.GetPattern().GetRegex() != "^/rx/(.*)$" || rr.GetSubstitution() != `/\1` {
		t.Errorf("uriRegexRewrite = %v", rr)
	}
	split := byName["split"][0]
	wc := split.GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetWeight().GetValue() != 70 || wc[1].GetWeight().GetValue() != 30 ||
		wc[0].GetRequestHeadersToAdd()[0].GetHeader().GetKey() != "x-color" || wc[1].GetHostRewriteLiteral() != "green.web" {
		t.Errorf("split clusters = %v (zero weight dropped, per-destination headers kept)", wc)
	}
	if len(split.GetRequestHeadersToAdd()) != 2 || !slices.Equal(split.GetRequestHeadersToRemove(), []string{"x-drop"}) ||
		!slices.Equal(split.GetResponseHeadersToRemove(), []string{"server"}) {
		t.Errorf("split route headers: add %v remove %v", split.GetRequestHeadersToAdd(), split.GetRequestHeadersToRemove())
	}
	pol := byName["policies"][0]
	ra := pol.GetRoute()
	if ra.GetTimeout().AsDuration().Seconds() != 5 {
		t.Errorf("timeout = %v, want 5s", ra.GetTimeout())
	}
	rp := ra.GetRetryPolicy()
	if rp.GetNumRetries().GetValue() != 4 || rp.GetPerTryTimeout().AsDuration().Seconds() != 2 ||
		rp.GetRetryOn() != "cancelled,deadline-exceeded,5xx,connect-failure,gateway-error,reset,retriable-4xx,refused-stream,retriable-status-codes" ||
		!slices.Equal(rp.GetRetriableStatusCodes(), []uint32{503}) || rp.GetRetryPriority() == nil {
		t.Errorf("retry policy = %v", rp)
	}
	mp := ra.GetRequestMirrorPolicies()
	if len(mp) != 3 || mp[0].GetCluster() != OutboundCluster(80, "shadow", "web.default.svc.cluster.local") ||
		mp[0].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 255000 ||
		mp[1].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 100000 ||
		mp[2].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 1000000 {
		t.Errorf("mirrors = %v", mp)
	}
	cors := ldsUnpack(t, pol.GetTypedPerFilterConfig()[corsFilterName], &corsv3.CorsPolicy{})
	if len(cors.GetAllowOriginStringMatch()) != 2 || cors.GetAllowMethods() != "GET,POST" || cors.GetMaxAge() != "86400" ||
		!cors.GetAllowCredentials().GetValue() || cors.GetForwardNotMatchingPreflights().GetValue() {
		t.Errorf("cors = %v", cors)
	}
	if got := len(pol.GetRequestHeadersToAdd()); got != 2 {
		t.Errorf("policies: %d request headers, want the rule's and the destination's", got)
	}
	nr := byName["no-retries"][0].GetRoute()
	if nr.GetRetryPolicy() != nil || nr.GetTimeout().AsDuration() != 0 {
		t.Errorf("attempts 0 must disable retries: %v", nr.GetRetryPolicy())
	}
	g := byName["grpc"][0]
	if rp := g.GetRoute().GetRetryPolicy(); rp.GetRetryOn() != "unavailable,resource-exhausted" || rp.GetNumRetries().GetValue() != 3 ||
		len(rp.GetRetriableStatusCodes()) != 0 {
		t.Errorf("grpc retry policy = %v", rp)
	}
	f := faultOf(t, g)
	if f.GetAbort().GetGrpcStatus() != 14 || f.GetAbort().GetPercentage().GetNumerator() != 10000 ||
		f.GetDelay().GetPercentage().GetNumerator() != 5000 {
		t.Errorf("grpc fault = %v", f)
	}
}

func TestLDSTCPAndTLS(t *testing.T) {
	r := runLDSCase(t, "tcp-tls")
	l := r.listener(t, "0.0.0.0_3306")
	if l.GetDefaultFilterChain() != nil {
		t.Errorf("3306 has a catch-all chain (legacy-db, no VIP): no default chain expected")
	}
	sub := chainNamed(t, l, "VirtualService/default/mysql|tcp[0]")
	if got := len(sub.GetFilterChainMatch().GetPrefixRanges()); got != 2 || tcpProxyOf(t, sub).GetCluster() != OutboundCluster(3306, "", "mysql-b.default.svc.cluster.local") {
		t.Errorf("destinationSubnets chain = %v", sub)
	}
	w := tcpProxyOf(t, chainNamed(t, l, "VirtualService/default/mysql|tcp[2]"))
	if wc := w.GetWeightedClusters().GetClusters(); len(wc) != 2 || wc[0].GetWeight() != 90 || wc[1].GetWeight() != 10 {
		t.Errorf("weighted tcp route = %v", w)
	}
	// tcp[1] (sourceLabels of another app) does not apply; tcp[3] replaces
	// mysql-a's own chain on its VIP.
	for _, fc := range l.GetFilterChains() {
		if fc.GetName() == "VirtualService/default/mysql|tcp[1]" || fc.GetName() == OutboundCluster(3306, "", "mysql-a.default.svc.cluster.local") {
			t.Errorf("unexpected chain %q", fc.GetName())
		}
	}
	r.wantWarning(t, "port 3306", "old-db.example.com", "legacy-db.example.com")
	r.wantWarning(t, "port 8080", "blob.example.com", "HTTP")

	tls := r.listener(t, "0.0.0.0_443")
	if len(tls.GetListenerFilters()) != 1 || tls.GetListenerFilters()[0].GetName() != tlsInspectorFilterName {
		t.Errorf("443 needs tls_inspector: %v", tls.GetListenerFilters())
	}
	sni := chainNamed(t, tls, "VirtualService/default/secure|tls[0]")
	if !slices.Equal(sni.GetFilterChainMatch().GetServerNames(), []string{"secure.example.com", "www.secure.example.com"}) {
		t.Errorf("tls route chain match = %v", sni.GetFilterChainMatch())
	}
	if api := chainNamed(t, tls, OutboundCluster(443, "", "api.example.com")); !slices.Equal(api.GetFilterChainMatch().GetServerNames(), []string{"api.example.com"}) {
		t.Errorf("TLS service chain matches %v, want its hostname as SNI", api.GetFilterChainMatch())
	}
	if v := chainNamed(t, tls, OutboundCluster(443, "", "vault.default.svc.cluster.local")).GetFilterChainMatch(); len(v.GetServerNames()) != 0 ||
		len(v.GetPrefixRanges()) != 1 {
		t.Errorf("TLS service with a VIP is matched by %v, want its VIP only", v)
	}
	mixed := r.listener(t, "0.0.0.0_8080")
	if len(mixed.GetFilterChains()) != 2 || mixed.GetFilterChains()[0].GetFilterChainMatch() != nil {
		t.Errorf("8080: want the HTTP catch-all and cache's VIP chain, got %d chains", len(mixed.GetFilterChains()))
	}
	if c := r.listener(t, "0.0.0.0_6379"); tcpProxyOf(t, c.GetDefaultFilterChain()).GetCluster() != PassthroughCluster {
		t.Errorf("6379: unknown destinations must pass through")
	}
}

func TestLDSRegistryOnly(t *testing.T) {
	r := runLDSCase(t, "registry-only")
	if c := tcpProxyOf(t, r.listener(t, VirtualOutboundListener).GetDefaultFilterChain()).GetCluster(); c != BlackHoleCluster {
		t.Errorf("virtualOutbound default to %q, want %s", c, BlackHoleCluster)
	}
	if c := tcpProxyOf(t, r.listener(t, "0.0.0.0_3306").GetDefaultFilterChain()).GetCluster(); c != BlackHoleCluster {
		t.Errorf("3306 default to %q, want %s", c, BlackHoleCluster)
	}
	vh := r.vhost(t, "9080", blockAllVirtualHost)
	if vh.GetRoutes()[0].GetDirectResponse().GetStatus() != 502 {
		t.Errorf("block_all = %v", vh)
	}
}

func TestLDSExplicit(t *testing.T) {
	r := runLDSCase(t, "explicit")
	for _, l := range r.listeners {
		if l.GetName() == VirtualOutboundListener || l.GetName() == VirtualInboundListener {
			t.Errorf("explicit mode must not capture: %s", l.GetName())
		}
	}
	e := r.listener(t, "explicit_9080")
	if a := e.GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 9080 || !e.GetBindToPort().GetValue() {
		t.Errorf("explicit_9080 address %v bind %v", a, e.GetBindToPort())
	}
	if hcmOf(t, e.GetFilterChains()[0]).GetRds().GetRouteConfigName() != "9080" {
		t.Errorf("explicit_9080 must use RDS 9080")
	}
	// Both HTTP services share 9080 by Host; the oldest also takes "*".
	if !slices.Contains(r.vhost(t, "9080", reviewsHost+":9080").GetDomains(), "*") {
		t.Errorf("reviews (oldest) should answer any Host")
	}
	r.vhost(t, "9080", ratingsHost+":9080")
	// TCP: mysql-b is older than mysql-a.
	if c := tcpProxyOf(t, r.listener(t, "explicit_3306").GetFilterChains()[0]).GetCluster(); c != OutboundCluster(3306, "", "mysql-b.default.svc.cluster.local") {
		t.Errorf("explicit_3306 to %q, want the oldest service", c)
	}
	r.wantWarning(t, "port 3306", "mysql-a")
	r.wantWarning(t, "explicit mode: port 8080", "cache.default.svc.cluster.local")
	in := r.listener(t, ExplicitInboundListener(15080))
	if a := in.GetAddress().GetSocketAddress(); a.GetAddress() != "10.1.9.1" || a.GetPortValue() != 15080 || !in.GetBindToPort().GetValue() {
		t.Errorf("%s binds %v, want the workload IP 10.1.9.1:15080", in.GetName(), a)
	}
	if in.GetTrafficDirection() != corev3.TrafficDirection_INBOUND {
		t.Errorf("%s direction %v, want INBOUND (reporter destination)", in.GetName(), in.GetTrafficDirection())
	}
	rc := hcmOf(t, in.GetFilterChains()[0]).GetRouteConfig()
	if c := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster(); c != InboundCluster(9080) {
		t.Errorf("%s routes to %q, want %s (the application port)", in.GetName(), c, InboundCluster(9080))
	}
	for _, l := range r.listeners {
		if strings.HasPrefix(l.GetName(), "inbound_") || l.GetName() == ExplicitInboundListener(7070) {
			t.Errorf("unexpected listener %s: inbound ports without a sidecar port are not served", l.GetName())
		}
	}
	r.wantWarning(t, "inbound port 7070 has no sidecar port", "--inbound-ports 7070=")
}

func TestLDSProxyless(t *testing.T) {
	r := runLDSCase(t, "proxyless")
	if len(r.listeners) != 3 || len(r.routes) != 3 {
		t.Fatalf("%d listeners, %d routes; want 3 each (gRPC/HTTP2 ports only)", len(r.listeners), len(r.routes))
	}
	name := ProxylessListenerName(reviewsHost, 9080)
	l := r.listener(t, name)
	h := ldsUnpack(t, l.GetApiListener().GetApiListener(), &hcmv3.HttpConnectionManager{})
	if h.GetRds().GetRouteConfigName() != name || h.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("api listener rds = %v", h.GetRds())
	}
	last := h.GetHttpFilters()[len(h.GetHttpFilters())-1]
	if last.GetName() != routerFilterName || h.GetHttpFilters()[0].GetName() != faultFilterName {
		t.Errorf("reviews injects faults: want [fault, router], got %v", h.GetHttpFilters())
	}
	plain := ldsUnpack(t, r.listener(t, ProxylessListenerName(ratingsHost, 9080)).GetApiListener().GetApiListener(), &hcmv3.HttpConnectionManager{})
	if len(plain.GetHttpFilters()) != 1 {
		t.Errorf("ratings: want [router] only, got %v", plain.GetHttpFilters())
	}
	vh := r.routeConfig(t, name).GetVirtualHosts()[0]
	if !slices.Equal(vh.GetDomains(), []string{name, reviewsHost}) {
		t.Errorf("domains %v", vh.GetDomains())
	}
	if len(vh.GetRoutes()) != 2 {
		t.Fatalf("%d routes, want 2", len(vh.GetRoutes()))
	}
	second := vh.GetRoutes()[1]
	if _, ok := second.GetTypedPerFilterConfig()[corsFilterName]; ok {
		t.Errorf("proxyless routes must not carry CORS")
	}
	if second.GetRoute().GetMaxStreamDuration().GetGrpcTimeoutHeaderMax().AsDuration().Seconds() != 3 ||
		len(second.GetRoute().GetWeightedClusters().GetClusters()) != 2 {
		t.Errorf("second route = %v", second)
	}
}

func TestLDSHashPolicy(t *testing.T) {
	r := runLDSCase(t, "hash-policy")
	rt := routesOf(t, r, ratingsHost, 9080)[0].GetRoute()
	if hp := rt.GetHashPolicy(); len(hp) != 1 || hp[0].GetHeader().GetHeaderName() != "x-user" {
		t.Errorf("ratings hash policy = %v, want header x-user", hp)
	}
	if rt.GetRetryPolicy().GetRetryHostPredicate() != nil {
		t.Errorf("hashed routes must not avoid previous hosts")
	}
	dt := routesOf(t, r, detailsHost, 9080)[0].GetRoute()
	if hp := dt.GetHashPolicy(); len(hp) != 1 || !hp[0].GetConnectionProperties().GetSourceIp() {
		t.Errorf("details default route hash policy = %v, want source IP", hp)
	}
	if hp := routesOf(t, r, reviewsHost, 9080)[0].GetRoute().GetHashPolicy(); hp != nil {
		t.Errorf("reviews has no consistent hash, got %v", hp)
	}
}

func TestLDSVirtualServiceScope(t *testing.T) {
	r := runLDSCase(t, "vs-scope")
	r.wantWarning(t, "VirtualService/default/reviews-v3", "VirtualService/default/reviews", "older")
	r.wantWarning(t, "VirtualService/other/details-shared", "delegate")
	// The older reviews VirtualService (80/20) wins.
	if wc := routesOf(t, r, reviewsHost, 9080)[0].GetRoute().GetWeightedClusters(); len(wc.GetClusters()) != 2 {
		t.Errorf("reviews: want the older 80/20 VirtualService, got %v", wc)
	}
	// Bound to mesh and a gateway, exported from another namespace: applies.
	if c := routesOf(t, r, detailsHost, 9080)[0].GetRoute().GetCluster(); c != OutboundCluster(9080, "v2", detailsHost) {
		t.Errorf("details to %q", c)
	}
	// exportTo "." in another namespace, and gateway-only: do not apply.
	if n := routesOf(t, r, ratingsHost, 9080)[0].GetName(); n != "default" {
		t.Errorf("ratings route %q, want default", n)
	}
	if n := routesOf(t, r, "productpage.default.svc.cluster.local", 9080)[0].GetName(); n != "default" {
		t.Errorf("productpage route %q, want default", n)
	}
	// The wildcard routes www and api; the exact host wins for static.
	for _, h := range []string{"www.example.com", "api.example.com"} {
		rt := routesOf(t, r, h, 80)[0].GetRoute()
		if rt.GetCluster() != OutboundCluster(80, "", "api.example.com") || rt.GetTimeout().AsDuration().Seconds() != 10 {
			t.Errorf("%s: %v, want the wildcard VirtualService", h, rt)
		}
	}
	if s := routesOf(t, r, "static.example.com", 80)[0].GetDirectResponse().GetStatus(); s != 404 {
		t.Errorf("static.example.com direct response %d, want 404", s)
	}
}

func TestRetryPolicyConversion(t *testing.T) {
	if rp := rdsRetryPolicy(nil, false); rp.GetNumRetries().GetValue() != 2 || rp.GetRetryOn() != defaultRetryOn {
		t.Errorf("default policy = %v", rp)
	}
	if rp := rdsRetryPolicy(&networking.HTTPRetry{Attempts: 0, RetryOn: "5xx"}, false); rp != nil {
		t.Errorf("attempts 0 must disable retries, got %v", rp)
	}
	rp := rdsRetryPolicy(&networking.HTTPRetry{Attempts: 3, RetryOn: " 5xx, 502 ,gateway-error,502", RetryIgnorePreviousHosts: wrapperspb.Bool(false)}, false)
	if rp.GetRetryOn() != "5xx,gateway-error,retriable-status-codes" || !slices.Equal(rp.GetRetriableStatusCodes(), []uint32{502}) ||
		rp.GetRetryHostPredicate() != nil {
		t.Errorf("policy = %v", rp)
	}
	if rp := rdsRetryPolicy(nil, true); rp.GetRetryHostPredicate() != nil || rp.GetHostSelectionRetryMaxAttempts() != 0 {
		t.Errorf("hashed route must not avoid previous hosts: %v", rp)
	}
}

func TestFaultWithoutPercentage(t *testing.T) {
	g := &netBuilder{builder: &builder{}, warned: map[string]bool{}}
	vs := &boundVS{cfg: &model.Config{Kind: "VirtualService", Namespace: "default", Name: "f"}}
	f := g.fault(vs, &networking.HTTPFaultInjection{Abort: &networking.HTTPFaultInjection_Abort{
		ErrorType: &networking.HTTPFaultInjection_Abort_HttpStatus{HttpStatus: 503}}})
	if f.GetAbort().GetPercentage().GetNumerator() != 0 {
		t.Errorf("abort without percentage must abort nothing: %v", f)
	}
	if len(g.warnings) != 1 || !strings.Contains(g.warnings[0], "aborts no request") {
		t.Errorf("warnings %q", g.warnings)
	}
	if f := g.fault(vs, &networking.HTTPFaultInjection{Abort: &networking.HTTPFaultInjection_Abort{
		ErrorType: &networking.HTTPFaultInjection_Abort_Http2Error{Http2Error: "x"}}}); f != nil {
		t.Errorf("unsupported abort must be dropped, got %v", f)
	}
}

func TestConfigPath(t *testing.T) {
	p := ConfigPath("destination-rule", "default", "reviews")
	if p != "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews" {
		t.Fatalf("ConfigPath: %s", p)
	}
	if kind, ref, ok := ParseConfigPath(p); !ok || kind != "destination-rule" || ref != "reviews.default" {
		t.Fatalf("ParseConfigPath(%s) = %s %s %v", p, kind, ref, ok)
	}
	for _, bad := range []string{"", "/apis/networking.istio.io/v1/namespaces/default/destination-rule", "/apis/security.istio.io/v1/namespaces/a/b/c", "/apis/networking.istio.io/v1/ns/a/b/c"} {
		if _, _, ok := ParseConfigPath(bad); ok {
			t.Errorf("ParseConfigPath(%q) accepted", bad)
		}
	}
}
