package engine

import (
	"net/http"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
)

// Config updates and open HTTP connections. A connection is matched to a
// filter chain once, when accepted; its requests must nevertheless run
// the filters (authentication, authorization) and inline routes of the
// config in force, or a peer's keep-alive connection would keep old
// RequestAuthentication and AuthorizationPolicy rules for as long as it
// stays open. So each request checks whether the connection's Listener
// changed since the connection was accepted (compared once per connection
// and config): if it did, the request runs the chain of the same name in
// the new Listener (503 and close when that chain is gone), and HTTP/1
// connections are closed after the response, as Envoy drains connections
// of a replaced listener. Updates that leave the Listener unchanged
// (endpoints, clusters, other listeners) change nothing.

// chainOrigin is where a connection's chain came from.
type chainOrigin struct {
	listener, chain string
	// config is the Listener the chain was compiled from.
	config *listenerv3.Listener
}

// connView is a connection's chain under one runtime; cc is nil when the
// chain no longer exists there.
type connView struct {
	rt      *runtime
	cc      *chainConn
	changed bool
}

func originOf(rt *runtime, ls *listenerSpec, ch *chain) chainOrigin {
	o := chainOrigin{listener: ls.name, chain: ch.name}
	if rt.snap != nil {
		o.config = rt.snap.Listeners[ls.name]
	}
	return o
}

// currentChain returns the connection as this request must see it under
// rt. It answers the request itself (and returns nil) when the chain is
// gone.
func (e *Engine) currentChain(w http.ResponseWriter, r *http.Request, cc *chainConn, rt *runtime) *chainConn {
	if cc.origin.config == nil || rt.snap == nil {
		return cc
	}
	v := cc.view.Load()
	if v == nil || v.rt != rt {
		v = cc.resolve(rt)
		cc.view.Store(v)
	}
	if !v.changed {
		return cc
	}
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	if v.cc == nil {
		localReply(w, r, &exchange{}, http.StatusServiceUnavailable, -1, "filter chain removed by a config update")
		return nil
	}
	return v.cc
}

// resolve computes the connection's view under rt.
func (cc *chainConn) resolve(rt *runtime) *connView {
	v := &connView{rt: rt}
	if proto.Equal(cc.origin.config, rt.snap.Listeners[cc.origin.listener]) {
		return v
	}
	v.changed = true
	ls := rt.listeners[cc.origin.listener]
	if ls == nil {
		return v
	}
	for _, ch := range ls.allChains() {
		if ch.name == cc.origin.chain && ch.http != nil {
			v.cc = &chainConn{Conn: cc.Conn, chain: ch.http, dst: cc.dst, src: cc.src, origin: cc.origin, local: cc.local}
			return v
		}
	}
	return v
}
