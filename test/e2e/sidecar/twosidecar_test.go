package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// meshPair is app A → sidecar A → mTLS → sidecar B → app B on one host:
// sidecar A ("a", 127.0.0.2) calls on 127.0.0.1:<service port>, sidecar B
// ("b", 127.0.0.3) serves each of app B's ports on a sidecar port
// (--inbound-ports) under STRICT PeerAuthentication.
type meshPair struct {
	m    *mesh
	a, b sidecarPorts
}

// appPort is one of app B's ports: the WorkloadGroup port name, the
// application's loopback port and the sidecar port in front of it.
type appPort struct {
	name    string
	app     int
	sidecar int
}

// startMeshPair applies the WorkloadGroups (B's template lists ports),
// STRICT mTLS and services (YAML documents selecting app: b), then starts
// sidecar B in front of ports and sidecar A.
func startMeshPair(t *testing.T, ports []appPort, services string) *meshPair {
	t.Helper()
	return startMeshPairArgs(t, nil, ports, services)
}

// startMeshPairArgs is startMeshPair with extra weft server flags.
func startMeshPairArgs(t *testing.T, serverArgs []string, ports []appPort, services string) *meshPair {
	t.Helper()
	m := startMesh(t, serverArgs...)
	var tmpl, inbound []string
	for _, p := range ports {
		tmpl = append(tmpl, fmt.Sprintf("%s: %d", p.name, p.app))
		inbound = append(inbound, fmt.Sprintf("%d=%d", p.app, p.sidecar))
	}
	m.apply(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: b}
spec:
  metadata: {labels: {app: b}}
  template: {serviceAccount: b, ports: {%s}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: a}
spec:
  metadata: {labels: {app: a}}
  template: {serviceAccount: a}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
# B calls nothing: no upstream listeners of its own on 127.0.0.1, which
# sidecar A binds on this shared host.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: b}
spec:
  workloadSelector: {labels: {app: b}}
  egress: [{hosts: ["~/*"]}]
---
%s`, strings.Join(tmpl, ", "), services))
	p := &meshPair{m: m}
	p.b = m.sidecar("b", "127.0.0.3", "--inbound-ports", strings.Join(inbound, ","))
	p.a = m.sidecar("a", "127.0.0.2")
	return p
}

// eventually retries f until it succeeds (registration and pushes take a
// moment after the sidecars are ready).
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond) // waiting on other processes
	}
}

// TestTwoSidecarProtocols: every protocol crosses two sidecars with mesh
// mTLS (STRICT): app A → sidecar A → sidecar B → app B over HTTP/1.1
// (keep-alive, chunked bodies both ways), HTTP/2 with prior knowledge
// (h2c), gRPC unary and bidirectional streaming, a WebSocket echo and raw
// TCP; both sidecars report every call (reporter source on A, destination
// on B).
func TestTwoSidecarProtocols(t *testing.T) {
	ports := []appPort{
		{"http", startChunkedBackend(t), freePort(t)},
		{"h2c", startH2CBackend(t), freePort(t)},
		{"grpc", startGRPCBackend(t), freePort(t)},
		{"ws", startWebSocketBackend(t), freePort(t)},
		{"tcp", startEchoTCP(t), freePort(t)},
	}
	svc := map[string]int{}
	var ses []string
	for _, p := range ports {
		svc[p.name] = freePort(t)
		proto := map[string]string{"http": "HTTP", "h2c": "HTTP2", "grpc": "GRPC", "ws": "HTTP", "tcp": "TCP"}[p.name]
		ses = append(ses, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %[1]s}
spec:
  hosts: [%[1]s.b.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %[2]d, name: %[1]s, protocol: %[3]s}]
  workloadSelector: {labels: {app: b}}
`, p.name, svc[p.name], proto))
	}
	// An Istio fault abort with a gRPC status, on one method only.
	ses = append(ses, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc-fault}
spec:
  hosts: [grpc.b.mesh]
  http:
  - match: [{uri: {exact: /grpc.testing.TestService/EmptyCall}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: grpc.b.mesh}}]
  - route: [{destination: {host: grpc.b.mesh}}]
