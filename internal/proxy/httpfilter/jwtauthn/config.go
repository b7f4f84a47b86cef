package jwtauthn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
)

// DefaultClockSkew is the exp/nbf tolerance when a provider sets no
// clock_skew_seconds (Envoy's default).
const DefaultClockSkew = 60 * time.Second

// provider is one compiled JwtProvider. Immutable (its remote cache is
// safe for concurrent use).
type provider struct {
	name      string
	issuer    string
	audiences []string
	// Exactly one of local, remote, or badJWKS (an inline JWKS without a
	// usable key: every token fails) is set.
	local   *keySet
	remote  *remoteJWKS
	badJWKS bool

	forward           bool
	locs              []*location
	payloadHeader     string
	padPayload        bool
	payloadInMetadata string
	claimHeaders      []claimHeader
	// spaceDelimited claims are split on spaces in the metadata
	// (normalize_payload_in_metadata).
	spaceDelimited []string
	skew           time.Duration
	requireExp     bool
}

// claimHeader copies one claim into a request header.
type claimHeader struct {
	header string
	path   []string
}

// location is one place a provider's token may be.
type location struct {
	p *provider
	// Exactly one of header, param and cookie is set.
	header, prefix string
	// bearer matches the prefix case-insensitively (the default
	// "Authorization: Bearer" location).
	bearer bool
	param  string
	cookie string
}

// extract returns the token at the location, "" when absent.
func (l *location) extract(r *http.Request) string {
	switch {
	case l.header != "":
		for _, v := range r.Header.Values(l.header) {
			if l.bearer {
				if len(v) >= len(l.prefix) && strings.EqualFold(v[:len(l.prefix)], l.prefix) {
					return jwtChars(v[len(l.prefix):])
				}
				continue
			}
			if rest, ok := strings.CutPrefix(v, l.prefix); ok {
				if l.prefix == "" {
					return strings.TrimSpace(rest)
				}
				return jwtChars(rest)
			}
		}
	case l.param != "":
		return r.URL.Query().Get(l.param)
	case l.cookie != "":
		if c, err := r.Cookie(l.cookie); err == nil {
			return c.Value
		}
	}
	return ""
}

// jwtChars is the token after a prefix: leading spaces skipped, up to the
// first character that cannot be in a compact JWS (as Envoy extracts).
func jwtChars(s string) string {
	s = strings.TrimLeft(s, " ")
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '=' || c == '+' || c == '/') {
			return s[:i]
		}
	}
	return s
}

// verifyRequest verifies the provider's tokens in r (the first that
// verifies wins); statusMissing when it has none.
func (p *provider) verifyRequest(ctx context.Context, r *http.Request, now time.Time, audiences []string) *result {
	var last *result
	for _, l := range p.locs {
		raw := l.extract(r)
		if raw == "" {
			continue
		}
		res := &result{loc: l}
		res.tok, res.st = p.verifyToken(ctx, raw, now, audiences)
		if res.st == statusOK {
			return res
		}
		if last == nil || last.st == statusUnknownIssuer {
			last = res
		}
	}
	if last == nil {
		return &result{st: statusMissing}
	}
	return last
}

// verifyToken checks one token in Envoy's order: format, issuer, time,
// audiences, then the signature against the JWKS.
func (p *provider) verifyToken(ctx context.Context, raw string, now time.Time, audiences []string) (*token, status) {
	t, st := parseToken(raw)
	if st != statusOK {
		return nil, st
	}
	if p.issuer != "" && t.iss != p.issuer {
		return nil, statusUnknownIssuer
	}
	if st := t.checkTime(now, p.skew, p.requireExp); st != statusOK {
		return nil, st
	}
	if audiences == nil {
		audiences = p.audiences
	}
	if !t.audienceAllowed(audiences) {
		return nil, statusAudienceNotAllowed
	}
	if _, ok := algs[t.alg]; !ok {
		return nil, statusHeaderAlgNotImpl
	}
	var ks *keySet
	switch {
	case p.badJWKS:
		return nil, statusJwksNoValidKeys
	case p.local != nil:
		ks = p.local
	default:
		var err error
		if ks, err = p.remote.get(ctx); err != nil {
			return nil, statusJwksFetchFail
		}
		if t.kid != "" && !ks.hasKid(t.kid) {
			if fresh, err := p.remote.refetchForKid(ctx); err == nil && fresh != nil {
				ks = fresh
			}
		}
	}
	if st := t.verify(ks); st != statusOK {
		return nil, st
	}
	return t, statusOK
}

