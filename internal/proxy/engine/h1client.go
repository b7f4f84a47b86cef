package engine

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// h1Transport sends the proxy's commonest upstream requests — HTTP/1.1
// GET, HEAD and OPTIONS without a body, no upgrade — on pooled
// connections from the calling goroutine: no read and write loop
// goroutines per connection and no hand-offs between them, as
// http.Transport has; request heads are written and response heads parsed
// by h1clienthead.go where they allow it. Everything else goes to fallback
// (an http.Transport with its own pool).
//
// A pooled connection the peer has closed is found out when it is used:
// the request, replayable by construction, is then sent once more on a
// new connection (http.Transport does the same when its read loop has not
// noticed the close yet).
type h1Transport struct {
	dial     func(ctx context.Context, addr string) (net.Conn, error)
	fallback *http.Transport
	maxIdle  int
	// idleTimeout closes a connection idle this long (http.Transport's
	// IdleConnTimeout).
	idleTimeout time.Duration

	mu     sync.Mutex
	idle   map[string][]*h1Conn // by address, most recently used last
	closed bool
}

// h1Conn is one upstream connection.
type h1Conn struct {
	t    *h1Transport
	addr string
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	// idle closes the connection when it has stayed in the pool for
	// idleTimeout.
	idle *time.Timer
}

func (t *h1Transport) fast(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return (req.Body == nil || req.Body == http.NoBody) && req.ContentLength == 0 && len(req.Trailer) == 0 &&
		len(req.TransferEncoding) == 0 && hget(req.Header, "Upgrade") == "" && hget(req.Header, "Expect") == ""
}

// RoundTrip implements http.RoundTripper.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.fast(req) {
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	for {
		pc, reused, err := t.get(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.GotConn != nil {
			tr.GotConn(httptrace.GotConnInfo{Conn: pc.c, Reused: reused})
		}
		resp, sent, err := pc.roundTrip(ctx, req)
		if err == nil {
			return resp, nil
		}
		pc.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !reused || sent {
			return nil, err
		}
		// A reused connection failed before any of the response arrived:
		// the peer closed it while it was idle. Replay on a new one.
	}
}

// get returns an idle connection to addr, or dials one.
func (t *h1Transport) get(ctx context.Context, addr string) (*h1Conn, bool, error) {
	t.mu.Lock()
	if l := t.idle[addr]; len(l) > 0 {
		pc := l[len(l)-1]
		l[len(l)-1] = nil
		t.idle[addr] = l[:len(l)-1]
		pc.idle.Stop() // if it fired meanwhile, expire finds pc gone and leaves it
		t.mu.Unlock()
		return pc, true, nil
	}
	t.mu.Unlock()
	c, err := t.dial(ctx, addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{t: t, addr: addr, c: c, br: bufio.NewReaderSize(c, 4<<10), bw: bufio.NewWriterSize(c, 4<<10)}, false, nil
}

// put returns a connection to the pool.
func (t *h1Transport) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 { // bytes nobody asked for: not reusable
		pc.close()
		return
	}
	t.mu.Lock()
	if t.closed || len(t.idle[pc.addr]) >= t.maxIdle {
		t.mu.Unlock()
		pc.close()
		return
	}
	if t.idle == nil {
		t.idle = map[string][]*h1Conn{}
	}
	t.idle[pc.addr] = append(t.idle[pc.addr], pc)
	if pc.idle == nil {
		pc.idle = time.AfterFunc(t.idleTimeout, func() { t.expire(pc) })
	} else {
		pc.idle.Reset(t.idleTimeout)
	}
	t.mu.Unlock()
}

// expire closes pc if it is still idle.
func (t *h1Transport) expire(pc *h1Conn) {
	t.mu.Lock()
	l := t.idle[pc.addr]
	for i, c := range l {
		if c == pc {
			t.idle[pc.addr] = append(l[:i], l[i+1:]...)
			if len(t.idle[pc.addr]) == 0 {
				delete(t.idle, pc.addr)
			}
			t.mu.Unlock()
			pc.close()
			return
		}
	}
	t.mu.Unlock()
}

// CloseIdleConnections closes the pooled connections (both pools).
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, l := range idle {
		for _, pc := range l {
			pc.idle.Stop()
			pc.close()
		}
	}
	t.fallback.CloseIdleConnections()
}

func (pc *h1Conn) close() { _ = pc.c.Close() }

