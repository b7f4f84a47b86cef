package engine

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
)

// Trace context propagation, as an Istio sidecar's Envoy does it with
// its Zipkin tracer: every hop is a span. A request that carries B3
// headers keeps its trace id and gets a new span id whose parent is the
// incoming span. A request without a trace starts one, sampled at the
// connection manager's random_sampling, or as Envoy's other two ways to
// initiate a trace say: at client_sampling with x-client-trace-id, always
// with x-envoy-force-trace from the sidecar's own application. By default
// only B3 is read and written (the tracer's trace_context_option
// USE_B3); with USE_B3_WITH_W3C_PROPAGATION a W3C traceparent is read
// when B3 is absent, and written beside B3, so applications using either
// library join the same trace. With its OpenTelemetry tracer Envoy reads
// and writes only traceparent, and B3 headers pass through untouched.
// Spans are reported to the connection manager's tracer (tracing.go).
// A connection manager without a tracer — Istio's default since 1.22,
// which no longer points every proxy at zipkin.istio-system — neither
// reads nor writes trace headers: they pass through untouched, as with
// Envoy's null tracer.

// traceOptions are how one hop reads and writes trace context.
type traceOptions struct {
	sampling float64 // the share of new traces sampled
	client   float64 // the share sampled when x-client-trace-id is set
	// force: x-envoy-force-trace is honoured (a request from the
	// sidecar's own application; Envoy honours it from internal callers).
	force bool
	// shared: Zipkin's shared span context, on a server span (an
	// incoming span keeps its id).
	shared bool
	// w3c: trace_context_option USE_B3_WITH_W3C_PROPAGATION.
	w3c bool
	// otel: W3C trace context only, as Envoy's OpenTelemetry tracer
	// (B3 is neither read nor written).
	otel bool
	// id64: new traces get 64-bit ids (the tracer's trace_id_128bit
	// false); W3C propagation needs 128 bits and overrides it.
	id64 bool
}

// traceIDs are one hop's trace context.
type traceIDs struct {
	trace   [16]byte // a 64-bit id is the low half; the high half is zero
	parent  [8]byte  // the incoming span (zero: root)
	span    [8]byte
	sampled bool
	// deferred: the caller sent B3 ids without a sampling decision
	// (no X-B3-Sampled or X-B3-Flags), which this hop then makes.
	deferred bool
}

// propagateTrace rewrites h's trace headers for the next hop and returns
// the hop's context (traceContext). Every value it writes is a slice of
// one string, and the values share one backing array: two allocations
// per request (BenchmarkPropagateTrace).
func propagateTrace(h http.Header, o traceOptions) traceIDs {
	t := traceContext(h, o)
	writeTrace(h, &t, o)
	return t
}

// traceContext is this hop's trace context for a request with headers h:
// the incoming trace with a new span under the caller's, or a new trace,
// sampled as o.decide says. With o.shared an incoming span
// keeps its id, and its B3 parent stays the parent.
func traceContext(h http.Header, o traceOptions) traceIDs {
	var t traceIDs
	ok := !o.otel && parseB3(h, &t)
	if !ok && (o.w3c || o.otel) {
		ok = parseTraceparent(hget(h, "Traceparent"), &t)
	}
	if ok && t.deferred {
		t.sampled, t.deferred = o.decide(h), false
	}
	switch {
	case !ok:
		t = traceIDs{} // a traceparent that failed to parse may have left bytes
		if o.id64 && !o.w3c && !o.otel {
			randBytes(t.trace[8:])
		} else {
			randBytes(t.trace[:])
		}
		t.sampled = o.decide(h)
		randBytes(t.span[:])
	case o.shared:
		t.span = t.parent
		if !decodeNonZero(t.parent[:], hget(h, "X-B3-Parentspanid")) {
			t.parent = [8]byte{}
		}
	default:
		randBytes(t.span[:])
	}
	return t
}

// decide is the sampling decision for a request that brings none, in
// Envoy's order: x-client-trace-id at the client rate, else
// x-envoy-force-trace where honoured, else the random rate.
func (o traceOptions) decide(h http.Header) bool {
	if hget(h, "X-Client-Trace-Id") != "" && rand.Float64() < o.client {
		return true
	}
	if o.force && hget(h, "X-Envoy-Force-Trace") != "" {
		return true
	}
	return rand.Float64() < o.sampling
}

// is64 reports whether t's trace id is a 64-bit one.
func (t *traceIDs) is64() bool { return is64ID(&t.trace) }

// is64ID reports whether a trace id is a 64-bit one (its high half zero).
func is64ID(id *[16]byte) bool { return [8]byte(id[:8]) == [8]byte{} }

