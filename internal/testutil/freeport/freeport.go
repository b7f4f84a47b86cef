// Package freeport hands tests loopback ports that were free a moment ago
// and that no earlier call in the same process has handed out.
//
// Asking the kernel for port 0 and closing the listener at once can give
// the same number twice in a row; a test that takes several ports for
// different listeners then binds two services to one port, which fails
// far from the cause (a TCP client on an HTTP listener just hangs).
package freeport

import (
	"net"
	"sync"
	"testing"
)

var (
	mu     sync.Mutex
	handed = map[int]bool{}
)

// Get returns a loopback TCP port that is free now and unique in this
// process.
func Get(t testing.TB) int {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handed[port] {
			handed[port] = true
			return port
		}
	}
	t.Fatal("freeport: the kernel kept giving ports already handed out")
	return 0
}
