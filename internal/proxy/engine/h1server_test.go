package engine

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// h1TestServer serves connections as the engine does: the fast path,
// then net/http for connections handed over. fast records, per request,
// whether the fast path served it.
type h1TestServer struct {
	addr string
	fast chan bool
}

func startH1(tb testing.TB, h http.HandlerFunc) *h1TestServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &h1TestServer{addr: ln.Addr().String(), fast: make(chan bool, 1000)}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, fast := w.(*h1Writer)
		select {
		case s.fast <- fast:
		default:
		}
		h(w, r)
	})
	feed := make(chan net.Conn)
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: h1HeaderTimeout, MaxHeaderBytes: 60 << 10}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv.Protocols = &protos
	go func() { _ = srv.Serve(&chanListener{ch: feed, addr: ln.Addr()}) }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				cc := &chainConn{Conn: c}
				sc := newH1ServerConn(nil, cc, handler)
				if !sc.serve() {
					_ = c.Close()
					sc.release(true)
					return
				}
				cc.r = sc.br
				sc.release(false)
				feed <- cc
			}()
		}
	}()
	tb.Cleanup(func() { _ = ln.Close(); _ = srv.Close() })
	return s
}

// lastFast is whether the fast path served the last request.
func (s *h1TestServer) lastFast(t *testing.T) bool {
	t.Helper()
	select {
	case f := <-s.fast:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the handler")
		return false
	}
}

func echoHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Method", r.Method)
	w.Header().Set("X-Host", r.Host)
	w.Header().Set("X-Proto", r.Proto)
	w.Header().Set("X-Remote-Ok", fmt.Sprint(netip.MustParseAddrPort(r.RemoteAddr).IsValid()))
	for k, vs := range r.Trailer {
		w.Header().Set("X-Trailer-"+k, strings.Join(vs, ","))
	}
	if n := r.URL.Query().Get("big"); n != "" {
		var size int
		fmt.Sscan(n, &size)
		_, _ = w.Write(bytes.Repeat([]byte("y"), size))
		return
	}
	if r.URL.Query().Get("trailer") != "" {
		w.Header().Set("Trailer", "X-Sum")
		_, _ = w.Write(b)
		w.Header().Set("X-Sum", fmt.Sprint(len(b)))
		return
	}
	_, _ = w.Write(b)
}

