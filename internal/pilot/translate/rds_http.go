package translate

import (
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	networking "istio.io/api/networking/v1alpha3"
)

// Filter names as Envoy registers them; per-route configs are keyed by them.
const (
	faultFilterName = "envoy.filters.http.fault"
	corsFilterName  = "envoy.filters.http.cors"
)

// vsHTTPRoutes turns the HTTP rules of vs into the routes of a virtual host
// on listenerPort (a service's, or a gateway server's), in rule order. Each match entry of a rule is one route
// (entries are ORed); entries that cannot apply to this proxy or port
// (port, sourceLabels, sourceNamespace, gateways) are dropped, and a rule
// whose entries all drop is skipped. A rule without match entries catches
// everything, so the rules after it are unreachable and left out.
func (g *netBuilder) vsHTTPRoutes(vs *boundVS, listenerPort uint32, proxyless bool) []*routev3.Route {
	var out []*routev3.Route
	for i, rule := range vs.spec.GetHttp() {
		if rule.GetDelegate() != nil {
			g.warnOnce("%s: http[%d]: delegate is not supported; rule ignored", vs.cfg.Key(), i)
			continue
		}
		if len(rule.GetMatch()) == 0 {
			out = append(out, g.httpRoute(vs, rule, nil, listenerPort, proxyless))
			return out
		}
		for _, m := range rule.GetMatch() {
			if !g.matchApplies(m, vs.cfg.Namespace, listenerPort) {
				continue
			}
			r := g.httpRoute(vs, rule, m, listenerPort, proxyless)
			out = append(out, r)
			if isCatchAll(r.GetMatch()) {
				return out
			}
		}
	}
	return out
}

// matchApplies reports whether one match entry of a VirtualService in
// namespace vsNS can match traffic from this proxy on listenerPort;
// conditions on the caller are decided here, at translation time, as Istio
// does.
func (g *netBuilder) matchApplies(m *networking.HTTPMatchRequest, vsNS string, listenerPort uint32) bool {
	return g.l4Applies(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), vsNS, listenerPort)
}

// isCatchAll reports whether a route match matches every request.
func isCatchAll(m *routev3.RouteMatch) bool {
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 {
		return false
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		return p.Prefix == "/"
	case *routev3.RouteMatch_SafeRegex:
		return p.SafeRegex.GetRegex() == ".*" || p.SafeRegex.GetRegex() == "/.*"
	}
	return false
}

// httpRoute builds the route of one rule for one match entry (nil: the
// rule has none).
func (g *netBuilder) httpRoute(vs *boundVS, rule *networking.HTTPRoute, m *networking.HTTPMatchRequest, listenerPort uint32, proxyless bool) *routev3.Route {
	name := rule.GetName()
	if m.GetName() != "" {
		if name != "" {
			name += "."
		}
		name += m.GetName()
	}
	out := &routev3.Route{Name: name, Match: routeMatch(m), Metadata: configMetadata("virtual-service", vs.cfg.Namespace, vs.cfg.Name)}
	reqAdd, reqRemove, hostRewrite := g.headerOps(vs, rule.GetHeaders().GetRequest(), true)
	out.RequestHeadersToAdd, out.RequestHeadersToRemove = reqAdd, reqRemove
	out.ResponseHeadersToAdd, out.ResponseHeadersToRemove, _ = g.headerOps(vs, rule.GetHeaders().GetResponse(), false)

	switch {
	case rule.GetRedirect() != nil:
		out.Action = &routev3.Route_Redirect{Redirect: g.redirect(vs, rule.GetRedirect(), listenerPort)}
	case rule.GetDirectResponse() != nil:
		out.Action = &routev3.Route_DirectResponse{DirectResponse: directResponse(rule.GetDirectResponse())}
	default:
		action := g.routeAction(vs, rule, m, listenerPort, out)
		if hostRewrite != "" {
			action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: hostRewrite}
		}
		out.Action = &routev3.Route_Route{Route: action}
	}
	if f := g.fault(vs, rule.GetFault()); f != nil {
		setPerFilterConfig(out, faultFilterName, f)
	}
	if c := rule.GetCorsPolicy(); c != nil && !proxyless {
		setPerFilterConfig(out, corsFilterName, corsPolicy(c))
	}
	return out
}

