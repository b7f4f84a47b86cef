package engine

import (
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/tcp"
)

// Access logs configured by xDS: an HCM's or tcp_proxy's access_log
// entries (file access loggers, and OpenTelemetry ones: otelaccesslog.go)
// compile into one *accessLogs per chain;
// nil when the chain logs nothing, which is all the request path checks.
// The files are opened when the runtime is applied (Files shares one
// logger per path) and released when a runtime without them replaces it.

// accessLogs are one chain's file and OpenTelemetry access logs.
type accessLogs struct {
	logs []*fileLog
	otel []*otelLog
	// headers are the headers any of the formats or filters reads beyond
	// Entry's fields, captured once per entry.
	headers []accesslog.HeaderRef
}

// fileLog is one envoy.access_loggers.file.
type fileLog struct {
	path   string
	format *accesslog.Formatter
	filter *accesslog.Filter
	// logger is set when the runtime is applied (nil before, or when the
	// file could not be opened).
	logger *accesslog.Logger
}

// celFilterName is the typed_config an access log's CEL extension filter
// carries (as istiod writes Telemetry filter expressions).
const celFilterName = "envoy.access_loggers.extension_filters.cel"

// compileAccessLogs reads an HCM's or tcp_proxy's access_log; only file
// access loggers are supported, with the filters accessLogFilter takes.
// The headers the formats and filters read are captured for each entry.
func compileAccessLogs(als []*accesslogv3.AccessLog) (*accessLogs, error) {
	if len(als) == 0 {
		return nil, nil
	}
	out := &accessLogs{}
	for i, al := range als {
		var refs []accesslog.HeaderRef
		if tc := al.GetTypedConfig(); tc != nil && tc.MessageIs(&otelalsv3.OpenTelemetryAccessLogConfig{}) {
			ol, err := compileOTelLog(al)
			if err != nil {
				return nil, fmt.Errorf("access_log[%d] %s: %w", i, al.GetName(), err)
			}
			out.otel = append(out.otel, ol)
			refs = ol.headers()
		} else {
			fl, err := compileFileLog(al)
			if err != nil {
				return nil, fmt.Errorf("access_log[%d] %s: %w", i, al.GetName(), err)
			}
			out.logs = append(out.logs, fl)
			refs = slices.Concat(fl.format.Headers(), fl.filter.Headers())
		}
		for _, h := range refs {
			if !slices.Contains(out.headers, h) {
				out.headers = append(out.headers, h)
			}
		}
	}
	return out, nil
}

func compileFileLog(al *accesslogv3.AccessLog) (*fileLog, error) {
	tc := al.GetTypedConfig()
	if tc == nil || !tc.MessageIs(&filev3.FileAccessLog{}) {
		return nil, fmt.Errorf("access logger %s is not supported (envoy.extensions.access_loggers.file.v3.FileAccessLog and open_telemetry.v3.OpenTelemetryAccessLogConfig are)", tc.GetTypeUrl())
	}
	cfg := &filev3.FileAccessLog{}
	if err := tc.UnmarshalTo(cfg); err != nil {
		return nil, err
	}
	if cfg.GetPath() == "" {
		return nil, fmt.Errorf("file access log without a path")
	}
	fl := &fileLog{path: cfg.GetPath()}
	var err error
	switch {
	case cfg.GetLogFormat() != nil:
		lf := cfg.GetLogFormat()
		if len(lf.GetFormatters()) > 0 {
			return nil, fmt.Errorf("log_format.formatters (%s) are not supported", lf.GetFormatters()[0].GetName())
		}
		if lf.GetOmitEmptyValues() {
			return nil, fmt.Errorf("log_format.omit_empty_values is not supported")
		}
		switch {
		case lf.GetJsonFormat() != nil:
			fl.format, err = accesslog.ParseJSON(lf.GetJsonFormat())
		case lf.GetTextFormatSource() != nil:
			src := lf.GetTextFormatSource()
			switch {
			case src.GetFilename() != "" || src.GetEnvironmentVariable() != "":
				return nil, fmt.Errorf("log_format.text_format_source: only inline_string and inline_bytes are supported")
			case src.GetInlineBytes() != nil:
				fl.format, err = accesslog.ParseText(string(src.GetInlineBytes()))
			default:
				fl.format, err = accesslog.ParseText(src.GetInlineString())
			}
		default:
			//lint:ignore SA1019 older control planes still send text_format
			fl.format, err = accesslog.ParseText(lf.GetTextFormat())
		}
	default:
		fl.format, err = deprecatedFormat(cfg)
	}
	if err != nil {
		return nil, err
	}
	if fl.filter, err = accessLogFilter(al.GetFilter()); err != nil {
		return nil, err
	}
	return fl, nil
}

