package translate

// AuthorizationPolicy, as Istio translates it for sidecars:
//
// The policies that apply to the proxy's workload are those of the root
// namespace (mesh-wide without a selector, else for matching workloads in
// every namespace) and of the workload's namespace (namespace-wide without
// a selector, else for matching workloads). Policies with targetRef(s)
// are for gateways and waypoints: ignored, with a warning.
//
// Every inbound filter chain (virtualInbound's per-port and passthrough
// chains, explicit mode's inbound_<port>) gets, before its router or
// tcp_proxy, one RBAC filter per action that has policies: AUDIT (action
// LOG), DENY and ALLOW, in that order. HTTP chains get
// envoy.filters.http.rbac, TCP chains envoy.filters.network.rbac. With no
// ALLOW policy there is no ALLOW filter (allowed by default); with ALLOW
// policies a request must match one of their rules. CUSTOM (external
// authorization) is not supported: its rules are enforced as DENY (fail
// closed, as Istio does for an unknown provider), with a warning.
//
// Each rule becomes one RBAC policy "ns[NS]-policy[NAME]-rule[I]":
// permissions are the OR of its "to" operations, principals the OR of its
// "from" sources, and "when" conditions are ANDed into every one of them
// (on the permission or principal side by key). Within a field, values OR
// and notValues are a NOT of their OR; fields AND. A rule without "from"
// (or "to") matches any source (operation); a policy without rules
// matches nothing.
//
// TCP chains cannot evaluate HTTP-only fields (hosts, methods, paths,
// requestPrincipals, request.headers, request.auth.*): in an ALLOW
// policy such a rule is dropped (fewer requests allowed); in DENY and
// AUDIT policies only the HTTP-only fields are dropped, so the rule
// denies more (Istio's documented behaviour).
//
// Value forms are Istio's: "*" (anything non-empty), "prefix*",
// "*suffix" or an exact value; hosts compare case-insensitively.
// Principals are SPIFFE IDs without scheme ("cluster.local/ns/x/sa/y",
// matched against the peer certificate's URI SAN), in the mesh's trust
// domain and its aliases when they name one of them or "cluster.local"
// (trustdomain.go); namespaces match the principal "*/ns/<ns>/*". Request principals and request.auth.* read the
// JWT filter's dynamic metadata (namespace istio_authn).

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbactcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/resource"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	security "istio.io/api/security/v1beta1"
)

const (
	authorizationPolicyKind = "AuthorizationPolicy"
	httpRBACFilterName      = "envoy.filters.http.rbac"
	tcpRBACFilterName       = "envoy.filters.network.rbac"
	// AuthnFilterName is the dynamic metadata namespace where the JWT
	// filter leaves the request's authentication: request.auth.principal
	// ("iss/sub"), request.auth.audiences, request.auth.presenter and
	// request.auth.claims.
	AuthnFilterName = "istio_authn"
)

// authzFilters are the RBAC filters of the proxy's inbound chains.
type authzFilters struct {
	// http go before the router, tcp before tcp_proxy.
	http []*hcmv3.HttpFilter
	tcp  []*listenerv3.Filter
}

