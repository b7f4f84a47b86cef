package route

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// ActionKind is what a route does with a request.
type ActionKind uint8

const (
	// ActionCluster forwards to one cluster (Route.Clusters[0]).
	ActionCluster ActionKind = iota + 1
	// ActionWeightedClusters forwards to one of Route.Clusters by weight.
	ActionWeightedClusters
	// ActionRedirect answers with a redirect (Route.RedirectFor).
	ActionRedirect
	// ActionDirectResponse answers with Route.DirectResponse.
	ActionDirectResponse
)

// String names the kind.
func (k ActionKind) String() string {
	switch k {
	case ActionCluster:
		return "cluster"
	case ActionWeightedClusters:
		return "weighted_clusters"
	case ActionRedirect:
		return "redirect"
	case ActionDirectResponse:
		return "direct_response"
	}
	return "unknown"
}

// DefaultTimeout is Envoy's route timeout when the route sets none.
const DefaultTimeout = 15 * time.Second

// Cluster is an upstream cluster a route forwards to, with the header
// operations and host rewrite of its weighted-cluster entry.
type Cluster struct {
	Name string
	// Weight is the entry's weight (0 for a plain cluster route).
	Weight uint32
	// RequestHeaders and ResponseHeaders are this entry's operations.
	RequestHeaders, ResponseHeaders HeaderOps
	// HostRewrite, when set, overrides Route.HostRewrite.
	HostRewrite string
}

// StreamDuration bounds a whole stream (RouteAction.max_stream_duration).
type StreamDuration struct {
	// Max bounds the stream; 0 means no bound.
	Max time.Duration
	// UseGRPCTimeout: a gRPC request's grpc-timeout header sets the bound,
	// capped at GRPCTimeoutMax (0: uncapped) and reduced by GRPCTimeoutOffset.
	UseGRPCTimeout    bool
	GRPCTimeoutMax    time.Duration
	GRPCTimeoutOffset time.Duration
}

// DirectResponse is the answer of an ActionDirectResponse route.
type DirectResponse struct {
	Status int
	Body   []byte
}

// Route is a compiled route. It is immutable; read its fields freely.
type Route struct {
	// Name is the route's name (may be empty).
	Name string
	// Action is what the route does.
	Action ActionKind
	// Clusters: one entry for ActionCluster, the weighted entries (in
	// order) for ActionWeightedClusters; nil otherwise.
	Clusters []Cluster
	// ClusterNotFoundStatus answers requests whose cluster is unknown
	// (503 by default, or 404 / 500).
	ClusterNotFoundStatus int
	// HostRewrite replaces the Host header upstream when non-empty.
	HostRewrite string
	// Timeout bounds the whole upstream exchange including retries;
	// 0 means none. DefaultTimeout when the route sets none.
	Timeout time.Duration
	// StreamDuration bounds streams (max_stream_duration).
	StreamDuration StreamDuration
	// Retry is the retry policy (the route's, else its virtual host's);
	// nil means no retries.
	Retry *RetryPolicy
	// Fault is the fault injection for the route (route, virtual host or
	// route configuration level, most specific wins); nil means none.
	Fault *Fault
	// CORS is the CORS policy, inherited like Fault; nil means none.
	CORS *CORS
	// Mirrors are the clusters requests are shadowed to.
	Mirrors []Mirror
	// HashPolicies compute the consistent-hash key (HashKey).
	HashPolicies []HashPolicy
	// DirectResponse is set for ActionDirectResponse.
	DirectResponse *DirectResponse
	// RequestHeaders and ResponseHeaders are the route level's operations;
	// use ApplyRequestHeaders / ApplyResponseHeaders for all levels.
	RequestHeaders, ResponseHeaders HeaderOps

	vh               *VirtualHost
	match            routeMatch
	totalWeight      uint64
	hasPrefixRewrite bool
	prefixRewrite    string
	regexRewrite     *regexp.Regexp
	regexSub         string
	redirect         *redirect
}

// VirtualHost returns the virtual host the route belongs to.
func (rt *Route) VirtualHost() *VirtualHost { return rt.vh }

