package engine

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
)

var traceparentRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$`)

func TestPropagateTrace(t *testing.T) {
	// A new trace: both families written and consistent.
	h := http.Header{}
	propagateTrace(h, defaultTraceSampling, false)
	m := traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
	if m == nil {
		t.Fatalf("new traceparent %q", h.Get("Traceparent"))
	}
	if h.Get("X-B3-Traceid") != m[1] || h.Get("X-B3-Spanid") != m[2] || h.Get("X-B3-Parentspanid") != "" {
		t.Fatalf("B3 %v disagrees with traceparent %s", h, h.Get("Traceparent"))
	}

	// A W3C parent: same trace, new span, parent = incoming span, flags kept.
	h = http.Header{"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "Tracestate": {"vendor=x"}}
	propagateTrace(h, defaultTraceSampling, false)
	m = traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
	if m == nil || m[1] != "0af7651916cd43dd8448eb211c80319c" || m[2] == "b7ad6b7169203331" || !strings.HasSuffix(h.Get("Traceparent"), "-01") {
		t.Fatalf("child traceparent %q", h.Get("Traceparent"))
	}
	if h.Get("X-B3-Parentspanid") != "b7ad6b7169203331" || h.Get("X-B3-Sampled") != "1" || h.Get("Tracestate") != "vendor=x" {
		t.Fatalf("child B3 / tracestate: %v", h)
	}

	// B3 only, 64-bit trace id: continued, padded to 128 bits.
	h = http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}, "X-B3-Sampled": {"0"}}
	propagateTrace(h, defaultTraceSampling, false)
	if got := h.Get("X-B3-Traceid"); got != "0000000000000000463ac35c9f6413ad" {
		t.Fatalf("B3 trace id %q", got)
	}
	if h.Get("X-B3-Parentspanid") != "72485a3953bb6124" || h.Get("X-B3-Spanid") == "72485a3953bb6124" || !strings.HasSuffix(h.Get("Traceparent"), "-00") {
		t.Fatalf("B3 child: %v", h)
	}

	// Upper-case B3 ids are accepted (written back lower-case); a broken
	// traceparent beside valid B3 leaves nothing of itself behind.
	h = http.Header{"Traceparent": {"00-ffffffffffffffffffffffffffffffff-zzzzzzzzzzzzzzzz-01"}, "X-B3-Traceid": {"463AC35C9F6413AD"}, "X-B3-Spanid": {"72485A3953BB6124"}}
	propagateTrace(h, defaultTraceSampling, false)
	if got := h.Get("X-B3-Traceid"); got != "0000000000000000463ac35c9f6413ad" || h.Get("X-B3-Parentspanid") != "72485a3953bb6124" {
		t.Fatalf("upper-case B3 beside a broken traceparent: %v", h)
	}

	// B3 ids without a sampling decision: this hop decides, at its rate.
	for rate, want := range map[float64]string{1: "1", 0: "0"} {
		h = http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}}
		tr := propagateTrace(h, rate, false)
		if h.Get("X-B3-Sampled") != want || tr.sampled != (want == "1") || h.Get("X-B3-Parentspanid") != "72485a3953bb6124" {
			t.Errorf("deferred B3 decision at rate %v: %v, want sampled %s", rate, h, want)
		}
	}

	// Garbage or all-zero ids start a new trace instead of propagating them.
	for _, bad := range []string{"00-00000000000000000000000000000000-b7ad6b7169203331-01", "zz", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"} {
		h = http.Header{"Traceparent": {bad}}
		propagateTrace(h, defaultTraceSampling, false)
		if m := traceparentRE.FindStringSubmatch(h.Get("Traceparent")); m == nil || h.Get("X-B3-Parentspanid") != "" {
			t.Errorf("from %q: %v", bad, h)
		}
	}
}

func BenchmarkPropagateTrace(b *testing.B) {
	b.ReportAllocs()
	parent := []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	h := make(http.Header, 8)
	for b.Loop() {
		clear(h)
		h["Traceparent"] = parent
		propagateTrace(h, defaultTraceSampling, false)
	}
}