// authz returns the proxy's inbound RBAC filters, built on first use.
func (g *netBuilder) authz() *authzFilters {
	if g.authzF != nil {
		return g.authzF
	}
	var audit, deny, allow, dryDeny, dryAllow []*model.Config
	for _, c := range g.s.Configs(authorizationPolicyKind) {
		ap, ok := c.Spec.(*security.AuthorizationPolicy)
		if !ok || !g.authzApplies(c, ap) {
			continue
		}
		dry := g.dryRun(c)
		switch ap.GetAction() {
		case security.AuthorizationPolicy_ALLOW:
			if dry {
				dryAllow = append(dryAllow, c)
			} else {
				allow = append(allow, c)
			}
		case security.AuthorizationPolicy_DENY:
			if dry {
				dryDeny = append(dryDeny, c)
			} else {
				deny = append(deny, c)
			}
		case security.AuthorizationPolicy_AUDIT, security.AuthorizationPolicy_CUSTOM:
			if dry {
				g.warnOnce("%s: %s policies cannot run dry (istio.io/dry-run is for ALLOW and DENY); not applied", c.Key(), ap.GetAction())
				continue
			}
			if ap.GetAction() == security.AuthorizationPolicy_AUDIT {
				audit = append(audit, c)
				continue
			}
			g.warnOnce("%s: action CUSTOM (external authorization) is not supported by weft; the requests it matches are denied", c.Key())
			deny = append(deny, c)
		}
	}
	f := &authzFilters{}
	for _, grp := range []struct {
		pols, dry []*model.Config
		action    rbacv3.RBAC_Action
		prefix    string
	}{{audit, nil, rbacv3.RBAC_LOG, ""}, {deny, dryDeny, rbacv3.RBAC_DENY, dryRunDenyPrefix}, {allow, dryAllow, rbacv3.RBAC_ALLOW, dryRunAllowPrefix}} {
		if len(grp.pols) == 0 && len(grp.dry) == 0 {
			continue
		}
		// Dry-run policies are the filter's shadow rules, as istiod
		// writes them: evaluated, never enforced, the verdict left in
		// dynamic metadata under the prefix. Without enforced policies
		// of the action the filter has no rules, which enforces nothing.
		h, t := &rbachttpv3.RBAC{}, &rbactcpv3.RBAC{StatPrefix: "tcp."}
		if len(grp.pols) > 0 {
			h.Rules, t.Rules = g.rbacRules(grp.pols, grp.action, false), g.rbacRules(grp.pols, grp.action, true)
		}
		if len(grp.dry) > 0 {
			h.ShadowRules, h.ShadowRulesStatPrefix = g.rbacRules(grp.dry, grp.action, false), grp.prefix
			t.ShadowRules, t.ShadowRulesStatPrefix = g.rbacRules(grp.dry, grp.action, true), grp.prefix
		}
		f.http = append(f.http, httpFilter(httpRBACFilterName, h))
		f.tcp = append(f.tcp, networkFilter(tcpRBACFilterName, t))
	}
	g.authzF = f
	return f
}

// Istio's dry-run annotation and the prefixes its shadow results' keys
// get.
const (
	dryRunAnnotation  = "istio.io/dry-run"
	dryRunAllowPrefix = "istio_dry_run_allow_"
	dryRunDenyPrefix  = "istio_dry_run_deny_"
)

// dryRun reports whether a policy is annotated istio.io/dry-run: true
// (a value that is not a boolean is reported and taken as false, as
// Istio does).
func (g *netBuilder) dryRun(c *model.Config) bool {
	v, ok := c.Annotations[dryRunAnnotation]
	if !ok {
		return false
	}
	dry, err := strconv.ParseBool(v)
	if err != nil {
		g.warnOnce("%s: annotation %s=%q is not a boolean; the policy is enforced", c.Key(), dryRunAnnotation, v)
	}
	return dry
}

// authzApplies reports whether a policy applies to the proxy's workload.
func (g *netBuilder) authzApplies(c *model.Config, ap *security.AuthorizationPolicy) bool {
	if c.Namespace != g.s.Mesh.RootNamespace && c.Namespace != g.p.Namespace {
		return false
	}
	if ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0 {
		g.warnOnce("%s: targetRef selects gateways and waypoints; ignored by sidecars", c.Key())
		return false
	}
	sel := ap.GetSelector().GetMatchLabels()
	return len(sel) == 0 || registry.LabelsMatch(sel, g.p.Labels)
}

