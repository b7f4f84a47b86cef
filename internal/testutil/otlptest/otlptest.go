// Package otlptest is an OpenTelemetry trace collector for tests: it
// serves OTLP over gRPC (the TraceService) and over HTTP (binary
// protobuf), and keeps every span with its resource's service.name and
// every export's headers. It decodes with OpenTelemetry's own protobuf
// types, not with anything of weft's sender.
package otlptest

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Span is a received span and its resource's service.name.
type Span struct {
	Service string
	*tracepb.Span
}

// Attr is one of the span's string attributes ("" when absent).
func (s Span) Attr(key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

// Collector keeps what it receives. Over gRPC, export headers are the
// request's metadata (lower-case keys, ":authority" included); over HTTP
// they are the request's headers, with "Host" and "Path" added.
type Collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []Span
	headers []http.Header
	fail    bool
}

// ServeGRPC serves the collector's gRPC service on a new loopback port
// until the test ends, and returns the port.
func (c *Collector) ServeGRPC(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(s, c)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// SetFail makes gRPC exports fail with UNAVAILABLE (and HTTP ones with
// 503), or succeed again.
func (c *Collector) SetFail(fail bool) {
	c.mu.Lock()
	c.fail = fail
	c.mu.Unlock()
}

func (c *Collector) failing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fail
}

func (c *Collector) add(req *coltracepb.ExportTraceServiceRequest, h http.Header) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.headers = append(c.headers, h)
	for _, rs := range req.GetResourceSpans() {
		svc := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				svc = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				c.spans = append(c.spans, Span{svc, sp})
			}
		}
	}
}

// Export is the OTLP/gRPC trace service.
func (c *Collector) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	if c.failing() {
		return nil, status.Error(codes.Unavailable, "collector overloaded")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	c.add(req, http.Header(md))
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// ServeHTTP is OTLP/HTTP with binary protobuf; anything else gets 400.
func (c *Collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := &coltracepb.ExportTraceServiceRequest{}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(body, req) != nil {
		http.Error(w, "want a protobuf OTLP export", http.StatusBadRequest)
		return
	}
	if c.failing() {
		http.Error(w, "collector overloaded", http.StatusServiceUnavailable)
		return
	}
	h := r.Header.Clone()
	h.Set("Host", r.Host)
	h.Set("Path", r.URL.Path)
	c.add(req, h)
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// Spans returns the spans received so far.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Wait returns the spans once there are at least n, or what there is
// after d.
func (c *Collector) Wait(n int, d time.Duration) []Span {
	deadline := time.Now().Add(d)
	for {
		got := c.Spans()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Headers returns each export's headers, in order.
func (c *Collector) Headers() []http.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]http.Header(nil), c.headers...)
}
