// Package tcp moves bytes between a downstream and an upstream connection
// in both directions, with half-close and idle timeouts. Without an idle
// timeout, io.Copy between two *net.TCPConn uses splice(2) on Linux, so
// payload bytes never enter user space.
package tcp

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// Counts are the bytes moved each way.
type Counts struct {
	// Sent is downstream → upstream; Received is upstream → downstream.
	Sent, Received int64
}

type closeWriter interface{ CloseWrite() error }

// Report asks Proxy for the bytes moved so far while a connection lasts,
// as Istio's stats filter reports TCP metrics every
// tcp_reporting_duration: every Every, Fn gets the bytes moved since its
// last call (when there are any). The bytes of the last stretch are only
// in Proxy's result. Counting needs an idle timeout: without one the
// bytes are spliced and only counted at the end.
type Report struct {
	Every time.Duration
	Fn    func(delta Counts)
}

// Proxy copies between down and up until both directions finish (EOF or
// error) or idle passes with no byte in either direction (0 = no idle
// timeout), reporting progress as rep asks (a zero Report: none). It
// closes both connections before returning.
func Proxy(down, up net.Conn, idle time.Duration, rep Report) Counts {
	var sent, recv atomic.Int64
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, n *atomic.Int64) {
		defer func() { done <- struct{}{} }()
		var err error
		if idle == 0 {
			// No idle tracking needed: let io.Copy splice between the
			// two sockets without user-space buffers.
			var c int64
			c, err = io.Copy(dst, src)
			n.Add(c)
		} else {
			_, err = io.Copy(&countingWriter{w: dst, n: n, last: &last}, src)
		}
		if cw, ok := dst.(closeWriter); ok && (err == nil || errors.Is(err, io.EOF)) {
			_ = cw.CloseWrite() // half-close: the other side may still talk
		} else {
			_ = dst.Close()
			_ = src.Close()
		}
	}
	go pipe(up, down, &sent)
	go pipe(down, up, &recv)
	var tick <-chan time.Time
	if idle > 0 {
		t := time.NewTicker(idle / 4)
		defer t.Stop()
		tick = t.C
	}
	var reportTick <-chan time.Time
	var reported Counts
	if rep.Every > 0 && rep.Fn != nil {
		t := time.NewTicker(rep.Every)
		defer t.Stop()
		reportTick = t.C
	}
	for finished := 0; finished < 2; {
		select {
		case <-done:
			finished++
		case <-reportTick:
			now := Counts{Sent: sent.Load(), Received: recv.Load()}
			if now != reported {
				rep.Fn(now.Sub(reported))
				reported = now
			}
		case <-tick:
			if time.Since(time.Unix(0, last.Load())) > idle {
				_ = down.Close()
				_ = up.Close()
			}
		}
	}
	_ = down.Close()
	_ = up.Close()
	return Counts{Sent: sent.Load(), Received: recv.Load()}
}

// Sub is c less d.
func (c Counts) Sub(d Counts) Counts {
	return Counts{Sent: c.Sent - d.Sent, Received: c.Received - d.Received}
}

// countingWriter counts bytes and stamps activity (used when an idle
// timeout is set; the copy then goes through user space).
type countingWriter struct {
	w    net.Conn
	n    *atomic.Int64
	last *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	c.last.Store(time.Now().UnixNano())
	return n, err
}