// rbacRules translates the policies of one action for HTTP or TCP chains.
func (g *netBuilder) rbacRules(pols []*model.Config, action rbacv3.RBAC_Action, forTCP bool) *rbacv3.RBAC {
	out := &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
	tds := g.trustDomains()
	for _, c := range pols {
		ap := c.Spec.(*security.AuthorizationPolicy)
		for i, rule := range ap.GetRules() {
			if rule == nil {
				continue
			}
			p, err := authzPolicy(ruleInTrustDomains(rule, tds), action, forTCP)
			if err != nil {
				if !errorsIsHTTPOnly(err) {
					g.warnOnce("%s: rules[%d] ignored: %v", c.Key(), i, err)
				}
				continue
			}
			out.Policies[fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", c.Namespace, c.Name, i)] = p
		}
	}
	return out
}

// errHTTPOnly marks a field TCP chains cannot evaluate.
type errHTTPOnly struct{ key string }

func (e errHTTPOnly) Error() string { return fmt.Sprintf("%s is only supported for HTTP", e.key) }

func errorsIsHTTPOnly(err error) bool {
	_, ok := err.(errHTTPOnly)
	return ok
}

// authzField is one field of a rule: its values and notValues, and how
// one value becomes a permission or a principal (exactly one is set).
type authzField struct {
	key               string
	values, notValues []string
	perm              func(v string) (*rbacv3.Permission, error)
	princ             func(v string) (*rbacv3.Principal, error)
	httpOnly          bool
}

// authzPolicy translates one rule (Istio's authz model.New + Generate).
func authzPolicy(rule *security.Rule, action rbacv3.RBAC_Action, forTCP bool) (*rbacv3.Policy, error) {
	var basePerm, basePrinc []authzField
	for _, w := range rule.GetWhen() {
		f, err := whenField(w.GetKey(), w.GetValues(), w.GetNotValues())
		if err != nil {
			return nil, err
		}
		if f.perm != nil {
			basePerm = append(basePerm, f)
		} else {
			basePrinc = append(basePrinc, f)
		}
	}
	p := &rbacv3.Policy{}
	for _, from := range rule.GetFrom() {
		s := from.GetSource()
		fields := append([]authzField{
			principalField("source.principal", s.GetPrincipals(), s.GetNotPrincipals()),
			requestPrincipalField("request.auth.principal", s.GetRequestPrincipals(), s.GetNotRequestPrincipals()),
			namespaceField("source.namespace", s.GetNamespaces(), s.GetNotNamespaces()),
			ipField("remote.ip", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks(), true),
			ipField("source.ip", s.GetIpBlocks(), s.GetNotIpBlocks(), false),
		}, basePrinc...)
		pr, err := principalAnd(fields, action, forTCP)
		if err != nil {
			return nil, err
		}
		p.Principals = append(p.Principals, pr)
	}
	if len(rule.GetFrom()) == 0 {
		pr, err := principalAnd(basePrinc, action, forTCP)
		if err != nil {
			return nil, err
		}
		p.Principals = append(p.Principals, pr)
	}
	for _, to := range rule.GetTo() {
		o := to.GetOperation()
		fields := append([]authzField{
			hostField(o.GetHosts(), o.GetNotHosts()),
			methodField(o.GetMethods(), o.GetNotMethods()),
			pathField(o.GetPaths(), o.GetNotPaths()),
			portField("destination.port", o.GetPorts(), o.GetNotPorts()),
		}, basePerm...)
		pm, err := permissionAnd(fields, action, forTCP)
		if err != nil {
			return nil, err
		}
		p.Permissions = append(p.Permissions, pm)
	}
	if len(rule.GetTo()) == 0 {
		pm, err := permissionAnd(basePerm, action, forTCP)
		if err != nil {
			return nil, err
		}
		p.Permissions = append(p.Permissions, pm)
	}
	return p, nil
}

// checkErr applies Istio's rule for a field that cannot be translated:
// an ALLOW rule is dropped (err returned); DENY and AUDIT rules drop only
// the field (nil), matching more.
func checkErr(action rbacv3.RBAC_Action, err error) error {
	if action == rbacv3.RBAC_ALLOW {
		return err
	}
	return nil
}

func permissionAnd(fields []authzField, action rbacv3.RBAC_Action, forTCP bool) (*rbacv3.Permission, error) {
	return rbacAnd(fields, action, forTCP, rbacShape[*rbacv3.Permission]{
		build: func(f authzField, v string) (*rbacv3.Permission, error) { return f.perm(v) },
		or: func(ps []*rbacv3.Permission) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
		},
		not: func(p *rbacv3.Permission) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
		},
		and: func(ps []*rbacv3.Permission) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
		},
		any: func() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} },
	})
}

