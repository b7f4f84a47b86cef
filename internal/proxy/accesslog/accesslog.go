// Package accesslog writes the sidecar's access logs, one line per HTTP
// request or TCP connection: in Envoy's default text format or a fixed
// JSON form (the --access-log flag), or in a format compiled from Envoy
// command operators (Formatter, from xDS file access logs) with an
// optional filter (Filter). Requests hand their entry to a bounded queue
// and never wait for the disk: a writer goroutine per file formats and
// writes the lines, and entries that find the queue full are dropped and
// counted. Files shares one Logger per path between listeners.
package accesslog

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Format is how lines are written.
type Format int

// Formats.
const (
	// Text is Envoy's default format:
	//
	//	[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
	//	%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
	//	%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
	//	"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
	Text Format = iota
	// JSON is one object a line with the same fields, named as in Istio's
	// JSON access log (start_time, method, path, ...), plus
	// upstream_cluster.
	JSON
)

// ParseFormat reads "text" or "json".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "", "text":
		return Text, nil
	case "json":
		return JSON, nil
	}
	return 0, fmt.Errorf("access log format %q: use text or json", s)
}

// Entry is one request. Empty strings and negative numbers are logged as
// "-" (null in JSON).
type Entry struct {
	Start         time.Time
	Method        string
	Path          string // the path as received (before rewrites)
	Protocol      string // "HTTP/1.1", "HTTP/2"
	Code          int
	Flags         string // Envoy response flags ("UH", "UF", ...)
	BytesReceived int64
	BytesSent     int64
	Duration      time.Duration
	// UpstreamTime is the upstream service time (request sent to response
	// headers); negative when there was no upstream response.
	UpstreamTime    time.Duration
	ForwardedFor    string
	UserAgent       string
	RequestID       string
	Authority       string
	UpstreamHost    string
	UpstreamCluster string
	// Attempts is how many times the request was sent upstream (0:
	// never), Envoy's UPSTREAM_REQUEST_ATTEMPT_COUNT.
	Attempts int
	// Details is Envoy's RESPONSE_CODE_DETAILS; empty: derived from Flags.
	Details string
	// ConnectionTerminationDetails and UpstreamFailure are Envoy's
	// CONNECTION_TERMINATION_DETAILS and UPSTREAM_TRANSPORT_FAILURE_REASON.
	ConnectionTerminationDetails, UpstreamFailure string
	// UpstreamLocal, DownstreamLocal and DownstreamRemote are ip:port
	// addresses (DownstreamLocal is the original destination).
	UpstreamLocal, DownstreamLocal, DownstreamRemote string
	// ServerName is the downstream TLS SNI, TLSVersion the connection's
	// version ("TLSv1.3", empty without TLS: the request's scheme is then
	// http, else https) and PeerCert the client's certificate (nil
	// without mutual TLS).
	ServerName string
	TLSVersion string
	PeerCert   *x509.Certificate
	// GRPCStatus is a gRPC response's grpc-status ("" otherwise).
	GRPCStatus string
	RouteName  string
	// Metadata is the dynamic metadata the HTTP filters left, by
	// namespace (DYNAMIC_METADATA); nil: none.
	Metadata map[string]map[string]any
	// TraceID and SpanID are the hop's span, in hex, when the request is
	// traced (sampled); "" otherwise, as Envoy's active span is then a
	// null one. TraceID is Envoy's TRACE_ID.
	TraceID, SpanID string
	// Headers are the other headers formats and filters read
	// (Formatter.Headers, Filter.Headers).
	Headers []Header
}

// item is one queued entry and its format (nil: the logger's own).
type item struct {
	e Entry
	f *Formatter
}

// DefaultQueue is the number of entries waiting to be written before new
// ones are dropped.
const DefaultQueue = 4096

// Logger writes entries asynchronously. The zero value is not usable; use
// New. A nil *Logger logs nothing.
type Logger struct {
	format  Format
	queue   chan item
	w       *bufio.Writer
	dropped atomic.Uint64
	closed  atomic.Bool
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	err     error
}

