package engine

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"strings"
)

// The upstream HTTP/1.1 fast path's request and response heads (see
// h1client.go): written and parsed here instead of by http.Request.Write
// (which sorts the headers and allocates) and http.ReadResponse, for the
// requests and responses that allow it; anything unusual is left to
// net/http, unchanged.

// writeRequestHead writes req's head to bw as req.Write does for the
// requests h1Transport.fast takes (bodyless, so no Content-Length or
// Transfer-Encoding): the request line, Host, Go's User-Agent unless the
// request has the field (an empty one sends none), Connection: close for
// req.Close, then the headers in map order, values with CR and LF turned
// into spaces and trimmed, fields with invalid names dropped. It reports
// false, having written nothing, for a request req.Write must write
// (opaque URLs, a Host that is not plain ASCII, a control byte in the
// target, a Connection field, a client trace that wants to hear of the
// writing).
func writeRequestHead(bw *bufio.Writer, req *http.Request) bool {
	u := req.URL
	host := req.Host
	if host == "" {
		host = u.Host
	}
	if u.Opaque != "" || !isHost(host) || req.Header["Connection"] != nil {
		return false
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	query := u.ForceQuery || u.RawQuery != ""
	if hasCTL(path) || query && hasCTL(u.RawQuery) {
		return false
	}
	if tr := httptrace.ContextClientTrace(req.Context()); tr != nil &&
		(tr.WroteHeaderField != nil || tr.WroteHeaders != nil || tr.WroteRequest != nil) {
		return false // req.Write reports those
	}
	_, _ = bw.WriteString(req.Method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(path)
	if query {
		_ = bw.WriteByte('?')
		_, _ = bw.WriteString(u.RawQuery)
	}
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	ua := "Go-http-client/1.1" // net/http's default
	if v, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(v) > 0 {
			ua = v[0]
		}
	}
	if ua != "" {
		writeField(bw, "User-Agent", ua)
	}
	if req.Close {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	for k, vs := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !isToken(k) {
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
	_, _ = bw.WriteString("\r\n")
	return true
}

// hasCTL reports whether s has an ASCII control byte (or DEL).
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

// readResponse reads the head of the response to req from br and
// prepares its body: parsed here when the whole head is in the buffer and
// parseResponseHead takes it, else by http.ReadResponse (which then sees
// the head from its first byte). With hs, the response, its header and
// body reader are hs's, reused (see h1Heads).
func readResponse(br *bufio.Reader, req *http.Request, hs *h1Heads) (*http.Response, error) {
	if head := peekResponseHead(br); head != nil {
		if resp, body := parseResponseHead(head, req, hs); resp != nil {
			_, _ = br.Discard(len(head))
			if body != nil {
				body.br = br
				if body.isChunked {
					body.chunked = httputil.NewChunkedReader(br)
				}
				resp.Body = body
			}
			return resp, nil
		}
	}
	return http.ReadResponse(br, req)
}

// peekResponseHead returns the response head (through its empty line)
// once it is in br's buffer, without consuming it; nil when it does not
// fit or the connection failed first (http.ReadResponse then reports it).
func peekResponseHead(br *bufio.Reader) []byte {
	from := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.Index(buf[from:], crlfcrlf); i >= 0 {
			return buf[:from+i+4]
		}
		if len(buf) >= br.Size() {
			return nil
		}
		from = max(0, len(buf)-3)
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil
		}
	}
}

// parseResponseHead parses a response head (ending in its empty line)
// into what http.ReadResponse makes of it, for heads that are a strict
// subset of what that accepts: HTTP/1.1, a three-digit status from 100,
// token field names, no obs-fold, no control bytes in values, at most
// one Content-Length (digits), Transfer-Encoding only as one "chunked"
// and never with Content-Length, Connection only "close" or
// "keep-alive". nil: http.ReadResponse must read it. The body is nil
// when the response has none (resp.Body is then http.NoBody).
func parseResponseHead(head []byte, req *http.Request, hs *h1Heads) (*http.Response, *h1RespBody) {
	s := string(head[:len(head)-2]) // each line with its CRLF
	i := strings.Index(s, "\r\n")
	line := s[:i]
	s = s[i+2:]
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || line[9] < '1' || line[9] > '9' ||
		line[10] < '0' || line[10] > '9' || line[11] < '0' || line[11] > '9' || len(line) > 12 && line[12] != ' ' {
		return nil, nil
	}
	for j := 12; j < len(line); j++ {
		if c := line[j]; (c < ' ' && c != '\t') || c == 0x7f {
			return nil, nil
		}
	}
	code := int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	h, vals := hs.respFields()
	f, ok := parseFields(s, false, h, vals)
	if !ok {
		return nil, nil
	}
	var resp *http.Response
	var rb *h1RespBody
	if hs != nil {
		hs.respVals = f.vals
		resp, rb = &hs.resp, &hs.respBody
	} else {
		resp = new(http.Response)
	}
	length := int64(-1)
	if f.cls == 1 {
		if length, ok = f.contentLength(); !ok {
			return nil, nil
		}
	}
	h, chunked := f.h, f.chunked
	if f.closing {
		delete(h, "Connection") // as net/http's shouldClose
	}
	*resp = http.Response{Status: line[9:], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: http.NoBody, Close: f.closing, Request: req}
	if chunked {
		resp.TransferEncoding = []string{"chunked"}
		if resp.Trailer, ok = takeTrailer(h); !ok {
			return nil, nil
		}
	}
	bodyAllowed := code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
	switch {
	case req.Method == http.MethodHead:
		resp.ContentLength = length
	case !bodyAllowed:
		resp.ContentLength = 0
	case chunked:
		resp.ContentLength = -1
		return resp, setRespBody(rb, h1RespBody{resp: resp, isChunked: true})
	case length == 0:
		resp.ContentLength = 0
	case length > 0:
		resp.ContentLength = length
		return resp, setRespBody(rb, h1RespBody{resp: resp, h1Framing: h1Framing{n: length}})
	default: // delimited by the connection's close
		resp.ContentLength = -1
		resp.Close = true
		return resp, setRespBody(rb, h1RespBody{resp: resp, h1Framing: h1Framing{n: -1}})
	}
	return resp, nil
}

// setRespBody stores b in rb, or in a new h1RespBody when rb is nil.
func setRespBody(rb *h1RespBody, b h1RespBody) *h1RespBody {
	if rb == nil {
		rb = new(h1RespBody)
	}
	*rb = b
	return rb
}

// h1RespBody is a response body read from the connection, as net/http's:
// Content-Length bytes (io.EOF comes with the last of them), a chunked
// body with its trailer, or everything until the connection closes
// (n < 0).
type h1RespBody struct {
	h1Framing
	resp      *http.Response
	isChunked bool
}

// errTrailerEOF is net/http's error for a trailer cut short.
var errTrailerEOF = errors.New("http: unexpected EOF reading trailer")

func (b *h1RespBody) Read(p []byte) (int, error) { return b.read(p, b.readTrailer) }

// Close is a no-op: h1Body decides what becomes of the connection.
func (b *h1RespBody) Close() error { return nil }

// readTrailer reads the chunked body's trailer section into
// resp.Trailer, as net/http's body.readTrailer.
func (b *h1RespBody) readTrailer() error {
	buf, err := b.br.Peek(2)
	if len(buf) == 2 && buf[0] == '\r' && buf[1] == '\n' {
		_, _ = b.br.Discard(2)
		return nil
	}
	if len(buf) < 2 {
		return errTrailerEOF
	}
	if err != nil {
		return err
	}
	if !seeUpcomingDoubleCRLF(b.br) {
		return errors.New("http: suspiciously long trailer after chunked body")
	}
	hdr, err := textproto.NewReader(b.br).ReadMIMEHeader()
	if err != nil {
		if err == io.EOF {
			return errTrailerEOF
		}
		return err
	}
	if b.resp.Trailer == nil {
		b.resp.Trailer = http.Header(hdr)
		return nil
	}
	for k, vs := range hdr {
		b.resp.Trailer[k] = vs
	}
	return nil
}

// seeUpcomingDoubleCRLF reports whether an empty line follows within
// br's buffer (net/http's bound on a trailer's size).
func seeUpcomingDoubleCRLF(br *bufio.Reader) bool {
	for peekSize := 4; ; peekSize++ {
		buf, err := br.Peek(peekSize)
		if bytes.HasSuffix(buf, crlfcrlf) {
			return true
		}
		if err != nil {
			break
		}
	}
	return false
}
