package engine

import (
	"encoding/hex"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

var traceparentRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$`)

var b3TraceRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestPropagateTrace(t *testing.T) {
	b3 := traceOptions{sampling: 0.01}
	w3c := traceOptions{sampling: 0.01, w3c: true}

	// A new trace, by default (USE_B3): B3 only, 128-bit.
	h := http.Header{}
	propagateTrace(h, b3)
	if !b3TraceRE.MatchString(h.Get("X-B3-Traceid")) || len(h.Get("X-B3-Spanid")) != 16 || h.Get("X-B3-Parentspanid") != "" || h.Get("Traceparent") != "" {
		t.Fatalf("new B3 trace: %v", h)
	}
	// With W3C propagation: both families written and consistent.
	h = http.Header{}
	propagateTrace(h, w3c)
	m := traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
	if m == nil {
		t.Fatalf("new traceparent %q", h.Get("Traceparent"))
	}
	if h.Get("X-B3-Traceid") != m[1] || h.Get("X-B3-Spanid") != m[2] || h.Get("X-B3-Parentspanid") != "" {
		t.Fatalf("B3 %v disagrees with traceparent %s", h, h.Get("Traceparent"))
	}

	// A W3C parent: by default not read (a new B3 trace; the traceparent
	// passes through untouched), with W3C propagation continued: same
	// trace, new span, parent = incoming span, flags kept.
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	h = http.Header{"Traceparent": {parent}}
	propagateTrace(h, b3)
	if h.Get("Traceparent") != parent || h.Get("X-B3-Traceid") == "0af7651916cd43dd8448eb211c80319c" || h.Get("X-B3-Parentspanid") != "" {
		t.Fatalf("W3C parent under USE_B3: %v", h)
	}
	h = http.Header{"Traceparent": {parent}, "Tracestate": {"vendor=x"}}
	propagateTrace(h, w3c)
	m = traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
	if m == nil || m[1] != "0af7651916cd43dd8448eb211c80319c" || m[2] == "b7ad6b7169203331" || !strings.HasSuffix(h.Get("Traceparent"), "-01") {
		t.Fatalf("child traceparent %q", h.Get("Traceparent"))
	}
	if h.Get("X-B3-Parentspanid") != "b7ad6b7169203331" || h.Get("X-B3-Sampled") != "1" || h.Get("Tracestate") != "vendor=x" {
		t.Fatalf("child B3 / tracestate: %v", h)
	}
	// B3 beside a traceparent of another trace: B3 first.
	h = http.Header{"Traceparent": {parent}, "X-B3-Traceid": {"463ac35c9f6413ad463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}}
	propagateTrace(h, w3c)
	if h.Get("X-B3-Traceid") != "463ac35c9f6413ad463ac35c9f6413ad" || !strings.HasPrefix(h.Get("Traceparent"), "00-463ac35c9f6413ad463ac35c9f6413ad-") {
		t.Fatalf("B3 and W3C disagreeing: %v", h)
	}

	// B3 only, 64-bit trace id: continued, 64-bit in B3 (as Envoy), padded
	// to 128 bits in a traceparent.
	for _, o := range []traceOptions{b3, w3c} {
		h = http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}, "X-B3-Sampled": {"0"}}
		propagateTrace(h, o)
		if got := h.Get("X-B3-Traceid"); got != "463ac35c9f6413ad" {
			t.Fatalf("B3 trace id %q", got)
		}
		if h.Get("X-B3-Parentspanid") != "72485a3953bb6124" || h.Get("X-B3-Spanid") == "72485a3953bb6124" || h.Get("X-B3-Sampled") != "0" {
			t.Fatalf("B3 child: %v", h)
		}
		if tp := h.Get("Traceparent"); o.w3c != strings.HasPrefix(tp, "00-0000000000000000463ac35c9f6413ad-") {
			t.Fatalf("traceparent of a 64-bit trace (w3c %v): %q", o.w3c, tp)
		}
	}

	// trace_id_128bit false: new traces get 64-bit ids, unless written as
	// W3C too.
	h = http.Header{}
	propagateTrace(h, traceOptions{id64: true})
	if got := h.Get("X-B3-Traceid"); len(got) != 16 {
		t.Fatalf("new 64-bit trace id %q", got)
	}
	h = http.Header{}
	propagateTrace(h, traceOptions{id64: true, w3c: true})
	if got := h.Get("X-B3-Traceid"); len(got) != 32 {
		t.Fatalf("new W3C trace id %q", got)
	}

	// Upper-case B3 ids are accepted (written back lower-case); a broken
	// traceparent beside valid B3 leaves nothing of itself behind.
	h = http.Header{"Traceparent": {"00-ffffffffffffffffffffffffffffffff-zzzzzzzzzzzzzzzz-01"}, "X-B3-Traceid": {"463AC35C9F6413AD"}, "X-B3-Spanid": {"72485A3953BB6124"}}
	propagateTrace(h, w3c)
	if got := h.Get("X-B3-Traceid"); got != "463ac35c9f6413ad" || h.Get("X-B3-Parentspanid") != "72485a3953bb6124" {
		t.Fatalf("upper-case B3 beside a broken traceparent: %v", h)
	}

	// B3 ids without a sampling decision: this hop decides, at its rate.
	for rate, want := range map[float64]string{1: "1", 0: "0"} {
		h = http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}}
		tr := propagateTrace(h, traceOptions{sampling: rate})
		if h.Get("X-B3-Sampled") != want || tr.sampled != (want == "1") || h.Get("X-B3-Parentspanid") != "72485a3953bb6124" {
			t.Errorf("deferred B3 decision at rate %v: %v, want sampled %s", rate, h, want)
		}
	}

	// Garbage or all-zero ids start a new trace instead of propagating
	// them; a half-parsed traceparent leaves no parent behind.
	for _, bad := range []string{"00-00000000000000000000000000000000-b7ad6b7169203331-01", "zz", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz"} {
		h = http.Header{"Traceparent": {bad}}
		tr := propagateTrace(h, w3c)
		if m := traceparentRE.FindStringSubmatch(h.Get("Traceparent")); m == nil || h.Get("X-B3-Parentspanid") != "" || tr.parent != ([8]byte{}) {
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
		propagateTrace(h, traceOptions{sampling: 0.01, w3c: true})
	}
}

// TestForcedTraces: Envoy's other two ways to initiate a trace. With no
// random sampling, x-envoy-force-trace samples a request from the
// sidecar's own application (not one arriving inbound), and
// x-client-trace-id samples at client_sampling; B3 ids without a decision
// are decided the same way, and an explicit decision is kept.
func TestForcedTraces(t *testing.T) {
	out := traceOptions{client: 1, force: true}
	in := traceOptions{client: 1}
	for _, tc := range []struct {
		name string
		h    http.Header
		o    traceOptions
		want bool
	}{
		{"nothing", http.Header{}, out, false},
		{"force, outbound", http.Header{"X-Envoy-Force-Trace": {"true"}}, out, true},
		{"force, inbound", http.Header{"X-Envoy-Force-Trace": {"true"}}, in, false},
		{"client id", http.Header{"X-Client-Trace-Id": {"abc"}}, in, true},
		{"client id, client_sampling 0", http.Header{"X-Client-Trace-Id": {"abc"}}, traceOptions{force: true}, false},
		{"client id at 0 falls back to force", http.Header{"X-Client-Trace-Id": {"abc"}, "X-Envoy-Force-Trace": {"1"}}, traceOptions{force: true}, true},
		{"deferred B3, forced", http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}, "X-Envoy-Force-Trace": {"1"}}, out, true},
		{"B3 not sampled stays so", http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"72485a3953bb6124"}, "X-B3-Sampled": {"0"}, "X-Envoy-Force-Trace": {"1"}}, out, false},
	} {
		if got := propagateTrace(tc.h, tc.o); got.sampled != tc.want || tc.h.Get("X-B3-Sampled") != map[bool]string{true: "1", false: "0"}[tc.want] {
			t.Errorf("%s: sampled %v (header %q), want %v", tc.name, got.sampled, tc.h.Get("X-B3-Sampled"), tc.want)
		}
	}

	// The connection manager's client_sampling (default 100 %) and the
	// chain's direction make the options.
	tr := hcmTracing(0, false)
	tr.ClientSampling = &typev3.Percent{Value: 25}
	c, err := compileTracing(&hcmv3.HttpConnectionManager{Tracing: tr})
	if err != nil {
		t.Fatal(err)
	}
	if o := c.traceOptions(false); o.client != 0.25 || o.sampling != 0 || !o.force {
		t.Errorf("outbound options %+v", o)
	}
	if o := c.traceOptions(true); o.force {
		t.Errorf("inbound options %+v: x-envoy-force-trace honoured from a remote caller", o)
	}
}

var (
	b3IDRE   = regexp.MustCompile(`^([0-9a-f]{16}|[0-9a-f]{32})$`)
	b3SpanRE = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// FuzzPropagateTrace: whatever trace headers a caller sends, the next
// hop gets well-formed B3 (and, with W3C propagation, a well-formed
// traceparent agreeing with it), a continued trace keeps a valid
// caller's ids, and nothing panics. With the OpenTelemetry tracer the
// next hop gets a well-formed traceparent continuing a valid one, and
// the B3 headers as they came.
func FuzzPropagateTrace(f *testing.F) {
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "463ac35c9f6413ad", "72485a3953bb6124", "1", "", uint8(1))
	f.Add("", "463AC35C9F6413AD463ac35c9f6413ad", "72485a3953bb6124", "", "a2fb4a1d1a96d312", uint8(0))
	f.Add("00-00000000000000000000000000000000-b7ad6b7169203331-01", "zz", "", "true", "0", uint8(1))
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "463ac35c9f6413ad", "72485a3953bb6124", "1", "", uint8(2))
	f.Fuzz(func(t *testing.T, tp, tid, sid, sampled, parent string, mode uint8) {
		// mode: Zipkin's USE_B3, Zipkin with W3C, OpenTelemetry.
		o := traceOptions{sampling: 0.5, client: 1, w3c: mode%3 == 1, otel: mode%3 == 2}
		h := http.Header{}
		for k, v := range map[string]string{"Traceparent": tp, "X-B3-Traceid": tid, "X-B3-Spanid": sid, "X-B3-Sampled": sampled, "X-B3-Parentspanid": parent} {
			if v != "" {
				h[k] = []string{v}
			}
		}
		in := h.Clone()
		var b3 traceIDs
		b3In := parseB3(in.Clone(), &b3)
		got := propagateTrace(h, o)
		if got.span == ([8]byte{}) || got.trace == ([16]byte{}) {
			t.Fatalf("zero ids: %+v", got)
		}
		if o.otel {
			for _, k := range []string{"X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "X-B3-Parentspanid"} {
				if !slices.Equal(h[k], in[k]) {
					t.Fatalf("OpenTelemetry rewrote %s: %q to %q", k, in[k], h[k])
				}
			}
			m := traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
			if m == nil || m[1] != hex.EncodeToString(got.trace[:]) || m[2] != hex.EncodeToString(got.span[:]) {
				t.Fatalf("traceparent %q for %+v", h.Get("Traceparent"), got)
			}
			var w traceIDs
			if parseTraceparent(tp, &w) && (got.trace != w.trace || got.parent != w.parent || got.sampled != w.sampled) {
				t.Fatalf("valid traceparent %q not continued: %+v", tp, got)
			}
			return
		}
		if !b3IDRE.MatchString(h.Get("X-B3-Traceid")) || !b3SpanRE.MatchString(h.Get("X-B3-Spanid")) ||
			(h.Get("X-B3-Sampled") != "0" && h.Get("X-B3-Sampled") != "1") {
			t.Fatalf("malformed B3 out: %v", h)
		}
		if p := h.Get("X-B3-Parentspanid"); p != "" && !b3SpanRE.MatchString(p) {
			t.Fatalf("malformed parent: %q", p)
		}
		if o.w3c {
			m := traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
			if m == nil || !strings.HasSuffix(m[1], h.Get("X-B3-Traceid")) || m[2] != h.Get("X-B3-Spanid") {
				t.Fatalf("traceparent %q disagrees with B3 %v", h.Get("Traceparent"), h)
			}
		} else if h.Get("Traceparent") != tp && tp != "" {
			t.Fatalf("USE_B3 rewrote the traceparent %q to %q", tp, h.Get("Traceparent"))
		}
		if b3In && (got.trace != b3.trace || got.parent != b3.parent) {
			t.Fatalf("valid B3 in (%x/%x) not continued: %x/%x", b3.trace, b3.parent, got.trace, got.parent)
		}
	})
}

// TestPropagateTraceOTel: with the OpenTelemetry tracer only W3C trace
// context is read and written; B3 headers pass through as they came.
func TestPropagateTraceOTel(t *testing.T) {
	o := traceOptions{sampling: 1, client: 1, otel: true}
	b3 := http.Header{"X-B3-Traceid": {"463ac35c9f6413ad"}, "X-B3-Spanid": {"a2fb4a1d1a96d312"}, "X-B3-Sampled": {"0"}, "B3": {"463ac35c9f6413ad-a2fb4a1d1a96d312-0"}}
	h := b3.Clone()
	got := propagateTrace(h, o)
	if got.is64() || got.parent != ([8]byte{}) || !got.sampled {
		t.Errorf("B3 only: %+v, want a new sampled 128-bit root trace", got)
	}
	for k, v := range b3 {
		if !slices.Equal(h[k], v) {
			t.Errorf("%s = %q, want %q untouched", k, h[k], v)
		}
	}
	m := traceparentRE.FindStringSubmatch(h.Get("Traceparent"))
	if m == nil || m[1] != hex.EncodeToString(got.trace[:]) || m[2] != hex.EncodeToString(got.span[:]) {
		t.Errorf("traceparent %q for %+v", h.Get("Traceparent"), got)
	}
	h = http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}, "Tracestate": {"vendor=1"}}
	got = propagateTrace(h, o)
	if hex.EncodeToString(got.trace[:]) != "4bf92f3577b34da6a3ce929d0e0e4736" || hex.EncodeToString(got.parent[:]) != "00f067aa0ba902b7" || got.sampled {
		t.Errorf("continued: %+v, want the caller's trace under its span, not sampled", got)
	}
	if h.Get("Tracestate") != "vendor=1" || h.Get("X-B3-Traceid") != "" || !strings.HasSuffix(h.Get("Traceparent"), "-00") {
		t.Errorf("headers out %v, want tracestate kept, no B3, traceparent unsampled", h)
	}
}