// traceHex is a trace id in hex: 16 digits for a 64-bit id, which B3 and
// Zipkin keep that long, else 32.
func traceHex(id *[16]byte) string {
	if is64ID(id) {
		return hex.EncodeToString(id[8:])
	}
	return hex.EncodeToString(id[:])
}

// writeTrace sets h's B3 headers to t, and with o.w3c its traceparent;
// without, a traceparent passes through untouched, as Envoy's USE_B3.
// With o.otel it sets only the traceparent.
func writeTrace(h http.Header, t *traceIDs, o traceOptions) {
	flag := byte('0')
	if t.sampled {
		flag = '1'
	}
	// "00-<trace>-<span>-0<flag>" then the parent span's hex: the B3
	// values are substrings of it.
	const tpLen = 2 + 1 + 32 + 1 + 16 + 1 + 2
	var buf [tpLen + 16]byte
	copy(buf[:], "00-")
	hex.Encode(buf[3:35], t.trace[:])
	buf[35] = '-'
	hex.Encode(buf[36:52], t.span[:])
	buf[52], buf[53], buf[54] = '-', '0', flag
	hasParent := t.parent != ([8]byte{})
	n := tpLen
	if hasParent {
		hex.Encode(buf[tpLen:], t.parent[:])
		n += 16
	}
	all := string(buf[:n])
	vals := make([]string, 5)
	vals[0], vals[1], vals[2], vals[3] = all[:tpLen], all[3:35], all[36:52], all[54:55]
	if t.is64() {
		vals[1] = all[19:35] // B3 keeps a 64-bit id 16 digits long
	}
	if o.w3c || o.otel {
		h["Traceparent"] = vals[0:1:1]
	}
	if o.otel {
		return
	}
	h["X-B3-Traceid"] = vals[1:2:2]
	h["X-B3-Spanid"] = vals[2:3:3]
	h["X-B3-Sampled"] = vals[3:4:4]
	if hasParent {
		vals[4] = all[tpLen:]
		h["X-B3-Parentspanid"] = vals[4:5:5]
	} else {
		delete(h, "X-B3-Parentspanid")
	}
	delete(h, "B3") // the single-header form would now disagree
}

func randBytes(b []byte) {
	for {
		for i := 0; i < len(b); i += 8 {
			v := rand.Uint64()
			for j := 0; j < 8 && i+j < len(b); j++ {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		for _, x := range b {
			if x != 0 {
				return // all-zero ids are invalid in both formats
			}
		}
	}
}

// parseTraceparent reads a version-00 W3C traceparent:
// 00-<32 hex>-<16 hex>-<2 hex>.
func parseTraceparent(v string, t *traceIDs) bool {
	v = strings.TrimSpace(v)
	if len(v) != 55 || v[:3] != "00-" || v[35] != '-' || v[52] != '-' {
		return false
	}
	var flags [1]byte
	if !decodeNonZero(t.trace[:], v[3:35]) || !decodeNonZero(t.parent[:], v[36:52]) || !decodeHex(flags[:], v[53:55]) {
		return false
	}
	t.sampled = flags[0]&1 == 1
	return true
}

// parseB3 reads B3 multi-header context (64- or 128-bit trace ids).
func parseB3(h http.Header, t *traceIDs) bool {
	*t = traceIDs{}
	tid, sid := hget(h, "X-B3-Traceid"), hget(h, "X-B3-Spanid")
	ok := len(sid) == 16 && decodeNonZero(t.parent[:], sid)
	switch len(tid) {
	case 16: // 64-bit: the high half stays zero
		ok = ok && decodeNonZero(t.trace[8:], tid)
	case 32:
		ok = ok && decodeNonZero(t.trace[:], tid)
	default:
		ok = false
	}
	if !ok {
		*t = traceIDs{}
		return false
	}
	s, flags := hget(h, "X-B3-Sampled"), hget(h, "X-B3-Flags")
	t.sampled = s == "1" || strings.EqualFold(s, "true") || flags == "1"
	t.deferred = s == "" && flags == ""
	return true
}

// decodeNonZero decodes hex s (either case) into dst, which must then not
// be all zeros.
func decodeNonZero(dst []byte, s string) bool {
	if !decodeHex(dst, s) {
		return false
	}
	for _, b := range dst {
		if b != 0 {
			return true
		}
	}
	return false
}

// decodeHex decodes exactly len(dst) bytes of hex s, either case.
func decodeHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	_, err := hex.Decode(dst, []byte(s)) // s is at most 32 bytes: no allocation
	return err == nil
}