// setPerFilterConfig attaches a filter's per-route config to r.
func setPerFilterConfig(r *routev3.Route, filter string, cfg anyMessage) {
	if r.TypedPerFilterConfig == nil {
		r.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	r.TypedPerFilterConfig[filter] = ldsAny(cfg)
}

// routeAction forwards to the rule's destinations with its rewrite,
// timeout, retries, mirrors and the destinations' consistent hash. Headers
// of a single destination are merged into route (r); those of weighted
// destinations stay with their cluster.
func (g *netBuilder) routeAction(vs *boundVS, rule *networking.HTTPRoute, m *networking.HTTPMatchRequest, listenerPort uint32, r *routev3.Route) *routev3.RouteAction {
	action := &routev3.RouteAction{}
	type weighted struct {
		d       routeDest
		weight  uint32
		headers *networking.Headers
	}
	var dests []weighted
	var total uint32
	for _, rd := range rule.GetRoute() {
		if rd.GetWeight() == 0 && len(rule.GetRoute()) > 1 {
			continue // Istio ignores zero weights next to others
		}
		w := uint32(max(rd.GetWeight(), 0))
		total += w
		dests = append(dests, weighted{d: g.resolveDestination(vs, rd.GetDestination(), listenerPort), weight: w, headers: rd.GetHeaders()})
	}
	switch {
	case len(dests) == 0:
		g.warnOnce("%s: an http rule has no route, redirect or directResponse; it answers 503", vs.cfg.Key())
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: BlackHoleCluster}
	case len(dests) == 1:
		d := dests[0]
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: d.d.cluster}
		action.HashPolicy = g.hashPolicy(d.d.host, d.d.port, d.d.subset)
		add, remove, host := g.headerOps(vs, d.headers.GetRequest(), true)
		r.RequestHeadersToAdd = append(r.RequestHeadersToAdd, add...)
		r.RequestHeadersToRemove = append(r.RequestHeadersToRemove, remove...)
		add, remove, _ = g.headerOps(vs, d.headers.GetResponse(), false)
		r.ResponseHeadersToAdd = append(r.ResponseHeadersToAdd, add...)
		r.ResponseHeadersToRemove = append(r.ResponseHeadersToRemove, remove...)
		if host != "" {
			action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: host}
		}
	default:
		wc := &routev3.WeightedCluster{}
		for _, d := range dests {
			w := d.weight
			if total == 0 {
				w = 1 // no weights given: split evenly
			}
			cw := &routev3.WeightedCluster_ClusterWeight{Name: d.d.cluster, Weight: ldsUint32(w)}
			var host string
			cw.RequestHeadersToAdd, cw.RequestHeadersToRemove, host = g.headerOps(vs, d.headers.GetRequest(), true)
			if host != "" {
				cw.HostRewriteSpecifier = &routev3.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: host}
			}
			cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove, _ = g.headerOps(vs, d.headers.GetResponse(), false)
			wc.Clusters = append(wc.Clusters, cw)
			// The first destination with a consistent hash decides the
			// route's hash policy (Envoy has one per route).
			if action.HashPolicy == nil {
				action.HashPolicy = g.hashPolicy(d.d.host, d.d.port, d.d.subset)
			}
		}
		action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	rewriteURI(action, rule.GetRewrite(), m)
	if a := rule.GetRewrite().GetAuthority(); a != "" {
		action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: a}
	}
	rdsSetTimeout(action, rule)
	action.RetryPolicy = rdsRetryPolicy(rule.GetRetries(), len(action.HashPolicy) > 0)
	action.RequestMirrorPolicies = g.mirrors(vs, rule, listenerPort)
	return action
}

