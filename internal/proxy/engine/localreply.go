package engine

import (
	"io"
	"net/http"
	"strconv"
	"strings"
)

// localReply answers with a response the proxy makes itself (no route, no
// healthy upstream, a timeout, a filter's denial, a fault abort, a direct
// response): code and body, as Envoy sends them. A gRPC request gets
// Envoy's gRPC form instead, a trailers-only response: HTTP 200,
// content-type application/grpc, grpc-status (grpcStatus, or when it is
// negative the status gRPC maps code to) and the body as grpc-message.
// Headers the caller set on w (Location, X-Envoy-Overloaded) go out with
// either. ex records what was sent: the code, the gRPC status, the bytes.
func localReply(w http.ResponseWriter, r *http.Request, ex *exchange, code, grpcStatus int, body string) {
	if !isGRPCRequest(r) {
		ex.code = code
		w.WriteHeader(code)
		if body != "" && r.Method != http.MethodHead {
			ex.respBytes = int64(len(body))
			_, _ = io.WriteString(w, body)
		}
		return
	}
	if grpcStatus < 0 {
		grpcStatus = grpcStatusForHTTP(code)
	}
	ex.code, ex.grpcStatus, ex.respBytes = http.StatusOK, strconv.Itoa(grpcStatus), 0
	h := w.Header()
	h.Del("Content-Length")
	h["Content-Type"] = []string{"application/grpc"}
	h["Grpc-Status"] = []string{ex.grpcStatus}
	if body != "" {
		h["Grpc-Message"] = []string{grpcMessage(body)}
	}
	w.WriteHeader(http.StatusOK)
}

// isGRPCRequest is Envoy's test: content-type application/grpc, alone or
// with a +suffix or parameters (gRPC-Web's application/grpc-web is not).
func isGRPCRequest(r *http.Request) bool {
	ct := hget(r.Header, "Content-Type")
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// grpcStatusForHTTP is gRPC's mapping of an HTTP status to a status code
// (doc/http-grpc-status-mapping.md), which Envoy applies to its replies.
func grpcStatusForHTTP(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// grpcMessage percent-encodes s as grpc-message requires: every byte
// outside printable ASCII, and '%'.
func grpcMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