// TestH1FastPathKeepAlive: requests with and without bodies (sized and
// chunked, with trailers) share one connection on the fast path, and
// responses are framed as net/http frames them.
func TestH1FastPathKeepAlive(t *testing.T) {
	s := startH1(t, echoHandler)
	tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	conns := 0
	do := func(req *http.Request) (*http.Response, string) {
		t.Helper()
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) {
				if !i.Reused {
					conns++
				}
			}}))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !s.lastFast(t) {
			t.Errorf("%s %s: not served on the fast path", req.Method, req.URL)
		}
		return resp, string(b)
	}
	base := "http://" + s.addr
	resp, body := do(must(http.NewRequest("GET", base+"/a?x=1", nil)))
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 0 || resp.Header.Get("X-Host") != s.addr ||
		resp.Header.Get("X-Proto") != "HTTP/1.1" || resp.Header.Get("X-Remote-Ok") != "true" || resp.Header.Get("Date") == "" {
		t.Fatalf("GET: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = do(must(http.NewRequest("POST", base+"/", strings.NewReader("hello"))))
	if body != "hello" || resp.ContentLength != 5 || resp.Header.Get("X-Method") != "POST" {
		t.Fatalf("POST: %q %d", body, resp.ContentLength)
	}
	// A chunked body with a trailer.
	req := must(http.NewRequest("PUT", base+"/", io.MultiReader(strings.NewReader("chunk"), strings.NewReader("ed"))))
	req.ContentLength = -1
	req.Trailer = http.Header{"X-T": nil}
	req.Body = &trailerBody{r: req.Body, set: func() { req.Trailer.Set("X-T", "v") }}
	resp, body = do(req)
	if body != "chunked" || resp.Header.Get("X-Trailer-X-T") != "v" {
		t.Fatalf("chunked PUT: %q %v", body, resp.Header)
	}
	// A large answer of unknown length goes chunked; a response trailer.
	resp, body = do(must(http.NewRequest("GET", base+"/?big=10000", nil)))
	if len(body) != 10000 || resp.ContentLength != -1 || len(resp.TransferEncoding) == 0 {
		t.Fatalf("big: %d bytes, content length %d, %v", len(body), resp.ContentLength, resp.TransferEncoding)
	}
	resp, body = do(must(http.NewRequest("POST", base+"/?trailer=1", strings.NewReader("abc"))))
	if body != "abc" || resp.Trailer.Get("X-Sum") != "3" {
		t.Fatalf("trailer: %q %v", body, resp.Trailer)
	}
	resp, body = do(must(http.NewRequest("HEAD", base+"/?big=10", nil)))
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 10 {
		t.Fatalf("HEAD: %d %q %d", resp.StatusCode, body, resp.ContentLength)
	}
	if conns != 1 {
		t.Fatalf("%d connections, want 1", conns)
	}
	// Connection: close is honoured.
	req = must(http.NewRequest("GET", base+"/", nil))
	req.Close = true
	resp, _ = do(req)
	if !resp.Close {
		t.Fatal("no Connection: close in the answer to Connection: close")
	}
}

type trailerBody struct {
	r   io.ReadCloser
	set func()
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.set()
	}
	return n, err
}
func (b *trailerBody) Close() error { return b.r.Close() }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// rawExchange writes raw requests on one connection and reads the
// answers, one per request method listed.
func rawExchange(t *testing.T, addr, raw string, methods ...string) []*http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*http.Response
	for _, m := range methods {
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("%q: reading answer %d: %v", raw, len(out)+1, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		out = append(out, resp)
	}
	return out
}

// TestH1FastPathHandsOver: unusual requests are served by net/http, on
// the same connection and with every byte the client sent, also after
// fast-path requests; malformed ones get net/http's rejections.
func TestH1FastPathHandsOver(t *testing.T) {
	s := startH1(t, echoHandler)
	big := strings.Repeat("x", 10<<10)
	for _, tc := range []struct {
		name, raw string
		fast      []bool // per request: served on the fast path
		codes     []int
	}{
		{"pipelined then expect", "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi" +
			"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nho", []bool{true, true, false}, []int{200, 200, 100, 200}},
		{"large head", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + big + "\r\n\r\n", []bool{false}, []int{200}},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n", []bool{false}, []int{200}},
		{"absolute form", "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", []bool{false}, []int{200}},
		{"upgrade", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n", []bool{false}, []int{200}},
		{"no host", "GET / HTTP/1.1\r\n\r\n", nil, []int{400}},
		{"two content lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", nil, []int{400}},
		{"bad header name", "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", nil, []int{400}},
		{"bad header value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", nil, []int{400}},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", nil, nil},
		{"te and cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", nil, nil},
		{"huge head", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", nil, []int{431}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			methods := make([]string, len(tc.codes))
			for i := range methods {
				methods[i] = "GET"
			}
			resps := rawExchange(t, s.addr, tc.raw, methods...)
			for i, resp := range resps {
				if resp.StatusCode != tc.codes[i] {
					t.Errorf("answer %d: %d, want %d", i+1, resp.StatusCode, tc.codes[i])
				}
			}
			for i, want := range tc.fast {
				if got := s.lastFast(t); got != want {
					t.Errorf("request %d: fast path %v, want %v", i+1, got, want)
				}
			}
			for len(s.fast) > 0 {
				<-s.fast
			}
		})
	}
}

