package engine

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/admin"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"github.com/weftmesh/weft/internal/proxy/listener"
	"github.com/weftmesh/weft/internal/proxy/tcp"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
)

// Options configure an Engine.
type Options struct {
	// Workload describes this proxy's own workload (metric labels).
	Workload telemetry.Peer
	// DrainDuration is how long connections get to finish on drain.
	// Default 5s.
	DrainDuration time.Duration
	// TCPIdleTimeout closes idle TCP proxy connections. Default 1h.
	TCPIdleTimeout time.Duration
	// Registerer receives the proxy's metrics.
	Registerer prometheus.Registerer
	// Certs is the workload identity for mesh TLS; nil means the proxy has
	// none, and mesh TLS fails closed.
	Certs Certs
	// AccessLog receives one entry per HTTP request and TCP connection on
	// every listener (the --access-log flag), besides the access logs xDS
	// configures; nil logs nothing.
	AccessLog *accesslog.Logger
	// NodeID is the proxy's xDS node id (the node_id tag of its spans).
	NodeID string
	// TraceFlushInterval is how often queued spans are sent when fewer
	// than five are waiting. Default 5s, as Envoy's Zipkin tracer.
	TraceFlushInterval time.Duration
	// CredentialDir holds the gateway credentials TLS filter chains name
	// as kubernetes://<name>: <dir>/<name>/tls.crt and tls.key, and
	// ca.crt (see credentials.go). Empty: none; handshakes on chains that
	// name one fail.
	CredentialDir string
}

// Engine is the running data plane.
type Engine struct {
	log     *slog.Logger
	opts    Options
	metrics *telemetry.Metrics
	// rbacStats counts RBAC shadow verdicts (rbacstats.go).
	rbacStats rbacStats
	clusters  *cluster.Manager
	cur       atomic.Pointer[runtime]
	// compiled caches the runtime the validator built for a snapshot, so
	// Apply does not compile twice.
	compiled sync.Map // *xdsclient.Snapshot -> *runtime

	mu       sync.Mutex
	bound    map[netip.AddrPort]*boundListener
	draining atomic.Bool
	quit     chan struct{}
	quitOnce sync.Once
	conns    sync.WaitGroup

	// h1conns are the connections on the HTTP/1.1 fast path (h1server.go).
	h1mu    sync.Mutex
	h1conns map[*h1ServerConn]struct{}
	// h1watchdog: watchH1 is running (under h1mu).
	h1watchdog bool

	transports sync.Map // transportKey -> *http.Transport
	// clientPools: last use (clock()) of each TPROXY client's pools;
	// poolJanitor: sweepClientPools is running (clientpools.go).
	clientPools sync.Map // netip.Addr -> *atomic.Int64
	poolJanitor atomic.Bool
	// logFiles are the access log files xDS configures, shared by path.
	logFiles *accesslog.Files
	// reporters send spans and OpenTelemetry access log records, one
	// per destination (export.go); traceWarn logs the first delivery
	// failure.
	reporters sync.Map // exportDest -> *reporter
	traceWarn sync.Once
	// roots caches the trust bundle merged with the identity's roots.
	roots atomic.Pointer[mergedRoots]
	// creds caches the gateway credentials read from files
	// (credentials.go).
	creds *credCache
	// peerMD is this proxy's metadata exchange header and peerFrame its
	// TCP exchange frame, peers the peers' decoded (peermeta.go);
	// upstreams are the upstream sidecars' metadata and identities by
	// endpoint address (principals.go).
	peerMD    []string
	peerFrame []byte
	peers     peerCache
	upstreams upstreamPeers
	// ownID caches this proxy's principal (localPrincipal).
	ownID atomic.Pointer[ownIdentity]
}

// boundListener is one listening socket and its HTTP servers.
type boundListener struct {
	addr netip.AddrPort
	ln   net.Listener
	// name of the Listener resource currently served on this socket.
	name atomic.Value
	srv  *http.Server
	feed chan net.Conn
	// transparent: the socket has IP_TRANSPARENT (TPROXY capture).
	transparent bool
}

// source is the address upstream connections bind under original_src
// (zero: the kernel picks), and their SO_MARK.
type source struct {
	addr netip.Addr
	mark uint32
}

