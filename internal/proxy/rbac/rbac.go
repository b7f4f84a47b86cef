// Package rbac is weft-proxy's evaluator of Envoy's role based access
// control config (envoy.config.rbac.v3.RBAC), shared by the HTTP RBAC
// filter (internal/proxy/httpfilter/rbac) and the network RBAC filter the
// engine runs before tcp_proxy.
//
// Compile turns the proto into an immutable Engine and refuses, with a
// precise error, every rule weft does not implement (the xDS update is
// then NACKed): CEL conditions, generic matchers, URI templates, filter
// state and sourced metadata. Supported are and/or/not trees, any,
// header, url_path, destination_ip, destination_port(_range),
// requested_server_name, metadata, direct_remote_ip, remote_ip,
// source_ip and authenticated.principal_name.
//
// Identities: authenticated.principal_name is matched against the peer
// certificate's SPIFFE URI SAN ("spiffe://cluster.local/ns/x/sa/y"), as
// Envoy does; a plaintext peer, or one without a SPIFFE ID, never matches
// an authenticated principal (fails closed). remote_ip is the direct peer
// (weft trusts no X-Forwarded-For hops).
package rbac

import (
	"fmt"
	"net/http"
	"net/netip"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
)

// Action is what a matching policy means.
type Action int

const (
	// Allow: requests matching a policy pass, all others are denied.
	Allow Action = iota
	// Deny: requests matching a policy are denied.
	Deny
	// Log: matching requests are only marked for the access log.
	Log
)

func (a Action) String() string { return [...]string{"ALLOW", "DENY", "LOG"}[a] }

// Input is what the rules look at.
type Input struct {
	// Conn is the downstream connection (always set).
	Conn *httpfilter.Conn
	// Request is the HTTP request; nil for network RBAC, where header,
	// path and metadata rules never match.
	Request *http.Request
	// Metadata is the dynamic metadata earlier filters left.
	Metadata map[string]map[string]any
}

// Engine is one compiled RBAC rule set. Immutable.
type Engine struct {
	action   Action
	policies []policy
}

type policy struct {
	name        string
	permissions []matcher
	principals  []matcher
}

// matcher is one compiled Permission or Principal.
type matcher interface {
	match(*Input) bool
}

// Compile builds an Engine from an RBAC rule set.
func Compile(r *rbacv3.RBAC) (*Engine, error) {
	e := &Engine{}
	switch r.GetAction() {
	case rbacv3.RBAC_ALLOW:
		e.action = Allow
	case rbacv3.RBAC_DENY:
		e.action = Deny
	case rbacv3.RBAC_LOG:
		e.action = Log
	default:
		return nil, fmt.Errorf("rbac action %s is not supported", r.GetAction())
	}
	names := make([]string, 0, len(r.GetPolicies()))
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := r.GetPolicies()[n]
		if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
			return nil, fmt.Errorf("policy %s: CEL conditions are not supported", n)
		}
		pol := policy{name: n}
		for i, perm := range p.GetPermissions() {
			m, err := compilePermission(perm)
			if err != nil {
				return nil, fmt.Errorf("policy %s: permissions[%d]: %w", n, i, err)
			}
			pol.permissions = append(pol.permissions, m)
		}
		for i, pr := range p.GetPrincipals() {
			m, err := compilePrincipal(pr)
			if err != nil {
				return nil, fmt.Errorf("policy %s: principals[%d]: %w", n, i, err)
			}
			pol.principals = append(pol.principals, m)
		}
		e.policies = append(e.policies, pol)
	}
	return e, nil
}

// Action is the engine's action.
func (e *Engine) Action() Action { return e.action }

// Match returns the name of the first policy (by name) whose permissions
// and principals both match, and whether one did.
func (e *Engine) Match(in *Input) (string, bool) {
	for i := range e.policies {
		p := &e.policies[i]
		if anyMatch(p.permissions, in) && anyMatch(p.principals, in) {
			return p.name, true
		}
	}
	return "", false
}

// Allowed applies the action: ALLOW passes only matching input, DENY
// refuses matching input, LOG passes everything. policy names the
// matching policy ("" for none).
func (e *Engine) Allowed(in *Input) (allowed bool, policy string) {
	name, hit := e.Match(in)
	switch e.action {
	case Allow:
		return hit, name
	case Deny:
		return !hit, name
	}
	return true, name
}