// PickCluster chooses the cluster for a request: the only one, or by
// weight with rnd (uniform random) as Envoy does: rnd % total weight picks
// the entry whose cumulative weight range holds it. It returns "" and nil
// for redirect and direct-response routes. c is shared: do not modify it.
func (rt *Route) PickCluster(rnd uint32) (name string, c *Cluster) {
	switch len(rt.Clusters) {
	case 0:
		return "", nil
	case 1:
		return rt.Clusters[0].Name, &rt.Clusters[0]
	}
	n := uint64(rnd) % rt.totalWeight
	for i := range rt.Clusters {
		w := uint64(rt.Clusters[i].Weight)
		if n < w {
			return rt.Clusters[i].Name, &rt.Clusters[i]
		}
		n -= w
	}
	last := &rt.Clusters[len(rt.Clusters)-1]
	return last.Name, last // unreachable: weights sum to totalWeight
}

// UpstreamHost returns the Host to send upstream for the picked cluster c
// (nil allowed): c's host rewrite, else the route's, else "" (keep).
func (rt *Route) UpstreamHost(c *Cluster) string {
	if c != nil && c.HostRewrite != "" {
		return c.HostRewrite
	}
	return rt.HostRewrite
}

// ApplyRequestHeaders performs the request header operations of every level
// on h for the picked cluster c (nil allowed). As in Envoy, levels run from
// most to least specific (weighted cluster, route, virtual host, route
// configuration), so a less specific overwrite wins, unless the table has
// MostSpecificHeaderMutationsWins, which reverses the order.
func (rt *Route) ApplyRequestHeaders(h http.Header, c *Cluster) {
	var co *HeaderOps
	if c != nil {
		co = &c.RequestHeaders
	}
	rt.applyLevels(h, co, &rt.RequestHeaders, &rt.vh.RequestHeaders, &rt.vh.table.RequestHeaders)
}

// ApplyResponseHeaders is ApplyRequestHeaders for response headers.
func (rt *Route) ApplyResponseHeaders(h http.Header, c *Cluster) {
	var co *HeaderOps
	if c != nil {
		co = &c.ResponseHeaders
	}
	rt.applyLevels(h, co, &rt.ResponseHeaders, &rt.vh.ResponseHeaders, &rt.vh.table.ResponseHeaders)
}

// applyLevels applies the levels most specific first (or reversed).
func (rt *Route) applyLevels(h http.Header, levels ...*HeaderOps) {
	if rt.vh.table.MostSpecificHeaderMutationsWins {
		for i := len(levels) - 1; i >= 0; i-- {
			levels[i].Apply(h)
		}
		return
	}
	for _, l := range levels {
		l.Apply(h)
	}
}

// RewritePath returns the upstream request target for the raw target p
// (path and query): prefix_rewrite replaces the matched prefix (the whole
// path for exact and regex matches), regex_rewrite substitutes every match
// in the path; the query is kept. p itself when the route rewrites nothing.
func (rt *Route) RewritePath(p string) string {
	if !rt.hasPrefixRewrite && rt.regexRewrite == nil {
		return p
	}
	i := strings.IndexByte(p, '?')
	if i < 0 {
		return rt.rewrite(p)
	}
	return rt.rewrite(p[:i]) + p[i:]
}

// rewrite applies the route's rewrite to a path without query.
func (rt *Route) rewrite(path string) string {
	if rt.regexRewrite != nil {
		return rt.regexRewrite.ReplaceAllString(path, rt.regexSub)
	}
	if rt.match.kind == pathPrefix && len(path) >= len(rt.match.value) {
		return rt.prefixRewrite + path[len(rt.match.value):]
	}
	return rt.prefixRewrite
}

