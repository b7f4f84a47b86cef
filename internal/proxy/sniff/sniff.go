// Package sniff detects a connection's protocol from its first bytes, as
// Envoy's tls_inspector and http_inspector listener filters do: TLS (a
// handshake record), HTTP/2 with prior knowledge (the client preface),
// HTTP/1.x (a request line) or opaque (anything else, including a client
// that sends nothing before the timeout, as server-first protocols do).
package sniff

import (
	"bufio"
	"net"
	"time"
)

// Protocol is a detected protocol.
type Protocol int

// Protocols Classify and Detect report.
const (
	// Pending: the bytes so far are a prefix of more than one answer.
	Pending Protocol = iota
	Opaque
	TLS
	HTTP10
	HTTP11
	HTTP2
)

// String names the protocol.
func (p Protocol) String() string {
	return [...]string{"pending", "opaque", "tls", "http/1.0", "http/1.1", "h2c"}[p]
}

// ALPN is the application protocol Envoy's http_inspector reports for
// filter_chain_match.application_protocols: "http/1.0", "http/1.1" or
// "h2c"; "" for the others.
func (p Protocol) ALPN() string {
	switch p {
	case HTTP10, HTTP11, HTTP2:
		return p.String()
	}
	return ""
}

// IsHTTP reports whether p is a plaintext HTTP protocol.
func (p Protocol) IsHTTP() bool { return p.ALPN() != "" }

// MaxPeek is the most bytes Classify needs: a longer request line without
// a version is opaque.
const MaxPeek = 4096

// maxMethod bounds an HTTP method token.
const maxMethod = 24

// h2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Classify reports the protocol of a connection that started with b. It
// returns Pending while more bytes could change the answer; once it
// returns anything else, every extension of b gets the same answer.
func Classify(b []byte) Protocol {
	if len(b) == 0 {
		return Pending
	}
	// Only the first MaxPeek bytes count, so that answers are stable.
	b = b[:min(len(b), MaxPeek)]
	// TLS: a handshake record (0x16) of version 3.x.
	if b[0] == 0x16 {
		if len(b) < 2 {
			return Pending
		}
		if b[1] == 0x03 {
			return TLS
		}
		return Opaque
	}
	if ok, full := hasPrefix(b, h2Preface); ok {
		if !full {
			return Pending
		}
		return HTTP2
	}
	return classifyHTTP1(b)
}

// hasPrefix compares b with want: ok when they agree on their common
// length, full when b holds all of want.
func hasPrefix(b []byte, want string) (ok, full bool) {
	n := min(len(b), len(want))
	return string(b[:n]) == want[:n], n == len(want)
}

// classifyHTTP1 matches a request line: method token, SP, request
// target (no SP or control characters), SP, "HTTP/1." and a digit.
func classifyHTTP1(b []byte) Protocol {
	i := 0
	for ; i < len(b) && isTChar(b[i]); i++ {
		if i >= maxMethod {
			return Opaque
		}
	}
	if i == len(b) {
		return pendingWithin(len(b))
	}
	if i == 0 || b[i] != ' ' {
		return Opaque
	}
	i++
	start := i
	for ; i < len(b) && b[i] > ' ' && b[i] != 0x7f; i++ {
	}
	if i == len(b) {
		return pendingWithin(len(b))
	}
	if i == start || b[i] != ' ' {
		return Opaque
	}
	i++
	switch ok, full := hasPrefix(b[i:], "HTTP/1."); {
	case !ok:
		return Opaque
	case !full:
		return pendingWithin(len(b))
	}
	i += len("HTTP/1.")
	if i == len(b) {
		return pendingWithin(len(b))
	}
	switch b[i] {
	case '0':
		return HTTP10
	case '1':
		return HTTP11
	}
	return Opaque
}

// pendingWithin is Pending while the request line may still fit MaxPeek.
func pendingWithin(n int) Protocol {
	if n >= MaxPeek {
		return Opaque
	}
	return Pending
}

// isTChar reports whether c may appear in an HTTP token (RFC 9110 §5.6.2).
func isTChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// Final is the answer when no more bytes will come (the timeout passed
// or the client closed): a pending TLS record header counts as TLS, as a
// lone 0x16 did for weft-proxy's TLS detection; anything else pending is
// opaque.
func Final(b []byte) Protocol {
	p := Classify(b)
	if p != Pending {
		return p
	}
	if len(b) > 0 && b[0] == 0x16 {
		return TLS
	}
	return Opaque
}

// Detect peeks at c through r (which must read from c and hold at least
// MaxPeek bytes) until the protocol is known or timeout passes, and
// returns it. The peeked bytes stay in r. c's read deadline is cleared
// afterwards.
func Detect(c net.Conn, r *bufio.Reader, timeout time.Duration) Protocol {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	n := 0
	for {
		b, err := r.Peek(n + 1)
		if err != nil {
			return Final(b)
		}
		// Look at everything that has arrived, not just one more byte.
		b, _ = r.Peek(r.Buffered())
		if p := Classify(b); p != Pending {
			return p
		}
		n = len(b)
		if n >= r.Size() {
			return Final(b)
		}
	}
}