`)
	pair := startMeshPair(t, ports, strings.Join(ses, "---\n"))

	// HTTP/1.1: one kept-alive connection from app A, chunked request and
	// response bodies.
	var dials atomic.Int64
	h1 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}}
	h1call := func(i int) (string, error) {
		body := strings.Repeat(fmt.Sprintf("chunk %d;", i), 1000)
		// A reader of unknown length: the client sends it chunked.
		req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/upload", svc["http"]), io.MultiReader(strings.NewReader(body)))
		req.Host = "http.b.mesh"
		resp, err := h1.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", err
		}
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("status %d: %s", resp.StatusCode, got)
		}
		if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			return "", fmt.Errorf("response transfer encoding %v, want chunked", resp.TransferEncoding)
		}
		return string(got), nil
	}
	eventually(t, "HTTP/1.1 through both sidecars", func() error { _, err := h1call(0); return err })
	h1.CloseIdleConnections()
	dials.Store(0)
	const n = 10
	for i := 0; i < n; i++ {
		got, err := h1call(i)
		if err != nil {
			t.Fatalf("HTTP/1.1 request %d: %v", i, err)
		}
		want := fmt.Sprintf("HTTP/1.1 chunked=true len=%d|", 7000+1000*len(fmt.Sprint(i)))
		if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "|end") {
			t.Fatalf("HTTP/1.1 request %d: app B saw %.80q, want prefix %q", i, got, want)
		}
	}
	if d := dials.Load(); d != 1 {
		t.Errorf("HTTP/1.1: app A dialled its sidecar %d times for %d requests, want 1 (keep-alive)", d, n)
	}

	// h2c with prior knowledge from app A.
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protos}}
	h2call := func() (string, error) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/proto", svc["h2c"]), nil)
		req.Host = "h2c.b.mesh"
		resp, err := h2.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			return "", fmt.Errorf("app A got %s from its sidecar, want HTTP/2.0", resp.Proto)
		}
		return string(b), nil
	}
	eventually(t, "h2c through both sidecars", func() error { _, err := h2call(); return err })
	got, err := h2call()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("h2c: app A spoke HTTP/2 (prior knowledge); app B saw %s", got)
	if got != "HTTP/2.0" {
		t.Errorf("h2c: app B saw %s, want HTTP/2.0 (an HTTP2 port)", got)
	}

	// gRPC unary and bidirectional streaming.
	eventually(t, "gRPC port", func() error { return dialOK(svc["grpc"]) })
	checkGRPC(t, svc["grpc"], "grpc.b.mesh")
	checkGRPCStatus(t, svc["grpc"], "grpc.b.mesh", codes.NotFound)
	// Sidecar A aborts EmptyCall itself, as a gRPC status.
	client, ctx := grpcClient(t, svc["grpc"], "grpc.b.mesh")
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "fault filter abort" {
		t.Errorf("EmptyCall under a grpcStatus: UNAVAILABLE fault: %v, want Unavailable \"fault filter abort\"", err)
	}

	// WebSocket: the upgrade and several echoed messages.
	eventually(t, "WebSocket through both sidecars", func() error {
		return checkWebSocket(svc["ws"], "ws.b.mesh", 1)
	})
	if err := checkWebSocket(svc["ws"], "ws.b.mesh", 5); err != nil {
		t.Fatal(err)
	}

	// Raw TCP echo.
	eventually(t, "TCP port", func() error { return dialOK(svc["tcp"]) })
	checkTCP(t, svc["tcp"])

	pair.checkReported(t, "istio_requests_total", 2, "http.b.mesh", "h2c.b.mesh", "grpc.b.mesh", "ws.b.mesh")
	pair.checkReported(t, "istio_tcp_connections_opened_total", 1, "tcp.b.mesh")
	// grpc_response_status: 0 from the trailers of the successful calls,
	// 5 (NOT_FOUND) from the header of the trailers-only failure.
	if n := metricSum(t, pair.a.stats, "istio_requests_total", `reporter="source"`, `destination_service="grpc.b.mesh"`,
		`response_code="200"`, `grpc_response_status="14"`, `response_flags="FI"`); n != 1 {
		t.Errorf("sidecar A: istio_requests_total{grpc_response_status=\"14\",response_flags=\"FI\"} = %d, want 1 (the aborted EmptyCall)", n)
	}
	for st, want := range map[string]int{"0": 2, "5": 1} {
		a := metricSum(t, pair.a.stats, "istio_requests_total", `reporter="source"`, `destination_service="grpc.b.mesh"`,
			`request_protocol="grpc"`, `grpc_response_status="`+st+`"`)
		b := metricSum(t, pair.b.stats, "istio_requests_total", `reporter="destination"`, `grpc_response_status="`+st+`"`)
		if a != want || b != want {
			t.Errorf("istio_requests_total{grpc_response_status=%q}: sidecar A %d, sidecar B %d, want %d each", st, a, b, want)
		}
	}
	// gRPC messages: the successful calls were one unary call (a message
	// each way) and a stream of 20 each way; HTTP has no message metrics.
	for name, stats := range map[string]int{"A": pair.a.stats, "B": pair.b.stats} {
		for _, metric := range []string{"istio_request_messages_total", "istio_response_messages_total"} {
			if n := metricSum(t, stats, metric, `request_protocol="grpc"`, `grpc_response_status="0"`); n != 21 {
				t.Errorf("sidecar %s: %s{grpc_response_status=\"0\"} = %d, want 21", name, metric, n)
			}
			if n := metricSum(t, stats, metric, `request_protocol="http"`); n != 0 {
				t.Errorf("sidecar %s: %s has HTTP series", name, metric)
			}
		}
	}
	// gRPC request bodies (of no declared length) are counted as they
	// stream: istio_request_bytes is not 0 for them.
	for name, stats := range map[string]int{"A": pair.a.stats, "B": pair.b.stats} {
		if n := metricSum(t, stats, "istio_request_bytes_sum", `request_protocol="grpc"`); n == 0 {
			t.Errorf("sidecar %s: istio_request_bytes_sum{request_protocol=\"grpc\"} is 0: streamed request bodies are not counted", name)
		}
	}
}

// checkReported checks that sidecar A counted metric with reporter=source
// for every host (at least min), and sidecar B with reporter=destination
// in total.
func (p *meshPair) checkReported(t *testing.T, metric string, min int, hosts ...string) {
	t.Helper()
	for _, h := range hosts {
		got := metricSum(t, p.a.stats, metric, `reporter="source"`, `destination_service="`+h+`"`)
		t.Logf("sidecar A %s{reporter=source,destination_service=%s} = %d", metric, h, got)
		if got < min {
			t.Errorf("sidecar A: %s{reporter=source,destination_service=%s} = %d, want >= %d", metric, h, got, min)
		}
	}
	got := metricSum(t, p.b.stats, metric, `reporter="destination"`)
	t.Logf("sidecar B %s{reporter=destination} = %d", metric, got)
	if got < min*len(hosts) {
		t.Errorf("sidecar B: %s{reporter=destination} = %d, want >= %d", metric, got, min*len(hosts))
	}
}

// dialOK reports whether a sidecar listens on 127.0.0.1:port.
func dialOK(port int) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

// startChunkedBackend answers with what it saw — protocol, whether the
// request body came chunked, its length — in a chunked response.
func startChunkedBackend(t *testing.T) int {
	t.Helper()
	return serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		chunked := len(r.TransferEncoding) == 1 && r.TransferEncoding[0] == "chunked"
		fmt.Fprintf(w, "%s chunked=%v len=%d|", r.Proto, chunked, len(b))
		w.(http.Flusher).Flush() // no Content-Length: the response is chunked
		fmt.Fprint(w, "end")
	})})
}

// startH2CBackend answers with the protocol of the request it received;
// it speaks HTTP/1.1 and h2c.
func startH2CBackend(t *testing.T) int {
	t.Helper()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	return serve(t, &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Proto)
	})})
}

// startWebSocketBackend echoes WebSocket messages.
func startWebSocketBackend(t *testing.T) int {
	t.Helper()
	return serve(t, &http.Server{Handler: websocket.Handler(func(ws *websocket.Conn) {
		_, _ = io.Copy(ws, ws)
	})})
}

// serve runs srv on a loopback port for the test's lifetime.
func serve(t *testing.T, srv *http.Server) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// checkWebSocket opens a WebSocket through the sidecar on port with Host
// host and has n messages echoed.
func checkWebSocket(port int, host string, n int) error {
	cfg, err := websocket.NewConfig(fmt.Sprintf("ws://%s/echo", host), "http://"+host)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	ws, err := websocket.NewClient(cfg, c)
	if err != nil {
		c.Close()
		return fmt.Errorf("WebSocket handshake: %w", err)
	}
	defer ws.Close()
	for i := 0; i < n; i++ {
		msg := fmt.Sprintf("message %d", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			return fmt.Errorf("WebSocket send %d: %w", i, err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			return fmt.Errorf("WebSocket receive %d: %w", i, err)
		}
		if got != msg {
			return fmt.Errorf("WebSocket message %d: echoed %q, want %q", i, got, msg)
		}
	}
	return nil
}
