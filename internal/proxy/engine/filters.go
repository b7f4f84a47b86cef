package engine

import (
	"crypto/tls"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"github.com/weftmesh/weft/internal/proxy/rbac"
)

// runFilters runs the chain's HTTP filters in order; the first Reply
// ends the exchange. The dynamic metadata they leave (nil: none) is the
// request's, for its span's metadata tags.
func runFilters(cc *chainConn, r *http.Request) (*httpfilter.Reply, map[string]map[string]any) {
	call := &httpfilter.Call{Request: r, Conn: cc.filterConn(), Count: cc.chain.countStat}
	for _, f := range cc.chain.filters {
		if rep := f.Decode(call); rep != nil {
			return rep, call.Metadata
		}
	}
	return nil, call.Metadata
}

// filterConn describes the downstream connection to filters, computed once
// per connection.
func (cc *chainConn) filterConn() *httpfilter.Conn {
	cc.connOnce.Do(func() { cc.fconn = describeConn(cc.Conn, cc.dst) })
	return cc.fconn
}

// describeConn is a connection as filters and RBAC see it: addresses, and
// for mesh TLS the SNI and the peer's SPIFFE ID.
func describeConn(c net.Conn, dst netip.AddrPort) *httpfilter.Conn {
	fc := &httpfilter.Conn{Destination: dst}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		fc.Source = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if tc, ok := c.(*tls.Conn); ok {
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
	return fc
}

// allowConn runs a chain's network RBAC filters on a new connection: a
// refusal names the policy; shadow rules leave their verdicts in the
// connection's dynamic metadata (md, nil without shadow rules), for its
// access logs.
// Each verdict also goes to stats (nil: none), under the filter's
// stat_prefix.
func allowConn(ch *chain, c net.Conn, dst netip.AddrPort, stats *rbacStats) (ok bool, policy string, md map[string]map[string]any) {
	if len(ch.rbac) == 0 {
		return true, "", nil
	}
	in := &rbac.Input{Conn: describeConn(c, dst)}
	for _, f := range ch.rbac {
		if f.shadow != nil {
			if md == nil {
				md = map[string]map[string]any{netRBACMetadata: {}}
			}
			v := f.shadow.ShadowMetadata(in, f.shadowPrefix)
			maps.Copy(md[netRBACMetadata], v)
			if stats != nil {
				stats.countShadow(true, f.statPrefix, v)
			}
		}
		if f.rules == nil {
			continue
		}
		ok, pol := f.rules.Allowed(in)
		if stats != nil && f.rules.Action() != rbac.Log {
			stats.countEnforced(true, f.statPrefix, ok)
		}
		if !ok {
			return false, pol, md
		}
	}
	return true, "", md
}