// h1Cancel ties one exchange on an upstream connection to its request's
// cancellation; end reports whether the request was not cancelled.
type h1Cancel struct {
	stop func() bool   // from context.AfterFunc, or nil
	down *h1ServerConn // the fast-path server connection, or nil
	pc   *h1Conn
}

// watchCancel arranges for cancellation of ctx to abort pc's exchange by
// expiring its deadline. The fast-path server's own request context needs
// no registration: its connection aborts the upstream connection it is
// told about here (see h1ServerConn.clientGone). A context that cannot be
// cancelled needs nothing either.
func watchCancel(ctx context.Context, pc *h1Conn) h1Cancel {
	if down, _ := ctx.Value(h1ServerKey{}).(*h1ServerConn); down != nil && down.ctx == ctx {
		down.upstream.Store(pc)
		down.upstreamLocal = pc.c.LocalAddr() // for the access log (forward)
		if down.gone.Load() {
			pc.abort()
		}
		return h1Cancel{down: down, pc: pc}
	}
	if ctx.Done() != nil {
		return h1Cancel{stop: context.AfterFunc(ctx, pc.abort)}
	}
	return h1Cancel{}
}

// heads is where the response is parsed into: the downstream fast-path
// connection's, when the exchange runs on its goroutine and context
// (nil otherwise: a new response is made).
func (c h1Cancel) heads() *h1Heads {
	if c.down == nil {
		return nil
	}
	return c.down.heads
}

func (c h1Cancel) end() bool {
	switch {
	case c.down != nil:
		c.down.upstream.CompareAndSwap(c.pc, nil)
		return !c.down.gone.Load()
	case c.stop != nil:
		return c.stop()
	}
	return true
}

// abort fails the exchange in progress on pc (its reads and writes).
func (pc *h1Conn) abort() { _ = pc.c.SetDeadline(time.Unix(1, 0)) }

// roundTrip writes req and reads the response head. sent reports whether
// any of the response was read (the request must then not be replayed).
func (pc *h1Conn) roundTrip(ctx context.Context, req *http.Request) (resp *http.Response, sent bool, err error) {
	if d, ok := ctx.Deadline(); ok {
		_ = pc.c.SetDeadline(d)
	}
	cn := watchCancel(ctx, pc)
	if !writeRequestHead(pc.bw, req) {
		if err := req.Write(pc.bw); err != nil {
			cn.end()
			return nil, false, err
		}
	}
	if err := pc.bw.Flush(); err != nil {
		cn.end()
		return nil, false, err
	}
	for {
		if _, err := pc.br.Peek(1); err != nil {
			cn.end()
			return nil, sent, err
		}
		sent = true
		resp, err = readResponse(pc.br, req, cn.heads())
		if err != nil {
			cn.end()
			return nil, true, err
		}
		// 1xx informational answers (103 Early Hints) precede the
		// response; 101 is never asked for here.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			continue
		}
		break
	}
	_, hasDeadline := ctx.Deadline()
	var b *h1Body
	if hs := cn.heads(); hs != nil {
		b = &hs.body
	} else {
		b = new(h1Body)
	}
	*b = h1Body{pc: pc, body: resp.Body, cancel: cn, reuse: !resp.Close && !req.Close, deadline: hasDeadline}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, true, nil
	}
	resp.Body = b
	return resp, true, nil
}

// h1Body is a response body that hands its connection back to the pool
// once read to the end, and closes it when abandoned earlier.
type h1Body struct {
	pc       *h1Conn
	body     io.ReadCloser
	cancel   h1Cancel
	reuse    bool
	deadline bool // a deadline was set for the exchange
	done     bool
	err      error
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		if b.err == nil {
			return 0, io.EOF
		}
		return 0, b.err
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		b.err = err
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.err = net.ErrClosed
		b.finish(false)
	}
	return nil
}

// finish ends the exchange: the connection goes back to the pool when the
// body was read to its end, the response allows it and the request was
// not cancelled meanwhile; otherwise it is closed.
func (b *h1Body) finish(complete bool) {
	b.done = true
	notCancelled := b.cancel.end()
	if complete && b.reuse && notCancelled {
		if b.deadline {
			_ = b.pc.c.SetDeadline(time.Time{})
		}
		b.pc.t.put(b.pc)
		return
	}
	b.pc.close()
}
