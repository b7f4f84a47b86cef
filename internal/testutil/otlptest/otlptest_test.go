package otlptest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

func export(name string) *coltracepb.ExportTraceServiceRequest {
	kv := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{kv("service.name", "svc")}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{Name: name, TraceId: bytes.Repeat([]byte{1}, 16),
			SpanId: bytes.Repeat([]byte{2}, 8), Attributes: []*commonpb.KeyValue{kv("http.method", "GET")}}}}},
	}}}
}

// TestCollector: spans and headers arrive over gRPC and HTTP with
// OpenTelemetry's own client stub; a failing collector refuses exports,
// and a non-OTLP request is refused.
func TestCollector(t *testing.T) {
	c := &Collector{}
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", c.ServeGRPC(t)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := coltracepb.NewTraceServiceClient(conn)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-token", "a"), 5*time.Second)
	defer cancel()
	if _, err := client.Export(ctx, export("one")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	body, _ := proto.Marshal(export("two"))
	resp, err := http.Post(srv.URL+"/v1/traces", "application/x-protobuf", bytes.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("OTLP/HTTP export: %v %v", resp, err)
	}
	resp.Body.Close()
	if resp, _ := http.Post(srv.URL+"/v1/traces", "application/json", bytes.NewReader([]byte("{}"))); resp == nil || resp.StatusCode != 400 {
		t.Errorf("a JSON export was not refused: %v", resp)
	}
	got := c.Wait(2, time.Second)
	if len(got) != 2 || got[0].GetName() != "one" || got[1].GetName() != "two" || got[0].Service != "svc" || got[1].Attr("http.method") != "GET" {
		t.Fatalf("spans %v", got)
	}
	h := c.Headers()
	if len(h) != 2 || h[0].Get("X-Token") != "a" || h[1].Get("Path") != "/v1/traces" {
		t.Errorf("headers %v", h)
	}
	c.SetFail(true)
	if _, err := client.Export(ctx, export("three")); err == nil {
		t.Error("a failing collector accepted an export")
	}
	if len(c.Spans()) != 2 {
		t.Error("a refused export was kept")
	}
}

// TestLogCollector: records arrive over gRPC with OpenTelemetry's own
// client stub, with their resource's attributes and the metadata.
func TestLogCollector(t *testing.T) {
	c := &LogCollector{}
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", c.ServeGRPC(t)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-token", "a"), 5*time.Second)
	defer cancel()
	if _, err := collogspb.NewLogsServiceClient(conn).Export(ctx, &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{kv("log_name", "l")}},
		ScopeLogs: []*logspb.ScopeLogs{{LogRecords: []*logspb.LogRecord{{TimeUnixNano: 7, Attributes: []*commonpb.KeyValue{kv("code", "200")},
			Body: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "GET / 200"}}}}}},
	}}}); err != nil {
		t.Fatal(err)
	}
	got := c.Wait(1, time.Second)
	if len(got) != 1 || got[0].Resource["log_name"] != "l" || got[0].Attrs()["code"] != "200" || got[0].GetBody().GetStringValue() != "GET / 200" ||
		got[0].GetTimeUnixNano() != 7 || c.Headers()[0].Get("X-Token") != "a" {
		t.Fatalf("records %v, headers %v", got, c.Headers())
	}
	c.SetFail(true)
	if _, err := collogspb.NewLogsServiceClient(conn).Export(ctx, &collogspb.ExportLogsServiceRequest{}); err == nil {
		t.Error("a failing collector accepted an export")
	}
}