// TestH1UnreadBody: a small unread request body is discarded and the
// connection kept; a large one closes the connection after the answer.
func TestH1UnreadBody(t *testing.T) {
	s := startH1(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	small := "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("a", 1000)
	resps := rawExchange(t, s.addr, small+"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "POST", "GET")
	if resps[0].Close || resps[1].StatusCode != 200 {
		t.Fatalf("small unread body: close=%v, next %d", resps[0].Close, resps[1].StatusCode)
	}
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
		_, _ = c.Write(make([]byte, 1<<20))
	}()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("connection left open after a large unread body")
	}
}

// TestH1DrainClosesIdle: Drain closes idle fast-path connections, and a
// request in flight gets Connection: close.
func TestH1DrainClosesIdle(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	backendSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	})}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = backendSrv.Serve(bl) }()
	t.Cleanup(func() { _ = backendSrv.Close() })
	addr := freeAddr(t)
	e, err := newEngine(nil, httpListener("out", addr, "backend", nil),
		staticCluster("backend", netip.MustParseAddrPort(bl.Addr().String()), false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.shutdown)
	idle := rawConn(t, addr.String())
	busy := rawConn(t, addr.String())
	for _, c := range []*rawClient{idle, busy} {
		if resp := c.get(t, "/"); resp.StatusCode != 200 || resp.Close {
			t.Fatalf("first request: %d close=%v", resp.StatusCode, resp.Close)
		}
	}
	_, _ = io.WriteString(busy.c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	e.Drain()
	if _, err := idle.br.ReadByte(); err == nil {
		t.Fatal("idle connection still open after Drain")
	}
	close(release)
	resp, err := http.ReadResponse(busy.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("request in flight during drain: %d close=%v", resp.StatusCode, resp.Close)
	}
	if _, err := busy.br.ReadByte(); err == nil {
		t.Fatal("busy connection still open after its response")
	}
}

type rawClient struct {
	c  net.Conn
	br *bufio.Reader
}

func rawConn(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{c: c, br: bufio.NewReader(c)}
}

func (rc *rawClient) get(t *testing.T, path string) *http.Response {
	t.Helper()
	if _, err := io.WriteString(rc.c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	return resp
}

// FuzzH1Server feeds arbitrary bytes to the fast-path server (handing
// over to net/http as the engine does): no panic, and the answer is a
// well-formed HTTP/1.1 response or a close.
func FuzzH1Server(f *testing.F) {
	for _, s := range h1Seeds {
		f.Add([]byte(s))
	}
	s := startH1(f, echoHandler)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			_, _ = c.Write(in)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%q: neither answered nor closed", in)
		}
		for len(s.fast) > 0 {
			<-s.fast
		}
		if len(out) == 0 || bytes.HasPrefix(in, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) {
			return // nothing, or h2c (HTTP/2 frames)
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("%q: malformed response %q: %v", in, out, err)
		}
		if resp.ProtoMajor != 1 { // net/http answers some HTTP/1.0 requests in 1.0
			t.Fatalf("%q: answered with %s", in, resp.Proto)
		}
	})
}

var h1Seeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /x?y=1 HTTP/1.1\r\nHost: a:80\r\nConnection: close\r\nPragma: no-cache\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-a, ,X-b\r\nTrailer: x-c\r\n\r\n0\r\nX-A: 1\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX:  \t v \t \r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\r\n\r\n",
	"HEAD /?big=5 HTTP/1.1\r\nHost: a\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
}

