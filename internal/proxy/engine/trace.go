package engine

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
)

// Trace context propagation, as an Istio sidecar's Envoy does it with
// tracing on: every hop is a span. A request that carries a W3C
// traceparent or B3 headers keeps its trace id and gets a new span id
// whose parent is the incoming span; a request without a trace starts
// one (sampled with probability defaultTraceSampling, Istio's default 1 %).
// Both header families are written, so applications using either library
// join the same trace. weft-proxy reports no spans itself yet: the headers
// are what applications and tracers downstream need.

// defaultTraceSampling is Istio's default sampling rate for new traces.
const defaultTraceSampling = 0.01

// traceIDs are one hop's trace context.
type traceIDs struct {
	trace   [16]byte
	parent  [8]byte // the incoming span (zero: root)
	span    [8]byte
	sampled bool
}

// propagateTrace rewrites h's trace headers for the next hop.
func propagateTrace(h http.Header) {
	var t traceIDs
	ok := parseTraceparent(h.Get("Traceparent"), &t)
	if !ok {
		ok = parseB3(h, &t)
	}
	if !ok {
		randBytes(t.trace[:])
		t.sampled = rand.Float64() < defaultTraceSampling
	}
	randBytes(t.span[:])
	flags := "00"
	if t.sampled {
		flags = "01"
	}
	traceHex, spanHex := hex.EncodeToString(t.trace[:]), hex.EncodeToString(t.span[:])
	h.Set("Traceparent", "00-"+traceHex+"-"+spanHex+"-"+flags)
	h.Set("X-B3-Traceid", traceHex)
	h.Set("X-B3-Spanid", spanHex)
	if t.parent != ([8]byte{}) {
		h.Set("X-B3-Parentspanid", hex.EncodeToString(t.parent[:]))
	} else {
		h.Del("X-B3-Parentspanid")
	}
	h.Set("X-B3-Sampled", flags[1:])
	h.Del("B3") // the single-header form would now disagree
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

// parseTraceparent reads a version-00 W3C traceparent.
func parseTraceparent(v string, t *traceIDs) bool {
	parts := strings.Split(strings.TrimSpace(v), "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		return false
	}
	var flags [1]byte
	if !decodeNonZero(t.trace[:], parts[1]) || !decodeNonZero(t.parent[:], parts[2]) {
		return false
	}
	if _, err := hex.Decode(flags[:], []byte(parts[3])); err != nil {
		return false
	}
	t.sampled = flags[0]&1 == 1
	return true
}

// parseB3 reads B3 multi-header context (64- or 128-bit trace ids).
func parseB3(h http.Header, t *traceIDs) bool {
	tid, sid := h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid")
	if len(tid) == 16 {
		tid = strings.Repeat("0", 16) + tid
	}
	if len(tid) != 32 || len(sid) != 16 || !decodeNonZero(t.trace[:], tid) || !decodeNonZero(t.parent[:], sid) {
		*t = traceIDs{}
		return false
	}
	s := h.Get("X-B3-Sampled")
	t.sampled = s == "1" || strings.EqualFold(s, "true") || h.Get("X-B3-Flags") == "1"
	return true
}

func decodeNonZero(dst []byte, s string) bool {
	if _, err := hex.Decode(dst, []byte(strings.ToLower(s))); err != nil {
		return false
	}
	for _, b := range dst {
		if b != 0 {
			return true
		}
	}
	return false
}
