// Package pathnorm normalises request paths the way Envoy's
// HttpConnectionManager does before any filter or route sees them
// (normalize_path, merge_slashes, path_with_escaped_slashes_action), so
// that authorization, routing and the upstream all see one canonical
// path.
//
// Steps, in Envoy's order, on the path without query and fragment (the
// fragment is always dropped, the query is kept untouched):
//
//  1. UnescapeSlashes: %2F and %5C (any case) become "/" and "\".
//  2. Normalize (RFC 3986 with Envoy's extras): "\" becomes "/";
//     percent-encoded unreserved characters are decoded ("%61" → "a",
//     "%2E" → "."); other escapes are kept, hex uppercased ("%2f" →
//     "%2F"); characters that may not appear raw in a path (space, '"',
//     '<', '>', '`', '{', '}', '|', '^', control and non-ASCII bytes) are
//     percent-encoded; dot segments are removed ("/a/./b" → "/a/b",
//     "/a/../b" → "/b", and ".." at the root stays at the root, as in
//     Envoy: "/../a" → "/a").
//  3. MergeSlashes: runs of "/" become one.
//
// A path Envoy refuses to normalise (a malformed escape, an escaped NUL,
// a raw control character) is an error: the connection manager answers
// 400.
package pathnorm

import (
	"errors"
	"strings"
)

// Options select the normalisation steps (all off: the path is only
// stripped of its fragment).
type Options struct {
	// Normalize applies RFC 3986 normalisation (Envoy's normalize_path).
	Normalize bool
	// MergeSlashes collapses runs of slashes (Envoy's merge_slashes).
	MergeSlashes bool
	// UnescapeSlashes decodes %2F and %5C first (Envoy's
	// path_with_escaped_slashes_action UNESCAPE_AND_FORWARD).
	UnescapeSlashes bool
}

// ErrInvalid is returned for a path that cannot be normalised.
var ErrInvalid = errors.New("invalid request path")

// Split cuts a request target into path and query, dropping any
// fragment. hasQuery reports whether a "?" was present.
func Split(target string) (path, query string, hasQuery bool) {
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	path, query, hasQuery = strings.Cut(target, "?")
	return path, query, hasQuery
}

// Path normalises an escaped path (no query, no fragment) that starts
// with "/".
func (o Options) Path(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", ErrInvalid
	}
	if o.UnescapeSlashes {
		p = unescapeSlashes(p)
	}
	if o.Normalize {
		var err error
		if p, err = canonical(p); err != nil {
			return "", err
		}
	}
	if o.MergeSlashes {
		p = mergeSlashes(p)
	}
	return p, nil
}

func unescapeSlashes(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			switch strings.ToUpper(p[i+1 : i+3]) {
			case "2F":
				b.WriteByte('/')
				i += 2
				continue
			case "5C":
				b.WriteByte('\\')
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

const hexDigits = "0123456789ABCDEF"

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// mustEscape: bytes that may not appear raw in a canonical path.
func mustEscape(c byte) bool {
	if c <= 0x20 || c >= 0x7f {
		return true
	}
	switch c {
	case '"', '#', '<', '>', '`', '{', '}', '|', '^', '?':
		return true
	}
	return false
}

// canonical applies step 2 of the package comment.
func canonical(p string) (string, error) {
	if clean(p) {
		return p, nil
	}
	return canonicalSlow(p)
}

// canonicalSlow is canonical without the fast path.
func canonicalSlow(p string) (string, error) {
	// Character pass: one token per output character, so that a decoded
	// "%2E" is a dot for the segment pass while "%2F" stays data.
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\':
			b.WriteByte('/')
		case c == '%':
			if i+2 >= len(p) {
				return "", ErrInvalid
			}
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if !ok1 || !ok2 {
				return "", ErrInvalid
			}
			v := hi<<4 | lo
			if v == 0 {
				return "", ErrInvalid
			}
			if unreserved(v) {
				b.WriteByte(v)
			} else {
				b.WriteByte('%')
				b.WriteByte(hexDigits[v>>4])
				b.WriteByte(hexDigits[v&15])
			}
			i += 2
		case c < 0x20 || c == 0x7f:
			return "", ErrInvalid
		case mustEscape(c):
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		default:
			b.WriteByte(c)
		}
	}
	return removeDots(b.String()), nil
}

// clean reports whether canonical would return p unchanged: no escapes,
// backslashes, characters to escape or dot segments.
func clean(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' || c == '\\' || mustEscape(c) {
			return false
		}
		if c == '.' && p[i-1] == '/' && (i+1 == len(p) || p[i+1] == '/' || p[i+1] == '.' && (i+2 == len(p) || p[i+2] == '/')) {
			return false
		}
	}
	return true
}

// removeDots removes "." and ".." segments from a path starting with "/"
// (RFC 3986 section 5.2.4; ".." at the root stays at the root). A path
// ending in a dot segment keeps its trailing slash.
func removeDots(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			trailing = last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	res := "/" + strings.Join(out, "/")
	if trailing && !strings.HasSuffix(res, "/") {
		res += "/"
	}
	return res
}