// ShadowVerdict evaluates e as an RBAC filter's shadow rules do: the
// shadow_engine_result ("allowed" or "denied") and
// shadow_effective_policy_id ("" when no policy matched) the filter
// records.
func (e *Engine) ShadowVerdict(in *Input) (result, policy string) {
	ok, pol := e.Allowed(in)
	if !ok {
		return "denied", pol
	}
	return "allowed", pol
}

// ShadowMetadata is the dynamic metadata Envoy's RBAC filters leave for
// shadow rules: <prefix>shadow_engine_result ("allowed" or "denied") and,
// when a policy matched, <prefix>shadow_effective_policy_id (prefix: the
// filter's shadow_rules_stat_prefix).
func (e *Engine) ShadowMetadata(in *Input, prefix string) map[string]any {
	res, pol := e.ShadowVerdict(in)
	md := map[string]any{prefix + "shadow_engine_result": res}
	if pol != "" {
		md[prefix+"shadow_effective_policy_id"] = pol
	}
	return md
}

func anyMatch(ms []matcher, in *Input) bool {
	for _, m := range ms {
		if m.match(in) {
			return true
		}
	}
	return false
}

type funcMatcher func(*Input) bool

func (f funcMatcher) match(in *Input) bool { return f(in) }

type andMatcher []matcher

func (a andMatcher) match(in *Input) bool {
	for _, m := range a {
		if !m.match(in) {
			return false
		}
	}
	return true
}

type orMatcher []matcher

func (o orMatcher) match(in *Input) bool { return anyMatch(o, in) }

type notMatcher struct{ m matcher }

func (n notMatcher) match(in *Input) bool { return !n.m.match(in) }

var anyMatcher = funcMatcher(func(*Input) bool { return true })

func compilePermission(p *rbacv3.Permission) (matcher, error) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_AndRules:
		var out andMatcher
		for i, c := range r.AndRules.GetRules() {
			m, err := compilePermission(c)
			if err != nil {
				return nil, fmt.Errorf("and_rules[%d]: %w", i, err)
			}
			out = append(out, m)
		}
		return out, nil
	case *rbacv3.Permission_OrRules:
		var out orMatcher
		for i, c := range r.OrRules.GetRules() {
			m, err := compilePermission(c)
			if err != nil {
				return nil, fmt.Errorf("or_rules[%d]: %w", i, err)
			}
			out = append(out, m)
		}
		return out, nil
	case *rbacv3.Permission_NotRule:
		m, err := compilePermission(r.NotRule)
		if err != nil {
			return nil, fmt.Errorf("not_rule: %w", err)
		}
		return notMatcher{m}, nil
	case *rbacv3.Permission_Any:
		if !r.Any {
			return nil, fmt.Errorf("any must be true")
		}
		return anyMatcher, nil
	case *rbacv3.Permission_Header:
		return headerRule(r.Header)
	case *rbacv3.Permission_UrlPath:
		return pathRule(r.UrlPath)
	case *rbacv3.Permission_DestinationIp:
		pfx, err := cidr(r.DestinationIp)
		if err != nil {
			return nil, fmt.Errorf("destination_ip: %w", err)
		}
		return funcMatcher(func(in *Input) bool { return pfx.Contains(in.Conn.Destination.Addr().Unmap()) }), nil
	case *rbacv3.Permission_DestinationPort:
		port := r.DestinationPort
		return funcMatcher(func(in *Input) bool { return uint32(in.Conn.Destination.Port()) == port }), nil
	case *rbacv3.Permission_DestinationPortRange:
		lo, hi := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		return funcMatcher(func(in *Input) bool {
			p := int32(in.Conn.Destination.Port())
			return p >= lo && p < hi
		}), nil
	case *rbacv3.Permission_Metadata:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		return metadataRule(r.Metadata)
	case *rbacv3.Permission_UriTemplate:
		return uriTemplateRule(r.UriTemplate)
	case *rbacv3.Permission_RequestedServerName:
		sm, err := compileString(r.RequestedServerName)
		if err != nil {
			return nil, fmt.Errorf("requested_server_name: %w", err)
		}
		return funcMatcher(func(in *Input) bool { return sm.match(in.Conn.SNI) }), nil
	case nil:
		return nil, fmt.Errorf("permission has no rule")
	}
	return nil, fmt.Errorf("permission rule %T is not supported by weft-proxy", p.GetRule())
}