// rewriteURI applies rewrite.uri or rewrite.uriRegexRewrite. A uri rewrite
// replaces the matched prefix for prefix matches (and for rules without a
// uri match, whose prefix is "/"); for exact and regex matches it replaces
// the whole path.
func rewriteURI(action *routev3.RouteAction, rw *networking.HTTPRewrite, m *networking.HTTPMatchRequest) {
	if rr := rw.GetUriRegexRewrite(); rr != nil {
		action.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern: &matcherv3.RegexMatcher{Regex: rr.GetMatch()}, Substitution: rr.GetRewrite()}
		return
	}
	uri := rw.GetUri()
	if uri == "" {
		return
	}
	switch m.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact, *networking.StringMatch_Regex:
		action.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern: &matcherv3.RegexMatcher{Regex: "^.*$"}, Substitution: uri}
	default:
		action.PrefixRewrite = uri
	}
}

// rdsSetTimeout applies the rule's timeout; Istio's default is none (0), and
// gRPC clients get the same bound through max_stream_duration.
func rdsSetTimeout(action *routev3.RouteAction, rule *networking.HTTPRoute) {
	d := ldsDuration(0)
	if t := rule.GetTimeout(); t != nil {
		d = ldsDuration(t.AsDuration())
	}
	action.Timeout = d
	action.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{
		MaxStreamDuration: ldsDuration(d.AsDuration()), GrpcTimeoutHeaderMax: ldsDuration(d.AsDuration())}
}

// routeMatch converts one Istio match entry (nil: match everything).
func routeMatch(m *networking.HTTPMatchRequest) *routev3.RouteMatch {
	out := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if m == nil {
		return out
	}
	switch u := m.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: u.Exact}
	case *networking.StringMatch_Prefix:
		out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: u.Prefix}
	case *networking.StringMatch_Regex:
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: u.Regex}}
	}
	if m.GetIgnoreUriCase() {
		out.CaseSensitive = ldsBool(false)
	}
	if s := m.GetScheme(); s != nil {
		out.Headers = append(out.Headers, headerMatcher(":scheme", s, false))
	}
	if s := m.GetMethod(); s != nil {
		out.Headers = append(out.Headers, headerMatcher(":method", s, false))
	}
	if s := m.GetAuthority(); s != nil {
		out.Headers = append(out.Headers, headerMatcher(":authority", s, false))
	}
	for _, k := range rdsSortedKeys(m.GetHeaders()) {
		out.Headers = append(out.Headers, headerMatcher(k, m.GetHeaders()[k], false))
	}
	for _, k := range rdsSortedKeys(m.GetWithoutHeaders()) {
		out.Headers = append(out.Headers, headerMatcher(k, m.GetWithoutHeaders()[k], true))
	}
	for _, k := range rdsSortedKeys(m.GetQueryParams()) {
		out.QueryParameters = append(out.QueryParameters, queryMatcher(k, m.GetQueryParams()[k]))
	}
	return out
}

// rdsStringMatcher converts an Istio StringMatch; nil when it matches
// anything (no match type, or an empty prefix).
func rdsStringMatcher(s *networking.StringMatch) *matcherv3.StringMatcher {
	switch t := s.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: t.Exact}}
	case *networking.StringMatch_Prefix:
		if t.Prefix == "" {
			return nil
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: t.Prefix}}
	case *networking.StringMatch_Regex:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
			SafeRegex: &matcherv3.RegexMatcher{Regex: t.Regex}}}
	}
	return nil
}

// headerMatcher matches one header; an empty match means "present".
// invert implements withoutHeaders.
func headerMatcher(name string, s *networking.StringMatch, invert bool) *routev3.HeaderMatcher {
	h := &routev3.HeaderMatcher{Name: name, InvertMatch: invert}
	if sm := rdsStringMatcher(s); sm != nil {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: sm}
	} else {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return h
}