// New returns an engine with no config; Validate and Apply feed it.
func New(log *slog.Logger, opts Options) *Engine {
	if opts.DrainDuration <= 0 {
		opts.DrainDuration = 5 * time.Second
	}
	if opts.TCPIdleTimeout <= 0 {
		opts.TCPIdleTimeout = time.Hour
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	e := &Engine{log: log, opts: opts, metrics: telemetry.NewMetrics(reg), clusters: cluster.NewManager(cluster.Options{}),
		bound: map[netip.AddrPort]*boundListener{}, quit: make(chan struct{}), logFiles: accesslog.NewFiles(0), creds: newCredCache()}
	reg.MustRegister(&e.rbacStats)
	e.peerMD, e.peerFrame = ownPeerMetadata(opts.NodeID, opts.Workload)
	return e
}

// Validate compiles a snapshot; an error makes the xDS client NACK it.
func (e *Engine) Validate(s *xdsclient.Snapshot) error {
	rt, err := compileRuntime(s)
	if err != nil {
		return err
	}
	if err := e.checkAccessLogs(rt); err != nil {
		return err
	}
	e.compiled.Store(s, rt)
	return nil
}

// Apply swaps in a validated snapshot and opens or closes listening
// sockets to match it. Sockets that stay keep their connections.
func (e *Engine) Apply(s *xdsclient.Snapshot) error {
	v, ok := e.compiled.LoadAndDelete(s)
	if !ok {
		if err := e.Validate(s); err != nil {
			return err
		}
		v, _ = e.compiled.LoadAndDelete(s)
	}
	rt := v.(*runtime)
	e.clusters.Update(rt.clusters)
	rt.clusters = e.clusters.Clusters()
	e.upstreams.prune(rt.clusters)
	var errs []error
	var logErr error
	rt.logPaths, logErr = e.openAccessLogs(rt)
	if logErr != nil {
		errs = append(errs, logErr)
	}
	// Labels istio.stats dimensions add go on the metrics first, so that
	// the new chains record into vectors that have them.
	e.bindChainStats(rt)
	req, tcp := extraMetricLabels(rt)
	if e.metrics.SetExtraLabels(req, tcp) {
		e.log.Info("metric labels changed; Istio's metrics start again from zero", "request_extra", req, "tcp_extra", tcp)
	}
	if old := e.cur.Swap(rt); old != nil {
		e.releaseAccessLogs(old.logPaths)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	want := map[netip.AddrPort]*listenerSpec{}
	for _, ls := range rt.listeners {
		if ls.bind {
			want[ls.addr] = ls
		}
	}
	for addr, ls := range want {
		if bl, ok := e.bound[addr]; ok {
			if bl.transparent == ls.transparent {
				bl.name.Store(ls.name)
				continue
			}
			// IP_TRANSPARENT is set at bind time: rebind.
			_ = bl.ln.Close()
			delete(e.bound, addr)
		}
		bl, err := e.listen(addr, ls.name, ls.transparent)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		e.bound[addr] = bl
	}
	for addr, bl := range e.bound {
		if _, ok := want[addr]; !ok {
			_ = bl.ln.Close()
			delete(e.bound, addr)
		}
	}
	return errors.Join(errs...)
}

// Run applies the client's updates until ctx ends, then drains.
func (e *Engine) Run(ctx context.Context, updates <-chan *xdsclient.Snapshot) error {
	for {
		select {
		case <-ctx.Done():
			e.shutdown()
			return nil
		case <-e.quit:
			e.shutdown()
			return nil
		case s := <-updates:
			if err := e.Apply(s); err != nil {
				e.log.Error("applying config", "error", err)
			}
		}
	}
}

func (e *Engine) listen(addr netip.AddrPort, name string, transparent bool) (*boundListener, error) {
	var lc net.ListenConfig
	if transparent {
		lc.Control = listener.TransparentControl
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("listener %s on %s: %w", name, addr, err)
	}
	bl := &boundListener{addr: addr, ln: ln, feed: make(chan net.Conn), transparent: transparent}
	bl.name.Store(name)
	bl.srv = e.newHTTPServer(bl)
	go func() { _ = bl.srv.Serve(&chanListener{ch: bl.feed, addr: ln.Addr()}) }()
	go e.accept(bl)
	e.log.Info("listening", "listener", name, "address", addr)
	return bl, nil
}

func (e *Engine) accept(bl *boundListener) {
	for {
		c, err := bl.ln.Accept()
		if err != nil {
			return
		}
		e.conns.Add(1)
		go func() {
			defer e.conns.Done()
			e.serveConn(bl, c)
		}()
	}
}

// serveConn finds the listener and filter chain for a connection and hands
// it to the HTTP server or the TCP proxy.
func (e *Engine) serveConn(bl *boundListener, c net.Conn) {
	rt := e.cur.Load()
	ls := rt.listeners[bl.name.Load().(string)]
	if ls == nil {
		_ = c.Close()
		return
	}
	dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
	var src source
	if ls.originalSrc {
		src = source{addr: c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), mark: ls.srcMark}
	}
	if ls.useOrigDst || ls.origDstFilter {
		if od, err := listener.OriginalDst(c); err == nil {
			dst = od
		}
	}
	if ls.useOrigDst {
		if target := rt.virtualFor(dst); target != nil {
			ls = target
		}
	}
	in := inspection{transport: "raw_buffer"}
	if ls.inspect.any() {
		c, in = inspect(c, &ls.inspect)
	}
	ch := ls.match(dst, in.sni, in.transport, in.protocols...)
	if ch == nil {
		e.log.Debug("no filter chain matches", "listener", ls.name, "destination", dst, "transport", in.transport,
			"sni", in.sni, "application_protocols", in.protocols)
		_ = c.Close()
		return
	}
	var local *tls.Certificate // the certificate this proxy presented, if TLS
	if ch.tls != nil {
		cfg, err := e.serverTLS(ch.tls, &local)
		if err != nil {
			e.log.Warn("refusing a TLS connection", "listener", ls.name, "chain", ch.name, "error", err)
			_ = c.Close()
			return
		}
		tc := tls.Server(c, cfg)
		hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			e.handshakeFailed(ls, ch, c, err)
			_ = c.Close()
			return
		}
		c = tc
	}
	ok, pol, md := allowConn(ch, c, dst, &e.rbacStats)
	if !ok {
		e.log.Debug("connection denied by RBAC", "listener", ls.name, "chain", ch.name, "remote", c.RemoteAddr(), "policy", pol)
		_ = c.Close()
		return
	}
	switch {
	case ch.tcp != nil:
		e.proxyTCP(rt, c, local, ch.tcp, dst, src, in.sni, md)
	case ch.http != nil:
		e.serveHTTP1(bl, &chainConn{Conn: c, chain: ch.http, dst: dst, src: src, origin: originOf(rt, ls, ch), local: local})
	}
}