// deprecatedFormat reads FileAccessLog's pre-log_format fields (json_format,
// typed_json_format, format), which older control planes still send.
func deprecatedFormat(cfg *filev3.FileAccessLog) (*accesslog.Formatter, error) {
	switch f := cfg.GetAccessLogFormat().(type) {
	case *filev3.FileAccessLog_JsonFormat:
		//lint:ignore SA1019 older control planes still send json_format
		return accesslog.ParseJSON(f.JsonFormat)
	case *filev3.FileAccessLog_TypedJsonFormat:
		//lint:ignore SA1019 older control planes still send typed_json_format
		return accesslog.ParseJSON(f.TypedJsonFormat)
	case *filev3.FileAccessLog_Format:
		//lint:ignore SA1019 older control planes still send format
		return accesslog.ParseText(f.Format)
	}
	return accesslog.ParseText("")
}

// accessLogFilter compiles an access log filter: a CEL extension filter
// (accesslog.ParseFilter) or a status_code_filter.
func accessLogFilter(f *accesslogv3.AccessLogFilter) (*accesslog.Filter, error) {
	switch {
	case f == nil:
		return nil, nil
	case f.GetExtensionFilter() != nil:
		ef := f.GetExtensionFilter()
		expr := &celv3.ExpressionFilter{}
		if tc := ef.GetTypedConfig(); tc == nil || !tc.MessageIs(expr) {
			return nil, fmt.Errorf("filter %s: extension filter %s is not supported (CEL only)", ef.GetName(), tc.GetTypeUrl())
		} else if err := tc.UnmarshalTo(expr); err != nil {
			return nil, fmt.Errorf("filter %s: %w", ef.GetName(), err)
		}
		return accesslog.ParseFilter(expr.GetExpression())
	case f.GetStatusCodeFilter() != nil:
		c := f.GetStatusCodeFilter().GetComparison()
		if c.GetValue().GetRuntimeKey() != "" {
			return nil, fmt.Errorf("status_code_filter: runtime keys are not supported")
		}
		op := map[accesslogv3.ComparisonFilter_Op]string{accesslogv3.ComparisonFilter_EQ: "==",
			accesslogv3.ComparisonFilter_GE: ">=", accesslogv3.ComparisonFilter_LE: "<=", accesslogv3.ComparisonFilter_NE: "!="}[c.GetOp()]
		return accesslog.ParseFilter(fmt.Sprintf("response.code %s %d", op, c.GetValue().GetDefaultValue()))
	}
	return nil, fmt.Errorf("access log filter %T is not supported (CEL extension filter or status_code_filter)", f.GetFilterSpecifier())
}

// allChains lists a listener's chains, the default one last.
func (ls *listenerSpec) allChains() []*chain {
	out := ls.chains
	if ls.defChain != nil {
		out = append(append([]*chain(nil), ls.chains...), ls.defChain)
	}
	return out
}

// fileLogs yields every file access log of rt's listeners, with where
// it is configured ("listener L: chain C").
func (rt *runtime) fileLogs(yield func(where string, fl *fileLog) bool) {
	for _, ls := range rt.listeners {
		for _, ch := range ls.allChains() {
			var als *accessLogs
			switch {
			case ch.http != nil:
				als = ch.http.logs
			case ch.tcp != nil:
				als = ch.tcp.logs
			}
			if als == nil {
				continue
			}
			for _, fl := range als.logs {
				if !yield("listener "+ls.name+": chain "+ch.name, fl) {
					return
				}
			}
		}
	}
}

