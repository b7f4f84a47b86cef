package route

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// pathKind is how a route matches the path.
type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
)

// routeMatch is a compiled RouteMatch. The path (without query) is matched
// by prefix, exact path or full regex; then every header and query
// parameter matcher must match.
type routeMatch struct {
	kind       pathKind
	value      string
	re         *fullRegex
	ignoreCase bool
	grpc       bool
	headers    []headerMatcher
	query      []queryMatcher
}

// compileRouteMatch compiles m.
func compileRouteMatch(m *routev3.RouteMatch) (routeMatch, error) {
	var out routeMatch
	if m == nil {
		return out, errors.New("match is required")
	}
	if err := checkFields(m, "match"); err != nil {
		return out, err
	}
	out.ignoreCase = m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.kind, out.value = pathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		out.kind, out.value = pathExact, p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileFullRegex(p.SafeRegex)
		if err != nil {
			return out, fmt.Errorf("match.safe_regex: %w", err)
		}
		out.kind, out.re, out.value = pathRegex, re, p.SafeRegex.GetRegex()
	case nil:
		return out, errors.New("match: a path specifier (prefix, path or safe_regex) is required")
	default:
		return out, fmt.Errorf("match: path specifier %T: %w", p, ErrUnsupported)
	}
	out.grpc = m.GetGrpc() != nil
	for i, h := range m.GetHeaders() {
		hm, err := compileHeaderMatcher(h)
		if err != nil {
			return out, fmt.Errorf("match.headers[%d] (%s): %w", i, h.GetName(), err)
		}
		out.headers = append(out.headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qm, err := compileQueryMatcher(q)
		if err != nil {
			return out, fmt.Errorf("match.query_parameters[%d] (%s): %w", i, q.GetName(), err)
		}
		out.query = append(out.query, qm)
	}
	return out, nil
}

// matches reports whether r (with path and query already split) matches.
func (m *routeMatch) matches(r *Request, path, query string) bool {
	switch m.kind {
	case pathPrefix:
		if len(path) < len(m.value) {
			return false
		}
		if m.ignoreCase {
			if !strings.EqualFold(path[:len(m.value)], m.value) {
				return false
			}
		} else if path[:len(m.value)] != m.value {
			return false
		}
	case pathExact:
		if m.ignoreCase {
			if !strings.EqualFold(path, m.value) {
				return false
			}
		} else if path != m.value {
			return false
		}
	case pathRegex:
		if !m.re.match(path) {
			return false
		}
	}
	if m.grpc && !isGRPC(r.Headers.Get("Content-Type")) {
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(r) {
			return false
		}
	}
	for i := range m.query {
		if !m.query[i].matches(query) {
			return false
		}
	}
	return true
}

// isGRPC reports whether a content type is gRPC's.
func isGRPC(ct string) bool {
	const p = "application/grpc"
	if !strings.HasPrefix(ct, p) {
		return false
	}
	return len(ct) == len(p) || ct[len(p)] == '+' || ct[len(p)] == ';'
}

// fullRegex is an Envoy safe regex, which must match the whole input. The
// literal prefix every match starts with is checked first: it rejects most
// inputs without running the regex.
type fullRegex struct {
	re     *regexp.Regexp
	prefix string
}

// match reports whether the whole of s matches.
func (f *fullRegex) match(s string) bool {
	return strings.HasPrefix(s, f.prefix) && f.re.MatchString(s)
}

// compileFullRegex compiles an Envoy safe regex. Go's regexp implements
// RE2 syntax, as Envoy's google_re2 engine.
func compileFullRegex(rm *matcherv3.RegexMatcher) (*fullRegex, error) {
	if err := checkFields(rm, "regex"); err != nil {
		return nil, err
	}
	raw, err := regexp.Compile(rm.GetRegex())
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", rm.GetRegex(), err)
	}
	re, err := regexp.Compile("^(?:" + rm.GetRegex() + ")$")
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", rm.GetRegex(), err)
	}
	// A full match is a match of the unanchored regex starting at 0, so it
	// begins with the unanchored regex's literal prefix.
	prefix, _ := raw.LiteralPrefix()
	return &fullRegex{re: re, prefix: prefix}, nil
}

