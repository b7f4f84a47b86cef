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
	cl      string // the Content-Length value, when cls == 1
	cls     int    // Content-Length fields seen
	chunked bool   // Transfer-Encoding: chunked (kept out of h, as net/http does)
	closing bool   // Connection: close
	// Requests only: Host (kept out of h) and the Trailer values (kept
	// out of h; net/http has them in Request.Trailer only).
	host    string
	hosts   int
	trailer []string
}

// parseFields parses field lines s, each ending in CRLF. A request's
// Host and Trailer fields are taken out of the header, and Upgrade,
// Expect and HTTP2-Settings refuse it, and so do more than
// maxHeadersCount fields; a response keeps its Trailer
// field (see trailerKeys). !ok: net/http must parse the head.
func parseFields(s string, request bool) (f h1Fields, ok bool) {
	n := strings.Count(s, "\r\n")
	if request && n > maxHeadersCount {
		return f, false
	}
	f.h = make(http.Header, n)
	vals := make([]string, n) // one backing array for the values
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
			case "Trailer":
				f.trailer = append(f.trailer, v)
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

// trailerKeys is the trailer a chunked message declares in its Trailer
// field values, as net/http's fixTrailer makes it: each listed name
// canonical, with a nil value (nil: none declared). !ok: a name net/http
// refuses there.
func trailerKeys(vs []string) (trailer http.Header, ok bool) {
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
