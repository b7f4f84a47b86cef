package sniff

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Protocol
	}{
		{"", Pending},
		{"\x16", Pending},
		{"\x16\x03\x01\x02\x00", TLS},
		{"\x16\x01", Opaque},
		{"PRI * HTTP/2.0\r\n", Pending},
		{h2Preface, HTTP2},
		{h2Preface + "\x00\x00\x12\x04", HTTP2},
		{"PRI * HTTP/1.1\r\n", HTTP11},
		{"GET", Pending},
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", HTTP11},
		{"POST /upload?x=1 HTTP/1.0\r\n", HTTP10},
		{"M-SEARCH * HTTP/1.1", HTTP11},
		{"GET /a HTTP/1.", Pending},
		{"GET /a HTTP/2.0\r\n", Opaque},
		{"GET /a HTTP/1.x", Opaque},
		{"GET  / HTTP/1.1", Opaque},
		{"GET /\r\n", Opaque},
		{" GET / HTTP/1.1", Opaque},
		{"SSH-2.0-OpenSSH_9.6\r\n", Opaque},
		{"220 mail.example.com ESMTP\r\n", Opaque},
		{"*1\r\n$4\r\nPING\r\n", Opaque},
		{"\x00\x00\x00\x2a", Opaque},
		{"GET /" + strings.Repeat("a", MaxPeek), Opaque},
		{strings.Repeat("A", maxMethod+1), Opaque},
	} {
		if got := Classify([]byte(tc.in)); got != tc.want {
			t.Errorf("Classify(%.40q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestFinal(t *testing.T) {
	for in, want := range map[string]Protocol{"": Opaque, "\x16": TLS, "GET / HT": Opaque, "GET / HTTP/1.1": HTTP11} {
		if got := Final([]byte(in)); got != want {
			t.Errorf("Final(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestALPN(t *testing.T) {
	for p, want := range map[Protocol]string{HTTP10: "http/1.0", HTTP11: "http/1.1", HTTP2: "h2c", TLS: "", Opaque: ""} {
		if got := p.ALPN(); got != want {
			t.Errorf("%v.ALPN() = %q, want %q", p, got, want)
		}
	}
}

// detect runs Detect on the server end of a pipe while client writes
// parts, one write each.
func detect(t *testing.T, timeout time.Duration, parts ...string) (Protocol, string) {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() {
		for _, p := range parts {
			if _, err := client.Write([]byte(p)); err != nil {
				return
			}
		}
	}()
	r := bufio.NewReaderSize(server, MaxPeek)
	p := Detect(server, r, timeout)
	b, _ := r.Peek(r.Buffered())
	return p, string(b)
}

func TestDetect(t *testing.T) {
	// A request line in several writes is read to the end of its version.
	p, peeked := detect(t, 5*time.Second, "GE", "T /x HT", "TP/1.1\r\nHost: a\r\n\r\n")
	if p != HTTP11 || !strings.HasPrefix(peeked, "GET /x HTTP/1.1") {
		t.Errorf("split request line: %v, peeked %q", p, peeked)
	}
	p, _ = detect(t, 5*time.Second, h2Preface[:10], h2Preface[10:])
	if p != HTTP2 {
		t.Errorf("split preface: %v", p)
	}
	// A server-first protocol sends nothing: opaque once the timeout passes.
	start := time.Now()
	p, _ = detect(t, 50*time.Millisecond)
	if p != Opaque {
		t.Errorf("silent client: %v, want opaque", p)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent client took %v to classify", d)
	}
	// A partial request line then silence: opaque, the bytes kept.
	p, peeked = detect(t, 50*time.Millisecond, "GET /")
	if p != Opaque || peeked != "GET /" {
		t.Errorf("partial line: %v, peeked %q", p, peeked)
	}
}

// FuzzSniff: Classify never panics, answers only Pending for the empty
// input, and a non-pending answer holds for every extension of the input
// (and for every prefix that is not pending).
func FuzzSniff(f *testing.F) {
	for _, s := range []string{"", "\x16\x03\x01", h2Preface, "GET / HTTP/1.1\r\n", "POST /a HTTP/1.0", "PRI * HTTP/1.1", "SSH-2.0", "\x00\x01"} {
		f.Add([]byte(s), []byte("more"))
	}
	f.Fuzz(func(t *testing.T, b, more []byte) {
		p := Classify(b)
		if p < Pending || p > HTTP2 {
			t.Fatalf("Classify(%q) = %d", b, p)
		}
		if fp := Final(b); fp == Pending {
			t.Fatalf("Final(%q) is pending", b)
		}
		if p == Pending {
			return
		}
		ext := append(append([]byte{}, b...), more...)
		if q := Classify(ext); q != p {
			t.Fatalf("Classify(%q) = %v but Classify(%q) = %v", b, p, ext, q)
		}
		if q := Final(b); q != p {
			t.Fatalf("Final(%q) = %v, Classify = %v", b, q, p)
		}
		for i := 1; i < len(b); i++ {
			if q := Classify(b[:i]); q != Pending && q != p {
				t.Fatalf("Classify(%q) = %v but its prefix %q is %v", b, p, b[:i], q)
			}
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	req := []byte("GET /reviews/1 HTTP/1.1\r\nHost: reviews.bookinfo.mesh\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if Classify(req) != HTTP11 {
			b.Fatal("not HTTP/1.1")
		}
	}
}