// stringKind is how a stringMatcher compares.
type stringKind uint8

const (
	strExact stringKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

// stringMatcher is a compiled StringMatcher.
type stringMatcher struct {
	kind       stringKind
	value      string
	re         *fullRegex
	ignoreCase bool
}

// compileStringMatcher compiles sm.
func compileStringMatcher(sm *matcherv3.StringMatcher) (stringMatcher, error) {
	if err := checkFields(sm, "string_match"); err != nil {
		return stringMatcher{}, err
	}
	out := stringMatcher{ignoreCase: sm.GetIgnoreCase()}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.kind, out.value = strExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.kind, out.value = strPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.kind, out.value = strSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.kind, out.value = strContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileFullRegex(p.SafeRegex)
		if err != nil {
			return out, err
		}
		out.kind, out.re, out.ignoreCase = strRegex, re, false
	default:
		return out, fmt.Errorf("string matcher %T: %w", p, ErrUnsupported)
	}
	return out, nil
}

// match reports whether v matches.
func (s *stringMatcher) match(v string) bool {
	switch s.kind {
	case strExact:
		if s.ignoreCase {
			return strings.EqualFold(v, s.value)
		}
		return v == s.value
	case strPrefix:
		if len(v) < len(s.value) {
			return false
		}
		if s.ignoreCase {
			return strings.EqualFold(v[:len(s.value)], s.value)
		}
		return v[:len(s.value)] == s.value
	case strSuffix:
		if len(v) < len(s.value) {
			return false
		}
		if s.ignoreCase {
			return strings.EqualFold(v[len(v)-len(s.value):], s.value)
		}
		return v[len(v)-len(s.value):] == s.value
	case strContains:
		if !s.ignoreCase {
			return strings.Contains(v, s.value)
		}
		for i := 0; i+len(s.value) <= len(v); i++ {
			if strings.EqualFold(v[i:i+len(s.value)], s.value) {
				return true
			}
		}
		return false
	case strRegex:
		return s.re.match(v)
	}
	return false
}

// headerSource says where a header matcher reads its value.
type headerSource uint8

const (
	srcHeader headerSource = iota
	srcMethod
	srcAuthority
	srcScheme
	srcPath
)

// headerKind is what a header matcher checks.
type headerKind uint8

const (
	hdrPresent headerKind = iota
	hdrString
	hdrRange
)

// headerMatcher is a compiled HeaderMatcher.
type headerMatcher struct {
	key          string // canonical header key (srcHeader)
	src          headerSource
	kind         headerKind
	present      bool
	sm           stringMatcher
	lo, hi       int64
	invert       bool
	missingEmpty bool
}

