package engine

import (
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"github.com/weftmesh/weft/internal/proxy/route"
	"github.com/weftmesh/weft/internal/telemetry"
)

type connKey struct{}

// copyBufs holds the buffers response bodies are copied through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// HTTP/2 flood limits. A connection whose client resets (RST_STREAM) at
// least half its streams within h2PrematureResetAge of their start, once
// it has reset h2PrematureResetCount/2 of them, is closed: Envoy's
// premature-reset rule against rapid reset (CVE-2023-44487), with its
// defaults (500 streams, 1 s).
const (
	h2MaxConcurrentStreams = 250 // Go's default, made explicit
	h2PrematureResetCount  = 500
	h2PrematureResetAge    = time.Second
)

// maxRetryBody is the largest request body buffered so it can be replayed
// on a retry; larger bodies are streamed and not retried once sent.
const maxRetryBody = 64 << 10

func (e *Engine) newHTTPServer(bl *boundListener) *http.Server {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge
	return &http.Server{
		Handler:           http.HandlerFunc(e.serveHTTP),
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       time.Hour,
		MaxHeaderBytes:    60 << 10, // Envoy's default 60 KiB
		HTTP2: &http.HTTP2Config{
			// Go's server runs at most this many handlers per connection
			// and closes a connection (ENHANCE_YOUR_CALM) that queues
			// four times as many streams; premature resets are limited
			// in serveHTTP.
			MaxConcurrentStreams: h2MaxConcurrentStreams,
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
}

// exchange is the state of one proxied request.
type exchange struct {
	start     time.Time
	flags     string
	cluster   string
	upstream  string
	code      int
	reqBytes  int64
	respBytes int64
	// streamed counts a request body of unknown length as the upstream
	// side reads it (another goroutine, for HTTP/2, which may read on
	// after the exchange is recycled: the count is the body's own);
	// requestBytes. nil: none.
	streamed *countedBody
	// reqMsgs and respMsgs count a gRPC call's messages (nil otherwise).
	reqMsgs, respMsgs *grpcFrames
	// upstreamTime is from sending the request (its first attempt) to
	// the response headers, x-envoy-upstream-service-time; -1 without a
	// response, or when the router suppresses Envoy's headers.
	upstreamTime time.Duration
	path         string // as received, for the access log
	route        *route.Route
	// upstreamLocal is the local address of the last attempt's upstream
	// connection (%UPSTREAM_LOCAL_ADDRESS%), found only when the chain
	// writes access logs.
	upstreamLocal net.Addr
	// grpcStatus is a gRPC response's grpc-status (trailer, or header of
	// a trailers-only response): the grpc_response_status label.
	grpcStatus string
	// trace is the request's trace context once forwarded (zero before).
	trace traceIDs
	// vhost is the matched virtual host (its x-envoy-attempt-count
	// settings), nil before routing.
	vhost *route.VirtualHost
	// attempts is how many times the request was sent upstream.
	attempts int
	// metadata is the dynamic metadata the HTTP filters left (RBAC's
	// shadow verdicts, the JWT's claims); nil: none.
	metadata map[string]map[string]any
	// peer is the other sidecar, from the metadata exchange (the caller
	// on the inbound side, the server on the outbound side), when
	// peerSeen (peermeta.go).
	peer     telemetry.Peer
	peerSeen bool
}

// requestBytes is the request body's size: known up front, or counted
// as it streamed.
func (ex *exchange) requestBytes() int64 {
	if ex.streamed != nil {
		return ex.reqBytes + ex.streamed.n.Load()
	}
	return ex.reqBytes
}

// countedBody counts the bytes read from a request body, and a gRPC
// call's messages.
type countedBody struct {
	io.ReadCloser
	n    atomic.Int64
	msgs *grpcFrames // nil: not gRPC
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if b.msgs != nil {
		b.msgs.Feed(p[:n])
	}
	return n, err
}

// isGRPC reports whether a request is a gRPC call (its content type).
func isGRPC(h http.Header) bool {
	return strings.HasPrefix(hget(h, "Content-Type"), "application/grpc")
}

// inbound tells whether the exchange is the destination's: on an inbound
// listener, or sent to an inbound cluster.
func (ex *exchange) inbound(cc *chainConn) bool {
	return cc.chain.inbound || strings.HasPrefix(ex.cluster, "inbound|")
}

// exchanges recycles exchange structs: one per request was a fifth of the
// bytes a sidecar allocates per request, and the sidecar's GC frequency
// (set by its small heap target) follows those bytes. Nothing keeps an
// exchange once serveHTTP returns: the access log and metrics copy fields.
var exchanges = sync.Pool{New: func() any { return new(exchange) }}

func (e *Engine) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ex := exchanges.Get().(*exchange)
	*ex = exchange{start: time.Now(), upstreamTime: -1}
	defer exchanges.Put(ex) // deferred first: runs after record
	cc, _ := r.Context().Value(connKey{}).(*chainConn)
	rt := e.cur.Load()
	if cc == nil || rt == nil {
		localReply(w, r, ex, http.StatusServiceUnavailable, -1, "no configuration")
		return
	}
	if cc = e.currentChain(w, r, cc, rt); cc == nil {
		return
	}
	if e.draining.Load() {
		w.Header().Set("Connection", "close")
	}
	// The connection manager's Server header goes on every answer, the
	// proxy's own included; respond settles it with the upstream's.
	if sh := &cc.chain.server; sh.mode != hcmv3.HttpConnectionManager_PASS_THROUGH {
		w.Header()["Server"] = sh.header()
	}
	if r.ProtoMajor == 2 {
		cc.h2Streams.Add(1)
		defer e.checkResets(cc, r, ex.start)
	}
	table := cc.chain.inline
	if table == nil {
		table = rt.routes[cc.chain.rdsName]
	}
	defer e.record(cc, ex, r, w)
	if tooManyHeaders(r.Header) {
		w.Header().Set("Connection", "close")
		localReply(w, r, ex, http.StatusRequestHeaderFieldsTooLarge, -1, "Request Header Fields Too Large")
		return
	}
	// One canonical request view: the path is normalised before filters
	// and routing, and r.URL is what RBAC, the router and the upstream see.
	if !canonicalize(r, cc.chain.pathNorm) {
		w.Header().Set("Connection", "close")
		localReply(w, r, ex, http.StatusBadRequest, -1, "Bad Request")
		return
	}
	// The canonical target, for routing and for the log and span of any
	// answer from here on (filters never change it).
	ex.path = requestTarget(r)
	if len(cc.chain.filters) > 0 {
		var rep *httpfilter.Reply
		rep, md := runFilters(cc, r)
		ex.metadata = md
		if rbac := md[httpRBACMetadata]; rbac != nil {
			e.rbacStats.countShadow(false, cc.chain.statPrefix, rbac)
		}
		if rep != nil {
			ex.flags = rep.Flags
			copyHeader(w.Header(), rep.Header)
			localReply(w, r, ex, rep.Status, -1, rep.Body)
			return
		}
	}
	src, _ := netip.ParseAddrPort(r.RemoteAddr)
	req := &route.Request{Method: r.Method, Scheme: forwardedProto(r, cc), Host: r.Host, Path: ex.path, Headers: r.Header, SourceIP: src.Addr()}
	rte, ok := (*route.Route)(nil), false
	if table != nil {
		rte, ex.vhost, ok = table.Match(req)
	}
	ex.route = rte
	if !ok {
		ex.flags = "NR"
		localReply(w, r, ex, http.StatusNotFound, -1, "")
		return
	}
	if !cc.chain.noRequestID && hget(r.Header, "X-Request-Id") == "" {
		r.Header["X-Request-Id"] = []string{newRequestID()}
	}
	if rte.CORS != nil {
		if route.IsPreflight(req) {
			if h, ok := rte.CORS.Preflight(r.Header.Get("Origin"), r.Header.Get("Access-Control-Request-Method"), r.Header.Get("Access-Control-Request-Headers")); ok {
				copyHeader(w.Header(), h)
				ex.code = http.StatusOK
				w.WriteHeader(http.StatusOK)
				return
			}
		} else if h, ok := rte.CORS.ResponseHeaders(r.Header.Get("Origin")); ok {
			copyHeader(w.Header(), h)
		}
	}
	switch rte.Action {
	case route.ActionDirectResponse:
		localReply(w, r, ex, rte.DirectResponse.Status, -1, string(rte.DirectResponse.Body))
		return
	case route.ActionRedirect:
		loc, code, _ := rte.RedirectFor(req)
		w.Header().Set("Location", loc)
		localReply(w, r, ex, code, -1, "")
		return
	}
	// The cluster is chosen with the route, as in Envoy: a request the
	// fault filter ends is still counted against its destination.
	name, wc := rte.PickCluster(rand.Uint32())
	ex.cluster = name
	if f := rte.Fault; f != nil {
		delay, abort, abortGRPC := f.Decide(rand.Uint32())
		if delay > 0 {
			ex.flags = "DI"
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		if abort > 0 || abortGRPC >= 0 {
			// A gRPC abort answers other requests with 200, as Envoy does.
			ex.flags = "FI"
			localReply(w, r, ex, max(abort, http.StatusOK), abortGRPC, cmp.Or(f.AbortBody, "fault filter abort"))
			return
		}
	}
	c := rt.clusters[name]
	if c == nil {
		ex.flags = "NC"
		localReply(w, r, ex, rte.ClusterNotFoundStatus, -1, "")
		return
	}
	e.forward(w, r, req, rte, wc, c, rt, cc, ex)
}

// forward sends the request upstream with retries and streams the answer.
func (e *Engine) forward(w http.ResponseWriter, r *http.Request, req *route.Request, rte *route.Route, wc *route.Cluster,
	c *cluster.Cluster, rt *runtime, cc *chainConn, ex *exchange) {
	ctx := r.Context()
	if rte.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rte.Timeout)
		defer cancel()
	}
	var body []byte
	retries := 0
	if rte.Retry != nil {
		retries = int(rte.Retry.NumRetries)
	}
	if r.Body != nil && r.Body != http.NoBody && retries > 0 && r.ContentLength >= 0 && r.ContentLength <= maxRetryBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxRetryBody+1))
		if err != nil {
			ex.flags = "DPE"
			localReply(w, r, ex, http.StatusBadRequest, -1, "")
			return
		}
		body = b
		ex.reqBytes = int64(len(b))
	} else if r.ContentLength > 0 {
		ex.reqBytes = r.ContentLength
	}
	// A body of unknown length (gRPC, chunked) is counted as it is read
	// (istio_request_bytes, the access log's bytes received), and a gRPC
	// call's messages in any body.
	if isGRPC(r.Header) {
		ex.reqMsgs, ex.respMsgs = &grpcFrames{}, &grpcFrames{}
		if body != nil {
			ex.reqMsgs.Feed(body)
		}
	}
	if body == nil && r.Body != nil && r.Body != http.NoBody && (r.ContentLength < 0 || ex.reqMsgs != nil) {
		ex.streamed = &countedBody{ReadCloser: r.Body, msgs: ex.reqMsgs}
		r.Body = ex.streamed
		ex.reqBytes = 0 // what was read is counted instead of the declared length
	}
	// Such a body streams to the first attempt and is kept as it goes, so
	// a retry can send it again.
	var rb *replayBody
	if retries > 0 && body == nil && r.Body != nil && r.Body != http.NoBody && r.ContentLength < 0 {
		rb = newReplayBody(r.Body, maxRetryBody)
	}
	hashKey, hasHash := rte.HashKey(req)
	path := rte.RewritePath(req.Path)
	if len(rte.Mirrors) > 0 && (body != nil || r.Body == nil || r.Body == http.NoBody) {
		e.mirror(rt, r, rte, path, body)
	}
	// The downstream request's header map becomes the upstream one: the
	// server reads nothing from it once the handler runs, and every
	// attempt sends the same headers, so they are prepared once.
	removeHopHeaders(r.Header)
	forwardedHeaders(r, cc)
	clientCertHeader(r, cc)
	inbound := ex.inbound(cc)
	e.requestPeer(r.Header, ex, inbound, c)
	switch tc := cc.chain.tracing; {
	case tc == nil:
		// Without a tracer (Envoy's null one) trace headers pass through
		// untouched.
	case tc.noPropagation:
		ex.trace = traceContext(r.Header, tc.traceOptions(inbound))
	default:
		ex.trace = propagateTrace(r.Header, tc.traceOptions(inbound))
	}
	rte.ApplyRequestHeaders(r.Header, wc)
	target := upstreamTarget(r.URL, path, req.Path)
	target.Scheme = upstreamScheme(c)
	outHost := r.Host
	if host := rte.UpstreamHost(wc); host != "" {
		outHost = host
	}
	rtr := e.transport(rt, c, cc.src, upstreamH2(c, r))
	// The HTTP/1.1 fast path is done with a request when RoundTrip
	// returns, so attempts without their own deadline send the downstream
	// request itself, retargeted, instead of a copy; it is put back as it
	// was for the access log and telemetry. net/http's transports may
	// still read a request after RoundTrip: they always get a copy.
	ht, isH1 := rtr.(*h1Transport)
	inPlace := isH1 && body == nil && rb == nil && ht.fast(r)
	if inPlace {
		origURL, origHost, origURI := *r.URL, r.Host, r.RequestURI
		defer func() { *r.URL, r.Host, r.RequestURI = origURL, origHost, origURI }()
	}
	var tried []string // endpoints already tried, listed only once there is a retry
	var firstSent time.Time
	var releaseRetry func()
	for attempt := 0; ; attempt++ {
		ep, err := c.Pick(cluster.PickContext{HashKey: hashKey, HasHash: hasHash, Exclude: tried, OriginalDst: cc.dst})
		if err != nil {
			ex.flags = "UH"
			localReply(w, r, ex, http.StatusServiceUnavailable, -1, "no healthy upstream")
			return
		}
		release, ok := c.State().Acquire(cluster.Requests)
		if !ok {
			ex.flags = "UO"
			if !cc.chain.suppressEnvoyHeaders {
				w.Header().Set("X-Envoy-Overloaded", "true")
			}
			localReply(w, r, ex, http.StatusServiceUnavailable, -1, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
			return
		}
		ex.upstream = ep.Address
		actx := ctx
		var cancelTry context.CancelFunc
		if rte.Retry != nil && rte.Retry.PerTryTimeout > 0 {
			actx, cancelTry = context.WithTimeout(ctx, rte.Retry.PerTryTimeout)
		}
		out := r
		if inPlace && actx == r.Context() {
			*r.URL = target
			r.URL.Host, r.Host, r.RequestURI = ep.Address, outHost, ""
		} else {
			u := target
			u.Host = ep.Address
			out = r.WithContext(actx)
			out.URL, out.Host, out.RequestURI = &u, outHost, ""
			if !isH1 || !ht.fast(out) {
				markEscaped(r) // the copy shares r's header map
			}
		}
		ex.attempts = attempt + 1
		if ex.vhost.IncludeRequestAttemptCount {
			if attempt > 0 {
				// An earlier attempt's transport may still read r's
				// header map; a retry gets its own.
				out.Header = out.Header.Clone()
			}
			out.Header["X-Envoy-Attempt-Count"] = attemptCount(ex.attempts)
		}
		if body != nil {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.ContentLength = int64(len(body))
		} else if rb != nil {
			out.Body = rb.attempt()
		}
		logged := cc.chain.logs != nil
		if logged && out != r {
			out = out.WithContext(httptrace.WithClientTrace(out.Context(), &httptrace.ClientTrace{
				GotConn: func(info httptrace.GotConnInfo) { ex.upstreamLocal = info.Conn.LocalAddr() }}))
		}
		ep.StartRequest()
		sent := time.Now()
		if attempt == 0 {
			firstSent = sent
		}
		resp, err := rtr.RoundTrip(out)
		ep.EndRequest()
		if logged && out == r {
			// The in-place fast path tells the downstream connection.
			if sc, _ := r.Context().Value(h1ServerKey{}).(*h1ServerConn); sc != nil {
				ex.upstreamLocal, sc.upstreamLocal = sc.upstreamLocal, nil
			}
		}
		if err == nil && !cc.chain.suppressEnvoyHeaders {
			// Envoy's x-envoy-upstream-service-time: since the first
			// attempt, retries included (the access log reads it too).
			ex.upstreamTime = time.Since(firstSent)
		}
		outcome := cluster.Outcome{}
		switch {
		case err != nil:
			outcome.ConnectFailure = isConnectError(err)
			outcome.Status = http.StatusServiceUnavailable
		default:
			outcome.Status = resp.StatusCode
			outcome.GatewayError = resp.StatusCode == 502 || resp.StatusCode == 503 || resp.StatusCode == 504
		}
		c.State().Report(ep, outcome)
		if releaseRetry != nil {
			releaseRetry() // the retry attempt is over
			releaseRetry = nil
		}
		replayable := body != nil || r.Body == nil || r.Body == http.NoBody || (rb != nil && rb.replayable())
		retry := attempt < retries && ctx.Err() == nil && replayable && shouldRetry(rte.Retry, resp, err, actx)
		if retry {
			// The cluster's retry budget (or max_retries) bounds retries
			// in flight, so they cannot multiply the load on a failing
			// upstream; over it, the answer goes back as it is.
			if releaseRetry, retry = c.State().AcquireRetry(); !retry {
				e.metrics.RetryOverflow.Inc()
			}
		}
		if retry && rb != nil && !rb.next() { // the body outgrew the buffer meanwhile
			releaseRetry()
			releaseRetry, retry = nil, false
		}
		if !retry {
			release()
			if err != nil {
				if cancelTry != nil {
					cancelTry()
				}
				e.upstreamError(w, r, ctx, err, ex)
				return
			}
			if ex.vhost.IncludeAttemptCountInResponse {
				resp.Header["X-Envoy-Attempt-Count"] = attemptCount(ex.attempts)
			}
			if ex.upstreamTime >= 0 {
				resp.Header["X-Envoy-Upstream-Service-Time"] = headerInt(ex.upstreamTime.Milliseconds())
			}
			e.responsePeer(resp.Header, ex, cc, inbound, c)
			switch cc.chain.server.mode {
			case hcmv3.HttpConnectionManager_OVERWRITE:
				delete(resp.Header, "Server")
			case hcmv3.HttpConnectionManager_APPEND_IF_ABSENT:
				if _, ok := resp.Header["Server"]; ok {
					delete(w.Header(), "Server")
				}
			}
			e.respond(w, resp, rte, wc, ex)
			if cancelTry != nil {
				cancelTry()
			}
			return
		}
		tried = append(tried, ep.Address)
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if cancelTry != nil {
			cancelTry()
		}
		release()
		select {
		case <-time.After(backoff(rte.Retry, attempt)):
		case <-ctx.Done():
		}
	}
}

