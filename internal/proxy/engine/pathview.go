package engine

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/weftmesh/weft/internal/proxy/pathnorm"
)

// canonicalize rewrites the request's target into the chain's canonical
// form (see internal/proxy/pathnorm) before filters and routing run: from
// then on r.URL is the one view of the path that RBAC, the router and the
// upstream share (r.URL.RequestURI() is what goes upstream). It reports
// false when the path cannot be normalised or the method is not upper
// case, as Envoy refuses (the answer is then 400).
func canonicalize(r *http.Request, o pathnorm.Options) bool {
	if strings.ToUpper(r.Method) != r.Method {
		return false
	}
	target := r.RequestURI
	if r.Method == http.MethodConnect || target == "*" {
		return true
	}
	if !strings.HasPrefix(target, "/") {
		// absolute-form ("GET http://host/path"): the parsed path.
		target = r.URL.EscapedPath()
		if r.URL.RawQuery != "" || r.URL.ForceQuery {
			target += "?" + r.URL.RawQuery
		}
	}
	p, q, hasQ := pathnorm.Split(target)
	p, err := o.Path(p)
	if err != nil {
		return false
	}
	setTarget(r.URL, p, q, hasQ)
	r.RequestURI = r.URL.RequestURI()
	return true
}

// setPathQuery points u at an escaped "path?query" exactly as given (no
// reference resolution: "//x" stays a path, not a host).
func setPathQuery(u *url.URL, target string) {
	p, q, hasQ := strings.Cut(target, "?")
	setTarget(u, p, q, hasQ)
}

func setTarget(u *url.URL, p, q string, hasQ bool) {
	u.Opaque, u.Fragment, u.RawFragment = "", "", ""
	u.RawQuery, u.ForceQuery = q, hasQ && q == ""
	if dec, err := url.PathUnescape(p); err == nil {
		u.Path, u.RawPath = dec, p
	} else {
		u.Path, u.RawPath = p, ""
	}
}