// compileVirtualHost compiles one virtual host and its routes.
func compileVirtualHost(t *Table, pvh *routev3.VirtualHost, parent filterConfigs, maxBody uint32) (*VirtualHost, error) {
	if err := checkFields(pvh, "virtual host"); err != nil {
		return nil, err
	}
	vh := &VirtualHost{
		Name:                          pvh.GetName(),
		IncludeRequestAttemptCount:    pvh.GetIncludeRequestAttemptCount(),
		IncludeAttemptCountInResponse: pvh.GetIncludeAttemptCountInResponse(),
		table:                         t,
	}
	if len(pvh.GetDomains()) == 0 {
		return nil, errors.New("at least one domain is required")
	}
	switch rt := pvh.GetRequireTls(); rt {
	case routev3.VirtualHost_NONE:
	case routev3.VirtualHost_ALL:
		vh.RequireTLS = true
		vh.tlsRedirect = &Route{Action: ActionRedirect, vh: vh, redirect: &redirect{toHTTPS: true, code: http.StatusMovedPermanently}}
	default:
		// EXTERNAL_ONLY exempts requests with x-envoy-internal, a header
		// weft-proxy neither sets nor sanitises.
		return nil, fmt.Errorf("require_tls %v: %w (NONE or ALL)", rt, ErrUnsupported)
	}
	for _, d := range pvh.GetDomains() {
		vh.Domains = append(vh.Domains, strings.ToLower(d))
	}
	var err error
	if vh.RequestHeaders, err = compileHeaderOps(pvh.GetRequestHeadersToAdd(), pvh.GetRequestHeadersToRemove(), true); err != nil {
		return nil, fmt.Errorf("request headers: %w", err)
	}
	if vh.ResponseHeaders, err = compileHeaderOps(pvh.GetResponseHeadersToAdd(), pvh.GetResponseHeadersToRemove(), false); err != nil {
		return nil, fmt.Errorf("response headers: %w", err)
	}
	filters, err := compileFilterConfigs(pvh.GetTypedPerFilterConfig(), &parent)
	if err != nil {
		return nil, fmt.Errorf("typed_per_filter_config: %w", err)
	}
	retry, err := compileRetry(pvh.GetRetryPolicy())
	if err != nil {
		return nil, fmt.Errorf("retry_policy: %w", err)
	}
	mirrors, err := compileMirrors(pvh.GetRequestMirrorPolicies())
	if err != nil {
		return nil, err
	}
	inherit := inherited{filters: filters, retry: retry, mirrors: mirrors, maxBody: maxBody}
	for i, pr := range pvh.GetRoutes() {
		rt, err := compileRoute(vh, pr, inherit)
		if err != nil {
			return nil, fmt.Errorf("route %q (#%d): %w", pr.GetName(), i, err)
		}
		vh.Routes = append(vh.Routes, rt)
	}
	return vh, nil
}

// inherited is what routes take from their virtual host.
type inherited struct {
	filters filterConfigs
	retry   *RetryPolicy
	mirrors []Mirror
	maxBody uint32
}

// compileRoute compiles one route.
func compileRoute(vh *VirtualHost, pr *routev3.Route, in inherited) (*Route, error) {
	if err := checkFields(pr, "route"); err != nil {
		return nil, err
	}
	rt := &Route{Name: pr.GetName(), vh: vh}
	var err error
	if rt.match, err = compileRouteMatch(pr.GetMatch()); err != nil {
		return nil, err
	}
	if rt.RequestHeaders, err = compileHeaderOps(pr.GetRequestHeadersToAdd(), pr.GetRequestHeadersToRemove(), true); err != nil {
		return nil, fmt.Errorf("request headers: %w", err)
	}
	if rt.ResponseHeaders, err = compileHeaderOps(pr.GetResponseHeadersToAdd(), pr.GetResponseHeadersToRemove(), false); err != nil {
		return nil, fmt.Errorf("response headers: %w", err)
	}
	filters, err := compileFilterConfigs(pr.GetTypedPerFilterConfig(), &in.filters)
	if err != nil {
		return nil, fmt.Errorf("typed_per_filter_config: %w", err)
	}
	rt.Fault, rt.CORS = filters.fault, filters.cors
	switch a := pr.GetAction().(type) {
	case *routev3.Route_Route:
		err = compileRouteAction(rt, a.Route, in)
	case *routev3.Route_Redirect:
		rt.Action = ActionRedirect
		rt.redirect, err = compileRedirect(a.Redirect)
	case *routev3.Route_DirectResponse:
		rt.Action = ActionDirectResponse
		rt.DirectResponse, err = compileDirectResponse(a.DirectResponse, in.maxBody)
	case nil:
		err = errors.New("an action (route, redirect or direct_response) is required")
	default:
		err = fmt.Errorf("action %T: %w", a, ErrUnsupported)
	}
	return rt, err
}