// New starts a logger writing to w with a queue of queue entries (0:
// DefaultQueue). Close stops it.
func New(w io.Writer, format Format, queue int) *Logger {
	if queue <= 0 {
		queue = DefaultQueue
	}
	l := &Logger{format: format, queue: make(chan item, queue), w: bufio.NewWriterSize(w, 64<<10),
		stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	return l
}

// Log queues e; when the queue is full, e is dropped (see Dropped).
func (l *Logger) Log(e *Entry) { l.LogWith(nil, e) }

// LogWith queues e to be written in format f (nil: the logger's own
// format); when the queue is full, e is dropped (see Dropped). After
// Close, entries are discarded.
func (l *Logger) LogWith(f *Formatter, e *Entry) {
	if l == nil || l.closed.Load() {
		return
	}
	select {
	case l.queue <- item{e: *e, f: f}:
	default:
		l.dropped.Add(1)
	}
}

// Dropped is the number of entries dropped because the queue was full.
func (l *Logger) Dropped() uint64 {
	if l == nil {
		return 0
	}
	return l.dropped.Load()
}

// Close writes the queued entries and stops the logger; later entries
// are discarded. It returns the first write error.
func (l *Logger) Close() error {
	if l == nil {
		return nil
	}
	l.once.Do(func() {
		l.closed.Store(true)
		close(l.stop)
	})
	<-l.done
	return l.err
}

func (l *Logger) run() {
	defer close(l.done)
	buf := make([]byte, 0, 512)
	write := func(it *item) {
		if it.f != nil {
			buf = it.f.Append(buf[:0], &it.e)
		} else {
			buf = l.appendEntry(buf[:0], &it.e)
		}
		if len(buf) > l.w.Available() && l.w.Buffered() > 0 {
			// Whole lines per write: processes appending to one file
			// (O_APPEND) never interleave within a line.
			if err := l.w.Flush(); err != nil && l.err == nil {
				l.err = err
			}
		}
		if _, err := l.w.Write(buf); err != nil && l.err == nil {
			l.err = err
		}
	}
	flush := func() {
		if err := l.w.Flush(); err != nil && l.err == nil {
			l.err = err
		}
	}
	for {
		select {
		case it := <-l.queue:
			write(&it)
			if len(l.queue) == 0 { // idle: make the lines visible
				flush()
			}
		case <-l.stop:
			for {
				select {
				case it := <-l.queue:
					write(&it)
				default:
					flush()
					return
				}
			}
		}
	}
}

func (l *Logger) appendEntry(b []byte, e *Entry) []byte {
	if l.format == JSON {
		return appendJSON(b, e)
	}
	return appendText(b, e)
}

const timeLayout = timeLayoutDefault

func appendText(b []byte, e *Entry) []byte {
	b = append(b, '[')
	b = e.Start.UTC().AppendFormat(b, timeLayout)
	b = append(b, "] \""...)
	b = appendDash(b, e.Method)
	b = append(b, ' ')
	b = appendDash(b, e.Path)
	b = append(b, ' ')
	b = appendDash(b, e.Protocol)
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(e.Code), 10)
	b = append(b, ' ')
	b = appendDash(b, e.Flags)
	b = append(b, ' ')
	b = strconv.AppendInt(b, max(e.BytesReceived, 0), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, max(e.BytesSent, 0), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, e.Duration.Milliseconds(), 10)
	b = append(b, ' ')
	if e.UpstreamTime >= 0 {
		b = strconv.AppendInt(b, e.UpstreamTime.Milliseconds(), 10)
	} else {
		b = append(b, '-')
	}
	for _, s := range [...]string{e.ForwardedFor, e.UserAgent, e.RequestID, e.Authority, e.UpstreamHost} {
		b = append(b, " \""...)
		b = appendDash(b, s)
		b = append(b, '"')
	}
	return append(b, '\n')
}

// appendDash appends s, or "-" when it is empty.
func appendDash(b []byte, s string) []byte {
	if s == "" {
		return append(b, '-')
	}
	return append(b, s...)
}

// jsonEntry fixes the JSON field names and order.
type jsonEntry struct {
	StartTime           string  `json:"start_time"`
	Method              *string `json:"method"`
	Path                *string `json:"path"`
	Protocol            *string `json:"protocol"`
	ResponseCode        int     `json:"response_code"`
	ResponseFlags       *string `json:"response_flags"`
	BytesReceived       int64   `json:"bytes_received"`
	BytesSent           int64   `json:"bytes_sent"`
	Duration            int64   `json:"duration"`
	UpstreamServiceTime *int64  `json:"upstream_service_time"`
	XForwardedFor       *string `json:"x_forwarded_for"`
	UserAgent           *string `json:"user_agent"`
	RequestID           *string `json:"request_id"`
	Authority           *string `json:"authority"`
	UpstreamHost        *string `json:"upstream_host"`
	UpstreamCluster     *string `json:"upstream_cluster"`
}

func appendJSON(b []byte, e *Entry) []byte {
	opt := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	j := jsonEntry{StartTime: e.Start.UTC().Format(timeLayout), Method: opt(e.Method), Path: opt(e.Path),
		Protocol: opt(e.Protocol), ResponseCode: e.Code, ResponseFlags: opt(e.Flags),
		BytesReceived: max(e.BytesReceived, 0), BytesSent: max(e.BytesSent, 0), Duration: e.Duration.Milliseconds(),
		XForwardedFor: opt(e.ForwardedFor), UserAgent: opt(e.UserAgent), RequestID: opt(e.RequestID),
		Authority: opt(e.Authority), UpstreamHost: opt(e.UpstreamHost), UpstreamCluster: opt(e.UpstreamCluster)}
	if e.UpstreamTime >= 0 {
		ms := e.UpstreamTime.Milliseconds()
		j.UpstreamServiceTime = &ms
	}
	out, err := json.Marshal(&j)
	if err != nil { // cannot happen: strings and numbers only
		return append(b, "{}\n"...)
	}
	return append(append(b, out...), '\n')
}