// FuzzH1Head checks the fast path's request parser against net/http's
// server: every head the fast path accepts, net/http accepts too, and
// both see the same request.
func FuzzH1Head(f *testing.F) {
	for _, s := range h1Seeds {
		f.Add([]byte(s))
	}
	type seen struct {
		method, uri, host string
		header            http.Header
		cl                int64
		te                []string
		trailer           http.Header
		close             bool
		remote            string
	}
	got := make(chan seen, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Method, r.RequestURI, r.Host, r.Header, r.ContentLength, r.TransferEncoding, r.Trailer, r.Close, r.RemoteAddr}
		// Answer before the body, which nobody sends.
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
	}), MaxHeaderBytes: 60 << 10,
		// net/http's own full-duplex body handling may log a recovered
		// "concurrent Body.Read" when the client goes before the body it
		// announced: noise for this comparison, which only reads heads.
		ErrorLog: log.New(io.Discard, "", 0)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() { _ = srv.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		i := bytes.Index(in, crlfcrlf)
		if i < 0 || i+4 > h1ReadBuf {
			return
		}
		head := in[:i+4]
		// Parsed into heads that a previous request used, as a kept-alive
		// connection does: nothing of that request may show through.
		hs := dirtyHeads(t)
		req, body := parseH1Head(head, nil, hs)
		if req == nil {
			return
		}
		if u, err := url.ParseRequestURI(req.RequestURI); err != nil || *u != *req.URL {
			t.Fatalf("%q: URL %+v, url.ParseRequestURI %+v (%v)", head, req.URL, u, err)
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write(head)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%q: the fast path accepts it, net/http answers %v (%v)", head, resp, err)
		}
		for {
			s := <-got
			if s.remote != c.LocalAddr().String() {
				continue // an earlier connection's
			}
			want := seen{req.Method, req.RequestURI, req.Host, req.Header, req.ContentLength, req.TransferEncoding, req.Trailer, req.Close, s.remote}
			if len(want.header) == 0 && len(s.header) == 0 {
				s.header, want.header = nil, nil
			}
			if !reflect.DeepEqual(s, want) {
				t.Fatalf("%q:\nnet/http sees %+v\nfast path    %+v", head, s, want)
			}
			if (body != nil) != (s.cl > 0 || len(s.te) > 0) {
				t.Fatalf("%q: fast path body %v, net/http content length %d, transfer encoding %v", head, body != nil, s.cl, s.te)
			}
			return
		}
	})
}

// dirtyHeads returns heads that a request and its response with other
// fields, a query, a trailer and a body were parsed into.
func dirtyHeads(t *testing.T) *h1Heads {
	t.Helper()
	hs := new(h1Heads)
	req, _ := parseH1Head([]byte("POST /old/%41?q=1 HTTP/1.1\r\nHost: old\r\nX-Old: 1\r\nX-Old: 2\r\nTrailer: X-T\r\n"+
		"Transfer-Encoding: chunked\r\nConnection: close\r\nPragma: no-cache\r\n\r\n"), nil, hs)
	if req == nil || req.URL.RawPath == "" || len(req.Header) < 2 {
		t.Fatalf("dirty request: %+v", req)
	}
	resp, _ := parseResponseHead([]byte("HTTP/1.1 500 Old\r\nX-Old: 1\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n"+
		"Connection: close\r\n\r\n"), req, hs)
	if resp == nil || resp.Trailer == nil {
		t.Fatalf("dirty response: %+v", resp)
	}
	return hs
}

