package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestGetUnique takes many ports and checks that none repeats and that
// each can be bound.
func TestGetUnique(t *testing.T) {
	seen := map[int]bool{}
	for range 500 {
		p := Get(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	p := Get(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d from Get cannot be bound: %v", p, err)
	}
	l.Close()
}