// compile checks and compiles the whole filter config. It refuses what it
// cannot honour (unknown providers, unsupported matches, fields that would
// weaken verification if ignored).
func (b *Builder) compile(msg *jwtv3.JwtAuthentication) (*filter, error) {
	f := &filter{now: b.now, providers: map[string]*provider{}, bypassCORS: msg.GetBypassCorsPreflight()}
	if len(msg.GetFilterStateRules().GetRequires()) > 0 {
		return nil, errors.New("jwt_authn: filter_state_rules are not supported")
	}
	names := make([]string, 0, len(msg.GetProviders()))
	for name := range msg.GetProviders() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p, err := b.compileProvider(name, msg.GetProviders()[name])
		if err != nil {
			return nil, fmt.Errorf("jwt_authn: provider %q: %w", name, err)
		}
		f.providers[name] = p
		if p.payloadHeader != "" {
			f.outputHeaders = append(f.outputHeaders, p.payloadHeader)
		}
		for _, ch := range p.claimHeaders {
			f.outputHeaders = append(f.outputHeaders, ch.header)
		}
	}
	reqs := map[string]requirement{}
	for name, r := range msg.GetRequirementMap() {
		req, err := f.compileRequirement(r, 0)
		if err != nil {
			return nil, fmt.Errorf("jwt_authn: requirement_map[%q]: %w", name, err)
		}
		reqs[name] = req
	}
	for i, r := range msg.GetRules() {
		m, err := compileMatch(r.GetMatch())
		if err != nil {
			return nil, fmt.Errorf("jwt_authn: rules[%d]: %w", i, err)
		}
		ru := &rule{match: m}
		switch {
		case r.GetRequires() != nil:
			if ru.req, err = f.compileRequirement(r.GetRequires(), 0); err != nil {
				return nil, fmt.Errorf("jwt_authn: rules[%d]: %w", i, err)
			}
		case r.GetRequirementName() != "":
			if ru.req = reqs[r.GetRequirementName()]; ru.req == nil {
				return nil, fmt.Errorf("jwt_authn: rules[%d]: no requirement_map entry %q", i, r.GetRequirementName())
			}
		}
		// A rule without a requirement matches and requires nothing.
		f.rules = append(f.rules, ru)
	}
	return f, nil
}

// compileProvider compiles one JwtProvider.
func (b *Builder) compileProvider(name string, pc *jwtv3.JwtProvider) (*provider, error) {
	switch {
	case pc.GetSubjects() != nil:
		return nil, errors.New("subjects is not supported")
	case pc.GetMaxLifetime() != nil:
		return nil, errors.New("max_lifetime is not supported")
	}
	p := &provider{name: name, issuer: pc.GetIssuer(), audiences: pc.GetAudiences(), forward: pc.GetForward(),
		payloadHeader: pc.GetForwardPayloadHeader(), padPayload: pc.GetPadForwardPayloadHeader(),
		payloadInMetadata: pc.GetPayloadInMetadata(), skew: DefaultClockSkew, requireExp: pc.GetRequireExpiration()}
	p.spaceDelimited = pc.GetNormalizePayloadInMetadata().GetSpaceDelimitedClaims()
	if pc.GetClockSkewSeconds() != 0 {
		p.skew = time.Duration(pc.GetClockSkewSeconds()) * time.Second
	}
	switch src := pc.GetJwksSourceSpecifier().(type) {
	case *jwtv3.JwtProvider_LocalJwks:
		doc, err := dataSource(src.LocalJwks.GetInlineString(), src.LocalJwks.GetInlineBytes(), src.LocalJwks.GetFilename())
		if err != nil {
			return nil, fmt.Errorf("local_jwks: %w", err)
		}
		// Like Envoy, an inline JWKS without a usable key is accepted and
		// rejects every token (Istio inlines such a JWKS when it cannot
		// resolve the keys).
		if p.local, err = parseJWKS(doc); err != nil {
			p.local, p.badJWKS = nil, true
		}
	case *jwtv3.JwtProvider_RemoteJwks:
		hu := src.RemoteJwks.GetHttpUri()
		if err := checkURI(hu.GetUri()); err != nil {
			return nil, fmt.Errorf("remote_jwks: %w", err)
		}
		dur, timeout := DefaultCacheDuration, DefaultFetchTimeout
		if d := src.RemoteJwks.GetCacheDuration(); d != nil && d.AsDuration() > 0 {
			dur = d.AsDuration()
		}
		if d := hu.GetTimeout(); d != nil && d.AsDuration() > 0 {
			timeout = d.AsDuration()
		}
		p.remote = b.cache.remote(hu.GetUri(), dur, timeout)
	default:
		return nil, errors.New("no local_jwks or remote_jwks")
	}
	for _, h := range pc.GetFromHeaders() {
		if h.GetName() == "" {
			return nil, errors.New("from_headers: empty name")
		}
		p.locs = append(p.locs, &location{p: p, header: http.CanonicalHeaderKey(h.GetName()), prefix: h.GetValuePrefix()})
	}
	for _, q := range pc.GetFromParams() {
		p.locs = append(p.locs, &location{p: p, param: q})
	}
	for _, c := range pc.GetFromCookies() {
		p.locs = append(p.locs, &location{p: p, cookie: c})
	}
	if len(p.locs) == 0 {
		// Envoy's defaults.
		p.locs = []*location{{p: p, header: "Authorization", prefix: "Bearer ", bearer: true}, {p: p, param: "access_token"}}
	}
	for _, ch := range pc.GetClaimToHeaders() {
		path := strings.Split(ch.GetClaimName(), ".")
		if len(ch.GetClaimPath()) > 0 {
			path = path[:0]
			for _, s := range ch.GetClaimPath() {
				path = append(path, s.GetKey())
			}
		}
		if ch.GetHeaderName() == "" || len(path) == 0 || path[0] == "" {
			return nil, errors.New("claim_to_headers: header_name and claim_name are required")
		}
		p.claimHeaders = append(p.claimHeaders, claimHeader{header: http.CanonicalHeaderKey(ch.GetHeaderName()), path: path})
	}
	return p, nil
}