// TestH1HeadsReused: a connection's second request and response are
// parsed into the first one's structures, with nothing of them left.
func TestH1HeadsReused(t *testing.T) {
	hs := dirtyHeads(t)
	req, body := parseH1Head([]byte("GET /a/b?x=y HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"), nil, hs)
	if req != &hs.req || req.URL != &hs.url || body != nil {
		t.Fatalf("request not parsed into the heads: %p %p %v", req, req.URL, body)
	}
	want := http.Header{"Accept": {"*/*"}}
	if req.Method != "GET" || req.Host != "h" || req.URL.Path != "/a/b" || req.URL.RawPath != "" || req.URL.RawQuery != "x=y" ||
		!reflect.DeepEqual(req.Header, want) || req.Trailer != nil || req.TransferEncoding != nil || req.Close || req.ContentLength != 0 {
		t.Fatalf("reused request: %+v %+v", req, req.URL)
	}
	resp, rb := parseResponseHead([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), req, hs)
	if resp != &hs.resp || rb != &hs.respBody {
		t.Fatal("response not parsed into the heads")
	}
	if resp.StatusCode != 200 || resp.Status != "200 OK" || !reflect.DeepEqual(resp.Header, http.Header{"Content-Length": {"3"}}) ||
		resp.Trailer != nil || resp.TransferEncoding != nil || resp.Close || resp.ContentLength != 3 || rb.isChunked || rb.n != 3 {
		t.Fatalf("reused response: %+v, body %+v", resp, rb)
	}
	if n := testing.AllocsPerRun(100, func() {
		hs.reqFields()
		if r, _ := parseH1Head([]byte("GET /a/b?x=y HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-A: 1\r\n\r\n"), nil, hs); r == nil {
			panic("refused")
		}
	}); n > 1 {
		t.Fatalf("a request parsed into reused heads makes %v allocations, want 1 (the head's string)", n)
	}
}

// TestH1HeadsEscape: a connection's requests share one http.Request and
// header map, until a request escapes (markEscaped): that one keeps its
// own, untouched by the requests after it.
func TestH1HeadsEscape(t *testing.T) {
	type seen struct {
		r *http.Request
		h http.Header
	}
	var got []seen
	s := startH1(t, func(w http.ResponseWriter, r *http.Request) {
		got = append(got, seen{r, r.Header})
		if r.URL.Path == "/escape" {
			markEscaped(r)
		}
	})
	c := rawConn(t, s.addr)
	for _, p := range []string{"/a", "/b", "/escape", "/c", "/d"} {
		if resp := c.get(t, p); resp.StatusCode != 200 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	if len(got) != 5 {
		t.Fatalf("%d requests served", len(got))
	}
	if got[0].r != got[1].r || got[1].r != got[2].r {
		t.Fatal("requests before the escape were not parsed into the same heads")
	}
	if got[3].r == got[2].r || got[3].r != got[4].r {
		t.Fatal("the request after the escape reused the escaped request's heads, or the next one did not reuse its own")
	}
	if esc := got[2]; esc.r.URL.Path != "/escape" || esc.h.Get("Host") != "" || esc.r.Host != "a" {
		t.Fatalf("the escaped request changed after it was served: %s %v", esc.r.URL.Path, esc.h)
	}
}

// FuzzParseTarget: parseTarget makes of a request target what
// url.ParseRequestURI makes of it, whatever the URL held before.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"/", "/a/b?c=d", "/a?", "/a??", "/a?b?", "/%41", "/a b", "/a#f", "/(x)", "/~u/$&+,;=:@", "//x/y", "/a%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		if target == "" || target[0] != '/' || hasCTL(target) || strings.Contains(target, " ") {
			return // the server refuses these before
		}
		u := url.URL{Scheme: "x", Host: "old", Path: "/old", RawPath: "/%6Fld", RawQuery: "q", ForceQuery: true, Fragment: "f"}
		ok := parseTarget(target, &u)
		want, err := url.ParseRequestURI(target)
		if ok != (err == nil) {
			t.Fatalf("%q: parseTarget %v, url.ParseRequestURI %v", target, ok, err)
		}
		if ok && u != *want {
			t.Fatalf("%q: parseTarget %+v, url.ParseRequestURI %+v", target, u, *want)
		}
	})
}

// TestH1HandlerPanic: a panicking handler closes its connection, and the
// server goes on serving others.
func TestH1HandlerPanic(t *testing.T) {
	s := startH1(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			_, _ = io.ReadAll(r.Body)
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, "ok")
	})
	c := rawConn(t, s.addr)
	_, _ = io.WriteString(c.c, "POST /panic HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("answer or open connection after a panic")
	}
	if resp := rawConn(t, s.addr).get(t, "/"); resp.StatusCode != 200 {
		t.Fatalf("after a panic: %d", resp.StatusCode)
	}
}
