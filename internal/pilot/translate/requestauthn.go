package translate

// RequestAuthentication (end-user JWT), as Istio translates it:
//
// The RequestAuthentications that select a sidecar's workload are those
// of its namespace and of the root namespace (mesh-wide) whose selector's
// labels are a subset of the workload's (no selector: every workload);
// policies with targetRef/targetRefs are for gateways and waypoints and
// are ignored. All their jwtRules apply together, identical rules once:
// each becomes a JwtProvider "origins-<i>" (namespace policies first, then
// the root namespace's, each oldest first) and the rule requires
// requires_any [origins-0, …, allow_missing]. A request without a token
// passes (authorization decides), a request with a token must satisfy
// one provider of its issuer, else 401.
//
// Every inbound HTTP chain then runs envoy.filters.http.jwt_authn first,
// before authorization (RBAC) and the router (inboundHTTPFilters).
//
// jwks becomes local_jwks; jwksUri becomes remote_jwks with the URI, the
// cluster Istio names for it (outbound|<port>||<host>; weft-proxy fetches
// the URI itself), the rule's timeout (default 5 s) and a cache duration
// of 5 min. A rule with neither gets a JWKS without keys, which rejects
// every token of its issuer (Istio inlines such a JWKS when it cannot
// resolve the keys; weft does no OpenID discovery), and a warning; so does
// a jwksUri that is not an absolute http(s) URI (weft-proxy would refuse
// the whole listener update).

import (
	"net/url"
	"sort"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	security "istio.io/api/security/v1beta1"
)

const (
	// requestAuthenticationKind is the Istio kind of RequestAuthentication.
	requestAuthenticationKind = "RequestAuthentication"
	// JwtAuthnFilterName is the HTTP filter verifying end-user JWTs.
	JwtAuthnFilterName = "envoy.filters.http.jwt_authn"
	// jwksCacheDuration and jwksFetchTimeout are Istio's remote JWKS
	// settings (the timeout unless the rule sets one).
	jwksCacheDuration = 5 * time.Minute
	jwksFetchTimeout  = 5 * time.Second
	// emptyJWKS rejects every token: a rule without keys.
	emptyJWKS = `{"keys":[]}`
)

// defaultSpaceDelimitedClaims are split on spaces in the payload metadata
// (for authorization) whatever the rule says, as Istio does.
var defaultSpaceDelimitedClaims = []string{"scope", "permission"}

// requestAuthnsFor returns the RequestAuthentications that apply to a
// workload in namespace ns with labels: its namespace's first, then the
// root namespace's, each oldest first (the snapshot's order).
func requestAuthnsFor(s *model.Snapshot, ns string, labels map[string]string) []*model.Config {
	var own, root []*model.Config
	for _, c := range s.Configs(requestAuthenticationKind) {
		ra, ok := c.Spec.(*security.RequestAuthentication)
		if !ok || ra.GetTargetRef() != nil || len(ra.GetTargetRefs()) > 0 {
			continue
		}
		if !registry.LabelsMatch(ra.GetSelector().GetMatchLabels(), labels) {
			continue
		}
		switch c.Namespace {
		case ns:
			own = append(own, c)
		case s.Mesh.RootNamespace:
			root = append(root, c)
		}
	}
	return append(own, root...)
}

// jwtAuthnFilter is the jwt_authn HTTP filter for the proxy's inbound HTTP
// chains, nil when no RequestAuthentication with jwtRules applies.
func (g *netBuilder) jwtAuthnFilter() *hcmv3.HttpFilter {
	var rules []*security.JWTRule
	for _, c := range requestAuthnsFor(g.s, g.p.Namespace, g.p.Labels) {
		for _, r := range c.Spec.(*security.RequestAuthentication).GetJwtRules() {
			dup := false
			for _, seen := range rules {
				if proto.Equal(seen, r) {
					dup = true
					break
				}
			}
			if !dup {
				rules = append(rules, r)
			}
			switch {
			case r.GetJwks() == "" && r.GetJwksUri() == "":
				g.warnOnce("RequestAuthentication %s/%s: issuer %q has neither jwks nor jwksUri (OpenID discovery is not supported); its tokens are rejected",
					c.Namespace, c.Name, r.GetIssuer())
			case r.GetJwks() == "" && !validJWKSURI(r.GetJwksUri()):
				g.warnOnce("RequestAuthentication %s/%s: issuer %q: jwksUri %q is not an absolute http or https URI; its tokens are rejected",
					c.Namespace, c.Name, r.GetIssuer(), r.GetJwksUri())
			}
		}
	}
	if len(rules) == 0 {
		return nil
	}
	return httpFilter(JwtAuthnFilterName, jwtAuthentication(rules))
}

