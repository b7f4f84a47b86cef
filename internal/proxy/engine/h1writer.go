package engine

import (
	"bufio"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The fast path's response writer (see h1server.go).

// h1Writer is the fast path's http.ResponseWriter (and http.Flusher).
type h1Writer struct {
	sc          *h1ServerConn
	req         *http.Request
	h           http.Header
	status      int
	wroteHeader bool
	committed   bool // the head is in the write buffer
	chunked     bool
	noBody      bool  // the status allows no body, or HEAD
	cl          int64 // declared Content-Length, -1 without
	written     int64
	pending     []byte // body held back before committing (unknown length)
	closeAfter  bool
	failed      bool     // a write failed
	trailers    []string // declared in the Trailer header
}

func (w *h1Writer) reset(req *http.Request) {
	if w.h == nil {
		w.h = make(http.Header, 8)
	} else {
		clear(w.h)
	}
	p := w.pending[:0]
	*w = h1Writer{sc: w.sc, req: req, h: w.h, pending: p, cl: -1}
}

func (w *h1Writer) Header() http.Header { return w.h }

func (w *h1Writer) WriteHeader(code int) {
	if w.wroteHeader || code < 200 || code > 999 {
		return // 1xx informational answers are not forwarded
	}
	w.wroteHeader, w.status = true, code
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	if v := w.h["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			w.cl = n
		}
	}
}

func (w *h1Writer) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.status == http.StatusNoContent || w.status == http.StatusNotModified {
		return 0, http.ErrBodyNotAllowed
	}
	if w.failed {
		return 0, net.ErrClosed
	}
	if w.noBody { // HEAD: counted, not sent
		w.written += int64(len(p))
		return len(p), nil
	}
	if !w.committed {
		if w.cl < 0 && len(w.pending)+len(p) <= h1MaxPending && w.h["Trailer"] == nil {
			w.pending = append(w.pending, p...)
			w.written += int64(len(p))
			return len(p), nil
		}
		if err := w.commit(false); err != nil {
			return 0, err
		}
	}
	var err error
	n := len(p)
	if w.cl >= 0 && w.written+int64(n) > w.cl {
		n = int(w.cl - w.written)
		err = http.ErrContentLength
	}
	if w.chunked {
		if n > 0 {
			w.writeChunk(p[:n])
		}
	} else {
		_, _ = w.sc.bw.Write(p[:n])
	}
	w.written += int64(n)
	if ferr := w.bufErr(); ferr != nil {
		return 0, ferr
	}
	return n, err
}

func (w *h1Writer) writeChunk(p []byte) {
	bw := w.sc.bw
	var hex [16]byte
	_, _ = bw.Write(strconv.AppendInt(hex[:0], int64(len(p)), 16))
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(p)
	_, _ = bw.WriteString("\r\n")
}

// bufErr reports a failed connection write (bufio.Writer keeps the error).
func (w *h1Writer) bufErr() error {
	if w.failed {
		return net.ErrClosed
	}
	if _, err := w.sc.bw.Write(nil); err != nil {
		w.failed, w.closeAfter = true, true
		return err
	}
	return nil
}

// Flush sends the head and what was written so far.
func (w *h1Writer) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if err := w.commit(false); err != nil {
			return
		}
	}
	if err := w.sc.bw.Flush(); err != nil {
		w.failed, w.closeAfter = true, true
	}
}

