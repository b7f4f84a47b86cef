package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The downstream HTTP/1.1 fast path. Plain HTTP/1.1 keep-alive requests
// are read, handed to serveHTTP and answered on the connection's own
// goroutine, with pooled buffers: no background read goroutine per
// request, no per-request deadline juggling and response-writer
// machinery, as net/http's server has.
//
// Only requests whose whole head is in the read buffer and that parse as
// a strict subset of what net/http accepts are served here. Anything else
// — the h2c preface, Upgrade, Expect, CONNECT, absolute-form or "*"
// targets, HTTP/1.0, larger heads, anything malformed — hands the
// connection over to the listener's http.Server at a request boundary:
// the bytes peeked so far are replayed (chainConn.r), so net/http sees the
// request from its first byte, and answers or rejects it as it always
// did (400, 431, 505 …).
//
// Differences from net/http's server: a client going away is noticed by
// a watch started 100 ms into a request (once its body has been read),
// not by a read running all along (see h1WatchDelay), and responses get
// no Content-Type sniffing.

// Fast-path limits, as the listener's http.Server has them.
const (
	h1ReadBuf       = 4 << 10 // heads larger than this go to net/http
	h1WriteBuf      = 4 << 10
	h1HeaderTimeout = 30 * time.Second // http.Server.ReadHeaderTimeout
	h1IdleTimeout   = time.Hour        // http.Server.IdleTimeout
	// h1IdleSlack: the idle deadline is only moved when it is this much
	// closer than h1IdleTimeout, which saves a timer update per request.
	h1IdleSlack = time.Minute
	// h1MaxDiscard is the most of an unread request body discarded to
	// keep the connection (net/http's maxPostHandlerReadBytes).
	h1MaxDiscard = 256 << 10
	// h1MaxPending is how much of a response of unknown length is held
	// back to send it with a Content-Length (net/http's bufferBeforeChunkingSize).
	h1MaxPending = 2048
)

var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1ReadBuf) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1WriteBuf) }}
)

// Connection states (h1ServerConn.state) for drain.
const (
	h1Active int32 = iota // reading a request or serving it
	h1Idle                // waiting for the next request of a keep-alive connection
	h1Closed              // closed by drain while idle
)

// h1ServerConn is one downstream connection on the fast path.
type h1ServerConn struct {
	e       *Engine
	cc      *chainConn
	handler http.Handler
	br      *bufio.Reader
	bw      *bufio.Writer
	ctx     context.Context
	// tmpl is an empty request carrying ctx: parseH1Head copies it, so
	// requests get the connection's context without WithContext's copy.
	tmpl   *http.Request
	remote string
	state  atomic.Int32
	// deadline is the read deadline currently set (zero: none).
	deadline time.Time
	w        h1Writer
	// heads is what requests and their upstream responses are parsed
	// into, reused from one request to the next unless the request
	// escaped (see h1Heads).
	heads   *h1Heads
	escaped bool
	// upstreamLocal is the local address of the upstream connection the
	// in-place fast path last used (watchCancel sets it, forward takes
	// it for %UPSTREAM_LOCAL_ADDRESS%).
	upstreamLocal net.Addr

	// Client-gone detection (see armWatch): cancel ends ctx when the
	// client goes away mid-request; upstream is the pooled upstream
	// connection serving the current request, aborted then too.
	cancel     context.CancelFunc
	gone       atomic.Bool
	upstream   atomic.Pointer[h1Conn]
	since      atomic.Int64 // clock() when the watchable request began
	watchState atomic.Int32 // watchIdle, watchArmed, watchRunning
	watchDone  chan struct{}
	watchMu    sync.Mutex
	watchStop  bool // under watchMu: the request is over, do not start
	handling   bool // under watchMu: a request with a body is being served
}

// Watch states (h1ServerConn.watchState).
const (
	watchIdle    int32 = iota // no request, or one whose body is still being read
	watchArmed                // a request is served and nothing else reads the connection
	watchRunning              // the engine's watchdog started watchClient
)

// h1WatchDelay is how long a request runs (after its body, if any, has
// been read to its end) before the connection is watched for its client
// going away: a read that returns EOF (or a reset) then cancels the
// request and aborts its upstream exchange, as Envoy resets the upstream
// stream when the downstream one goes. The engine's watchdog looks every h1WatchTick; faster requests
// cost two atomic stores and a compare-and-swap.
const (
	h1WatchDelay = 100 * time.Millisecond
	h1WatchTick  = 50 * time.Millisecond
)

// clockBase anchors clock, a cheap monotonic nanosecond count.
var clockBase = time.Now()

