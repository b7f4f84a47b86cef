package route

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// redirect is a compiled RedirectAction.
type redirect struct {
	scheme           string
	host             string
	port             string // ":8443" or ""
	path             string
	pathHasQuery     bool
	hasPrefixRewrite bool
	prefixRewrite    string
	regexRewrite     *regexp.Regexp
	regexSub         string
	stripQuery       bool
	code             int
	// toHTTPS is a virtual host's require_tls redirect: https, the Host
	// as received (its port too) and the request's path and query.
	toHTTPS bool
}

// redirectCodes maps Envoy's redirect response codes to statuses.
var redirectCodes = map[routev3.RedirectAction_RedirectResponseCode]int{
	routev3.RedirectAction_MOVED_PERMANENTLY:  http.StatusMovedPermanently,
	routev3.RedirectAction_FOUND:              http.StatusFound,
	routev3.RedirectAction_SEE_OTHER:          http.StatusSeeOther,
	routev3.RedirectAction_TEMPORARY_REDIRECT: http.StatusTemporaryRedirect,
	routev3.RedirectAction_PERMANENT_REDIRECT: http.StatusPermanentRedirect,
}

// compileRedirect compiles a redirect action.
func compileRedirect(r *routev3.RedirectAction) (*redirect, error) {
	if err := checkFields(r, "redirect"); err != nil {
		return nil, err
	}
	out := &redirect{host: r.GetHostRedirect(), stripQuery: r.GetStripQuery()}
	code, ok := redirectCodes[r.GetResponseCode()]
	if !ok {
		return nil, fmt.Errorf("redirect.response_code %v: %w", r.GetResponseCode(), ErrUnsupported)
	}
	out.code = code
	switch {
	case r.GetSchemeRedirect() != "":
		out.scheme = strings.ToLower(r.GetSchemeRedirect())
	case r.GetHttpsRedirect():
		out.scheme = "https"
	}
	if p := r.GetPortRedirect(); p != 0 {
		out.port = ":" + strconv.FormatUint(uint64(p), 10)
	}
	switch p := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		out.path, out.pathHasQuery = p.PathRedirect, strings.Contains(p.PathRedirect, "?")
	case *routev3.RedirectAction_PrefixRewrite:
		out.hasPrefixRewrite, out.prefixRewrite = true, p.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		var err error
		if out.regexRewrite, out.regexSub, err = compileRegexRewrite(p.RegexRewrite); err != nil {
			return nil, fmt.Errorf("redirect.regex_rewrite: %w", err)
		}
	case nil:
	default:
		return nil, fmt.Errorf("redirect: path rewrite %T: %w", p, ErrUnsupported)
	}
	return out, nil
}

// RedirectCode is the status of a redirect route (0 for other routes).
func (rt *Route) RedirectCode() int {
	if rt.redirect == nil {
		return 0
	}
	return rt.redirect.code
}

