package rbac

import (
	"testing"
)

// TestURITemplate: Envoy's URI template syntax — * one segment, ** the
// rest of the path (the last operator, with an optional literal suffix),
// {name}, {name=*}, {name=**} — matched against whole paths, and the
// templates Envoy refuses.
func TestURITemplate(t *testing.T) {
	for _, tc := range []struct {
		template string
		match    []string
		noMatch  []string
	}{
		{"/api/*/info", []string{"/api/v1/info", "/api/a%2Fb/info"}, []string{"/api/v1/x/info", "/api//info", "/api/info", "/api/v1/info/"}},
		{"/api/**", []string{"/api/", "/api/v1", "/api/v1/x/y"}, []string{"/api", "/apix/v1"}},
		{"/*/foo/**/bar", []string{"/a/foo/b/c/bar", "/a/foo//bar"}, []string{"/a/foo/bar", "/a/b/foo/c/bar"}},
		{"/videos/**.mpd", []string{"/videos/a/b.mpd"}, []string{"/videos/a/b.mp4"}},
		{"/users/{id}/posts/{rest=**}", []string{"/users/7/posts/x/y"}, []string{"/users/7/8/posts/x"}},
		{"/exact", []string{"/exact"}, []string{"/exact/", "/exactly"}},
	} {
		re, err := compileURITemplate(tc.template)
		if err != nil {
			t.Errorf("%s: %v", tc.template, err)
			continue
		}
		for _, p := range tc.match {
			if !re.MatchString(p) {
				t.Errorf("%s does not match %s", tc.template, p)
			}
		}
		for _, p := range tc.noMatch {
			if re.MatchString(p) {
				t.Errorf("%s matches %s", tc.template, p)
			}
		}
	}
	for _, bad := range []string{"api/*", "/a/**/b/*", "/a/**/**", "/a*", "/a/*b", "/a/{x", "/a/{1x}", "/a/{x=v/*}", "/a b", "/a/?q", "/a/**x/{y}"} {
		if _, err := compileURITemplate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
