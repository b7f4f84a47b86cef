package engine

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/sniff"
)

// Listener filters that inspect a connection's first bytes.
const (
	tlsInspectorName  = "envoy.filters.listener.tls_inspector"
	httpInspectorName = "envoy.filters.listener.http_inspector"
)

// defaultInspectTimeout bounds inspection when the listener sets no
// listener_filters_timeout. Envoy's default is 15s; weft-proxy keeps the
// 1s it has always waited for a first byte, so that server-first protocols
// (the client sends nothing) are not held up for long.
const defaultInspectTimeout = time.Second

// inspectNeeds is what a listener's chains need to know about a connection
// (compiled once per listener).
type inspectNeeds struct {
	// transport: some chain matches or terminates TLS.
	transport bool
	// hello: some chain matches SNI or application protocols, which a TLS
	// ClientHello carries.
	hello bool
	// http: the http_inspector listener filter is configured and some
	// chain matches application protocols: plaintext is sniffed for
	// HTTP/1.x and h2c.
	http       bool
	httpFilter bool
	// timeout bounds the wait for the client's first bytes; when it
	// passes, the connection continues as what was seen (opaque if
	// nothing), as Envoy does with continue_on_listener_filters_timeout.
	timeout time.Duration
}

// any reports whether connections must be inspected at all.
func (n *inspectNeeds) any() bool { return n.transport || n.hello || n.http }

// compileInspection reads the listener's inspection settings.
func (ls *listenerSpec) compileInspection(l *listenerv3.Listener) error {
	ls.inspect.timeout = defaultInspectTimeout
	if d := l.GetListenerFiltersTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return fmt.Errorf("listener_filters_timeout: %w", err)
		}
		if t := d.AsDuration(); t > 0 {
			ls.inspect.timeout = t
		}
	}
	for _, lf := range l.GetListenerFilters() {
		if lf.GetName() == httpInspectorName {
			ls.inspect.httpFilter = true
		}
	}
	return nil
}

// fromChains derives what must be inspected from the compiled chains.
func (n *inspectNeeds) fromChains(chains []*chain) {
	for _, ch := range chains {
		if ch == nil {
			continue
		}
		if ch.transportProtocol != "" || ch.tls != nil {
			n.transport = true
		}
		if len(ch.serverNames) > 0 || len(ch.applicationProtocols) > 0 {
			n.hello, n.transport = true, true
		}
		if len(ch.applicationProtocols) > 0 && n.httpFilter {
			n.http = true
		}
	}
}

// inspection is what the listener filters learned about a connection.
type inspection struct {
	// transport is "tls" or "raw_buffer".
	transport string
	// sni is the TLS server name ("" without one).
	sni string
	// protocols are the requested application protocols: the ClientHello's
	// ALPN list, or the sniffed plaintext HTTP protocol ("http/1.1", "h2c").
	protocols []string
}

// inspect reads as much of a connection as its listener's chains need,
// returning a connection that replays what was read.
func inspect(c net.Conn, n *inspectNeeds) (net.Conn, inspection) {
	in := inspection{transport: "raw_buffer"}
	r := bufio.NewReaderSize(c, sniff.MaxPeek)
	pc := &peekedConn{Conn: c, r: r}
	var p sniff.Protocol
	if n.http {
		p = sniff.Detect(c, r, n.timeout)
	} else {
		// Only TLS or not: one byte tells.
		_ = c.SetReadDeadline(time.Now().Add(n.timeout))
		b, _ := r.Peek(1)
		_ = c.SetReadDeadline(time.Time{})
		p = sniff.Final(b)
	}
	switch {
	case p == sniff.TLS:
		in.transport = "tls"
		if n.hello {
			if h := clientHello(c, r, n.timeout); h != nil {
				in.sni, in.protocols = h.ServerName, h.SupportedProtos
			}
		}
	case p.IsHTTP():
		in.protocols = []string{p.ALPN()}
	}
	return pc, in
}

// errHelloRead stops the handshake clientHello runs once the ClientHello
// has been parsed.
var errHelloRead = errors.New("client hello read")

// clientHello parses the TLS ClientHello buffered (or arriving) in r
// without consuming it, with crypto/tls's own parser: a server handshake
// on a replaying, write-discarding view of the connection that stops once
// the hello is read. nil when the hello is malformed, larger than r's
// buffer, or not complete before timeout.
func clientHello(c net.Conn, r *bufio.Reader, timeout time.Duration) *tls.ClientHelloInfo {
	var hello *tls.ClientHelloInfo
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hello = &tls.ClientHelloInfo{ServerName: h.ServerName, SupportedProtos: append([]string(nil), h.SupportedProtos...)}
		return nil, errHelloRead
	}}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_ = tls.Server(&replayConn{Conn: c, r: r}, cfg).Handshake()
	_ = c.SetReadDeadline(time.Time{})
	return hello
}

// replayConn reads a bufio.Reader's buffer without consuming it (peeking
// further as needed) and discards writes.
type replayConn struct {
	net.Conn
	r   *bufio.Reader
	off int
}

func (rc *replayConn) Read(p []byte) (int, error) {
	if rc.r.Buffered() <= rc.off {
		if _, err := rc.r.Peek(rc.off + 1); err != nil {
			return 0, err
		}
	}
	b, _ := rc.r.Peek(rc.r.Buffered())
	n := copy(p, b[rc.off:])
	rc.off += n
	return n, nil
}

func (rc *replayConn) Write(p []byte) (int, error) { return len(p), nil }

// Close leaves the real connection open.
func (rc *replayConn) Close() error { return nil }

// upstreamH2 reports whether a request goes to cluster c over HTTP/2: the
// cluster says HTTP/2, or it uses the downstream protocol (Envoy's
// use_downstream_protocol_config, which discovery sets for ports whose
// protocol is detected) and the request came over HTTP/2.
func upstreamH2(c *cluster.Cluster, r *http.Request) bool {
	switch c.HTTP.Protocol {
	case cluster.HTTP2:
		return true
	case cluster.DownstreamProtocol:
		return r.ProtoMajor == 2
	}
	return false
}
