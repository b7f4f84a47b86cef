package engine

import (
	"net/http"
	"net/url"
	"strings"
)

// h1Heads is what one fast-path connection's requests, and the upstream
// responses read for them, are parsed into. A connection's requests come
// one after another, so each request reuses the previous one's
// http.Request, URL, header map and value array, and the upstream
// response read for it reuses the previous response's (h1Conn.roundTrip
// does so when it runs on the downstream connection's goroutine and
// context, see watchCancel). Header maps keep their storage when cleared,
// so a request on a kept-alive connection allocates only its head's
// string and what the handler adds: about a kilobyte less per request
// and sidecar than fresh maps and structs, which is the GC work behind
// the sidecar's tail latency.
//
// A request handed to something that may still read it after the
// handler returns (a transport other than the in-place HTTP/1.1 fast
// path) escapes: the connection then drops its heads and makes new ones
// (markEscaped).
type h1Heads struct {
	req     http.Request
	url     url.URL
	reqH    http.Header
	reqVals []string

	resp     http.Response
	respH    http.Header
	respVals []string
	respBody h1RespBody
	body     h1Body
}

// reqFields returns the request header map (emptied) and value array to
// parse the next request into; nil heads: none (parseFields makes them).
func (hs *h1Heads) reqFields() (http.Header, []string) {
	if hs == nil {
		return nil, nil
	}
	return emptied(&hs.reqH), hs.reqVals
}

// respFields is reqFields for the upstream response.
func (hs *h1Heads) respFields() (http.Header, []string) {
	if hs == nil {
		return nil, nil
	}
	return emptied(&hs.respH), hs.respVals
}

// emptied clears *h, making it first if need be.
func emptied(h *http.Header) http.Header {
	if *h == nil {
		*h = make(http.Header, 16)
	} else {
		clear(*h)
	}
	return *h
}

// markEscaped records that r (or its header map) may be read after the
// handler returns, so that its connection does not reuse them.
func markEscaped(r *http.Request) {
	if sc, _ := r.Context().Value(h1ServerKey{}).(*h1ServerConn); sc != nil {
		sc.escaped = true
	}
}

// parseTarget sets u to what url.ParseRequestURI makes of an origin-form
// target (it starts with '/' and holds no control bytes or spaces),
// without allocating when the path needs no unescaping or escaping (then
// RawPath is empty and Path is the target's path). !ok: the target is
// refused.
func parseTarget(target string, u *url.URL) bool {
	path, query, hasQuery := strings.Cut(target, "?")
	for i := 0; i < len(path); i++ {
		if !plainPathByte[path[i]] {
			p, err := url.ParseRequestURI(target)
			if err != nil {
				return false
			}
			*u = *p
			return true
		}
	}
	*u = url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	return true
}

// plainPathByte marks the bytes url.URL keeps as they are in both
// directions in a path: unescaping changes nothing ('%' is absent) and
// EscapedPath escapes none of them (so RawPath stays empty).
var plainPathByte = alnumAnd("-._~$&+,/:;=@")