// headerInts are small integer header values, made once:
// x-envoy-attempt-count goes on every request of a virtual host that asks
// for it (Istio's outbound ones do), x-envoy-upstream-service-time on
// every forwarded response.
var headerInts = func() [][]string {
	v := make([][]string, 128)
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

// headerInt is the header value for n ≥ 0; callers may share it, as header
// operations replace values and never write into them.
func headerInt(n int64) []string {
	if n >= 0 && n < int64(len(headerInts)) {
		return headerInts[n][:1:1]
	}
	return []string{strconv.FormatInt(n, 10)}
}

// attemptCount is the x-envoy-attempt-count value for attempt n (from 1).
func attemptCount(n int) []string { return headerInt(int64(n)) }

// maxHeadersCount is Envoy's default limit on request header fields
// (max_headers_count); their total size is bounded by the server's
// MaxHeaderBytes (60 KiB, Envoy's max_request_headers_kb).
const maxHeadersCount = 100

func tooManyHeaders(h http.Header) bool {
	if len(h) <= maxHeadersCount/2 {
		return false // common case: no need to count values
	}
	n := 0
	for _, v := range h {
		n += len(v)
	}
	return n > maxHeadersCount
}

// checkResets counts a stream its client reset prematurely and closes a
// connection that resets too many (see h2PrematureResetCount).
func (e *Engine) checkResets(cc *chainConn, r *http.Request, start time.Time) {
	if !errors.Is(r.Context().Err(), context.Canceled) || time.Since(start) >= h2PrematureResetAge {
		return
	}
	resets := cc.h2Resets.Add(1)
	if resets*2 >= max(cc.h2Streams.Load(), h2PrematureResetCount) && cc.h2Closed.CompareAndSwap(false, true) {
		e.log.Warn("closing an HTTP/2 connection: too many premature stream resets", "remote", r.RemoteAddr,
			"streams", cc.h2Streams.Load(), "resets", resets)
		_ = cc.Close()
	}
}

func shouldRetry(p *route.RetryPolicy, resp *http.Response, err error, attemptCtx context.Context) bool {
	if p == nil {
		return false
	}
	if err != nil {
		if errors.Is(attemptCtx.Err(), context.DeadlineExceeded) {
			return p.RetryOn.Has(route.Retry5xx) || p.RetryOn.Has(route.RetryGatewayError)
		}
		return p.RetryOn.Has(route.RetryConnectFailure) || p.RetryOn.Has(route.RetryReset) || p.RetryOn.Has(route.Retry5xx)
	}
	if p.RetriableStatus(resp.StatusCode) {
		return true
	}
	if gs := hget(resp.Header, "Grpc-Status"); gs != "" {
		if n, err := strconv.Atoi(gs); err == nil && p.RetriableGRPC(n) {
			return true
		}
	}
	return false
}

func backoff(p *route.RetryPolicy, attempt int) time.Duration {
	base, maxB := 25*time.Millisecond, 250*time.Millisecond
	if p != nil && p.BackoffBase > 0 {
		base = p.BackoffBase
	}
	if p != nil && p.BackoffMax > 0 {
		maxB = p.BackoffMax
	}
	d := base << min(attempt, 10)
	if d > maxB {
		d = maxB
	}
	return time.Duration(rand.Int64N(int64(d) + 1)) // full jitter
}

func isConnectError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// upstreamError answers a failed exchange the way Envoy does.
func (e *Engine) upstreamError(w http.ResponseWriter, r *http.Request, ctx context.Context, err error, ex *exchange) {
	const reset = "upstream connect error or disconnect/reset before headers. reset reason: "
	if ex.attempts > 0 && ex.vhost != nil && ex.vhost.IncludeAttemptCountInResponse {
		// Envoy's router adds it to its own replies too.
		w.Header()["X-Envoy-Attempt-Count"] = attemptCount(ex.attempts)
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		ex.flags = "UT"
		localReply(w, r, ex, http.StatusGatewayTimeout, -1, "upstream request timeout")
	case errors.Is(ctx.Err(), context.Canceled):
		ex.flags, ex.code = "DC", 499
	case isConnectError(err):
		ex.flags = "UF"
		localReply(w, r, ex, http.StatusServiceUnavailable, -1, reset+"connection failure")
	default:
		ex.flags = "UC"
		localReply(w, r, ex, http.StatusServiceUnavailable, -1, reset+"connection termination")
	}
}

// respond streams the upstream response (headers, body, trailers).
func (e *Engine) respond(w http.ResponseWriter, resp *http.Response, rte *route.Route, wc *route.Cluster, ex *exchange) {
	defer resp.Body.Close()
	removeHopHeaders(resp.Header)
	rte.ApplyResponseHeaders(resp.Header, wc)
	grpc := strings.HasPrefix(hget(resp.Header, "Content-Type"), "application/grpc")
	if grpc {
		ex.grpcStatus = hget(resp.Header, "Grpc-Status") // trailers-only
	}
	h := w.Header()
	moveHeader(h, resp.Header)
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	ex.code = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		e.upgrade(w, resp)
		return
	}
	w.WriteHeader(resp.StatusCode)
	// A body of unknown length (chunked, HTTP/2 without content-length:
	// gRPC streams, server-sent events) is flushed after every read so
	// that streams flow; a sized body is left to the server's buffering
	// (one write for a small answer), as httputil.ReverseProxy does.
	var fl http.Flusher
	if resp.ContentLength < 0 {
		fl, _ = w.(http.Flusher)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			ex.respBytes += int64(n)
			if ex.respMsgs != nil {
				ex.respMsgs.Feed(buf[:n])
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err != nil {
			break
		}
	}
	for k, vs := range resp.Trailer {
		for _, v := range vs {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
	if grpc {
		if st := hget(resp.Trailer, "Grpc-Status"); st != "" {
			ex.grpcStatus = st
		}
	}
}

// upgrade splices an upgraded (WebSocket) connection both ways.
func (e *Engine) upgrade(w http.ResponseWriter, resp *http.Response) {
	up, ok := resp.Body.(io.ReadWriteCloser)
	hj, ok2 := w.(http.Hijacker)
	if !ok || !ok2 {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	w.WriteHeader(http.StatusSwitchingProtocols)
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	defer up.Close()
	if err := brw.Flush(); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, brw); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding"}

// removeHopHeaders drops hop-by-hop headers, keeping Upgrade requests
// intact (Connection: Upgrade + Upgrade) and gRPC's "te: trailers".
func removeHopHeaders(h http.Header) {
	upgrade := hget(h, "Upgrade") != "" && strings.Contains(strings.ToLower(hget(h, "Connection")), "upgrade")
	te := hget(h, "Te")
	for _, k := range hopHeaders {
		delete(h, k) // canonical names: no need for Del's canonicalisation
	}
	if upgrade {
		h["Connection"] = []string{"Upgrade"}
	} else {
		delete(h, "Upgrade")
	}
	if strings.EqualFold(te, "trailers") {
		h["Te"] = []string{"trailers"}
	}
}

// forwardedHeaders sets x-forwarded-for and x-forwarded-proto as Envoy's
// connection manager does (see httpChain.useRemoteAddress).
func forwardedHeaders(r *http.Request, cc *chainConn) {
	hc := cc.chain
	if hc.appendXFF {
		if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			if prior := hget(r.Header, "X-Forwarded-For"); prior != "" {
				ip = prior + ", " + ip
			}
			r.Header["X-Forwarded-For"] = []string{ip}
		}
	}
	if hc.useRemoteAddress || hget(r.Header, "X-Forwarded-Proto") == "" {
		proto := xfpHTTP
		if overTLS(r, cc) {
			proto = xfpHTTPS
		}
		r.Header["X-Forwarded-Proto"] = []string{proto}
	}
}

const xfpHTTP, xfpHTTPS = "http", "https"

// forwardedProto is the request's scheme as Envoy's router sees it: the
// x-forwarded-proto forwardedHeaders sends upstream, that is the
// connection's scheme, or the header the client sent when the connection
// manager trusts it (not use_remote_address). Redirects and require_tls
// read it.
func forwardedProto(r *http.Request, cc *chainConn) string {
	if !cc.chain.useRemoteAddress {
		if v := hget(r.Header, "X-Forwarded-Proto"); v != "" {
			return v
		}
	}
	if overTLS(r, cc) {
		return xfpHTTPS
	}
	return xfpHTTP
}

// overTLS tells whether r came over TLS (the fast path leaves
// r.TLS unset: the connection says).
func overTLS(r *http.Request, cc *chainConn) bool {
	if r.TLS != nil {
		return true
	}
	_, ok := cc.Conn.(*tls.Conn)
	return ok
}

// hget is h.Get for a key already in canonical form (a constant): the
// map lookup without Get's canonicalisation of the key.
func hget(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// moveHeader adds src's fields to dst, handing over src's value slices
// where dst has no such field (src, an upstream response's header, is
// not used afterwards).
func moveHeader(dst, src http.Header) {
	for k, vs := range src {
		if prev, ok := dst[k]; ok {
			dst[k] = append(prev, vs...)
		} else {
			dst[k] = vs
		}
	}
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		for _, v := range vs {
			dst.Add(k, v)
		}
	}
}

// newRequestID returns a random (version 4) UUID.
func newRequestID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// transport returns the cluster's upstream HTTP transport: h2c when the
// request goes upstream as HTTP/2 (upstreamH2) in plaintext; mesh TLS (negotiating h2 or
// http/1.1 by ALPN) when the cluster has a transport socket.
func (e *Engine) transport(rt *runtime, c *cluster.Cluster, src source, h2 bool) http.RoundTripper {
	if src.addr.IsValid() {
		e.touchClientPools(src.addr)
	}
	k := runtimeTransportKey{c: c, src: src.addr, h2: h2}
	if t, ok := rt.transports.Load(k); ok {
		return t.(http.RoundTripper)
	}
	t := e.newTransport(c, src, h2)
	rt.transports.Store(k, t)
	return t
}

// runtimeTransportKey finds a transport for one runtime's cluster.
type runtimeTransportKey struct {
	c   *cluster.Cluster
	src netip.Addr
	h2  bool
}

// transportKey names a pool of upstream connections: a cluster keeps its
// connections across config updates unless its protocol or TLS changes.
// Connections that keep a client's address (TPROXY) are pooled per client.
type transportKey struct {
	cluster string
	h2, tls bool
	src     netip.Addr
}

func (e *Engine) newTransport(c *cluster.Cluster, src source, h2 bool) http.RoundTripper {
	key := transportKey{cluster: c.Name, h2: h2, tls: c.TLS != nil, src: src.addr}
	if t, ok := e.transports.Load(key); ok {
		return t.(http.RoundTripper)
	}
	var protos http.Protocols
	t := &http.Transport{
		Protocols:           &protos,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     time.Hour,
		DisableCompression:  true,
	}
	switch {
	case c.TLS != nil:
		protos.SetHTTP1(true)
		alpn := []string{"http/1.1"}
		if h2 {
			// Only then: with HTTP/2 enabled, every request first looks
			// for an h2 connection to the endpoint.
			protos.SetHTTP2(true)
			alpn = []string{"h2", "http/1.1"}
		}
		name := c.Name
		t.DialTLSContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			// The cluster as currently configured (SANs, SNI, timeouts
			// may have changed since this pool was made).
			cur := c
			if rt := e.cur.Load(); rt != nil && rt.clusters[name] != nil && rt.clusters[name].TLS != nil {
				cur = rt.clusters[name]
			}
			return e.dialUpstream(ctx, cur, addr, alpn, src)
		}
	case h2:
		protos.SetUnencryptedHTTP2(true)
		t.DialContext = dialer(c, src).DialContext
	default:
		protos.SetHTTP1(true)
		t.DialContext = dialer(c, src).DialContext
	}
	if src.addr.IsValid() {
		// One pool per client address: let idle ones go soon.
		t.IdleConnTimeout = 90 * time.Second
	}
	var rtr http.RoundTripper = t
	if !h2 {
		// HTTP/1.1: the common requests skip http.Transport's per
		// connection goroutines.
		h1 := &h1Transport{fallback: t, maxIdle: t.MaxIdleConnsPerHost, idleTimeout: t.IdleConnTimeout}
		h1.dial = func(ctx context.Context, addr string) (net.Conn, error) { return t.DialContext(ctx, "tcp", addr) }
		if t.DialTLSContext != nil {
			h1.dial = func(ctx context.Context, addr string) (net.Conn, error) { return t.DialTLSContext(ctx, "tcp", addr) }
		}
		rtr = h1
	}
	actual, _ := e.transports.LoadOrStore(key, rtr)
	return actual.(http.RoundTripper)
}

// record writes metrics for one request.
func (e *Engine) record(cc *chainConn, ex *exchange, r *http.Request, w http.ResponseWriter) {
	proto := "http"
	if isGRPC(r.Header) {
		proto = "grpc"
	}
	inbound := ex.inbound(cc)
	reporter := "source"
	if inbound {
		reporter = "destination"
	}
	svc := e.metricService(ex.cluster)
	req := telemetry.Request{Reporter: reporter, Protocol: proto, Code: ex.code, Flags: ex.flags, GRPCStatus: ex.grpcStatus,
		Duration: time.Since(ex.start), RequestBytes: ex.requestBytes(), DestinationService: svc.Host,
		DestinationServiceName: svc.Name, DestinationServiceNamespace: svc.Namespace,
		RequestMessages: ex.reqMsgs.Messages(), ResponseMessages: ex.respMsgs.Messages()}
	if reporter == "source" {
		req.Source = e.opts.Workload
		req.Security = "unknown" // as Istio's source reports: the client cannot know the server's policy
		if ex.peerSeen {
			req.Destination = ex.peer
		}
		if up := e.upstreams.lookup(ex.upstream); up != nil {
			if ids := up.ids.Load(); ids != nil {
				req.Source.Principal, req.Destination.Principal = ids.local, ids.peer
				if ns := namespaceOf(ids.peer); ns != "" {
					req.Destination.Namespace = ns
				}
			}
		}
	} else {
		req.Destination = e.opts.Workload
		if ex.peerSeen {
			req.Source = ex.peer
		}
		ids := cc.principals()
		req.Source.Principal, req.Destination.Principal, req.Security = ids.peer, ids.local, ids.security()
		if ns := namespaceOf(ids.peer); ns != "" {
			req.Source.Namespace = ns
		}
	}
	if sc := cc.chain.stats; sc.changesMetrics() {
		e.metrics.ObserveRequestOverridden(req, sc.overrides(func() *accesslog.Entry {
			en := httpEntry(ex, r, req.Duration)
			addConnAttributes(en, cc, ex, r)
			sc.captureHeaders(en, r, w)
			return en
		}))
	} else {
		e.metrics.ObserveRequestCached(req, &cc.metrics)
	}
	if tc := cc.chain.tracing; tc != nil {
		if ex.trace.trace == ([16]byte{}) { // answered by the proxy itself: a span all the same
			ex.trace = traceContext(r.Header, tc.traceOptions(inbound))
		}
		if ex.trace.sampled {
			e.reportSpan(cc, tc, ex, r, inbound, req.Duration)
		}
	}
	if cc.chain.logs != nil || e.opts.AccessLog != nil {
		e.logHTTP(cc, ex, r, w, req.Duration)
	}
}

// clusterService is the service host of an Istio cluster name
// ("outbound|8080|v1|reviews.bookinfo.svc.cluster.local"): what follows
// the third '|', else "".
func clusterService(name string) string {
	for range 3 {
		i := strings.IndexByte(name, '|')
		if i < 0 {
			return ""
		}
		name = name[i+1:]
	}
	return name
}

// mirror sends fire-and-forget copies of a request to the route's mirror
// clusters (Host gets "-shadow" appended, as Envoy does). Only requests
// whose body is buffered (or empty) are mirrored; answers are discarded.
func (e *Engine) mirror(rt *runtime, r *http.Request, rte *route.Route, path string, body []byte) {
	for _, m := range rte.Mirrors {
		if !m.Fraction.Hit(rand.Uint32()) {
			continue
		}
		c := rt.clusters[m.Cluster]
		if c == nil {
			continue
		}
		ep, err := c.Pick(cluster.PickContext{})
		if err != nil {
			continue
		}
		out := r.Clone(context.Background())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = upstreamScheme(c), ep.Address
		setPathQuery(out.URL, path)
		if !m.KeepHost {
			host, port, err := net.SplitHostPort(out.Host)
			if err != nil {
				out.Host += "-shadow"
			} else {
				out.Host = net.JoinHostPort(host+"-shadow", port)
			}
		}
		out.Body, out.ContentLength = http.NoBody, 0
		if body != nil {
			out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		removeHopHeaders(out.Header)
		go func(c *cluster.Cluster, out *http.Request) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := e.transport(rt, c, source{}, upstreamH2(c, out)).RoundTrip(out.WithContext(ctx))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}(c, out)
	}
}

// requestTarget returns r's request target (path and query) as
// r.URL.RequestURI() spells it, without allocating when the client's raw
// target (r.RequestURI) is already in that form: origin-form with a path
// of characters url.URL.EscapedPath keeps as they are.
func requestTarget(r *http.Request) string {
	t := r.RequestURI
	if t == "" || t[0] != '/' {
		return r.URL.RequestURI()
	}
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case c == '?':
			return t
		case !pathByte[c]:
			return r.URL.RequestURI()
		}
	}
	return t
}

// pathByte marks the bytes a path may hold verbatim: unreserved, sub-delims,
// ':', '@', '/', '%' (the server has rejected bad escapes), '[' and ']'.
var pathByte = alnumAnd("-._~!$&'()*+,;=:@/%[]")

// upstreamTarget is the URL to send upstream for the request URL in (Host
// and Scheme are set per attempt): in's path and query, or those of path
// when the route rewrote the target (path != orig).
func upstreamTarget(in *url.URL, path, orig string) url.URL {
	u := url.URL{Path: in.Path, RawPath: in.RawPath, RawQuery: in.RawQuery, ForceQuery: in.ForceQuery}
	if path != orig {
		// Exactly the rewritten target, without reference resolution
		// ("//x" stays a path, never a host).
		setPathQuery(&u, path)
	}
	return u
}

// upstreamScheme is https for mesh-TLS clusters (the transport then dials
// with DialTLSContext), http otherwise.
func upstreamScheme(c *cluster.Cluster) string {
	if c.TLS != nil {
		return "https"
	}
	return "http"
}