// handshakeFailed logs a failed downstream TLS handshake: at Warn when a
// credential of the chain could not be loaded (the operator must act; each
// distinct error once a minute, at Debug in between), at Debug when the
// client failed it.
func (e *Engine) handshakeFailed(ls *listenerSpec, ch *chain, c net.Conn, err error) {
	var ce *credentialError
	if errors.As(err, &ce) && e.creds.warnNow(ce.Error()) {
		e.log.Warn("TLS handshake failed: credential not loaded", "listener", ls.name, "chain", ch.name, "remote", c.RemoteAddr(), "error", ce)
		return
	}
	e.log.Debug("TLS handshake failed", "listener", ls.name, "chain", ch.name, "remote", c.RemoteAddr(), "error", err)
}

// virtualFor finds the listener (not bound to a port) that owns dst: one
// whose address is dst's IP, else one on 0.0.0.0 / ::.
func (rt *runtime) virtualFor(dst netip.AddrPort) *listenerSpec {
	var wildcard *listenerSpec
	for _, ls := range rt.virtual[uint32(dst.Port())] {
		if ls.addr.Addr() == dst.Addr().Unmap() {
			return ls
		}
		if ls.addr.Addr().IsUnspecified() {
			wildcard = ls
		}
	}
	return wildcard
}

func (e *Engine) proxyTCP(rt *runtime, down net.Conn, local *tls.Certificate, t *tcpChain, dst netip.AddrPort, src source, sni string, md map[string]map[string]any) {
	start := time.Now()
	name := t.pick(rand.Uint64())
	c := rt.clusters[name]
	m := e.newTCPMetrics(t, name, down, local, dst, sni, md, start)
	fail := func(upstream, flags string) {
		e.logTCP(t, down, nil, dst, sni, md, start, name, upstream, flags, tcp.Counts{})
		m.failed(flags)
		_ = down.Close()
	}
	if c == nil {
		e.log.Debug("tcp: unknown cluster", "cluster", name)
		fail("", "NC")
		return
	}
	ep, err := c.Pick(cluster.PickContext{OriginalDst: dst})
	if err != nil {
		e.log.Debug("tcp: no upstream", "cluster", name, "error", err)
		fail("", "UH")
		return
	}
	m.upstream = ep.Address
	up, err := e.dialUpstream(context.Background(), c, ep.Address, []string{mxALPN, "istio"}, src)
	if err != nil {
		e.log.Warn("tcp: upstream connect failed", "cluster", name, "endpoint", ep.Address, "error", err)
		c.State().Report(ep, cluster.Outcome{ConnectFailure: true})
		fail(ep.Address, "UF")
		return
	}
	m.dialed(up)
	// The metadata exchange with the sidecar on either side, when the
	// connection's ALPN says it runs it; the connection's metrics open
	// once the side they report on has told who it is.
	pdown, pup := e.exchangeTCP(down, m, true), e.exchangeTCP(up, m, false)
	if !m.awaitPeer {
		m.open()
	}
	// Bytes are counted while the connection lasts, every reporting
	// interval, and what is left when it closes.
	var reported tcp.Counts
	counts := tcp.Proxy(pdown, pup, e.opts.TCPIdleTimeout, tcp.Report{Every: t.stats.tcpReportEvery(), Fn: func(d tcp.Counts) {
		if m.recordBytes(d) {
			reported = tcp.Counts{Sent: reported.Sent + d.Sent, Received: reported.Received + d.Received}
		}
	}})
	e.logTCP(t, down, up, dst, sni, md, start, name, ep.Address, "", counts) // before the metrics: a closed count means the entry is queued
	m.open()
	m.recordBytes(counts.Sub(reported))
	m.record(telemetry.TCPConnectionsClosedTotal, 1)
}