// clusterNotFound maps cluster_not_found_response_code to a status.
var clusterNotFound = map[routev3.RouteAction_ClusterNotFoundResponseCode]int{
	routev3.RouteAction_SERVICE_UNAVAILABLE:   http.StatusServiceUnavailable,
	routev3.RouteAction_NOT_FOUND:             http.StatusNotFound,
	routev3.RouteAction_INTERNAL_SERVER_ERROR: http.StatusInternalServerError,
}

// compileRouteAction compiles a forwarding action into rt.
func compileRouteAction(rt *Route, a *routev3.RouteAction, in inherited) error {
	if err := checkFields(a, "route action"); err != nil {
		return err
	}
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return errors.New("route.cluster is empty")
		}
		rt.Action, rt.Clusters = ActionCluster, []Cluster{{Name: cs.Cluster}}
	case *routev3.RouteAction_WeightedClusters:
		rt.Action = ActionWeightedClusters
		if err := compileWeighted(rt, cs.WeightedClusters); err != nil {
			return fmt.Errorf("route.weighted_clusters: %w", err)
		}
	case nil:
		return errors.New("route: a cluster specifier is required")
	default:
		return fmt.Errorf("route: cluster specifier %T: %w", cs, ErrUnsupported)
	}
	code, ok := clusterNotFound[a.GetClusterNotFoundResponseCode()]
	if !ok {
		return fmt.Errorf("cluster_not_found_response_code %v: %w", a.GetClusterNotFoundResponseCode(), ErrUnsupported)
	}
	rt.ClusterNotFoundStatus = code
	if a.GetPrefixRewrite() != "" && a.GetRegexRewrite() != nil {
		return errors.New("prefix_rewrite and regex_rewrite are exclusive")
	}
	if p := a.GetPrefixRewrite(); p != "" {
		rt.hasPrefixRewrite, rt.prefixRewrite = true, p
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		var err error
		if rt.regexRewrite, rt.regexSub, err = compileRegexRewrite(rr); err != nil {
			return fmt.Errorf("regex_rewrite: %w", err)
		}
	}
	rt.HostRewrite = a.GetHostRewriteLiteral()
	rt.Timeout = DefaultTimeout
	if d := a.GetTimeout(); d != nil {
		rt.Timeout = d.AsDuration()
	}
	if m := a.GetMaxStreamDuration(); m != nil {
		if err := checkFields(m, "max_stream_duration"); err != nil {
			return err
		}
		rt.StreamDuration = StreamDuration{
			Max:               m.GetMaxStreamDuration().AsDuration(),
			UseGRPCTimeout:    m.GetGrpcTimeoutHeaderMax() != nil,
			GRPCTimeoutMax:    m.GetGrpcTimeoutHeaderMax().AsDuration(),
			GRPCTimeoutOffset: m.GetGrpcTimeoutHeaderOffset().AsDuration(),
		}
	}
	var err error
	rt.Retry = in.retry
	if a.GetRetryPolicy() != nil {
		if rt.Retry, err = compileRetry(a.GetRetryPolicy()); err != nil {
			return fmt.Errorf("retry_policy: %w", err)
		}
	}
	rt.Mirrors = in.mirrors
	if len(a.GetRequestMirrorPolicies()) > 0 {
		if rt.Mirrors, err = compileMirrors(a.GetRequestMirrorPolicies()); err != nil {
			return err
		}
	}
	for i, hp := range a.GetHashPolicy() {
		p, err := compileHashPolicy(hp)
		if err != nil {
			return fmt.Errorf("hash_policy[%d]: %w", i, err)
		}
		rt.HashPolicies = append(rt.HashPolicies, p)
	}
	return nil
}

