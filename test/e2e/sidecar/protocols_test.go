package sidecar

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

type greeter struct {
	testpb.UnimplementedTestServiceServer
}

func (greeter) UnaryCall(_ context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if st := r.GetResponseStatus(); st.GetCode() != 0 {
		// The interop service's echo status: an error before any message,
		// which gRPC sends as a trailers-only response.
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testpb.SimpleResponse{ServerId: "greeter", Payload: r.GetPayload()}, nil
}

// FullDuplexCall echoes every request's payload as a response, streaming.
func (greeter) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func startGRPCBackend(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	testpb.RegisterTestServiceServer(g, greeter{})
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// grpcClient is a test-service client of the sidecar's explicit
// listener on port, closed at the test's end, and a context for its calls.
func grpcClient(t *testing.T, port int, authority string) (testpb.TestServiceClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return testpb.NewTestServiceClient(conn), ctx
}

// checkGRPC calls the backend through the sidecar's explicit listener.
func checkGRPC(t *testing.T, port int, authority string) {
	t.Helper()
	client, ctx := grpcClient(t, port, authority)
	body := strings.Repeat("g", 100_000)
	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}})
	if err != nil {
		t.Fatalf("gRPC through the sidecar: %v", err)
	}
	if resp.GetServerId() != "greeter" || len(resp.GetPayload().GetBody()) != len(body) {
		t.Fatalf("gRPC answer: server %q, %d payload bytes", resp.GetServerId(), len(resp.GetPayload().GetBody()))
	}
	// Bidirectional streaming: messages go back and forth on one stream.
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatalf("gRPC stream through the sidecar: %v", err)
	}
	for i := 0; i < 20; i++ {
		msg := fmt.Sprintf("message %d", i)
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatalf("stream send %d: %v", i, err)
		}
		got, err := stream.Recv()
		if err != nil || string(got.GetPayload().GetBody()) != msg {
			t.Fatalf("stream message %d: %q, %v", i, got.GetPayload().GetBody(), err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream end: %v, want EOF (status OK in trailers)", err)
	}
}

// startEchoTCP is a line echo server.
func startEchoTCP(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func checkTCP(t *testing.T, port int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("ping %d\n", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("TCP echo through the sidecar: %q, %v", got, err)
		}
	}
}

// startUpgradeBackend answers an HTTP/1.1 Upgrade with 101 and then echoes
// lines on the hijacked connection (what a WebSocket server does after its
// handshake, without the framing).
func startUpgradeBackend(t *testing.T) int {
	t.Helper()
	return serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = brw.WriteString(line)
			_ = brw.Flush()
		}
	})})
}

// checkUpgrade performs an Upgrade handshake through the sidecar and
// exchanges lines over the upgraded connection.
func checkUpgrade(t *testing.T, port int, host string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", host)
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("upgrade through the sidecar: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade through the sidecar: %s", resp.Status)
	}
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("frame %d\n", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("upgraded connection echo: %q, %v", got, err)
		}
	}
}

// checkGRPCStatus makes a unary call that the backend fails with code,
// and checks that the client gets that status through the sidecars.
func checkGRPCStatus(t *testing.T, port int, authority string, code codes.Code) {
	t.Helper()
	client, ctx := grpcClient(t, port, authority)
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{
		ResponseStatus: &testpb.EchoStatus{Code: int32(code), Message: "as asked"}})
	if status.Code(err) != code {
		t.Fatalf("gRPC call asking for %v: %v", code, err)
	}
}