func clock() int64 { return int64(time.Since(clockBase)) }

// h1ServerKey is the context key of a request's *h1ServerConn.
type h1ServerKey struct{}

// serveHTTP1 serves a connection of an HTTP chain: on the fast path while
// its requests allow, then (if ever) on bl's http.Server.
func (e *Engine) serveHTTP1(bl *boundListener, cc *chainConn) {
	sc := newH1ServerConn(e, cc, http.HandlerFunc(e.serveHTTP))
	e.trackH1(sc, true)
	handoff := sc.serve()
	e.trackH1(sc, false)
	if !handoff {
		_ = cc.Conn.Close()
		sc.release(true)
		return
	}
	cc.r = sc.br // replays what was peeked; no longer pooled
	sc.release(false)
	select {
	case bl.feed <- cc:
	case <-e.quit:
		_ = cc.Conn.Close()
	}
}

func newH1ServerConn(e *Engine, cc *chainConn, h http.Handler) *h1ServerConn {
	sc := &h1ServerConn{e: e, cc: cc, handler: h, remote: cc.Conn.RemoteAddr().String()}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), connKey{}, cc))
	sc.ctx, sc.cancel = context.WithValue(ctx, h1ServerKey{}, sc), cancel
	sc.tmpl = (&http.Request{}).WithContext(sc.ctx)
	sc.br = h1Readers.Get().(*bufio.Reader)
	sc.br.Reset(cc.Conn)
	sc.bw = h1Writers.Get().(*bufio.Writer)
	sc.bw.Reset(cc.Conn)
	sc.w.sc = sc
	sc.watchDone = make(chan struct{}, 1)
	return sc
}

// release returns the buffers to their pools (the reader only with
// reader set: a handed-off connection keeps reading through it).
func (sc *h1ServerConn) release(reader bool) {
	sc.cancel()
	sc.bw.Reset(nil)
	h1Writers.Put(sc.bw)
	if reader {
		sc.br.Reset(nil)
		h1Readers.Put(sc.br)
	}
	sc.w.pending = nil
}

// setReadDeadline sets the connection's read deadline to d from now; an
// idle deadline is left alone while it is within h1IdleSlack of that.
func (sc *h1ServerConn) setReadDeadline(now time.Time, d time.Duration, slack time.Duration) {
	want := now.Add(d)
	if !sc.deadline.IsZero() && sc.deadline.After(want.Add(-slack)) && !sc.deadline.After(want) {
		return
	}
	sc.deadline = want
	_ = sc.cc.Conn.SetReadDeadline(want)
}

// serve runs the connection's requests; it reports whether the
// connection must be handed to net/http (else it is to be closed).
func (sc *h1ServerConn) serve() (handoff bool) {
	for first := true; ; first = false {
		if first {
			sc.setReadDeadline(time.Now(), h1HeaderTimeout, 0)
		} else {
			sc.setReadDeadline(time.Now(), h1IdleTimeout, h1IdleSlack)
			sc.state.Store(h1Idle)
			if sc.e != nil && sc.e.draining.Load() && sc.state.CompareAndSwap(h1Idle, h1Closed) {
				return false
			}
		}
		_, err := sc.br.Peek(1)
		if !first && !sc.state.CompareAndSwap(h1Idle, h1Active) {
			return false // closed by drain
		}
		if err != nil {
			return false
		}
		head, ok := sc.peekHead(first)
		if !ok {
			return false
		}
		if head == nil {
			return true
		}
		if sc.escaped || sc.heads == nil {
			sc.heads, sc.escaped = new(h1Heads), false
		}
		req, body := parseH1Head(head, sc.tmpl, sc.heads)
		if req == nil {
			return true
		}
		_, _ = sc.br.Discard(len(head))
		if !sc.serveRequest(req, body) {
			return false
		}
	}
}

// peekHead returns the request head (through its empty line) once it is
// in the read buffer, without consuming it. nil with ok: the head does not
// fit (the caller hands the connection over); !ok: the connection failed.
func (sc *h1ServerConn) peekHead(first bool) (head []byte, ok bool) {
	timed := first
	for {
		buf, _ := sc.br.Peek(sc.br.Buffered())
		if i := bytes.Index(buf, crlfcrlf); i >= 0 {
			return buf[:i+4], true
		}
		if len(buf) >= sc.br.Size() {
			return nil, true
		}
		if !timed {
			sc.setReadDeadline(time.Now(), h1HeaderTimeout, 0)
			timed = true
		}
		if _, err := sc.br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && errors.Is(err, bufio.ErrBufferFull) {
				return nil, true
			}
			return nil, false
		}
	}
}

