package engine

import (
	"encoding/binary"
	"testing"
)

// grpcStream is messages framed as gRPC frames them.
func grpcStream(msgs ...string) []byte {
	var out []byte
	for _, m := range msgs {
		out = append(out, 0)
		out = binary.BigEndian.AppendUint32(out, uint32(len(m)))
		out = append(out, m...)
	}
	return out
}

// TestGRPCFrames: messages are counted whole, however the bytes are cut,
// empty ones included; a message still arriving is not counted yet.
func TestGRPCFrames(t *testing.T) {
	stream := grpcStream("hello", "", "a much longer message than the others", "x")
	for _, step := range []int{1, 2, 3, 5, 7, len(stream)} {
		var g grpcFrames
		for i := 0; i < len(stream); i += step {
			g.Feed(stream[i:min(i+step, len(stream))])
		}
		if n := g.Messages(); n != 4 {
			t.Errorf("fed %d bytes at a time: %d messages, want 4", step, n)
		}
	}
	var g grpcFrames
	g.Feed(stream[:len(stream)-1])
	if n := g.Messages(); n != 3 {
		t.Errorf("the last message cut short: %d messages, want 3", n)
	}
	if (*grpcFrames)(nil).Messages() != 0 {
		t.Error("no counter counts messages")
	}
}