func principalAnd(fields []authzField, action rbacv3.RBAC_Action, forTCP bool) (*rbacv3.Principal, error) {
	return rbacAnd(fields, action, forTCP, rbacShape[*rbacv3.Principal]{
		build: func(f authzField, v string) (*rbacv3.Principal, error) { return f.princ(v) },
		or: func(ps []*rbacv3.Principal) *rbacv3.Principal {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
		},
		not: func(p *rbacv3.Principal) *rbacv3.Principal {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
		},
		and: func(ps []*rbacv3.Principal) *rbacv3.Principal {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
		},
		any: func() *rbacv3.Principal { return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}} },
	})
}

// rbacShape builds one of RBAC's two matcher trees (Permission or
// Principal), which have the same and/or/not/any shape.
type rbacShape[T any] struct {
	build   func(authzField, string) (T, error)
	or, and func([]T) T
	not     func(T) T
	any     func() T
}

// rbacAnd ANDs the fields: each field ORs its values, and its notValues
// become NOT(OR(...)). A value that cannot be expressed (or an HTTP-only
// field on a TCP chain) drops out as checkErr decides for the action.
func rbacAnd[T any](fields []authzField, action rbacv3.RBAC_Action, forTCP bool, sh rbacShape[T]) (T, error) {
	var and []T
	for _, f := range fields {
		for _, neg := range []bool{false, true} {
			vals := f.values
			if neg {
				vals = f.notValues
			}
			var or []T
			for _, v := range vals {
				var p T
				var err error
				if forTCP && f.httpOnly {
					err = errHTTPOnly{f.key}
				} else {
					p, err = sh.build(f, v)
				}
				if err != nil {
					if err := checkErr(action, err); err != nil {
						var zero T
						return zero, err
					}
					continue
				}
				or = append(or, p)
			}
			if len(or) == 0 {
				continue
			}
			p := sh.or(or)
			if neg {
				p = sh.not(p)
			}
			and = append(and, p)
		}
	}
	if len(and) == 0 {
		and = []T{sh.any()}
	}
	return sh.and(and), nil
}

// whenField maps a condition key to its field (Istio's attribute list).
func whenField(key string, values, notValues []string) (authzField, error) {
	switch {
	case key == "source.ip":
		return ipField(key, values, notValues, false), nil
	case key == "remote.ip":
		return ipField(key, values, notValues, true), nil
	case key == "source.namespace":
		return namespaceField(key, values, notValues), nil
	case key == "source.principal":
		return principalField(key, values, notValues), nil
	case key == "request.auth.principal":
		return requestPrincipalField(key, values, notValues), nil
	case key == "request.auth.audiences":
		return metadataField(key, values, notValues, []string{key}, true), nil
	case key == "request.auth.presenter":
		return metadataField(key, values, notValues, []string{key}, false), nil
	case strings.HasPrefix(key, "request.auth.claims"):
		names, ok := nestedBrackets(strings.TrimPrefix(key, "request.auth.claims"))
		if !ok {
			return authzField{}, fmt.Errorf("invalid condition key %q: want request.auth.claims[name] or [a][b]", key)
		}
		return metadataField(key, values, notValues, append([]string{"request.auth.claims"}, names...), true), nil
	case strings.HasPrefix(key, "request.headers"):
		names, ok := nestedBrackets(strings.TrimPrefix(key, "request.headers"))
		if !ok || len(names) != 1 {
			return authzField{}, fmt.Errorf("invalid condition key %q: want request.headers[name]", key)
		}
		return headerField(key, names[0], values, notValues), nil
	case key == "destination.ip":
		return authzField{key: key, values: values, notValues: notValues, perm: func(v string) (*rbacv3.Permission, error) {
			c, err := authzCIDR(v)
			if err != nil {
				return nil, err
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: c}}, nil
		}}, nil
	case key == "destination.port":
		return portField(key, values, notValues), nil
	case key == "connection.sni":
		return authzField{key: key, values: values, notValues: notValues, perm: func(v string) (*rbacv3.Permission, error) {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: istioStringMatcher(v, "")}}, nil
		}}, nil
	}
	return authzField{}, fmt.Errorf("unknown condition key %q", key)
}

// nestedBrackets parses "[a]" or "[a][b]…" into its names.
func nestedBrackets(s string) ([]string, bool) {
	var out []string
	for s != "" {
		if s[0] != '[' {
			return nil, false
		}
		end := strings.IndexByte(s, ']')
		if end <= 1 {
			return nil, false
		}
		out = append(out, s[1:end])
		s = s[end+1:]
	}
	return out, len(out) > 0
}