// RedirectFor computes the Location and status of a redirect route for r,
// as Envoy does: scheme, host and port are replaced when configured; a
// port in the request's Host is dropped when a new port is set or when
// the scheme changes away from the port's default scheme; the path is
// replaced, or its matched prefix or regex rewritten; the query is kept
// unless strip_query (a path_redirect with its own query always wins).
// A virtual host's require_tls redirect is https://<Host><path and query>.
// ok is false for routes that do not redirect.
func (rt *Route) RedirectFor(r *Request) (location string, code int, ok bool) {
	rd := rt.redirect
	if rd == nil {
		return "", 0, false
	}
	if rd.toHTTPS {
		return "https://" + r.Host + r.Path, rd.code, true
	}
	scheme := rd.scheme
	if scheme == "" {
		scheme = r.scheme()
	}
	host := rd.host
	if host == "" {
		host = redirectHost(r.Host, r.scheme(), scheme, rd.port)
	}
	var path string
	switch {
	case rd.path != "" && rd.pathHasQuery:
		path = rd.path
	case rd.path != "":
		path = rd.path
		if i := strings.IndexByte(r.Path, '?'); i >= 0 {
			path += r.Path[i:]
		}
	case rd.hasPrefixRewrite || rd.regexRewrite != nil:
		p, q, hasQ := strings.Cut(r.Path, "?")
		if rd.regexRewrite != nil {
			p = rd.regexRewrite.ReplaceAllString(p, rd.regexSub)
		} else if rt.match.kind == pathPrefix && len(p) >= len(rt.match.value) {
			p = rd.prefixRewrite + p[len(rt.match.value):]
		} else {
			p = rd.prefixRewrite
		}
		path = p
		if hasQ {
			path += "?" + q
		}
	default:
		path = r.Path
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	if !rd.pathHasQuery && rd.stripQuery {
		path, _, _ = strings.Cut(path, "?")
	}
	return scheme + "://" + host + rd.port + path, rd.code, true
}

// redirectHost is the request's host for a redirect that keeps it: its
// port is dropped when a new port is set, or when the scheme changes and
// the port is the old scheme's default.
func redirectHost(host, oldScheme, newScheme, newPort string) string {
	end := -1
	if strings.HasPrefix(host, "[") {
		if i := strings.LastIndex(host, "]:"); i >= 0 {
			end = i + 1
		}
	} else {
		end = strings.LastIndexByte(host, ':')
	}
	if end < 0 {
		return host
	}
	port := host[end:]
	drop := newPort != ""
	if newScheme != oldScheme {
		drop = drop || (oldScheme == "https" && port == ":443") || (oldScheme == "http" && port == ":80")
	}
	if drop {
		return host[:end]
	}
	return host
}

// HashKind is what a hash policy hashes.
type HashKind uint8

const (
	// HashHeader hashes a request header's values.
	HashHeader HashKind = iota + 1
	// HashCookie hashes a cookie's value.
	HashCookie
	// HashSourceIP hashes the downstream address.
	HashSourceIP
	// HashQueryParameter hashes a query parameter's value.
	HashQueryParameter
)

// HashPolicy is one RouteAction.hash_policy entry.
type HashPolicy struct {
	Kind HashKind
	// Name is the canonical header key, the cookie name or the query
	// parameter name.
	Name string
	// CookieTTL, CookiePath and CookieAttributes describe the cookie the
	// proxy should set when the request has none and CookieTTL > 0 (Envoy
	// generates it); with no TTL a missing cookie simply gives no hash.
	CookieTTL        time.Duration
	CookiePath       string
	CookieAttributes [][2]string
	// Terminal stops evaluation when this policy produced a hash.
	Terminal bool
}

// compileHashPolicy compiles one hash policy.
func compileHashPolicy(hp *routev3.RouteAction_HashPolicy) (HashPolicy, error) {
	if err := checkFields(hp, "hash policy"); err != nil {
		return HashPolicy{}, err
	}
	out := HashPolicy{Terminal: hp.GetTerminal()}
	switch p := hp.GetPolicySpecifier().(type) {
	case *routev3.RouteAction_HashPolicy_Header_:
		if err := checkFields(p.Header, "header"); err != nil {
			return out, err
		}
		out.Kind, out.Name = HashHeader, http.CanonicalHeaderKey(p.Header.GetHeaderName())
	case *routev3.RouteAction_HashPolicy_Cookie_:
		if err := checkFields(p.Cookie, "cookie"); err != nil {
			return out, err
		}
		out.Kind, out.Name, out.CookiePath = HashCookie, p.Cookie.GetName(), p.Cookie.GetPath()
		out.CookieTTL = p.Cookie.GetTtl().AsDuration()
		for _, a := range p.Cookie.GetAttributes() {
			out.CookieAttributes = append(out.CookieAttributes, [2]string{a.GetName(), a.GetValue()})
		}
	case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
		if !p.ConnectionProperties.GetSourceIp() {
			return out, fmt.Errorf("connection_properties without source_ip: %w", ErrUnsupported)
		}
		out.Kind = HashSourceIP
	case *routev3.RouteAction_HashPolicy_QueryParameter_:
		out.Kind, out.Name = HashQueryParameter, p.QueryParameter.GetName()
	default:
		return out, fmt.Errorf("hash policy %T: %w", p, ErrUnsupported)
	}
	if out.Name == "" && out.Kind != HashSourceIP {
		return out, fmt.Errorf("hash policy: a name is required")
	}
	return out, nil
}

// FNV-1a, 64 bits.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// fnv adds s to the FNV-1a state h.
func fnv(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// HashKey computes the consistent-hash key for r from the route's hash
// policies, combining several as Envoy does (rotate left by one, xor) and
// stopping after a terminal policy that produced a hash. ok is false when
// no policy produced one (the load balancer then picks at random). The
// common path does not allocate.
func (rt *Route) HashKey(r *Request) (uint64, bool) {
	var hash uint64
	var have bool
	for i := range rt.HashPolicies {
		h, ok := rt.HashPolicies[i].hash(r)
		if ok {
			if have {
				hash = (hash<<1 | hash>>63) ^ h
			} else {
				hash, have = h, true
			}
		}
		if have && rt.HashPolicies[i].Terminal {
			break
		}
	}
	return hash, have
}

// hash evaluates one policy.
func (p *HashPolicy) hash(r *Request) (uint64, bool) {
	switch p.Kind {
	case HashHeader:
		vs := r.Headers[p.Name]
		switch len(vs) {
		case 0:
			return 0, false
		case 1:
			return fnv(fnvOffset, vs[0]), true
		}
		sorted := slices.Clone(vs) // Envoy hashes the values sorted
		slices.Sort(sorted)
		h := uint64(fnvOffset)
		for _, v := range sorted {
			h = fnv(fnv(h, v), "\x00")
		}
		return h, true
	case HashCookie:
		v, ok := cookieValue(r.Headers["Cookie"], p.Name)
		if !ok {
			return 0, false
		}
		return fnv(fnvOffset, v), true
	case HashSourceIP:
		if !r.SourceIP.IsValid() {
			return 0, false
		}
		var buf [64]byte
		return fnv(fnvOffset, unsafeString(r.SourceIP.Unmap().AppendTo(buf[:0]))), true
	case HashQueryParameter:
		_, q := splitPath(r.Path)
		v, ok := queryParam(q, p.Name)
		if !ok {
			return 0, false
		}
		return fnv(fnvOffset, v), true
	}
	return 0, false
}

// cookieValue finds a cookie in Cookie header values without allocating.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && k == name {
				if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v, true
			}
		}
	}
	return "", false
}
