package engine

import (
	"crypto/tls"
	"net/http"
	"net/netip"
	"strings"

	"github.com/weftmesh/weft/internal/proxy/httpfilter"
)

// runFilters runs the chain's HTTP filters in order; the first Reply
// ends the exchange.
func runFilters(cc *chainConn, r *http.Request) *httpfilter.Reply {
	call := &httpfilter.Call{Request: r, Conn: cc.filterConn()}
	for _, f := range cc.chain.filters {
		if rep := f.Decode(call); rep != nil {
			return rep
		}
	}
	return nil
}

// filterConn describes the downstream connection to filters, computed once
// per connection.
func (cc *chainConn) filterConn() *httpfilter.Conn {
	cc.connOnce.Do(func() {
		fc := &httpfilter.Conn{Destination: cc.dst}
		if ap, err := netip.ParseAddrPort(cc.RemoteAddr().String()); err == nil {
			fc.Source = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		if tc, ok := cc.Conn.(*tls.Conn); ok {
			st := tc.ConnectionState()
			fc.TLS, fc.SNI = true, st.ServerName
			if len(st.PeerCertificates) > 0 {
				for _, u := range st.PeerCertificates[0].URIs {
					if u.Scheme == "spiffe" {
						fc.Principal = strings.TrimPrefix(u.String(), "spiffe://")
						break
					}
				}
			}
		}
		cc.fconn = fc
	})
	return cc.fconn
}
