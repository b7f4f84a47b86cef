package pathnorm

import (
	"errors"
	"strings"
	"testing"
)

var (
	base   = Options{Normalize: true}
	merge  = Options{Normalize: true, MergeSlashes: true}
	decode = Options{Normalize: true, MergeSlashes: true, UnescapeSlashes: true}
)

func TestPath(t *testing.T) {
	tests := []struct {
		opts     Options
		in, want string
	}{
		{Options{}, "/a/../b", "/a/../b"},
		{base, "/a/b/../c", "/a/c"},
		{base, "/a/b/./c", "/a/b/c"},
		{base, "/a/b/../../../../c", "/c"},
		{base, "/../a", "/a"},
		{base, "/a/..\\c", "/c"},
		{base, "/a\\b", "/a/b"},
		{base, "/a/b/%2E%2E/c", "/a/c"},
		{base, "/a/b/.%2e/c", "/a/c"},
		{base, "/%61dmin", "/admin"},
		{base, "/admin%2fx", "/admin%2Fx"},
		{base, "/%c0%af", "/%C0%AF"},
		{base, "/%5c%25", "/%5C%25"},
		{base, "//admin", "//admin"},
		{base, "/./admin", "/admin"},
		{base, "/x/../admin", "/admin"},
		{base, "/ADMIN", "/ADMIN"},
		{base, "/a/.", "/a/"},
		{base, "/a/..", "/"},
		{base, "/a b", "/a%20b"},
		{base, "/a|b^", "/a%7Cb%5E"},
		{base, "/é", "/%C3%A9"},
		{merge, "//admin", "/admin"},
		{merge, "/a///b//", "/a/b/"},
		{merge, "/a/%2f/b", "/a/%2F/b"},
		{decode, "/admin%2fx", "/admin/x"},
		{decode, "/admin%2Fx", "/admin/x"},
		{decode, "/a%5cb", "/a/b"},
		{decode, "/a/%2e%2e%2fadmin", "/admin"},
		{decode, "/x%2f..%2fadmin", "/admin"},
		{decode, "%2fadmin", ""},
		{Options{UnescapeSlashes: true}, "/a%2F", "/a/"},
	}
	for _, tt := range tests {
		got, err := tt.opts.Path(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("%+v Path(%q) = %q, want an error", tt.opts, tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%+v Path(%q) = %q, %v; want %q", tt.opts, tt.in, got, err, tt.want)
		}
	}
}

func TestPathInvalid(t *testing.T) {
	for _, in := range []string{"", "admin", "/xyz/.%00../abc", "/xyz/AAAAA%%0000/abc", "/a%", "/a%2", "/a%zz", "/a\x01b"} {
		if got, err := base.Path(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("Path(%q) = %q, %v; want ErrInvalid", in, got, err)
		}
	}
}

func TestSplit(t *testing.T) {
	for _, tt := range []struct{ in, path, query string }{
		{"/admin#x", "/admin", ""},
		{"/a?b=c#d", "/a", "b=c"},
		{"/a#b?c", "/a", ""},
	} {
		p, q, _ := Split(tt.in)
		if p != tt.path || q != tt.query {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", tt.in, p, q, tt.path, tt.query)
		}
	}
}

// FuzzPath: normalisation never panics, is idempotent, and its output
// has no dot segments, backslashes, or (with merging) double slashes.
func FuzzPath(f *testing.F) {
	for _, s := range []string{"/a/../b", "//admin", "/%61dmin", "/a%2fb", "/a\\b", "/%2e%2e/x", "/a/./b/../../c"} {
		f.Add(s, true, true, true)
	}
	f.Fuzz(func(t *testing.T, p string, norm, merge, unesc bool) {
		if len(p) > 0 && p[0] == '/' && clean(p) {
			if slow, err := canonicalSlow(p); err != nil || slow != p {
				t.Fatalf("fast path keeps %q, the full normalisation gives %q, %v", p, slow, err)
			}
		}
		o := Options{Normalize: norm, MergeSlashes: merge, UnescapeSlashes: unesc}
		got, err := o.Path(p)
		if err != nil {
			return
		}
		if !norm {
			return
		}
		again, err := Options{Normalize: true, MergeSlashes: merge}.Path(got)
		if err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", p, got, again, err)
		}
		for _, seg := range strings.Split(got, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q -> %q keeps a dot segment", p, got)
			}
		}
		if strings.Contains(got, "\\") || (merge && strings.Contains(got, "//")) {
			t.Fatalf("%q -> %q", p, got)
		}
	})
}

func BenchmarkPath(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := base.Path("/api/v1/users/42"); err != nil {
			b.Fatal(err)
		}
	}
}
