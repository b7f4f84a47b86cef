package sidecar

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSniffedPort: a service port named "custom", with no protocol, is
// detected per connection on both sidecars (mesh mTLS, STRICT). An HTTP
// client's requests take the HTTP chain — the VirtualService's header
// rewrite and header-matched fault apply and app B sees the header — while
// a server-first TCP client, which sends nothing until it is greeted,
// takes the TCP chain once sidecar A's detection timeout passes and gets
// app B's banner, through both sidecars. gRPC (unary and streaming) on a
// second detected port ("rpc") stays HTTP/2 end to end.
func TestSniffedPort(t *testing.T) {
	app, grpcApp := startDualBackend(t), startGRPCBackend(t)
	svcPort, rpcPort := freePort(t), freePort(t)
	pair := startMeshPair(t, []appPort{{"custom", app, freePort(t)}, {"rpc", grpcApp, freePort(t)}}, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: custom}
spec:
  hosts: [custom.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: custom}, {number: %d, name: rpc}]
  workloadSelector: {labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: custom}
spec:
  hosts: [custom.mesh]
  http:
  - match: [{headers: {x-fault: {exact: "yes"}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: custom.mesh}}]
  - route: [{destination: {host: custom.mesh}}]
    headers: {request: {set: {x-routed: by-virtualservice}}}
`, svcPort, rpcPort))

	client := &http.Client{Timeout: 10 * time.Second}
	call := func(fault bool) (int, string, error) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/hello", svcPort), nil)
		req.Host = "custom.mesh"
		if fault {
			req.Header.Set("X-Fault", "yes")
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	eventually(t, "HTTP on the detected port", func() error {
		code, body, err := call(false)
		if err == nil && (code != 200 || body != "http x-routed=by-virtualservice") {
			err = fmt.Errorf("%d %q", code, body)
		}
		return err
	})
	const n = 10
	for i := 0; i < n; i++ {
		if code, body, err := call(false); err != nil || code != 200 || body != "http x-routed=by-virtualservice" {
			t.Fatalf("HTTP request %d: %d %q %v", i, code, body, err)
		}
	}
	if code, _, err := call(true); err != nil || code != 418 {
		t.Fatalf("header-matched fault: %d %v, want 418", code, err)
	}

	// Server-first TCP: the client waits for the greeting.
	for i := 0; i < 3; i++ {
		start := time.Now()
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", svcPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		banner, err := r.ReadString('\n')
		if err != nil || banner != "220 custom ready\r\n" {
			c.Close()
			t.Fatalf("server-first TCP %d: banner %q, %v", i, banner, err)
		}
		greeted := time.Since(start)
		fmt.Fprintf(c, "ping %d\n", i)
		echo, err := r.ReadString('\n')
		c.Close()
		if err != nil || echo != fmt.Sprintf("ping %d\n", i) {
			t.Fatalf("server-first TCP %d: echo %q, %v", i, echo, err)
		}
		t.Logf("server-first TCP %d: banner after %v (detection timeout on sidecar A, then app B's own wait)", i, greeted.Round(time.Millisecond))
	}

	// gRPC on another detected port ("rpc"): HTTP/2 is detected (h2c
	// preface) and stays HTTP/2 all the way to app B.
	eventually(t, "gRPC port", func() error { return dialOK(rpcPort) })
	checkGRPC(t, rpcPort, "custom.mesh")

	// The sniffing listeners render in /config_dump (their listener
	// filter types are linked).
	for _, admin := range []int{pair.a.admin, pair.b.admin} {
		if dump := configDump(t, admin); !strings.Contains(dump, "applicationProtocols") {
			t.Errorf("config_dump on admin port %d shows no application protocols:\n%.500s", admin, dump)
		}
	}
	if !strings.Contains(configDump(t, pair.a.admin), "envoy.filters.listener.http_inspector") {
		t.Errorf("sidecar A's config_dump lacks the http_inspector")
	}

	for _, c := range []struct {
		stats    int
		reporter string
	}{{pair.a.stats, "source"}, {pair.b.stats, "destination"}} {
		reqs := metricSum(t, c.stats, "istio_requests_total", `reporter="`+c.reporter+`"`, `response_code="200"`)
		conns := metricSum(t, c.stats, "istio_tcp_connections_opened_total", `reporter="`+c.reporter+`"`)
		t.Logf("reporter=%s: istio_requests_total{code=200} %d, istio_tcp_connections_opened_total %d", c.reporter, reqs, conns)
		if reqs < n {
			t.Errorf("reporter=%s: %d HTTP requests counted, want >= %d", c.reporter, reqs, n)
		}
		if conns < 3 {
			t.Errorf("reporter=%s: %d TCP connections counted, want >= 3", c.reporter, conns)
		}
	}
}

// startDualBackend listens on one port for two kinds of clients: one
// that sends first is served HTTP (answering "http x-routed=<header>"); one
// that stays silent for 300ms is greeted with a banner, then echoed.
func startDualBackend(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpConns := &connFeed{ch: make(chan net.Conn), addr: l.Addr(), done: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "http x-routed=%s", r.Header.Get("X-Routed"))
	})}
	go func() { _ = srv.Serve(httpConns) }()
	t.Cleanup(func() { l.Close(); srv.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(c)
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				_, err := r.Peek(1)
				_ = c.SetReadDeadline(time.Time{})
				if errors.Is(err, os.ErrDeadlineExceeded) {
					defer c.Close()
					_, _ = io.WriteString(c, "220 custom ready\r\n")
					_, _ = io.Copy(c, r)
					return
				}
				select {
				case httpConns.ch <- &bufConn{Conn: c, r: r}:
				case <-httpConns.done:
					c.Close()
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// connFeed is a net.Listener fed connections over a channel.
type connFeed struct {
	ch   chan net.Conn
	addr net.Addr
	once sync.Once
	done chan struct{}
}

func (f *connFeed) Accept() (net.Conn, error) {
	select {
	case c := <-f.ch:
		return c, nil
	case <-f.done:
		return nil, net.ErrClosed
	}
}

func (f *connFeed) Close() error { f.once.Do(func() { close(f.done) }); return nil }

func (f *connFeed) Addr() net.Addr { return f.addr }

// bufConn replays what its reader has buffered.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// configDump returns a sidecar's /config_dump.
func configDump(t *testing.T, admin int) string {
	t.Helper()
	code, b := get(t, fmt.Sprintf("http://127.0.0.1:%d/config_dump", admin))
	if code != 200 {
		t.Errorf("config_dump on admin port %d: %d %.300s", admin, code, b)
	}
	return b
}