// queryMatcher matches one query parameter; an empty match means "present".
func queryMatcher(name string, s *networking.StringMatch) *routev3.QueryParameterMatcher {
	q := &routev3.QueryParameterMatcher{Name: name}
	if sm := rdsStringMatcher(s); sm != nil {
		q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}
	} else {
		q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
	}
	return q
}

// redirectCodes maps Istio's redirectCode to Envoy's enum.
var redirectCodes = map[uint32]routev3.RedirectAction_RedirectResponseCode{
	0:   routev3.RedirectAction_MOVED_PERMANENTLY,
	301: routev3.RedirectAction_MOVED_PERMANENTLY,
	302: routev3.RedirectAction_FOUND,
	303: routev3.RedirectAction_SEE_OTHER,
	307: routev3.RedirectAction_TEMPORARY_REDIRECT,
	308: routev3.RedirectAction_PERMANENT_REDIRECT,
}

// redirect converts an HTTP redirect. derivePort FROM_REQUEST_PORT keeps
// the port the request came in on; the default leaves the scheme's port.
func (g *netBuilder) redirect(vs *boundVS, r *networking.HTTPRedirect, listenerPort uint32) *routev3.RedirectAction {
	out := &routev3.RedirectAction{HostRedirect: r.GetAuthority()}
	switch {
	case r.GetUri() != "":
		out.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: r.GetUri()}
	case r.GetPrefixRewrite() != "":
		out.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: r.GetPrefixRewrite()}
	}
	if s := r.GetScheme(); s != "" {
		out.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: s}
	}
	switch p := r.GetRedirectPort().(type) {
	case *networking.HTTPRedirect_Port:
		out.PortRedirect = p.Port
	case *networking.HTTPRedirect_DerivePort:
		if p.DerivePort == networking.HTTPRedirect_FROM_REQUEST_PORT {
			out.PortRedirect = listenerPort
		}
	}
	code, ok := redirectCodes[r.GetRedirectCode()]
	if !ok {
		g.warnOnce("%s: redirectCode %d is not a redirect status; using 301", vs.cfg.Key(), r.GetRedirectCode())
	}
	out.ResponseCode = code
	return out
}

// directResponse converts an HTTP direct response.
func directResponse(d *networking.HTTPDirectResponse) *routev3.DirectResponseAction {
	out := &routev3.DirectResponseAction{Status: d.GetStatus()}
	switch b := d.GetBody().GetSpecifier().(type) {
	case *networking.HTTPBody_String_:
		out.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: b.String_}}
	case *networking.HTTPBody_Bytes:
		out.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b.Bytes}}
	}
	return out
}

// headerOps converts one set of header operations. For request headers,
// setting Host (or :authority) becomes a host rewrite, returned separately;
// other pseudo-headers cannot be changed and are reported.
func (g *netBuilder) headerOps(vs *boundVS, ops *networking.Headers_HeaderOperations, request bool) (add []*corev3.HeaderValueOption, remove []string, host string) {
	if ops == nil {
		return nil, nil, ""
	}
	settable := func(k string) bool {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, ":") || lk == "host" {
			g.warnOnce("%s: header %s cannot be changed; ignored", vs.cfg.Key(), k)
			return false
		}
		return true
	}
	for _, k := range rdsSortedKeys(ops.GetSet()) {
		if lk := strings.ToLower(k); request && (lk == "host" || lk == ":authority") {
			host = ops.GetSet()[k]
			continue
		}
		if settable(k) {
			add = append(add, rdsHeaderValue(k, ops.GetSet()[k], false))
		}
	}
	for _, k := range rdsSortedKeys(ops.GetAdd()) {
		if settable(k) {
			add = append(add, rdsHeaderValue(k, ops.GetAdd()[k], true))
		}
	}
	for _, k := range ops.GetRemove() {
		if settable(k) {
			remove = append(remove, k)
		}
	}
	return add, remove, host
}

// rdsSortedKeys returns a map's keys in order (maps iterate randomly).
func rdsSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
