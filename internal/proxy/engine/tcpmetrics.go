package engine

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/proxy/tcp"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/telemetry"
)

// tcpMetrics are one TCP connection's standard metrics (istio_tcp_*), as
// Istio's stats filter records them: the connection is counted as opened
// once the peer its report is about has told who it is over the metadata
// exchange (at once without one), bytes from then on, and closed at the
// end; a connection that never reached an upstream is opened and closed
// with its response flag.
type tcpMetrics struct {
	e    *Engine
	conn telemetry.Connection
	// awaitPeer: the reported-on side runs the metadata exchange, so the
	// connection opens when its frame has come (peer).
	awaitPeer bool
	// What the chain's istio.stats dimensions read.
	stats                  *statsConfig
	cluster, upstream, sni string
	down                   net.Conn
	dst                    netip.AddrPort
	md                     map[string]map[string]any
	start                  time.Time

	once   sync.Once
	opened atomic.Bool
	labels prometheus.Labels
	ov     *telemetry.LabelOverrides
}

// newTCPMetrics are the metrics of a connection down (local: the
// certificate this proxy presented on it, if TLS) to cluster name.
func (e *Engine) newTCPMetrics(t *tcpChain, name string, down net.Conn, local *tls.Certificate, dst netip.AddrPort, sni string,
	md map[string]map[string]any, start time.Time) *tcpMetrics {
	m := &tcpMetrics{e: e, stats: t.stats, cluster: name, down: down, dst: dst, sni: sni, md: md, start: start}
	c := &m.conn
	c.Reporter = "source"
	if strings.HasPrefix(name, "inbound|") {
		c.Reporter = "destination"
	}
	svc := e.metricService(name)
	c.DestinationService, c.DestinationServiceName, c.DestinationServiceNamespace = svc.Host, svc.Name, svc.Namespace
	if c.Reporter == "destination" {
		c.Destination = e.opts.Workload
		ids := connPrincipals(down, local)
		c.Source.Principal, c.Destination.Principal, c.Security = ids.peer, ids.local, ids.security()
		c.Source.Namespace = namespaceOf(ids.peer)
	} else {
		c.Source = e.opts.Workload
		c.Security = "unknown" // as Istio's source reports: the client cannot know the server's policy
	}
	return m
}

// dialed notes the upstream connection: on the source's side, its
// identities.
func (m *tcpMetrics) dialed(up net.Conn) {
	if m.conn.Reporter != "source" {
		return
	}
	if tc, ok := up.(*tls.Conn); ok && len(tc.ConnectionState().PeerCertificates) > 0 {
		peer := peerPrincipal(tc)
		m.conn.Destination.Principal = peer
		m.conn.Destination.Namespace = namespaceOf(peer)
		m.conn.Source.Principal = m.e.localPrincipal()
	}
}

// exchangeTCP runs the metadata exchange on c (downstream: the
// connection from the client) when its ALPN says the other sidecar runs
// it; otherwise c is returned as it is.
func (e *Engine) exchangeTCP(c net.Conn, m *tcpMetrics, downstream bool) net.Conn {
	tc, ok := c.(*tls.Conn)
	if !ok || e.peerFrame == nil || tc.ConnectionState().NegotiatedProtocol != mxALPN {
		return c
	}
	// The destination reports on its client (the downstream side), the
	// source on its server.
	if downstream != (m.conn.Reporter == "destination") {
		return newMXConn(c, e.peerFrame, func(telemetry.Peer, bool) {})
	}
	m.awaitPeer = true
	return newMXConn(c, e.peerFrame, func(p telemetry.Peer, ok bool) {
		if ok {
			m.setPeer(p)
		}
		m.open()
	})
}

// setPeer takes the other sidecar's metadata; identities stay those of
// the connection's certificates, and the namespace the certificate's.
func (m *tcpMetrics) setPeer(p telemetry.Peer) {
	side := &m.conn.Source
	if m.conn.Reporter == "source" {
		side = &m.conn.Destination
	}
	p.Principal = side.Principal
	if side.Namespace != "" {
		p.Namespace = side.Namespace
	}
	*side = p
}

// open counts the connection as opened, once; labels are final from then.
func (m *tcpMetrics) open() {
	m.once.Do(func() {
		m.labels = m.conn.Labels()
		if sc := m.stats; sc.changesMetrics() {
			m.ov = sc.overrides(func() *accesslog.Entry {
				en := &accesslog.Entry{Start: m.start, UpstreamHost: m.upstream, UpstreamCluster: m.cluster, Flags: m.conn.Flags,
					DownstreamRemote: m.down.RemoteAddr().String(), DownstreamLocal: m.dst.String(), ServerName: m.sni, Metadata: m.md}
				connTLS(en, m.down)
				return en
			})
		}
		m.record(telemetry.TCPConnectionsOpenedTotal, 1)
		m.opened.Store(true)
	})
}

// failed records a connection that reached no upstream (flags: NC, UH,
// UF): opened and closed.
func (m *tcpMetrics) failed(flags string) {
	m.conn.Flags = flags
	m.open()
	m.record(telemetry.TCPConnectionsClosedTotal, 1)
}

// recordBytes adds d to the byte counts; false (nothing recorded) before
// the connection opened.
func (m *tcpMetrics) recordBytes(d tcp.Counts) bool {
	if !m.opened.Load() {
		return false
	}
	m.record(telemetry.TCPReceivedBytesTotal, float64(d.Sent))
	m.record(telemetry.TCPSentBytesTotal, float64(d.Received))
	return true
}

func (m *tcpMetrics) record(metric int, v float64) {
	m.e.metrics.RecordTCP(m.ov, metric, m.labels, v)
}

// metricService is the destination service of a cluster's metrics: the
// first of its istio.services metadata (discovery sets it, as istiod
// does, on outbound and inbound clusters), else the service its name
// carries (outbound|port|subset|host); names by registry.ShortName.
func (e *Engine) metricService(name string) cluster.ServiceRef {
	if rt := e.cur.Load(); rt != nil {
		if c := rt.clusters[name]; c != nil && c.Service.Host != "" {
			return c.Service
		}
	}
	host := clusterService(name)
	short, ns := registry.ShortName(host)
	return cluster.ServiceRef{Host: host, Name: short, Namespace: ns}
}
