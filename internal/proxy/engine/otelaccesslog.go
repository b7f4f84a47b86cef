package engine

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
)

// OpenTelemetry access logs (envoy.access_loggers.open_telemetry, as
// istiod writes them for an envoyOtelAls provider): every entry that
// passes the log's filter becomes an OTLP log record — the body format's
// line as its body, each attribute's format as a string attribute, the
// request's start as its time, a traced request's trace and span ids —
// sent over gRPC in batches with the other
// records for the same collector (export.go). Unless
// disable_builtin_labels, the resource carries Envoy's built-in labels
// (log_name, node_name, cluster_name), with resource_attributes.

// otlpLogsPath is OTLP/gRPC's log export method.
const otlpLogsPath = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

// otelLog is one OpenTelemetry access log.
type otelLog struct {
	dest   exportDest
	body   *logValue // nil: no body
	attrs  []logAttr
	filter *accesslog.Filter
}

// logValue is a format whose line is a string value; nl: the format ends
// with a newline of its own (Formatter.Append adds one otherwise).
type logValue struct {
	f  *accesslog.Formatter
	nl bool
}

type logAttr struct {
	key string
	v   *logValue
}

func compileLogValue(what string, v *commonpb.AnyValue) (*logValue, error) {
	s, ok := v.GetValue().(*commonpb.AnyValue_StringValue)
	if !ok {
		return nil, fmt.Errorf("%s: only string values are supported", what)
	}
	f, err := accesslog.ParseText(s.StringValue)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &logValue{f: f, nl: strings.HasSuffix(s.StringValue, "\n")}, nil
}

// value formats en.
func (lv *logValue) value(en *accesslog.Entry) *commonpb.AnyValue {
	b := lv.f.Append(nil, en)
	if !lv.nl {
		b = bytes.TrimSuffix(b, []byte{'\n'})
	}
	return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: string(b)}}
}

// compileOTelLog reads an OpenTelemetryAccessLogConfig: an Envoy gRPC
// service naming a cluster and a log name (grpc_service and log_name, or
// the deprecated common_config istiod writes), and the body, attributes
// and resource attributes as string formats.
func compileOTelLog(al *accesslogv3.AccessLog) (*otelLog, error) {
	cfg := &otelalsv3.OpenTelemetryAccessLogConfig{}
	if err := al.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		return nil, err
	}
	switch {
	case cfg.GetHttpService() != nil:
		return nil, errors.New("open_telemetry: http_service is not supported (gRPC is)")
	case len(cfg.GetResourceDetectors()) > 0:
		return nil, errors.New("open_telemetry: resource_detectors are not supported")
	case len(cfg.GetFormatters()) > 0:
		return nil, fmt.Errorf("open_telemetry: formatters (%s) are not supported", cfg.GetFormatters()[0].GetName())
	case len(cfg.GetCustomTags()) > 0:
		return nil, errors.New("open_telemetry: custom_tags are not supported")
	}
	gs, logName := cfg.GetGrpcService(), cfg.GetLogName()
	//lint:ignore SA1019 istiod and older control planes still write common_config
	if cc := cfg.GetCommonConfig(); cc != nil {
		gs, logName = cmp.Or(gs, cc.GetGrpcService()), cmp.Or(logName, cc.GetLogName())
	}
	dest, err := grpcServiceDest("open_telemetry: grpc_service", gs, otlpLogsPath)
	if err != nil {
		return nil, err
	}
	dest.format = otlpLogsGRPC
	ol := &otelLog{dest: dest}
	var resource []string
	if !cfg.GetDisableBuiltinLabels() {
		resource = append(resource, "log_name", logName)
	}
	for _, kv := range cfg.GetResourceAttributes().GetValues() {
		s, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_StringValue)
		if !ok {
			return nil, fmt.Errorf("open_telemetry: resource attribute %q: only string values are supported", kv.GetKey())
		}
		resource = append(resource, kv.GetKey(), s.StringValue)
	}
	ol.dest.resource, ol.dest.builtin = joinPairs(resource), !cfg.GetDisableBuiltinLabels()
	if cfg.GetBody() != nil {
		if ol.body, err = compileLogValue("open_telemetry: body", cfg.GetBody()); err != nil {
			return nil, err
		}
	}
	for _, kv := range cfg.GetAttributes().GetValues() {
		v, err := compileLogValue(fmt.Sprintf("open_telemetry: attribute %q", kv.GetKey()), kv.GetValue())
		if err != nil {
			return nil, err
		}
		ol.attrs = append(ol.attrs, logAttr{key: kv.GetKey(), v: v})
	}
	if ol.filter, err = accessLogFilter(al.GetFilter()); err != nil {
		return nil, err
	}
	return ol, nil
}

// headers are the headers ol's formats and filter read.
func (ol *otelLog) headers() []accesslog.HeaderRef {
	var out []accesslog.HeaderRef
	if ol.body != nil {
		out = append(out, ol.body.f.Headers()...)
	}
	for _, a := range ol.attrs {
		out = append(out, a.v.f.Headers()...)
	}
	return append(out, ol.filter.Headers()...)
}

// record is en as ol's log record.
func (ol *otelLog) record(en *accesslog.Entry) *logspb.LogRecord {
	rec := &logspb.LogRecord{TimeUnixNano: uint64(en.Start.UnixNano())}
	// A traced request's record names its span, as Envoy's does.
	if tid, err := hex.DecodeString(en.TraceID); err == nil && len(tid) > 0 && len(tid) <= 16 {
		rec.TraceId = append(make([]byte, 16-len(tid)), tid...)
		rec.SpanId, _ = hex.DecodeString(en.SpanID)
	}
	if ol.body != nil {
		rec.Body = ol.body.value(en)
	}
	for _, a := range ol.attrs {
		rec.Attributes = append(rec.Attributes, &commonpb.KeyValue{Key: a.key, Value: a.v.value(en)})
	}
	return rec
}

// logsExport is a batch of records for dest as one OTLP export request.
func (e *Engine) logsExport(dest exportDest, batch []any) *collogspb.ExportLogsServiceRequest {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	res := &resourcepb.Resource{}
	for k, v := range pairs(dest.resource) {
		res.Attributes = append(res.Attributes, str(k, v))
	}
	if dest.builtin {
		res.Attributes = append(res.Attributes, str("node_name", e.opts.NodeID), str("cluster_name", e.serviceCluster()))
	}
	recs := make([]*logspb.LogRecord, len(batch))
	for i, it := range batch {
		recs[i] = it.(*logspb.LogRecord)
	}
	return &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
		Resource: res, ScopeLogs: []*logspb.ScopeLogs{{LogRecords: recs}},
	}}}
}
