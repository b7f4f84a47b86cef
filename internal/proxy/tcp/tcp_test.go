package tcp

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// pair returns a connected client and the server side of a loopback TCP
// connection.
func pair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}

func TestProxyBothWaysWithHalfClose(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		app, downSide := pair(t)   // app -> proxy
		upSide, backend := pair(t) // proxy -> backend
		result := make(chan Counts, 1)
		go func() { result <- Proxy(downSide, upSide, idle, Report{}) }()
		payload := bytes.Repeat([]byte("x"), 1<<20)
		go func() {
			_, _ = app.Write(payload)
			_ = app.(*net.TCPConn).CloseWrite() // request done; keep reading
		}()
		got, err := io.ReadAll(backend)
		if err != nil || len(got) != len(payload) {
			t.Fatalf("idle=%v: backend read %d bytes, %v", idle, len(got), err)
		}
		if _, err := backend.Write([]byte("reply")); err != nil {
			t.Fatal(err)
		}
		backend.Close()
		reply, err := io.ReadAll(app)
		if err != nil || string(reply) != "reply" {
			t.Fatalf("idle=%v: app read %q, %v", idle, reply, err)
		}
		select {
		case c := <-result:
			if c.Sent != int64(len(payload)) || c.Received != 5 {
				t.Fatalf("idle=%v: counts %+v", idle, c)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Proxy did not return after both sides closed")
		}
		app.Close()
	}
}

func TestProxyIdleTimeout(t *testing.T) {
	app, downSide := pair(t)
	upSide, backend := pair(t)
	defer app.Close()
	defer backend.Close()
	done := make(chan struct{})
	go func() { Proxy(downSide, upSide, 200*time.Millisecond, Report{}); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("an idle connection was not closed")
	}
	if _, err := app.Read(make([]byte, 1)); err == nil {
		t.Fatal("downstream still open after the idle timeout")
	}
}

// TestProxyReportsWhileOpen: with a Report, the bytes of a connection that
// stays open are reported as they pass, each byte once; the result still
// holds them all.
func TestProxyReportsWhileOpen(t *testing.T) {
	app, downSide := pair(t)
	upSide, backend := pair(t)
	reports := make(chan Counts, 100)
	result := make(chan Counts, 1)
	go func() {
		result <- Proxy(downSide, upSide, time.Minute, Report{Every: 10 * time.Millisecond, Fn: func(d Counts) { reports <- d }})
	}()
	var sum Counts
	wait := func(want Counts) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for sum != want {
			select {
			case d := <-reports:
				if d.Sent < 0 || d.Received < 0 || d == (Counts{}) {
					t.Fatalf("a report of %+v", d)
				}
				sum = Counts{Sent: sum.Sent + d.Sent, Received: sum.Received + d.Received}
			case <-deadline:
				t.Fatalf("reported %+v, want %+v while the connection is open", sum, want)
			}
		}
	}
	buf := make([]byte, 64)
	if _, err := app.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, buf[:5]); err != nil {
		t.Fatal(err)
	}
	wait(Counts{Sent: 5})
	if _, err := backend.Write([]byte("a longer reply")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(app, buf[:14]); err != nil {
		t.Fatal(err)
	}
	wait(Counts{Sent: 5, Received: 14})
	app.Close()
	backend.Close()
	if total := <-result; total != (Counts{Sent: 5, Received: 14}) {
		t.Fatalf("total %+v", total)
	}
}

// BenchmarkProxyBulk: 8 MiB a connection from app to backend through
// Proxy with an idle timeout, as the sidecar runs it.
func BenchmarkProxyBulk(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 8<<20)
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		app, downSide := pair(b)
		upSide, backend := pair(b)
		done := make(chan Counts, 1)
		go func() {
			done <- Proxy(downSide, upSide, time.Hour, Report{Every: 15 * time.Second, Fn: func(Counts) {}})
		}()
		go func() {
			_, _ = app.Write(payload)
			_ = app.(*net.TCPConn).CloseWrite()
		}()
		n, err := io.Copy(io.Discard, backend)
		if err != nil || n != int64(len(payload)) {
			b.Fatalf("backend got %d bytes, %v", n, err)
		}
		backend.Close()
		<-done
		app.Close()
	}
}
