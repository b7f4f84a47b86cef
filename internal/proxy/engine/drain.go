package engine

import (
	"net"
	"net/http"

	"google.golang.org/protobuf/proto"
)

// Draining connections of changed listeners, as Envoy drains the
// connections of a listener (or filter chain) that an update replaced:
// an HTTP connection keeps the filter chain it was accepted with (its
// filters, inline routes), so after an update that changes its Listener
// it is closed as soon as it is idle. The request in flight finishes with
// the old config; the client's next request opens a new connection and
// gets the new one. Without this, a keep-alive connection from a peer
// sidecar would keep running old authentication and authorization filters
// for as long as it stays open. Updates that leave a Listener unchanged
// (an endpoint or cluster change) close nothing.

// connState tracks the engine's HTTP connections (http.Server.ConnState).
func (e *Engine) connState(c net.Conn, st http.ConnState) {
	cc, ok := c.(*chainConn)
	if !ok {
		return
	}
	switch st {
	case http.StateNew, http.StateActive:
		cc.idle.Store(false)
		e.connMu.Lock()
		if e.httpConns == nil {
			e.httpConns = map[*chainConn]struct{}{}
		}
		e.httpConns[cc] = struct{}{}
		e.connMu.Unlock()
	case http.StateIdle:
		cc.idle.Store(true)
		if cc.stale.Load() {
			_ = cc.Close()
		}
	case http.StateClosed, http.StateHijacked:
		e.connMu.Lock()
		delete(e.httpConns, cc)
		e.connMu.Unlock()
	}
}

// drainChanged marks the HTTP connections of every Listener that differs
// between old and cur (or is gone) stale, closing the idle ones now and
// the others when their current request ends.
func (e *Engine) drainChanged(old, cur *runtime) {
	if old == nil || old.snap == nil || cur.snap == nil {
		return
	}
	changed := map[string]bool{}
	for name, l := range old.snap.Listeners {
		if nl, ok := cur.snap.Listeners[name]; !ok || !proto.Equal(l, nl) {
			changed[name] = true
		}
	}
	if len(changed) == 0 {
		return
	}
	e.connMu.Lock()
	defer e.connMu.Unlock()
	for cc := range e.httpConns {
		if !changed[cc.listener] {
			continue
		}
		cc.stale.Store(true)
		if cc.idle.Load() {
			_ = cc.Close()
		}
	}
}
