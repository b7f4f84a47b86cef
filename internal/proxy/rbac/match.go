package rbac

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
)

// stringMatcher is a compiled envoy.type.matcher.v3.StringMatcher.
type stringMatcher struct {
	kind       byte // 'e'xact, 'p'refix, 's'uffix, 'c'ontains, 'r'egex
	value      string
	ignoreCase bool
	re         *regexp.Regexp
}

func compileString(m *matcherv3.StringMatcher) (*stringMatcher, error) {
	if m == nil {
		return nil, fmt.Errorf("string matcher is missing")
	}
	sm := &stringMatcher{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.kind, sm.value = 'e', p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.kind, sm.value = 'p', p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.kind, sm.value = 's', p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.kind, sm.value = 'c', p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return nil, err
		}
		sm.kind, sm.re = 'r', re
	default:
		return nil, fmt.Errorf("string matcher %T is not supported (exact, prefix, suffix, contains, safe_regex)", p)
	}
	if sm.ignoreCase && sm.kind != 'r' {
		sm.value = strings.ToLower(sm.value)
	}
	return sm, nil
}

// compileRegex compiles an RE2 pattern that must match the whole input,
// as Envoy's safe_regex does.
func compileRegex(r *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + r.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("safe_regex %q: %w", r.GetRegex(), err)
	}
	return re, nil
}

func (m *stringMatcher) match(s string) bool {
	if m.kind == 'r' {
		return m.re.MatchString(s)
	}
	if m.ignoreCase {
		s = strings.ToLower(s)
	}
	switch m.kind {
	case 'e':
		return s == m.value
	case 'p':
		return strings.HasPrefix(s, m.value)
	case 's':
		return strings.HasSuffix(s, m.value)
	case 'c':
		return strings.Contains(s, m.value)
	}
	return false
}

// headerMatcher is a compiled envoy.config.route.v3.HeaderMatcher.
type headerMatcher struct {
	name    string
	str     *stringMatcher
	present *bool
	invert  bool
	missing bool // treat_missing_header_as_empty
}