var crlfcrlf = []byte("\r\n\r\n")

// serveRequest runs one request; it reports whether the connection can
// carry another one.
func (sc *h1ServerConn) serveRequest(req *http.Request, body *h1ReqBody) (keep bool) {
	req.RemoteAddr = sc.remote
	if body != nil {
		body.br, body.req = sc.br, req
		if body.isChunked {
			body.chunked = httputil.NewChunkedReader(sc.br) // reads no further than the body
		}
		req.Body = body
		if !sc.deadline.IsZero() {
			sc.deadline = time.Time{}
			_ = sc.cc.Conn.SetReadDeadline(time.Time{}) // bodies have no deadline (no ReadTimeout)
		}
	}
	w := &sc.w
	w.reset(req)
	if body == nil {
		sc.armWatch() // nothing else reads the connection meanwhile
	} else {
		body.sc = sc // armed once the body is read (armAfterBody)
		sc.setHandling(true)
	}
	defer func() {
		if p := recover(); p != nil {
			sc.setHandling(false)
			sc.disarmWatch()
			keep = false
			if body != nil {
				_ = body.Close() // no reads of the connection's buffer once it is pooled
			}
			if p != http.ErrAbortHandler && sc.e != nil {
				sc.e.log.Error("panic serving HTTP/1.1 request", "remote", sc.remote, "panic", p)
			}
		}
	}()
	sc.handler.ServeHTTP(w, req)
	if body != nil {
		sc.setHandling(false)
	}
	sc.disarmWatch()
	if sc.gone.Load() {
		// The client went away (or half-closed) while the request ran: an
		// answer the handler completed still goes out, then the
		// connection closes; a cancelled one (DC) sends nothing.
		if w.wroteHeader {
			w.finish()
			_ = sc.bw.Flush()
		}
		return false
	}
	keep = w.finish()
	if body != nil && !body.finish() {
		keep = false
	}
	if err := sc.bw.Flush(); err != nil {
		return false
	}
	return keep && !w.closeAfter
}

// armWatch marks the connection's request as watchable by the engine's
// watchdog (watchH1).
func (sc *h1ServerConn) armWatch() {
	if sc.e == nil {
		return // a bare server in tests: no watchdog
	}
	sc.since.Store(clock())
	sc.watchState.Store(watchArmed)
}

// setHandling marks the handler of a request with a body as running or
// done; armAfterBody arms the watch only while it runs.
func (sc *h1ServerConn) setHandling(on bool) {
	sc.watchMu.Lock()
	sc.handling = on
	sc.watchMu.Unlock()
}

// armAfterBody arms the watch once a request's body has been read to its
// end (by the handler or a transport, on any goroutine): from then on
// nothing but the watch reads the connection until the answer, so a
// client that leaves is noticed as for a request without a body.
func (sc *h1ServerConn) armAfterBody() {
	sc.watchMu.Lock()
	defer sc.watchMu.Unlock()
	if sc.handling && sc.watchState.Load() == watchIdle {
		sc.armWatch()
	}
}

// disarmWatch ends the watch; once it returns nothing but the serving
// goroutine reads the connection.
func (sc *h1ServerConn) disarmWatch() {
	if sc.watchState.CompareAndSwap(watchArmed, watchIdle) || sc.watchState.Load() == watchIdle {
		return // never started
	}
	sc.watchMu.Lock()
	sc.watchStop = true
	_ = sc.cc.Conn.SetReadDeadline(time.Unix(1, 0)) // unblocks the watching read
	sc.watchMu.Unlock()
	<-sc.watchDone
	sc.watchMu.Lock()
	sc.watchStop = false
	sc.watchMu.Unlock()
	sc.watchState.Store(watchIdle)
	sc.deadline = time.Time{} // unknown: the next setReadDeadline sets one
}

// watchClient runs on its own goroutine: it waits for the next byte
// from the client. Data (a pipelined request) means the client is there;
// EOF or an error other than our own deadline means it is gone.
func (sc *h1ServerConn) watchClient() {
	defer func() { sc.watchDone <- struct{}{} }()
	sc.watchMu.Lock()
	if sc.watchStop {
		sc.watchMu.Unlock()
		return
	}
	_ = sc.cc.Conn.SetReadDeadline(time.Time{}) // the header deadline no longer applies
	sc.watchMu.Unlock()
	if _, err := sc.br.Peek(1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		sc.clientGone()
	}
}

