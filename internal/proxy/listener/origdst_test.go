//go:build linux

package listener

import (
	"net"
	"testing"
)

// A connection that was not redirected reports its local address; the
// redirected case is covered by the capture suite in network namespaces.
func TestOriginalDstWithoutRedirect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst, err := OriginalDst(c)
	if err != nil {
		t.Fatal(err)
	}
	if dst.String() != l.Addr().String() {
		t.Fatalf("OriginalDst = %s, want %s", dst, l.Addr())
	}
}