// compileHeaderMatcher compiles h. The deprecated exact/prefix/suffix/
// contains/safe_regex specifiers are accepted as string matches.
func compileHeaderMatcher(h *routev3.HeaderMatcher) (headerMatcher, error) {
	if err := checkFields(h, "header matcher"); err != nil {
		return headerMatcher{}, err
	}
	out := headerMatcher{invert: h.GetInvertMatch(), missingEmpty: h.GetTreatMissingHeaderAsEmpty(), kind: hdrString}
	name := strings.ToLower(h.GetName())
	switch name {
	case "":
		return out, errors.New("header name is required")
	case ":method":
		out.src = srcMethod
	case ":authority", "host":
		out.src = srcAuthority
	case ":scheme":
		out.src = srcScheme
	case ":path":
		out.src = srcPath
	default:
		if strings.HasPrefix(name, ":") {
			return out, fmt.Errorf("pseudo-header %s: %w", name, ErrUnsupported)
		}
		out.key = http.CanonicalHeaderKey(name)
	}
	var err error
	exact := func(kind stringKind, v string) stringMatcher { return stringMatcher{kind: kind, value: v} }
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		out.kind, out.present = hdrPresent, true // Envoy: no specifier means "present"
	case *routev3.HeaderMatcher_PresentMatch:
		out.kind, out.present = hdrPresent, s.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		out.sm, err = compileStringMatcher(s.StringMatch)
	case *routev3.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 deprecated but still accepted, as Envoy does
		out.sm = exact(strExact, s.ExactMatch)
	case *routev3.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 deprecated but still accepted
		out.sm = exact(strPrefix, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 deprecated but still accepted
		out.sm = exact(strSuffix, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 deprecated but still accepted
		out.sm = exact(strContains, s.ContainsMatch)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		out.sm.kind = strRegex
		//lint:ignore SA1019 deprecated but still accepted
		out.sm.re, err = compileFullRegex(s.SafeRegexMatch)
	case *routev3.HeaderMatcher_RangeMatch:
		out.kind, out.lo, out.hi = hdrRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
	default:
		return out, fmt.Errorf("header match %T: %w", s, ErrUnsupported)
	}
	return out, err
}

// value returns the matcher's input: several values of one header are
// joined with ",", as Envoy does.
func (h *headerMatcher) value(r *Request) (string, bool) {
	switch h.src {
	case srcMethod:
		return r.Method, r.Method != ""
	case srcAuthority:
		return r.Host, r.Host != ""
	case srcScheme:
		return r.scheme(), true
	case srcPath:
		return r.Path, r.Path != ""
	}
	vs := r.Headers[h.key]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// matches reports whether r satisfies h (inverted when invert_match is
// set). A missing header matches only inverted matchers (or is read as ""
// with treat_missing_header_as_empty).
func (h *headerMatcher) matches(r *Request) bool {
	v, ok := h.value(r)
	if h.kind == hdrPresent {
		return (ok == h.present) != h.invert
	}
	if !ok && !h.missingEmpty {
		return h.invert
	}
	var m bool
	if h.kind == hdrRange {
		n, err := strconv.ParseInt(v, 10, 64)
		m = err == nil && n >= h.lo && n < h.hi
	} else {
		m = h.sm.match(v)
	}
	return m != h.invert
}

// queryMatcher is a compiled QueryParameterMatcher: the first occurrence
// of the parameter, percent-decoded, must match (or just be present).
type queryMatcher struct {
	name    string
	present bool
	sm      stringMatcher
}

// compileQueryMatcher compiles q.
func compileQueryMatcher(q *routev3.QueryParameterMatcher) (queryMatcher, error) {
	if err := checkFields(q, "query parameter matcher"); err != nil {
		return queryMatcher{}, err
	}
	out := queryMatcher{name: q.GetName()}
	if out.name == "" {
		return out, errors.New("query parameter name is required")
	}
	if sm := q.GetStringMatch(); sm != nil {
		var err error
		out.sm, err = compileStringMatcher(sm)
		return out, err
	}
	out.present = true
	return out, nil
}

// matches reports whether the raw query satisfies q.
func (q *queryMatcher) matches(query string) bool {
	v, ok := queryParam(query, q.name)
	if !ok {
		return false
	}
	return q.present || q.sm.match(v)
}

// queryParam returns the first value of name in a raw query, percent-
// decoded (allocating only when it holds escapes).
func queryParam(query, name string) (string, bool) {
	for query != "" {
		var part string
		part, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(part, "=")
		if k != name && !(strings.IndexByte(k, '%') >= 0 && unescape(k) == name) {
			continue
		}
		return unescape(v), true
	}
	return "", false
}

// unescape percent-decodes s ("+" stays "+", as in Envoy); s itself when it
// holds no escape or a bad one.
func unescape(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	u, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return u
}
