package engine

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"
)

// Telemetry export: spans (tracing.go) and OpenTelemetry access log
// records (otelaccesslog.go) leave the sidecar in batches, one reporter
// per destination, through the destination cluster's own transport (its
// protocol and TLS settings apply), as Envoy's tracers and gRPC access
// loggers send theirs.

// exportFormat is how a destination takes what is sent to it.
type exportFormat uint8

const (
	zipkinJSON   exportFormat = iota // spans as Zipkin v2 JSON over HTTP
	otlpGRPC                         // spans as OTLP over gRPC
	otlpHTTP                         // spans as OTLP/HTTP, binary protobuf
	otlpLogsGRPC                     // access log records as OTLP over gRPC
)

// exportDest is where a chain's spans or log records go: the format, a
// cluster, the path and Host, the export's timeout (0:
// defaultExportTimeout) and extra headers ("name\x00value\x00…", so that
// destinations compare), and the OTLP resource: a tracer's service.name,
// or an access logger's attributes (resource, encoded as headers are)
// and whether Envoy's built-in node labels join them. One reporter
// serves each.
type exportDest struct {
	format              exportFormat
	cluster, path, host string
	timeout             time.Duration
	headers             string
	service             string
	resource            string
	builtin             bool
}

// spans reports whether d takes spans (else access log records).
func (d exportDest) spans() bool { return d.format != otlpLogsGRPC }

// grpcServiceDest is where an Envoy gRPC service sends calls of method
// path: its envoy_grpc cluster and authority, timeout and initial
// metadata.
func grpcServiceDest(what string, gs *corev3.GrpcService, path string) (exportDest, error) {
	eg := gs.GetEnvoyGrpc()
	if eg == nil || eg.GetClusterName() == "" {
		return exportDest{}, fmt.Errorf("%s must be an envoy_grpc naming a cluster (google_grpc is not supported)", what)
	}
	d := exportDest{cluster: eg.GetClusterName(), path: path, host: cmp.Or(eg.GetAuthority(), eg.GetClusterName())}
	if t := gs.GetTimeout(); t != nil {
		if d.timeout = t.AsDuration(); d.timeout <= 0 {
			return exportDest{}, fmt.Errorf("%s timeout must be positive", what)
		}
	}
	var headers []string
	for _, h := range gs.GetInitialMetadata() {
		headers = append(headers, h.GetKey(), h.GetValue())
	}
	if err := checkHeaders(what, headers); err != nil {
		return exportDest{}, err
	}
	d.headers = joinPairs(headers)
	return d, nil
}

// httpServiceDest is where an Envoy HTTP service sends: its URI's host
// and path (istiod writes "<host><path>" for OpenTelemetry, without a
// scheme), cluster, timeout and request_headers_to_add.
func httpServiceDest(what string, hs *corev3.HttpService) (exportDest, error) {
	u := hs.GetHttpUri()
	if u.GetCluster() == "" {
		return exportDest{}, fmt.Errorf("%s: http_uri must name a cluster", what)
	}
	rest := u.GetUri()
	if _, after, ok := strings.Cut(rest, "://"); ok {
		rest = after
	}
	host, path, _ := strings.Cut(rest, "/")
	d := exportDest{cluster: u.GetCluster(), path: "/" + path, host: cmp.Or(host, u.GetCluster())}
	if strings.ContainsAny(d.path, "?# ") {
		return exportDest{}, fmt.Errorf("%s: http_uri %q: want host and path", what, u.GetUri())
	}
	if t := u.GetTimeout(); t != nil {
		if d.timeout = t.AsDuration(); d.timeout <= 0 {
			return exportDest{}, fmt.Errorf("%s: http_uri timeout must be positive", what)
		}
	}
	var headers []string
	for _, h := range hs.GetRequestHeadersToAdd() {
		headers = append(headers, h.GetHeader().GetKey(), h.GetHeader().GetValue())
	}
	if err := checkHeaders(what, headers); err != nil {
		return exportDest{}, err
	}
	d.headers = joinPairs(headers)
	return d, nil
}

// checkHeaders refuses name, value pairs that are not valid headers.
func checkHeaders(what string, kv []string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if !httpguts.ValidHeaderFieldName(kv[i]) || !httpguts.ValidHeaderFieldValue(kv[i+1]) {
			return fmt.Errorf("%s: header %q is not a valid header", what, kv[i])
		}
	}
	return nil
}

// reporter batches what goes to one destination: *span or
// *logspb.LogRecord items. Its goroutine ends once nothing has come for
// reporterIdleTicks flush intervals, so that destinations a config no
// longer names leave nothing running; an item for one of them after
// that starts a new reporter.
type reporter struct {
	e    *Engine
	dest exportDest
	ch   chan any
	mu   sync.Mutex
	// done: run has returned (idle), and the reporter is out of
	// e.reporters; enqueue hands items to the destination's next one.
	done bool
}

// reporterIdleTicks is how many flush intervals without an item end a
// reporter (a minute at Envoy's 5 s).
const reporterIdleTicks = 12

// reporter returns the reporter for dest, starting it on first use.
func (e *Engine) reporter(dest exportDest) *reporter {
	if r, ok := e.reporters.Load(dest); ok {
		return r.(*reporter)
	}
	r := &reporter{e: e, dest: dest, ch: make(chan any, spanQueue)}
	if prev, loaded := e.reporters.LoadOrStore(dest, r); loaded {
		return prev.(*reporter)
	}
	go r.run()
	return r
}

func (r *reporter) enqueue(item any) {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		r.e.reporter(r.dest).enqueue(item)
		return
	}
	select {
	case r.ch <- item:
	default:
		r.dropped(1)
	}
	r.mu.Unlock()
}