// Drain stops taking new connections' requests gracefully: HTTP/1 gets
// Connection: close, HTTP/2 a GOAWAY.
func (e *Engine) Drain() {
	if e.draining.Swap(true) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, bl := range e.bound {
		bl.srv.SetKeepAlivesEnabled(false)
	}
	e.closeIdleH1()
}

// Quit drains and makes Run return.
func (e *Engine) Quit() {
	e.Drain()
	e.quitOnce.Do(func() { close(e.quit) })
}

func (e *Engine) shutdown() {
	e.Drain()
	e.mu.Lock()
	bound := make([]*boundListener, 0, len(e.bound))
	for _, bl := range e.bound {
		bound = append(bound, bl)
		_ = bl.ln.Close()
	}
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.DrainDuration)
	defer cancel()
	for _, bl := range bound {
		_ = bl.srv.Shutdown(ctx)
	}
	e.waitH1(ctx)
	e.logFiles.CloseAll()
	// Pooled upstream connections, so that a peer sidecar's drain does
	// not wait for connections that will never carry a request.
	e.transports.Range(func(_, t any) bool {
		if c, ok := t.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
		return true
	})
}

// Ready reports whether a config has been applied and the proxy is not
// draining.
func (e *Engine) Ready() (bool, string) {
	if e.draining.Load() {
		return false, "draining"
	}
	if e.cur.Load() == nil {
		return false, "no configuration received from discovery yet"
	}
	return true, ""
}

// Config returns the applied config for the admin API.
func (e *Engine) Config() *admin.Config {
	rt := e.cur.Load()
	if rt == nil {
		return nil
	}
	return snapshotConfig(rt.snap, e.opts.Certs)
}

// Endpoints returns live upstream state for /clusters.
func (e *Engine) Endpoints() []admin.EndpointStatus {
	var out []admin.EndpointStatus
	for name, c := range e.clusters.Clusters() {
		for _, ep := range c.Endpoints() {
			out = append(out, admin.EndpointStatus{Cluster: name, Address: ep.Address, Healthy: ep.Health == cluster.Healthy,
				Ejected: ep.Ejected(), ActiveRequests: ep.ActiveRequests(),
				Region: ep.Locality.Region, Zone: ep.Locality.Zone, SubZone: ep.Locality.SubZone, Priority: ep.Priority})
		}
	}
	return out
}

// chanListener feeds accepted connections to an http.Server.
type chanListener struct {
	ch   chan net.Conn
	addr net.Addr
	once sync.Once
	done chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	l.once.Do(func() { l.done = make(chan struct{}) })
	select {
	case c, ok := <-l.ch:
		if !ok {
			return nil, net.ErrClosed
		}
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { l.done = make(chan struct{}) })
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// chainConn carries the HTTP chain and original destination to handlers.
type chainConn struct {
	net.Conn
	// r, when set, replays what the HTTP/1.1 fast path peeked before
	// handing the connection to net/http.
	r     *bufio.Reader
	chain *httpChain
	dst   netip.AddrPort
	src   source
	// origin and view find the chain again after config updates (drain.go).
	origin chainOrigin
	view   atomic.Pointer[connView]
	// fconn is the connection as HTTP filters see it (filterConn).
	connOnce sync.Once
	fconn    *httpfilter.Conn
	// HTTP/2 streams served and streams reset prematurely (flood limit).
	h2Streams, h2Resets atomic.Int64
	h2Closed            atomic.Bool
	// local is the certificate this proxy presented on the connection
	// (mesh TLS only): the By of its x-forwarded-client-cert element.
	local *tls.Certificate
	// xfcc caches the connection's x-forwarded-client-cert element.
	xfcc xfccCache
	// metrics caches the request metrics its last request recorded in.
	metrics telemetry.RequestCache
	// peerAnswered is set once this proxy's metadata went back to the
	// caller on this connection (peermeta.go).
	peerAnswered atomic.Bool
	// ids caches the connection's identities (principals.go).
	ids atomic.Pointer[principals]
}

func (cc *chainConn) Read(b []byte) (int, error) {
	if cc.r != nil {
		return cc.r.Read(b)
	}
	return cc.Conn.Read(b)
}
