package engine

import (
	"encoding/binary"
	"sync/atomic"
)

// grpcFrames counts the messages of one direction of a gRPC call as its
// bytes pass, for istio_request_messages_total and
// istio_response_messages_total: each message is a 5-byte prefix (a flag
// byte, a big-endian length) and that many bytes. Feed is called by one
// goroutine; Messages may be read by another.
type grpcFrames struct {
	n    atomic.Int64 // messages whole so far
	head [5]byte
	got  int    // bytes of head read
	left uint32 // bytes of the current message still to come
}

// Feed takes the next bytes of the stream.
func (g *grpcFrames) Feed(b []byte) {
	for len(b) > 0 {
		if g.got < len(g.head) {
			k := copy(g.head[g.got:], b)
			g.got += k
			b = b[k:]
			if g.got < len(g.head) {
				return
			}
			g.left = binary.BigEndian.Uint32(g.head[1:])
			if g.left == 0 {
				g.n.Add(1)
				g.got = 0
			}
			continue
		}
		k := uint32(min(uint64(len(b)), uint64(g.left)))
		g.left -= k
		b = b[k:]
		if g.left == 0 {
			g.n.Add(1)
			g.got = 0
		}
	}
}

// Messages is how many whole messages went by.
func (g *grpcFrames) Messages() int64 {
	if g == nil {
		return 0
	}
	return g.n.Load()
}