// clientGone cancels the running request and aborts its upstream exchange.
func (sc *h1ServerConn) clientGone() {
	sc.gone.Store(true)
	sc.cancel()
	if pc := sc.upstream.Load(); pc != nil {
		pc.abort()
	}
}

// h1ReqBody is a request body read from the connection: Content-Length
// bytes or a chunked body (with its trailer). The transport may still read
// it from another goroutine after the handler returned, hence the lock.
type h1ReqBody struct {
	mu sync.Mutex
	h1Framing
	isChunked bool
	req       *http.Request
	closed    bool
	// sc is told when the body has been read to its end (armAfterBody),
	// once (armed).
	sc    *h1ServerConn
	armed bool
}

func (b *h1ReqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

func (b *h1ReqBody) read(p []byte) (int, error) {
	n, err := b.h1Framing.read(p, b.readTrailer)
	if err == io.EOF && b.sc != nil && !b.armed {
		b.armed = true
		b.sc.armAfterBody()
	}
	return n, err
}

// h1Framing reads an HTTP/1.1 message body from the connection's reader,
// for requests (h1ReqBody) and responses (h1RespBody) alike: Content-Length
// bytes (n), a chunked body followed by its trailer (chunked set; the
// trailer is read by the caller's function), or, for responses only,
// everything until the connection closes (n < 0). Once it has returned
// io.EOF or an error, it returns the same again.
type h1Framing struct {
	br      *bufio.Reader
	n       int64
	chunked io.Reader
	eof     bool
	err     error
}

func (f *h1Framing) read(p []byte, readTrailer func() error) (int, error) {
	if f.eof {
		return 0, io.EOF
	}
	if f.err != nil {
		return 0, f.err
	}
	var n int
	var err error
	switch {
	case f.chunked != nil:
		n, err = f.chunked.Read(p)
		if err == io.EOF {
			if terr := readTrailer(); terr != nil {
				f.err = terr
				return n, terr
			}
		}
	case f.n < 0:
		n, err = f.br.Read(p)
	default:
		n, err = readFixed(f.br, p, &f.n)
	}
	if err == io.EOF {
		f.eof = true
	} else if err != nil {
		f.err = err
	}
	return n, err
}

// readFixed reads a body of known length: at most *remaining bytes into
// p, counting them off. It returns io.EOF with the last byte, and
// io.ErrUnexpectedEOF when the connection ends early.
func readFixed(br *bufio.Reader, p []byte, remaining *int64) (int, error) {
	if len(p) > int(min(*remaining, 1<<30)) {
		p = p[:*remaining]
	}
	n, err := br.Read(p)
	*remaining -= int64(n)
	switch {
	case *remaining == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// readTrailer reads the chunked body's trailer section into req.Trailer.
func (b *h1ReqBody) readTrailer() error {
	if p, err := b.br.Peek(2); err == nil && p[0] == '\r' && p[1] == '\n' {
		_, _ = b.br.Discard(2)
		return nil
	}
	hdr, err := textproto.NewReader(b.br).ReadMIMEHeader()
	if err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if b.req.Trailer == nil {
		b.req.Trailer = http.Header{}
	}
	for k, vs := range hdr {
		b.req.Trailer[k] = vs
	}
	return nil
}

func (b *h1ReqBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// finish closes the body after the exchange, discarding what is left of
// it (up to h1MaxDiscard); it reports whether the connection is
// positioned at the next request.
func (b *h1ReqBody) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.err != nil {
		return false
	}
	if b.eof {
		return true
	}
	var buf [512]byte
	for total := 0; total <= h1MaxDiscard; {
		n, err := b.read(buf[:])
		total += n
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// parseH1Head parses a request head (ending in its empty line) that the
// fast path serves. nil: net/http must serve it (it is malformed, or
// unusual: see the top of this file). The request's strings share one
// copy of the head. The request starts as a copy of tmpl (its context),
// or empty when tmpl is nil. With hs, the request, its URL and header
// are hs's, reused (see h1Heads); else they are new.
func parseH1Head(head []byte, tmpl *http.Request, hs *h1Heads) (*http.Request, *h1ReqBody) {
	s := string(head[:len(head)-2]) // each line with its CRLF
	i := strings.Index(s, "\r\n")
	line := s[:i]
	s = s[i+2:]
	method, rest, ok := strings.Cut(line, " ")
	if !ok || !isToken(method) {
		return nil, nil
	}
	target, proto, ok := strings.Cut(rest, " ")
	if !ok || proto != "HTTP/1.1" || len(target) == 0 || target[0] != '/' {
		return nil, nil
	}
	for j := 0; j < len(target); j++ {
		if c := target[j]; c <= ' ' || c >= 0x7f {
			return nil, nil
		}
	}
	var u *url.URL
	if hs != nil {
		u = &hs.url
	} else {
		u = new(url.URL)
	}
	if !parseTarget(target, u) {
		return nil, nil
	}
	h, vals := hs.reqFields()
	f, ok := parseFields(s, true, h, vals)
	if !ok || f.hosts != 1 || !isHost(f.host) {
		return nil, nil
	}
	var req *http.Request
	if hs != nil {
		hs.reqVals = f.vals
		req = &hs.req
	} else {
		req = new(http.Request)
	}
	*req = http.Request{}
	if tmpl != nil {
		*req = *tmpl
	}
	req.Method, req.URL, req.Proto, req.ProtoMajor, req.ProtoMinor = method, u, "HTTP/1.1", 1, 1
	req.Header, req.RequestURI, req.Body, req.Host, req.Close = f.h, target, http.NoBody, f.host, f.closing
	switch {
	case f.chunked:
		if req.Trailer, ok = takeTrailer(f.h); !ok {
			return nil, nil
		}
		req.TransferEncoding = []string{"chunked"}
		req.ContentLength = -1
		return req, &h1ReqBody{isChunked: true}
	case f.cls == 1:
		n, ok := f.contentLength()
		if !ok {
			return nil, nil
		}
		req.ContentLength = n
		if n > 0 {
			return req, &h1ReqBody{h1Framing: h1Framing{n: n}}
		}
	}
	return req, nil
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte[s[i]] {
			return false
		}
	}
	return true
}

var tokenByte = alnumAnd("!#$%&'*+-.^_`|~")

// alnumAnd is a byte table marking ASCII letters and digits and the
// bytes of extra.
func alnumAnd(extra string) (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for i := 0; i < len(extra); i++ {
		t[extra[i]] = true
	}
	return t
}

// isCanonicalKey reports whether a token is already in
// textproto.CanonicalMIMEHeaderKey's form.
func isCanonicalKey(s string) bool {
	upper := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

// isHost accepts a plain Host header value: a name, IPv4 or bracketed
// IPv6 address, with an optional port (a subset of what net/http accepts).
func isHost(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !hostByte[s[i]] {
			return false
		}
	}
	return true
}

var hostByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~:[]" {
		t[c] = true
	}
	return t
}()

// trackH1 adds or removes a fast-path connection from the set Drain and
// shutdown see.
func (e *Engine) trackH1(sc *h1ServerConn, add bool) {
	e.h1mu.Lock()
	defer e.h1mu.Unlock()
	if !add {
		delete(e.h1conns, sc)
		return
	}
	if e.h1conns == nil {
		e.h1conns = map[*h1ServerConn]struct{}{}
	}
	e.h1conns[sc] = struct{}{}
	if !e.h1watchdog {
		e.h1watchdog = true
		go e.watchH1()
	}
}

// watchH1 is the watchdog of the fast path's connections: every
// h1WatchTick it starts watchClient for each armed request that
// has run for h1WatchDelay. It runs while there are connections.
func (e *Engine) watchH1() {
	tick := time.NewTicker(h1WatchTick)
	defer tick.Stop()
	for {
		select {
		case <-e.quit:
			e.h1mu.Lock()
			e.h1watchdog = false
			e.h1mu.Unlock()
			return
		case <-tick.C:
		}
		now := clock()
		e.h1mu.Lock()
		if len(e.h1conns) == 0 {
			e.h1watchdog = false
			e.h1mu.Unlock()
			return
		}
		for sc := range e.h1conns {
			if sc.watchState.Load() == watchArmed && now-sc.since.Load() >= int64(h1WatchDelay) &&
				sc.watchState.CompareAndSwap(watchArmed, watchRunning) {
				go sc.watchClient()
			}
		}
		e.h1mu.Unlock()
	}
}

// closeIdleH1 closes the fast-path connections waiting for their next
// request (as http.Server.SetKeepAlivesEnabled(false) does); busy ones
// close after their response, which says Connection: close.
func (e *Engine) closeIdleH1() {
	e.h1mu.Lock()
	defer e.h1mu.Unlock()
	for sc := range e.h1conns {
		if sc.state.CompareAndSwap(h1Idle, h1Closed) {
			_ = sc.cc.Conn.Close()
		}
	}
}

// waitH1 waits until the fast-path connections are gone or ctx ends, as
// http.Server.Shutdown polls its connections.
func (e *Engine) waitH1(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		e.closeIdleH1()
		e.h1mu.Lock()
		n := len(e.h1conns)
		e.h1mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