func compileHeader(h *routev3.HeaderMatcher) (*headerMatcher, error) {
	hm := &headerMatcher{name: strings.ToLower(h.GetName()), invert: h.GetInvertMatch(), missing: h.GetTreatMissingHeaderAsEmpty()}
	if hm.name == "" {
		return nil, fmt.Errorf("header matcher without a name")
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_StringMatch:
		hm.str, err = compileString(s.StringMatch)
	case *routev3.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		hm.str = &stringMatcher{kind: 'e', value: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		hm.str = &stringMatcher{kind: 'p', value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		hm.str = &stringMatcher{kind: 's', value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		hm.str = &stringMatcher{kind: 'c', value: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		var re *regexp.Regexp
		//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
		re, err = compileRegex(s.SafeRegexMatch)
		hm.str = &stringMatcher{kind: 'r', re: re}
	case *routev3.HeaderMatcher_PresentMatch:
		v := s.PresentMatch
		hm.present = &v
	case nil:
		v := true // no specifier: the header must be present
		hm.present = &v
	default:
		return nil, fmt.Errorf("header %s: match %T is not supported", hm.name, s)
	}
	if err != nil {
		return nil, fmt.Errorf("header %s: %w", hm.name, err)
	}
	return hm, nil
}

// headerValue returns a request header as Envoy's matchers see it: pseudo
// headers from the request line, several values joined with ",".
func headerValue(r *http.Request, name string) (string, bool) {
	switch name {
	case ":authority", "host":
		return r.Host, r.Host != ""
	case ":method":
		return r.Method, true
	case ":path":
		return r.URL.RequestURI(), true
	case ":scheme":
		if r.TLS != nil {
			return "https", true
		}
		return "http", true
	}
	vs, ok := r.Header[http.CanonicalHeaderKey(name)]
	if !ok {
		return "", false
	}
	return strings.Join(vs, ","), true
}

// match applies Envoy's HeaderUtility::matchHeaders rules; a connection
// without a request (network RBAC) has no headers.
func (m *headerMatcher) match(r *http.Request) bool {
	var v string
	ok := false
	if r != nil {
		v, ok = headerValue(r, m.name)
	}
	if !ok && !m.missing {
		if m.present != nil {
			return *m.present == m.invert
		}
		return false
	}
	var hit bool
	if m.present != nil {
		hit = *m.present
	} else {
		hit = m.str.match(v)
	}
	return hit != m.invert
}

// valueMatcher is a compiled envoy.type.matcher.v3.ValueMatcher over the
// Go values filters store as metadata (string, bool, numbers, []string,
// []any, map[string]any).
type valueMatcher func(v any, ok bool) bool

func compileValue(m *matcherv3.ValueMatcher) (valueMatcher, error) {
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_NullMatch_:
		return func(v any, ok bool) bool { return !ok || v == nil }, nil
	case *matcherv3.ValueMatcher_PresentMatch:
		want := p.PresentMatch
		return func(v any, ok bool) bool { return (ok && v != nil) == want }, nil
	case *matcherv3.ValueMatcher_BoolMatch:
		want := p.BoolMatch
		return func(v any, ok bool) bool { b, isB := v.(bool); return ok && isB && b == want }, nil
	case *matcherv3.ValueMatcher_StringMatch:
		sm, err := compileString(p.StringMatch)
		if err != nil {
			return nil, err
		}
		return func(v any, ok bool) bool { s, isS := v.(string); return ok && isS && sm.match(s) }, nil
	case *matcherv3.ValueMatcher_DoubleMatch:
		dm := p.DoubleMatch
		return func(v any, ok bool) bool {
			f, isF := toFloat(v)
			if !ok || !isF {
				return false
			}
			switch d := dm.GetMatchPattern().(type) {
			case *matcherv3.DoubleMatcher_Exact:
				return f == d.Exact
			case *matcherv3.DoubleMatcher_Range:
				return f >= d.Range.GetStart() && f < d.Range.GetEnd()
			}
			return false
		}, nil
	case *matcherv3.ValueMatcher_ListMatch:
		inner, err := compileValue(p.ListMatch.GetOneOf())
		if err != nil {
			return nil, fmt.Errorf("list_match: %w", err)
		}
		return func(v any, ok bool) bool {
			if !ok {
				return false
			}
			switch l := v.(type) {
			case []any:
				for _, e := range l {
					if inner(e, true) {
						return true
					}
				}
				return false
			case []string:
				for _, e := range l {
					if inner(e, true) {
						return true
					}
				}
				return false
			case string:
				// A single-valued claim is a one-element list, as Istio's
				// authentication filter stores it.
				return inner(l, true)
			}
			return false
		}, nil
	case *matcherv3.ValueMatcher_OrMatch:
		var ms []valueMatcher
		for _, vm := range p.OrMatch.GetValueMatchers() {
			c, err := compileValue(vm)
			if err != nil {
				return nil, err
			}
			ms = append(ms, c)
		}
		return func(v any, ok bool) bool {
			for _, m := range ms {
				if m(v, ok) {
					return true
				}
			}
			return false
		}, nil
	}
	return nil, fmt.Errorf("value matcher %T is not supported", m.GetMatchPattern())
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	}
	return 0, false
}

// metadataMatcher is a compiled envoy.type.matcher.v3.MetadataMatcher.
type metadataMatcher struct {
	filter string
	path   []string
	value  valueMatcher
	invert bool
}

func compileMetadata(m *matcherv3.MetadataMatcher) (*metadataMatcher, error) {
	mm := &metadataMatcher{filter: m.GetFilter(), invert: m.GetInvert()}
	if mm.filter == "" || len(m.GetPath()) == 0 {
		return nil, fmt.Errorf("metadata matcher needs a filter and a path")
	}
	for _, s := range m.GetPath() {
		mm.path = append(mm.path, s.GetKey())
	}
	v, err := compileValue(m.GetValue())
	if err != nil {
		return nil, fmt.Errorf("metadata %s%v: %w", mm.filter, mm.path, err)
	}
	mm.value = v
	return mm, nil
}

func (m *metadataMatcher) match(md map[string]map[string]any) bool {
	v, ok := httpfilter.MetadataValue(md, m.filter, m.path)
	return m.value(v, ok) != m.invert
}
