package engine

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/weftmesh/weft/internal/proxy/cluster"
	"github.com/weftmesh/weft/internal/telemetry"
)

// The identities on either end of a mesh mTLS connection, for the
// standard metrics' source_principal, destination_principal and
// connection_security_policy, as Istio's stats filter reads them: the
// first URI SAN of the peer's certificate and of this proxy's own
// ("spiffe://<trust domain>/ns/<namespace>/sa/<account>").

// principals are one connection's two identities ("" when unknown).
type principals struct {
	peer, local string
}

// mutual reports whether both ends proved an identity: Istio's
// connection_security_policy "mutual_tls" (else "none") on the
// destination's side.
func (p principals) mutual() bool { return p.peer != "" && p.local != "" }

// security is the connection_security_policy of a destination's report.
func (p principals) security() string {
	if p.mutual() {
		return "mutual_tls"
	}
	return "none"
}

// certPrincipal is a certificate's first URI SAN.
func certPrincipal(c *x509.Certificate) string {
	if c == nil || len(c.URIs) == 0 {
		return ""
	}
	return c.URIs[0].String()
}

// connPrincipals are the identities of a downstream connection: its
// client certificate's and local, the certificate this proxy presented.
func connPrincipals(c net.Conn, local *tls.Certificate) principals {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return principals{}
	}
	return principals{peer: peerPrincipal(tc), local: ownPrincipal(local)}
}

// peerPrincipal is the first URI SAN of the certificate the other end of
// tc presented ("" without one).
func peerPrincipal(tc *tls.Conn) string {
	if peers := tc.ConnectionState().PeerCertificates; len(peers) > 0 {
		return certPrincipal(peers[0])
	}
	return ""
}

// leafOf is the leaf of a certificate this proxy presents (nil when it
// cannot be parsed).
func leafOf(c *tls.Certificate) *x509.Certificate {
	if c == nil {
		return nil
	}
	if c.Leaf != nil || len(c.Certificate) == 0 {
		return c.Leaf
	}
	leaf, _ := x509.ParseCertificate(c.Certificate[0])
	return leaf
}

// ownPrincipal is the first URI SAN of a certificate this proxy presents.
func ownPrincipal(c *tls.Certificate) string { return certPrincipal(leafOf(c)) }

// principals are cc's identities, found once per connection.
func (cc *chainConn) principals() principals {
	if p := cc.ids.Load(); p != nil {
		return *p
	}
	p := connPrincipals(cc.Conn, cc.local)
	cc.ids.Store(&p)
	return p
}

// namespaceOf is the namespace of a SPIFFE identity in Istio's form
// (".../ns/<namespace>/sa/<account>"), "" otherwise: the peer's namespace
// when the metadata exchange did not say it.
func namespaceOf(principal string) string {
	_, rest, ok := strings.Cut(principal, "/ns/")
	if !ok {
		return ""
	}
	ns, _, ok := strings.Cut(rest, "/sa/")
	if !ok || ns == "" || strings.Contains(ns, "/") {
		return ""
	}
	return ns
}

// upstreamPeer is what this proxy knows of one upstream sidecar, by
// endpoint address: its identity and this proxy's on the last mesh mTLS
// connection to it, and its metadata from the exchange.
type upstreamPeer struct {
	ids  atomic.Pointer[principals]
	peer atomic.Pointer[telemetry.Peer]
	// missed counts the configurations in a row without the endpoint.
	missed atomic.Int32
}

// upstreamPeers are the upstream sidecars by endpoint address. An entry
// goes when two configurations in a row have no cluster with its
// endpoint (prune): one may briefly lack an endpoint whose connections
// are still in use, and the server sidecar sends its metadata once per
// connection.
type upstreamPeers struct {
	m sync.Map // address -> *upstreamPeer
}

func (u *upstreamPeers) get(addr string) *upstreamPeer {
	if v, ok := u.m.Load(addr); ok {
		return v.(*upstreamPeer)
	}
	v, _ := u.m.LoadOrStore(addr, &upstreamPeer{})
	return v.(*upstreamPeer)
}

// lookup is addr's entry, nil when there is none.
func (u *upstreamPeers) lookup(addr string) *upstreamPeer {
	if v, ok := u.m.Load(addr); ok {
		return v.(*upstreamPeer)
	}
	return nil
}

// handshake records the identities of a mesh mTLS connection to addr.
func (u *upstreamPeers) handshake(addr string, tc *tls.Conn, local string) {
	p := principals{peer: peerPrincipal(tc), local: local}
	up := u.get(addr)
	if old := up.ids.Load(); old == nil || *old != p {
		up.ids.Store(&p)
	}
}

// learn records the metadata addr's sidecar sent.
func (u *upstreamPeers) learn(addr string, p telemetry.Peer) {
	up := u.get(addr)
	if old := up.peer.Load(); old == nil || *old != p {
		up.peer.Store(&p)
	}
}

// prune forgets the endpoints none of clusters has.
func (u *upstreamPeers) prune(clusters map[string]*cluster.Cluster) {
	live := map[string]bool{}
	for _, c := range clusters {
		for _, ep := range c.Endpoints() {
			live[ep.Address] = true
		}
	}
	u.m.Range(func(k, v any) bool {
		up := v.(*upstreamPeer)
		switch {
		case live[k.(string)]:
			up.missed.Store(0)
		case up.missed.Add(1) >= 2:
			u.m.Delete(k)
		}
		return true
	})
}

// localPrincipal is this proxy's mesh identity, from its current
// workload certificate ("" without one); parsed once per certificate.
func (e *Engine) localPrincipal() string {
	if e.opts.Certs == nil {
		return ""
	}
	cert, err := e.opts.Certs.GetCertificate(nil)
	if err != nil || cert == nil {
		return ""
	}
	if c := e.ownID.Load(); c != nil && c.cert == cert {
		return c.principal
	}
	id := &ownIdentity{cert: cert, principal: ownPrincipal(cert)}
	e.ownID.Store(id)
	return id.principal
}

// ownIdentity caches the principal of one workload certificate.
type ownIdentity struct {
	cert      *tls.Certificate
	principal string
}