// compileWeighted compiles weighted clusters into rt.
func compileWeighted(rt *Route, wc *routev3.WeightedCluster) error {
	if err := checkFields(wc, "weighted_clusters"); err != nil {
		return err
	}
	if len(wc.GetClusters()) == 0 {
		return errors.New("no clusters")
	}
	for i, cw := range wc.GetClusters() {
		if err := checkFields(cw, "cluster weight"); err != nil {
			return fmt.Errorf("clusters[%d]: %w", i, err)
		}
		if cw.GetName() == "" {
			return fmt.Errorf("clusters[%d]: name is required", i)
		}
		c := Cluster{Name: cw.GetName(), Weight: cw.GetWeight().GetValue(), HostRewrite: cw.GetHostRewriteLiteral()}
		var err error
		if c.RequestHeaders, err = compileHeaderOps(cw.GetRequestHeadersToAdd(), cw.GetRequestHeadersToRemove(), true); err != nil {
			return fmt.Errorf("clusters[%d] (%s): request headers: %w", i, c.Name, err)
		}
		if c.ResponseHeaders, err = compileHeaderOps(cw.GetResponseHeadersToAdd(), cw.GetResponseHeadersToRemove(), false); err != nil {
			return fmt.Errorf("clusters[%d] (%s): response headers: %w", i, c.Name, err)
		}
		rt.totalWeight += uint64(c.Weight)
		rt.Clusters = append(rt.Clusters, c)
	}
	if rt.totalWeight == 0 {
		return errors.New("the weights sum to 0")
	}
	//lint:ignore SA1019 deprecated but still checked, as Envoy does
	if tw := wc.GetTotalWeight(); tw != nil && uint64(tw.GetValue()) != rt.totalWeight {
		return fmt.Errorf("total_weight %d differs from the sum of weights %d", tw.GetValue(), rt.totalWeight)
	}
	return nil
}

// compileRegexRewrite compiles a regex substitution, converting RE2's
// \N group references into Go's ${N}.
func compileRegexRewrite(rr *matcherv3.RegexMatchAndSubstitute) (*regexp.Regexp, string, error) {
	if err := checkFields(rr, "regex rewrite"); err != nil {
		return nil, "", err
	}
	if rr.GetPattern() == nil {
		return nil, "", errors.New("pattern is required")
	}
	if err := checkFields(rr.GetPattern(), "regex"); err != nil {
		return nil, "", err
	}
	re, err := regexp.Compile(rr.GetPattern().GetRegex())
	if err != nil {
		return nil, "", fmt.Errorf("pattern %q: %w", rr.GetPattern().GetRegex(), err)
	}
	in := rr.GetSubstitution()
	var b strings.Builder
	for i := 0; i < len(in); i++ {
		switch c := in[i]; {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(in) && in[i+1] >= '0' && in[i+1] <= '9':
			n := int(in[i+1] - '0')
			if n > re.NumSubexp() {
				return nil, "", fmt.Errorf("substitution %q refers to group %d of %d", in, n, re.NumSubexp())
			}
			b.WriteString("${" + strconv.Itoa(n) + "}")
			i++
		case c == '\\' && i+1 < len(in) && in[i+1] == '\\':
			b.WriteByte('\\')
			i++
		default:
			b.WriteByte(c)
		}
	}
	return re, b.String(), nil
}

// compileDirectResponse compiles a direct response; the body must be
// inline and at most maxBody bytes.
func compileDirectResponse(d *routev3.DirectResponseAction, maxBody uint32) (*DirectResponse, error) {
	if err := checkFields(d, "direct_response"); err != nil {
		return nil, err
	}
	if d.GetStatus() < 200 || d.GetStatus() >= 600 {
		return nil, fmt.Errorf("direct_response.status %d is not in [200, 600)", d.GetStatus())
	}
	out := &DirectResponse{Status: int(d.GetStatus())}
	if b := d.GetBody(); b != nil {
		if err := checkFields(b, "direct_response.body"); err != nil {
			return nil, err
		}
		if s := b.GetInlineString(); s != "" {
			out.Body = []byte(s)
		} else {
			out.Body = b.GetInlineBytes()
		}
	}
	if uint64(len(out.Body)) > uint64(maxBody) {
		return nil, fmt.Errorf("direct_response body of %d bytes exceeds max_direct_response_body_size_bytes (%d)", len(out.Body), maxBody)
	}
	return out, nil
}
