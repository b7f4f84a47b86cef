// Package otlptest has OpenTelemetry collectors for tests: Collector
// takes traces over gRPC (the TraceService) and over HTTP (binary
// protobuf) and keeps every span with its resource's service.name;
// LogCollector takes logs over gRPC (the LogsService) and keeps every
// record with its resource's attributes. Both keep every export's
// headers. They decode with OpenTelemetry's own protobuf types, not with
// anything of weft's sender.
package otlptest

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// sink keeps received items and each export's headers. Over gRPC,
// export headers are the request's metadata (":authority" included);
// over HTTP they are the request's headers, with "Host" and "Path"
// added.
type sink[T any] struct {
	mu      sync.Mutex
	items   []T
	headers []http.Header
	fail    bool
}

func (s *sink[T]) add(h http.Header, items ...T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.headers = append(s.headers, h)
	s.items = append(s.items, items...)
}

// SetFail makes exports fail (gRPC UNAVAILABLE, HTTP 503), or succeed
// again.
func (s *sink[T]) SetFail(fail bool) {
	s.mu.Lock()
	s.fail = fail
	s.mu.Unlock()
}

func (s *sink[T]) failing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fail
}

// all returns the items received so far.
func (s *sink[T]) all() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]T(nil), s.items...)
}

// Wait returns the items once there are at least n, or what there is
// after d.
func (s *sink[T]) Wait(n int, d time.Duration) []T {
	deadline := time.Now().Add(d)
	for {
		got := s.all()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Headers returns each export's headers, in order.
func (s *sink[T]) Headers() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.headers...)
}

// serveGRPC serves register's services on a new loopback port until the
// test ends, and returns the port.
func serveGRPC(t testing.TB, register func(*grpc.Server)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// incoming is a gRPC request's metadata as headers.
func incoming(ctx context.Context) http.Header {
	md, _ := metadata.FromIncomingContext(ctx)
	h := http.Header{}
	for k, vs := range md {
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	return h
}

func stringAttrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	return m
}

// Span is a received span and its resource's service.name.
type Span struct {
	Service string
	*tracepb.Span
}

// Attr is one of the span's string attributes ("" when absent).
func (s Span) Attr(key string) string { return stringAttrs(s.GetAttributes())[key] }

// Collector keeps the spans it receives.
type Collector struct {
	coltracepb.UnimplementedTraceServiceServer
	sink[Span]
}

// ServeGRPC serves the collector's gRPC service on a new loopback port
// until the test ends, and returns the port.
func (c *Collector) ServeGRPC(t testing.TB) int {
	return serveGRPC(t, func(s *grpc.Server) { coltracepb.RegisterTraceServiceServer(s, c) })
}

func (c *Collector) addSpans(req *coltracepb.ExportTraceServiceRequest, h http.Header) {
	var spans []Span
	for _, rs := range req.GetResourceSpans() {
		svc := stringAttrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				spans = append(spans, Span{svc, sp})
			}
		}
	}
	c.add(h, spans...)
}

// Export is the OTLP/gRPC trace service.
func (c *Collector) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	if c.failing() {
		return nil, status.Error(codes.Unavailable, "collector overloaded")
	}
	c.addSpans(req, incoming(ctx))
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
	c.addSpans(req, h)
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// Spans returns the spans received so far.
func (c *Collector) Spans() []Span { return c.all() }

// Record is a received log record and its resource's string attributes.
type Record struct {
	Resource map[string]string
	*logspb.LogRecord
}

// Attrs are the record's string attributes.
func (r Record) Attrs() map[string]string { return stringAttrs(r.GetAttributes()) }

// LogCollector keeps the log records it receives over gRPC.
type LogCollector struct {
	collogspb.UnimplementedLogsServiceServer
	sink[Record]
}

// ServeGRPC serves the collector's gRPC service on a new loopback port
// until the test ends, and returns the port.
func (c *LogCollector) ServeGRPC(t testing.TB) int {
	return serveGRPC(t, func(s *grpc.Server) { collogspb.RegisterLogsServiceServer(s, c) })
}

// Export is the OTLP/gRPC logs service.
func (c *LogCollector) Export(ctx context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	if c.failing() {
		return nil, status.Error(codes.Unavailable, "collector overloaded")
	}
	var recs []Record
	for _, rl := range req.GetResourceLogs() {
		res := stringAttrs(rl.GetResource().GetAttributes())
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				recs = append(recs, Record{res, lr})
			}
		}
	}
	c.add(incoming(ctx), recs...)
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// Records returns the records received so far.
func (c *LogCollector) Records() []Record { return c.all() }
