package rbac

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
)

// Envoy's URI template path matcher (envoy.path.match.uri_template), as
// istiod uses it for AuthorizationPolicy path templates: a template is
// literal path text and operators, each a whole path segment — * (one
// segment: one or more path characters, no '/'), ** (any text to the end
// of the path, '/' included; the last operator, and it may carry a
// literal suffix, as "/**.mpd"), {name} and {name=*} (as *), {name=**}
// (as **). The request's path without its query is matched, as
// url_path's is.

const (
	// pathChars are the characters a template's literals and a matched
	// segment may hold (RFC 3986 pchar, '%' of escapes included).
	pathChars = `a-zA-Z0-9\-._~%!$&'()+,;:@=`
	segmentRE = `[` + pathChars + `]+`
	textRE    = `[` + pathChars + `/]*`
)

var (
	templateVariable = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]*$`)
	// templateLiteral is one literal character of a template.
	templateLiteral = regexp.MustCompile(`^[` + pathChars + `/]$`)
)

func uriTemplateRule(tc *corev3.TypedExtensionConfig) (matcher, error) {
	cfg := &uritemplatev3.UriTemplateMatchConfig{}
	if a := tc.GetTypedConfig(); a == nil || !a.MessageIs(cfg) {
		return nil, fmt.Errorf("uri_template %q (%s) is not supported (envoy.path.match.uri_template.uri_template_matcher's UriTemplateMatchConfig is)",
			tc.GetName(), a.GetTypeUrl())
	} else if err := a.UnmarshalTo(cfg); err != nil {
		return nil, fmt.Errorf("uri_template: %w", err)
	}
	re, err := compileURITemplate(cfg.GetPathTemplate())
	if err != nil {
		return nil, fmt.Errorf("uri_template %q: %w", cfg.GetPathTemplate(), err)
	}
	return funcMatcher(func(in *Input) bool { return in.Request != nil && re.MatchString(RequestPath(in.Request)) }), nil
}

// compileURITemplate is a template as an anchored regular expression.
func compileURITemplate(t string) (*regexp.Regexp, error) {
	if !strings.HasPrefix(t, "/") {
		return nil, errors.New("a template must start with /")
	}
	var b strings.Builder
	b.WriteString("^")
	sawText := false // a ** came: no operator may follow
	for i := 0; i < len(t); {
		atSegment := i == 0 || t[i-1] == '/'
		switch c := t[i]; {
		case strings.HasPrefix(t[i:], "**"):
			if !atSegment || sawText {
				return nil, errors.New("** must start a path segment and be the last operator")
			}
			b.WriteString(textRE)
			sawText = true
			i += 2
		case c == '*' || c == '{':
			glob, n := segmentRE, 1
			if c == '{' {
				end := strings.IndexByte(t[i:], '}')
				if end < 0 {
					return nil, errors.New("a variable is not closed with }")
				}
				name, pattern, hasPattern := strings.Cut(t[i+1:i+end], "=")
				if !templateVariable.MatchString(name) {
					return nil, fmt.Errorf("variable name %q is not valid", name)
				}
				switch {
				case !hasPattern || pattern == "*":
				case pattern == "**":
					glob = textRE
				default:
					return nil, fmt.Errorf("variable pattern %q is not supported (* and ** are)", pattern)
				}
				n = end + 1
			}
			if !atSegment || sawText {
				return nil, errors.New("an operator must be a whole path segment, and none may follow **")
			}
			if glob == textRE {
				sawText = true
			} else if i+n < len(t) && t[i+n] != '/' {
				return nil, errors.New("* must be a whole path segment")
			}
			b.WriteString(glob)
			i += n
		case templateLiteral.MatchString(t[i : i+1]):
			b.WriteString(regexp.QuoteMeta(string(c)))
			i++
		default:
			return nil, fmt.Errorf("%q may not appear in a template", c)
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}