// run sends a batch once minFlushSpans are waiting, or every flush
// interval, until it has been idle for reporterIdleTicks intervals or the
// engine shuts down (then once more, briefly).
func (r *reporter) run() {
	every := r.e.opts.TraceFlushInterval
	if every <= 0 {
		every = defaultTraceFlushInterval
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var batch []any
	idle := 0
	for {
		select {
		case item := <-r.ch:
			idle = 0
			batch = append(batch, item)
			if len(batch) >= minFlushSpans {
				r.send(batch)
				batch = nil
			}
		case <-tick.C:
			if len(batch) > 0 {
				r.send(batch)
				batch = nil
				continue
			}
			if idle++; idle >= reporterIdleTicks && r.retire() {
				return
			}
		case <-r.e.quit:
			for len(r.ch) > 0 {
				batch = append(batch, <-r.ch)
			}
			if len(batch) > 0 {
				r.send(batch)
			}
			return
		}
	}
}

// retire takes an idle reporter out of service, unless an item has just
// come.
func (r *reporter) retire() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ch) > 0 {
		return false
	}
	r.done = true
	r.e.reporters.CompareAndDelete(r.dest, r)
	return true
}

// encode is batch as the destination takes it, and its content type.
func (r *reporter) encode(batch []any) ([]byte, string, error) {
	switch r.dest.format {
	case zipkinJSON:
		zs := make([]*zipkinSpan, len(batch))
		for i, it := range batch {
			zs[i] = it.(*span).zipkin()
		}
		b, err := json.Marshal(zs)
		return b, "application/json", err
	case otlpLogsGRPC:
		b, err := proto.Marshal(r.e.logsExport(r.dest, batch))
		return grpcFrame(b), "application/grpc", err
	}
	spans := make([]*span, len(batch))
	for i, it := range batch {
		spans[i] = it.(*span)
	}
	b, err := proto.Marshal(otlpExport(r.dest.service, spans))
	if r.dest.format == otlpGRPC {
		return grpcFrame(b), "application/grpc", err
	}
	return b, "application/x-protobuf", err
}

// grpcFrame is one uncompressed length-prefixed gRPC message.
func grpcFrame(pb []byte) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 1, 5+len(pb)), uint32(len(pb)))
	return append(b, pb...)
}

// send delivers batch to an endpoint of the destination cluster, through
// the cluster's transport (its TLS, if any, included): a Zipkin or
// OTLP/HTTP POST, or an OTLP/gRPC Export call over HTTP/2.
func (r *reporter) send(batch []any) {
	n := float64(len(batch))
	rt := r.e.cur.Load()
	var c *cluster.Cluster
	if rt != nil {
		c = rt.clusters[r.dest.cluster]
	}
	if c == nil {
		r.fail(n, "collector cluster unknown")
		return
	}
	ep, err := c.Pick(cluster.PickContext{})
	if err != nil {
		r.fail(n, err.Error())
		return
	}
	body, contentType, err := r.encode(batch)
	if err != nil {
		r.fail(n, err.Error())
		return
	}
	timeout := cmp.Or(r.dest.timeout, defaultExportTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, upstreamScheme(c)+"://"+ep.Address+r.dest.path, bytes.NewReader(body))
	req.Host = r.dest.host
	req.Header.Set("Content-Type", contentType)
	for k, v := range pairs(r.dest.headers) {
		req.Header.Set(k, v)
	}
	isGRPC := contentType == "application/grpc"
	h2 := upstreamH2(c, req)
	if isGRPC {
		h2 = true
		req.Header.Set("Te", "trailers")
		req.Header.Set("Grpc-Timeout", strconv.FormatInt(timeout.Milliseconds(), 10)+"m")
	}
	resp, err := r.e.transport(rt, c, source{}, h2).RoundTrip(req)
	if err != nil {
		r.fail(n, err.Error())
		return
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 != 2:
		r.fail(n, "collector answered "+resp.Status)
		return
	case !isGRPC:
	case err != nil:
		r.fail(n, err.Error())
		return
	default:
		// A trailers-only answer carries the status in its headers.
		st, msg := resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
		if st == "" {
			st, msg = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
		}
		if st != "0" {
			r.fail(n, "collector answered grpc-status "+cmp.Or(st, "(none)")+" "+msg)
			return
		}
	}
	if r.dest.spans() {
		r.e.metrics.SpansSent.Add(n)
	} else {
		r.e.metrics.LogsSent.Add(n)
	}
}

// joinPairs encodes name, value, … for exportDest.
func joinPairs(kv []string) string { return strings.Join(kv, "\x00") }

// pairs yields what joinPairs encoded.
func pairs(s string) func(yield func(k, v string) bool) {
	return func(yield func(k, v string) bool) {
		for s != "" {
			var k, v string
			k, s, _ = strings.Cut(s, "\x00")
			v, s, _ = strings.Cut(s, "\x00")
			if !yield(k, v) {
				return
			}
		}
	}
}

// dropped counts lost items.
func (r *reporter) dropped(n float64) {
	if r.dest.spans() {
		r.e.metrics.SpansDropped.Add(n)
	} else {
		r.e.metrics.LogsDropped.Add(n)
	}
}

// fail counts lost items; the engine's first failure is also logged.
func (r *reporter) fail(n float64, why string) {
	r.dropped(n)
	what, metric := "spans", "weft_tracing_spans_dropped_total"
	if !r.dest.spans() {
		what, metric = "access log entries", "weft_access_log_otlp_dropped_total"
	}
	r.e.traceWarn.Do(func() {
		r.e.log.Warn(what+" not delivered to the collector (further failures are only counted in "+metric+")",
			"cluster", r.dest.cluster, "reason", why)
	})
}