// dataSource reads an Envoy DataSource.
func dataSource(s string, b []byte, file string) ([]byte, error) {
	switch {
	case s != "":
		return []byte(s), nil
	case len(b) > 0:
		return b, nil
	case file != "":
		return os.ReadFile(file)
	}
	return nil, errors.New("empty data source")
}

// claimHeaderValue renders a claim for a header: strings as they are,
// numbers and booleans in JSON, arrays of those joined by ","; false when
// the claim is absent, of another type, or not a valid header value.
func claimHeaderValue(claims map[string]any, path []string) (string, bool) {
	var v any = claims
	for _, seg := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[seg]; !ok {
			return "", false
		}
	}
	var s string
	switch x := v.(type) {
	case []any:
		parts := make([]string, 0, len(x))
		for _, e := range x {
			p, ok := scalar(e)
			if !ok {
				return "", false
			}
			parts = append(parts, p)
		}
		s = strings.Join(parts, ",")
	default:
		var ok bool
		if s, ok = scalar(v); !ok {
			return "", false
		}
	}
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", false
	}
	return s, true
}

// scalar formats a string, number or boolean claim.
func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	}
	return "", false
}

// rule is one RequirementRule: a path match and its requirement (nil:
// none).
type rule struct {
	match func(*http.Request) bool
	req   requirement
}

// compileMatch supports the path part of a RouteMatch (prefix, path,
// path_separated_prefix, safe_regex, case_sensitive); header and query
// parameter matches are refused.
func compileMatch(m *routev3.RouteMatch) (func(*http.Request) bool, error) {
	if m == nil {
		return func(*http.Request) bool { return true }, nil
	}
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetGrpc() != nil || m.GetRuntimeFraction() != nil ||
		m.GetTlsContext() != nil || len(m.GetDynamicMetadata()) > 0 || m.GetFilterState() != nil {
		return nil, errors.New("match: only path matching is supported")
	}
	fold := m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	norm := func(s string) string {
		if fold {
			return strings.ToLower(s)
		}
		return s
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		want := norm(ps.Prefix)
		return func(r *http.Request) bool { return strings.HasPrefix(norm(r.URL.Path), want) }, nil
	case *routev3.RouteMatch_Path:
		want := norm(ps.Path)
		return func(r *http.Request) bool { return norm(r.URL.Path) == want }, nil
	case *routev3.RouteMatch_PathSeparatedPrefix:
		want := norm(ps.PathSeparatedPrefix)
		return func(r *http.Request) bool {
			p := norm(r.URL.Path)
			return p == want || strings.HasPrefix(p, want+"/")
		}, nil
	case *routev3.RouteMatch_SafeRegex:
		re, err := regexp.Compile("^(?:" + ps.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("match: %w", err)
		}
		return func(r *http.Request) bool { return re.MatchString(r.URL.Path) }, nil
	case nil:
		return nil, errors.New("match: no path specifier")
	}
	return nil, fmt.Errorf("match: unsupported path specifier %T", m.GetPathSpecifier())
}

// metadataClaims is the payload as metadata shows it: the provider's
// space-delimited string claims become lists ("scope": "a b" is
// ["a", "b"]). The token's own claims are not changed.
func (p *provider) metadataClaims(claims map[string]any) map[string]any {
	out, copied := claims, false
	for _, name := range p.spaceDelimited {
		s, ok := claims[name].(string)
		if !ok {
			continue
		}
		if !copied {
			out, copied = make(map[string]any, len(claims)), true
			for k, v := range claims {
				out[k] = v
			}
		}
		parts := []any{}
		for _, f := range strings.Fields(s) {
			parts = append(parts, f)
		}
		out[name] = parts
	}
	return out
}