func principalField(key string, values, notValues []string) authzField {
	return authzField{key: key, values: values, notValues: notValues, princ: func(v string) (*rbacv3.Principal, error) {
		return authenticated(istioStringMatcher(v, "spiffe://")), nil
	}}
}

func namespaceField(key string, values, notValues []string) authzField {
	return authzField{key: key, values: values, notValues: notValues, princ: func(v string) (*rbacv3.Principal, error) {
		re := fmt.Sprintf(".*/ns/%s/.*", strings.ReplaceAll(v, "*", ".*"))
		if _, err := regexp.Compile(re); err != nil {
			return nil, fmt.Errorf("namespace %q: %w", v, err)
		}
		return authenticated(regexMatcher(re)), nil
	}}
}

func requestPrincipalField(key string, values, notValues []string) authzField {
	return metadataField(key, values, notValues, []string{"request.auth.principal"}, false)
}

// metadataField matches the JWT filter's metadata at path: a string, or
// (list) any element of a list.
func metadataField(key string, values, notValues, path []string, list bool) authzField {
	return authzField{key: key, values: values, notValues: notValues, httpOnly: true, princ: func(v string) (*rbacv3.Principal, error) {
		m := &matcherv3.MetadataMatcher{Filter: AuthnFilterName}
		for _, k := range path {
			m.Path = append(m.Path, &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: k}})
		}
		vm := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: istioStringMatcher(v, "")}}
		if list {
			vm = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
				MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: vm}}}}
		}
		m.Value = vm
		//lint:ignore SA1019 Istio emits this matcher
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: m}}, nil
	}}
}

func headerField(key, name string, values, notValues []string) authzField {
	return authzField{key: key, values: values, notValues: notValues, httpOnly: true, princ: func(v string) (*rbacv3.Principal, error) {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: istioHeaderMatcher(name, v, false)}}, nil
	}}
}

func ipField(key string, values, notValues []string, remote bool) authzField {
	return authzField{key: key, values: values, notValues: notValues, princ: func(v string) (*rbacv3.Principal, error) {
		c, err := authzCIDR(v)
		if err != nil {
			return nil, err
		}
		if remote {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: c}}, nil
		}
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: c}}, nil
	}}
}

func hostField(values, notValues []string) authzField {
	return authzField{key: "hosts", values: values, notValues: notValues, httpOnly: true, perm: func(v string) (*rbacv3.Permission, error) {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: istioHeaderMatcher(":authority", v, true)}}, nil
	}}
}

func methodField(values, notValues []string) authzField {
	return authzField{key: "methods", values: values, notValues: notValues, httpOnly: true, perm: func(v string) (*rbacv3.Permission, error) {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: istioHeaderMatcher(":method", v, false)}}, nil
	}}
}

// pathTemplates turns Istio's path template operators into Envoy's.
var pathTemplates = strings.NewReplacer("{**}", "**", "{*}", "*")

// uriTemplateMatcherName is the extension Envoy's URI template path
// matcher is registered as.
const uriTemplateMatcherName = "envoy.path.match.uri_template.uri_template_matcher"

func pathField(values, notValues []string) authzField {
	return authzField{key: "paths", values: values, notValues: notValues, httpOnly: true, perm: func(v string) (*rbacv3.Permission, error) {
		if strings.Contains(v, "{*}") || strings.Contains(v, "{**}") {
			// As istiod: Envoy's URI template matcher, {*} and {**}
			// becoming its * and **. One stored before the API server
			// checked templates is refused here rather than NACKed.
			if err := resource.PathTemplateError(v); err != nil {
				return nil, fmt.Errorf("path template %q: %w", v, err)
			}
			tc, _ := anypb.New(&uritemplatev3.UriTemplateMatchConfig{PathTemplate: pathTemplates.Replace(v)})
			return &rbacv3.Permission{Rule: &rbacv3.Permission_UriTemplate{UriTemplate: &corev3.TypedExtensionConfig{
				Name: uriTemplateMatcherName, TypedConfig: tc}}}, nil
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: istioStringMatcher(v, "")}}}}, nil
	}}
}