// commit writes the status line and headers, choosing the body's framing;
// final: the handler has returned (the held-back body is all of it).
func (w *h1Writer) commit(final bool) error {
	w.committed = true
	h, bw := w.h, w.sc.bw
	if w.req.Close || (w.sc.e != nil && w.sc.e.draining.Load()) {
		w.closeAfter = true
	}
	saysClose := false
	for _, v := range h["Connection"] {
		if tokenListHas(v, "close") {
			saysClose = true
		}
	}
	if saysClose {
		w.closeAfter = true
	} else if w.closeAfter {
		h["Connection"] = []string{"close"}
	}
	bodyAllowed := w.status != http.StatusNoContent && w.status != http.StatusNotModified
	w.trailers = w.trailers[:0]
	for _, v := range h["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				w.trailers = append(w.trailers, textproto.CanonicalMIMEHeaderKey(k))
			}
		}
	}
	var framing string
	switch {
	case !bodyAllowed:
	case w.cl >= 0:
	case final && len(w.trailers) == 0 && (!w.noBody || w.written > 0):
		w.cl = w.written
		framing = "Content-Length"
	case !w.noBody:
		w.chunked = true
		framing = "Transfer-Encoding"
	}
	_, _ = bw.WriteString("HTTP/1.1 ")
	var num [20]byte
	_, _ = bw.Write(strconv.AppendInt(num[:0], int64(w.status), 10))
	_ = bw.WriteByte(' ')
	if t := http.StatusText(w.status); t != "" {
		_, _ = bw.WriteString(t)
	} else {
		_, _ = bw.WriteString("status code ")
		_, _ = bw.Write(strconv.AppendInt(num[:0], int64(w.status), 10))
	}
	_, _ = bw.WriteString("\r\n")
	for k, vs := range h {
		switch {
		case k == "Transfer-Encoding", strings.HasPrefix(k, http.TrailerPrefix), !isToken(k):
			continue
		case k == "Content-Length" && (w.cl < 0 || framing != "" || !bodyAllowed && w.status == http.StatusNoContent):
			continue
		case w.isTrailer(k):
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
	if h["Date"] == nil {
		writeField(bw, "Date", httpDate())
	}
	switch framing {
	case "Content-Length":
		_, _ = bw.WriteString("Content-Length: ")
		_, _ = bw.Write(strconv.AppendInt(num[:0], w.cl, 10))
		_, _ = bw.WriteString("\r\n")
	case "Transfer-Encoding":
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	if len(w.pending) > 0 && !w.noBody {
		p := w.pending
		if w.chunked {
			w.writeChunk(p)
		} else {
			_, _ = bw.Write(p)
		}
	}
	w.pending = w.pending[:0]
	return w.bufErr()
}

func (w *h1Writer) isTrailer(k string) bool {
	for _, t := range w.trailers {
		if t == k {
			return true
		}
	}
	return false
}

// finish completes the response after the handler returned; it reports
// whether the connection may carry another request.
func (w *h1Writer) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if w.commit(true) != nil {
			return false
		}
	}
	if w.chunked {
		bw := w.sc.bw
		_, _ = bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			for _, v := range w.h[k] {
				writeField(bw, k, v)
			}
		}
		for k, vs := range w.h {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && isToken(name) {
				for _, v := range vs {
					writeField(bw, textproto.CanonicalMIMEHeaderKey(name), v)
				}
			}
		}
		_, _ = bw.WriteString("\r\n")
	}
	if !w.noBody && w.cl >= 0 && w.written < w.cl && w.status != http.StatusNoContent && w.status != http.StatusNotModified {
		w.closeAfter = true // a short body: the client can only tell by the close
	}
	return w.bufErr() == nil
}

// writeField writes one header line, as net/http does: CR and LF in the
// value become spaces, then surrounding blanks are trimmed.
func writeField(bw *bufio.Writer, k, v string) {
	_, _ = bw.WriteString(k)
	_, _ = bw.WriteString(": ")
	if hasCRLF(v) {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	v = trimOWS(v)
	_, _ = bw.WriteString(v)
	_, _ = bw.WriteString("\r\n")
}

// hasCRLF reports whether v has a CR or LF (strings.ContainsAny's general
// byte-set search is slower on the hot path).
func hasCRLF(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] == '\r' || v[i] == '\n' {
			return true
		}
	}
	return false
}

// trimOWS strips HTTP's optional white space (spaces and tabs) from both
// ends of v: strings.Trim(v, " \t") without building a byte set.
func trimOWS(v string) string {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// tokenListHas reports whether a comma-separated header value lists tok
// (case-insensitively).
func tokenListHas(v, tok string) bool {
	for _, t := range strings.Split(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), tok) {
			return true
		}
	}
	return false
}

// httpDate is the Date header for now, formatted once a second.
func httpDate() string {
	now := time.Now()
	sec := now.Unix()
	if d := h1DateCache.Load(); d != nil && d.sec == sec {
		return d.s
	}
	d := &h1Date{sec: sec, s: now.UTC().Format(http.TimeFormat)}
	h1DateCache.Store(d)
	return d.s
}

type h1Date struct {
	sec int64
	s   string
}

var h1DateCache atomic.Pointer[h1Date]