func compilePrincipal(p *rbacv3.Principal) (matcher, error) {
	switch r := p.GetIdentifier().(type) {
	case *rbacv3.Principal_AndIds:
		var out andMatcher
		for i, c := range r.AndIds.GetIds() {
			m, err := compilePrincipal(c)
			if err != nil {
				return nil, fmt.Errorf("and_ids[%d]: %w", i, err)
			}
			out = append(out, m)
		}
		return out, nil
	case *rbacv3.Principal_OrIds:
		var out orMatcher
		for i, c := range r.OrIds.GetIds() {
			m, err := compilePrincipal(c)
			if err != nil {
				return nil, fmt.Errorf("or_ids[%d]: %w", i, err)
			}
			out = append(out, m)
		}
		return out, nil
	case *rbacv3.Principal_NotId:
		m, err := compilePrincipal(r.NotId)
		if err != nil {
			return nil, fmt.Errorf("not_id: %w", err)
		}
		return notMatcher{m}, nil
	case *rbacv3.Principal_Any:
		if !r.Any {
			return nil, fmt.Errorf("any must be true")
		}
		return anyMatcher, nil
	case *rbacv3.Principal_Authenticated_:
		pn := r.Authenticated.GetPrincipalName()
		if pn == nil {
			return funcMatcher(func(in *Input) bool { return in.Conn.TLS }), nil
		}
		sm, err := compileString(pn)
		if err != nil {
			return nil, fmt.Errorf("authenticated.principal_name: %w", err)
		}
		return funcMatcher(func(in *Input) bool {
			return in.Conn.TLS && in.Conn.Principal != "" && sm.match("spiffe://"+in.Conn.Principal)
		}), nil
	case *rbacv3.Principal_SourceIp:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		return sourceRule("source_ip", r.SourceIp)
	case *rbacv3.Principal_DirectRemoteIp:
		return sourceRule("direct_remote_ip", r.DirectRemoteIp)
	case *rbacv3.Principal_RemoteIp:
		return sourceRule("remote_ip", r.RemoteIp)
	case *rbacv3.Principal_Header:
		return headerRule(r.Header)
	case *rbacv3.Principal_UrlPath:
		return pathRule(r.UrlPath)
	case *rbacv3.Principal_Metadata:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		return metadataRule(r.Metadata)
	case nil:
		return nil, fmt.Errorf("principal has no identifier")
	}
	return nil, fmt.Errorf("principal identifier %T is not supported by weft-proxy", p.GetIdentifier())
}

func headerRule(h *routev3.HeaderMatcher) (matcher, error) {
	hm, err := compileHeader(h)
	if err != nil {
		return nil, err
	}
	return funcMatcher(func(in *Input) bool { return hm.match(in.Request) }), nil
}

// pathRule matches the request path without query, exactly as the router
// and the upstream see it (already normalised by the connection manager).
func pathRule(pm *matcherv3.PathMatcher) (matcher, error) {
	if pm.GetPath() == nil {
		return nil, fmt.Errorf("url_path: only the path rule is supported")
	}
	sm, err := compileString(pm.GetPath())
	if err != nil {
		return nil, fmt.Errorf("url_path: %w", err)
	}
	return funcMatcher(func(in *Input) bool { return in.Request != nil && sm.match(RequestPath(in.Request)) }), nil
}

// RequestPath is the request's path without query as RBAC's url_path
// sees it: the escaped form the engine forwards upstream.
func RequestPath(r *http.Request) string {
	if r.URL == nil {
		return ""
	}
	return r.URL.EscapedPath()
}

func metadataRule(m *matcherv3.MetadataMatcher) (matcher, error) {
	mm, err := compileMetadata(m)
	if err != nil {
		return nil, err
	}
	return funcMatcher(func(in *Input) bool { return mm.match(in.Metadata) }), nil
}

func sourceRule(field string, c *corev3.CidrRange) (matcher, error) {
	pfx, err := cidr(c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return funcMatcher(func(in *Input) bool { return pfx.Contains(in.Conn.Source.Addr().Unmap()) }), nil
}

func cidr(c *corev3.CidrRange) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, err
	}
	ip = ip.Unmap()
	bits := ip.BitLen()
	if c.GetPrefixLen() != nil {
		bits = int(c.GetPrefixLen().GetValue())
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}