func portField(key string, values, notValues []string) authzField {
	return authzField{key: key, values: values, notValues: notValues, perm: func(v string) (*rbacv3.Permission, error) {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q: not a number in [0, 65535]", v)
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}, nil
	}}
}

func authenticated(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// authzCIDR parses an IP ("10.0.0.1": a /32) or a CIDR.
func authzCIDR(v string) (*corev3.CidrRange, error) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IP or CIDR", v)
	}
	return &corev3.CidrRange{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))}, nil
}

// istioStringMatcher is Istio's StringMatcherWithPrefix: "*" is any
// non-empty value, "*x" a suffix, "x*" a prefix, else exact; prefix is
// prepended ("spiffe://" for principals).
func istioStringMatcher(v, prefix string) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return regexMatcher(".+")
	case strings.HasPrefix(v, "*"):
		if prefix == "" {
			return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
		}
		return regexMatcher(regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(v[1:]))
	case strings.HasSuffix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: prefix + v}}
}

func regexMatcher(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// istioHeaderMatcher is Istio's HeaderMatcher (HostMatcher with
// ignoreCase): "*" is presence, "*x" a suffix, "x*" a prefix, else exact.
func istioHeaderMatcher(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	h := &routev3.HeaderMatcher{Name: name}
	var sm *matcherv3.StringMatcher
	switch {
	case v == "*":
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		return h
	case strings.HasPrefix(v, "*"):
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*"):
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v[:len(v)-1]}}
	default:
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
	}
	sm.IgnoreCase = ignoreCase
	h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: sm}
	return h
}

// inboundHTTPFilters are an inbound HCM's filters: end-user JWT
// authentication when RequestAuthentications apply (requestauthn.go), RBAC,
// istio.stats when Telemetry customises metrics (metrics.go), then the
// router.
func (g *netBuilder) inboundHTTPFilters() []*hcmv3.HttpFilter {
	var out []*hcmv3.HttpFilter
	if f := g.jwtAuthnFilter(); f != nil {
		out = append(out, f)
	}
	out = append(out, cloneHTTPFilters(g.authz().http)...)
	out = append(out, g.statsHTTPFilters(true)...)
	return append(out, httpFilter(routerFilterName, g.routerConfig()))
}

// inboundTCPFilters are an inbound TCP chain's filters: RBAC, istio.stats
// when Telemetry customises metrics, then tcp_proxy to cluster.
func (g *netBuilder) inboundTCPFilters(cluster string) []*listenerv3.Filter {
	return append(cloneNetworkFilters(g.authz().tcp), g.tcpFilters(true, g.tcpProxy(true, cluster, cluster))...)
}

func cloneHTTPFilters(in []*hcmv3.HttpFilter) []*hcmv3.HttpFilter {
	out := make([]*hcmv3.HttpFilter, 0, len(in)+1)
	for _, f := range in {
		out = append(out, proto.Clone(f).(*hcmv3.HttpFilter))
	}
	return out
}

func cloneNetworkFilters(in []*listenerv3.Filter) []*listenerv3.Filter {
	out := make([]*listenerv3.Filter, 0, len(in)+1)
	for _, f := range in {
		out = append(out, proto.Clone(f).(*listenerv3.Filter))
	}
	return out
}

// setPathNormalization applies the mesh's pathNormalization to an HCM as
// Istio does: BASE sets normalize_path, MERGE_SLASHES adds merge_slashes,
// DECODE_AND_MERGE_SLASHES also decodes %2F and %5C
// (UNESCAPE_AND_FORWARD); NONE leaves paths alone.
func (g *netBuilder) setPathNormalization(h *hcmv3.HttpConnectionManager) {
	switch g.s.Mesh.PathNormalization {
	case model.PathNormalizationNone:
		return
	case model.PathNormalizationMergeSlashes:
		h.MergeSlashes = true
	case model.PathNormalizationDecodeAndMergeSlashes:
		h.MergeSlashes = true
		h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
	}
	h.NormalizePath = wrapperspb.Bool(true)
	if h.PathWithEscapedSlashesAction == hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT {
		h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_KEEP_UNCHANGED
	}
}
