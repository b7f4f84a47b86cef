package engine

import (
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// The field lines of an HTTP/1.1 head, as both fast paths accept them
// (requests in h1server.go, responses in h1clienthead.go): token names,
// no obs-fold, no control bytes in values, at most one Content-Length,
// Transfer-Encoding only as one "chunked", Connection only "close" or
// "keep-alive". Anything else is left to net/http.

// h1Fields is a head's header and what its framing fields say.
type h1Fields struct {
	h       http.Header
	vals    []string // the values' backing array, for reuse (see h1Heads)
	cl      string   // the Content-Length value, when cls == 1
	cls     int      // Content-Length fields seen
	chunked bool     // Transfer-Encoding: chunked (kept out of h, as net/http does)
	closing bool     // Connection: close
	// Requests only: Host (kept out of h, as net/http does).
	host  string
	hosts int
}

// parseFields parses field lines s, each ending in CRLF. A request's
// Host field is taken out of the header, and Upgrade, Expect,
// HTTP2-Settings or more than maxHeadersCount fields refuse it. The
// Trailer field stays in the header (see takeTrailer). The fields go
// into h and their values into vals when they are given (h empty, vals
// of any length: it is reused when its capacity allows); else both are
// made. !ok: net/http must parse the head.
func parseFields(s string, request bool, h http.Header, vals []string) (f h1Fields, ok bool) {
	n := strings.Count(s, "\r\n")
	if request && n > maxHeadersCount {
		return f, false
	}
	if f.h = h; h == nil {
		f.h = make(http.Header, n)
	}
	if cap(vals) >= n {
		vals = vals[:n]
		clear(vals)
	} else {
		vals = make([]string, n) // one backing array for the values
	}
	f.vals = vals
	for k := 0; len(s) > 0; k++ {
		i := strings.Index(s, "\r\n")
		line := s[:i]
		s = s[i+2:]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return f, false
		}
		key := line[:colon]
		if !isToken(key) {
			return f, false // also obs-fold: the line starts with a blank
		}
		v := trimOWS(line[colon+1:])
		for j := 0; j < len(v); j++ {
			if c := v[j]; (c < ' ' && c != '\t') || c == 0x7f {
				return f, false
			}
		}
		if !isCanonicalKey(key) {
			key = textproto.CanonicalMIMEHeaderKey(key)
		}
		switch key {
		case "Transfer-Encoding":
			if f.chunked || !strings.EqualFold(v, "chunked") {
				return f, false
			}
			f.chunked = true
			continue
		case "Content-Length":
			f.cl = v
			f.cls++
		case "Connection":
			switch {
			case strings.EqualFold(v, "close"):
				f.closing = true
			case strings.EqualFold(v, "keep-alive"):
			default:
				return f, false
			}
		}
		if request {
			switch key {
			case "Host":
				f.host = v
				f.hosts++
				continue
			case "Upgrade", "Expect", "Http2-Settings":
				return f, false
			}
		}
		vals[k] = v
		if prev, ok := f.h[key]; ok {
			f.h[key] = append(prev, v)
		} else {
			f.h[key] = vals[k : k+1 : k+1]
		}
	}
	if f.cls > 1 || (f.chunked && f.cls > 0) {
		return f, false
	}
	if p := f.h["Pragma"]; len(p) > 0 && p[0] == "no-cache" && f.h["Cache-Control"] == nil {
		f.h["Cache-Control"] = []string{"no-cache"} // as net/http's fixPragmaCacheControl
	}
	return f, true
}

// contentLength is the single Content-Length value as a length: digits
// only, at most 18 of them.
func (f *h1Fields) contentLength() (int64, bool) {
	cl := f.cl
	if len(cl) == 0 || len(cl) > 18 {
		return 0, false
	}
	for j := 0; j < len(cl); j++ {
		if cl[j] < '0' || cl[j] > '9' {
			return 0, false
		}
	}
	n, _ := strconv.ParseInt(cl, 10, 64)
	return n, true
}

// takeTrailer is net/http's fixTrailer for a chunked message: the names
// its Trailer fields list, canonical, with nil values, the Trailer field
// itself taken out of h (nil: none declared). A message that is not
// chunked keeps its Trailer field in the header and has no trailer.
// !ok: a name net/http refuses there.
func takeTrailer(h http.Header) (trailer http.Header, ok bool) {
	vs, has := h["Trailer"]
	if !has {
		return nil, true
	}
	delete(h, "Trailer")
	for _, v := range vs {
		for _, k := range strings.Split(v, ",") {
			if k = textproto.TrimString(k); k == "" {
				continue
			}
			k = textproto.CanonicalMIMEHeaderKey(k)
			switch k {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				return nil, false
			}
			if trailer == nil {
				trailer = http.Header{}
			}
			trailer[k] = nil
		}
	}
	return trailer, true
}