// jwtAuthentication is Istio's JwtAuthentication for a list of rules.
func jwtAuthentication(rules []*security.JWTRule) *jwtv3.JwtAuthentication {
	providers := map[string]*jwtv3.JwtProvider{}
	var reqs []*jwtv3.JwtRequirement
	for i, r := range rules {
		name := "origins-" + strconv.Itoa(i)
		providers[name] = jwtProvider(r)
		reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}})
	}
	reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}})
	return &jwtv3.JwtAuthentication{
		Providers: providers,
		Rules: []*jwtv3.RequirementRule{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
				RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: reqs}}}},
		}},
		BypassCorsPreflight: true,
	}
}

// jwtProvider converts one jwtRule.
func jwtProvider(r *security.JWTRule) *jwtv3.JwtProvider {
	p := &jwtv3.JwtProvider{
		Issuer:               r.GetIssuer(),
		Audiences:            r.GetAudiences(),
		Forward:              r.GetForwardOriginalToken(),
		FromParams:           r.GetFromParams(),
		FromCookies:          r.GetFromCookies(),
		ForwardPayloadHeader: r.GetOutputPayloadToHeader(),
		PayloadInMetadata:    r.GetIssuer(),
	}
	for _, h := range r.GetFromHeaders() {
		if h.GetName() != "" { // validation refuses empty names; never emit one
			p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.GetName(), ValuePrefix: h.GetPrefix()})
		}
	}
	for _, c := range r.GetOutputClaimToHeaders() {
		if c.GetHeader() != "" && c.GetClaim() != "" {
			p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: c.GetHeader(), ClaimName: c.GetClaim()})
		}
	}
	claims := append(append([]string{}, defaultSpaceDelimitedClaims...), r.GetSpaceDelimitedClaims()...)
	sort.Strings(claims)
	p.NormalizePayloadInMetadata = &jwtv3.JwtProvider_NormalizePayload{SpaceDelimitedClaims: dedupSorted(claims)}
	switch {
	case r.GetJwks() != "":
		p.JwksSourceSpecifier = inlineJWKS(r.GetJwks())
	case validJWKSURI(r.GetJwksUri()):
		timeout := jwksFetchTimeout
		if t := r.GetTimeout(); t != nil && t.AsDuration() > 0 {
			timeout = t.AsDuration()
		}
		p.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
			HttpUri: &corev3.HttpUri{
				Uri:              r.GetJwksUri(),
				HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: jwksCluster(r.GetJwksUri())},
				Timeout:          durationpb.New(timeout),
			},
			CacheDuration: durationpb.New(jwksCacheDuration),
		}}
	default:
		p.JwksSourceSpecifier = inlineJWKS(emptyJWKS)
	}
	return p
}

// inlineJWKS is a local_jwks source.
func inlineJWKS(doc string) *jwtv3.JwtProvider_LocalJwks {
	return &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: doc}}}
}

// jwksCluster names the cluster Istio uses for a jwksUri:
// outbound|<port>||<host>, the port defaulting by scheme.
func jwksCluster(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Host == "" {
		return "outbound|443||" + uri
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "outbound|443||" + host
	}
	return OutboundCluster(uint32(n), "", host)
}

// validJWKSURI accepts absolute http and https URIs (as Istio's
// validation and weft-proxy do).
func validJWKSURI(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// dedupSorted drops repeats from a sorted list.
func dedupSorted(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