// checkAccessLogs refuses a configuration whose access log files cannot
// be opened for writing (Validate: the xDS client NACKs it with the
// reason, as Envoy rejects a listener whose log it cannot open).
func (e *Engine) checkAccessLogs(rt *runtime) error {
	for where, fl := range rt.fileLogs {
		if err := e.logFiles.Check(fl.path); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return nil
}

// openAccessLogs gives every access log of rt its shared logger and
// returns the paths acquired (released when rt is replaced). A file that
// cannot be opened (Validate checked, so only one removed or made
// unwritable since) is reported; its logs stay silent.
func (e *Engine) openAccessLogs(rt *runtime) ([]string, error) {
	var paths []string
	var errs []error
	for where, fl := range rt.fileLogs {
		l, err := e.logFiles.Acquire(fl.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		fl.logger = l
		paths = append(paths, fl.path)
	}
	if len(errs) > 0 {
		return paths, fmt.Errorf("%v", errs)
	}
	return paths, nil
}

// AccessLogDropped is the number of xDS access log entries dropped
// because a file's queue was full.
func (e *Engine) AccessLogDropped() uint64 { return e.logFiles.Dropped() }

// releaseAccessLogs gives up a replaced runtime's files.
func (e *Engine) releaseAccessLogs(paths []string) {
	for _, p := range paths {
		e.logFiles.Release(p)
	}
}

// log hands en to every access log whose filter it passes.
func (a *accessLogs) log(e *Engine, en *accesslog.Entry) {
	for _, fl := range a.logs {
		if fl.filter.Match(en) {
			fl.logger.LogWith(fl.format, en)
		}
	}
	for _, ol := range a.otel {
		if ol.filter.Match(en) {
			e.reporter(ol.dest).enqueue(ol.record(en))
		}
	}
}

// logHTTP writes one request's entries: to the chain's access logs and
// the proxy-wide --access-log.
func (e *Engine) logHTTP(cc *chainConn, ex *exchange, r *http.Request, w http.ResponseWriter, d time.Duration) {
	en := httpEntry(ex, r, d)
	if e.opts.AccessLog != nil {
		e.opts.AccessLog.Log(en)
	}
	als := cc.chain.logs
	if als == nil {
		return
	}
	addConnAttributes(en, cc, ex, r)
	for _, h := range als.headers {
		var v string
		switch {
		case h.Response:
			v = w.Header().Get(h.Name)
		case h.Name == "X-Envoy-Attempt-Count" && ex.attempts > 1 && ex.vhost != nil && ex.vhost.IncludeRequestAttemptCount:
			// A retry sent its count in a copy of the header map; Envoy
			// logs the last attempt's.
			v = strconv.Itoa(ex.attempts)
		default:
			v = r.Header.Get(h.Name)
		}
		if v != "" {
			en.Headers = append(en.Headers, accesslog.Header{Response: h.Response, Name: h.Name, Value: v})
		}
	}
	als.log(e, en)
}

// httpEntry is a request's access log entry with the fields Envoy's
// default format shows.
func httpEntry(ex *exchange, r *http.Request, d time.Duration) *accesslog.Entry {
	protocol := r.Proto
	if r.ProtoMajor == 2 {
		protocol = "HTTP/2" // Envoy's %PROTOCOL%
	}
	return &accesslog.Entry{Start: ex.start, Method: r.Method, Path: ex.path, Protocol: protocol,
		Code: ex.code, Flags: ex.flags, GRPCStatus: ex.grpcStatus, BytesReceived: ex.requestBytes(), BytesSent: ex.respBytes, Duration: d,
		UpstreamTime: ex.upstreamTime, ForwardedFor: r.Header.Get("X-Forwarded-For"), UserAgent: r.Header.Get("User-Agent"),
		RequestID: r.Header.Get("X-Request-Id"), Authority: r.Host, UpstreamHost: ex.upstream, UpstreamCluster: ex.cluster,
		Attempts: ex.attempts}
}

// addConnAttributes adds the rest of what formats, filters and metric
// dimensions read: addresses, TLS, route, dynamic metadata and trace.
func addConnAttributes(en *accesslog.Entry, cc *chainConn, ex *exchange, r *http.Request) {
	if en.Path == "" {
		en.Path = r.URL.RequestURI() // refused before routing
	}
	en.DownstreamRemote = r.RemoteAddr
	en.DownstreamLocal = cc.dst.String()
	if ex.upstreamLocal != nil {
		en.UpstreamLocal = ex.upstreamLocal.String()
	}
	connTLS(en, cc.Conn)
	if ex.route != nil {
		en.RouteName = ex.route.Name
	}
	en.Metadata = ex.metadata
	if t := &ex.trace; t.sampled && t.trace != ([16]byte{}) {
		en.TraceID, en.SpanID = traceHex(&t.trace), hex.EncodeToString(t.span[:])
	}
}

// connTLS sets en's TLS attributes of the downstream connection c: its
// SNI (when it has one), version and client certificate. It changes
// nothing when c is not TLS.
func connTLS(en *accesslog.Entry, c net.Conn) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	st := tc.ConnectionState()
	if st.ServerName != "" {
		en.ServerName = st.ServerName
	}
	en.TLSVersion = envoyTLSVersion(st.Version)
	if len(st.PeerCertificates) > 0 {
		en.PeerCert = st.PeerCertificates[0]
	}
}

// envoyTLSVersion names a TLS version as Envoy's %DOWNSTREAM_TLS_VERSION%.
func envoyTLSVersion(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return "unknown"
}

// logTCP writes a TCP connection's entries, in Envoy's TCP form ("- - -"
// for method, path and protocol; response code 0); upstream is the
// endpoint a connection was attempted to ("" none).
func (e *Engine) logTCP(t *tcpChain, down, up net.Conn, dst netip.AddrPort, sni string, md map[string]map[string]any, start time.Time,
	cluster, upstream, flags string, counts tcp.Counts) {
	if e.opts.AccessLog == nil && t.logs == nil {
		return
	}
	en := &accesslog.Entry{Start: start, Flags: flags, BytesReceived: counts.Sent, BytesSent: counts.Received,
		Duration: time.Since(start), UpstreamTime: -1, UpstreamHost: upstream, UpstreamCluster: cluster}
	if upstream != "" {
		en.Attempts = 1 // one connect attempt (tcp_proxy's max_connect_attempts is 1)
	}
	if e.opts.AccessLog != nil {
		e.opts.AccessLog.Log(en)
	}
	if t.logs == nil {
		return
	}
	en.DownstreamRemote = down.RemoteAddr().String()
	en.DownstreamLocal = dst.String()
	en.ServerName = sni
	en.Metadata = md
	connTLS(en, down)
	if up != nil {
		en.UpstreamLocal = up.LocalAddr().String()
	}
	switch flags {
	case "UF":
		en.UpstreamFailure = "connection_failure"
	}
	t.logs.log(e, en)
}
