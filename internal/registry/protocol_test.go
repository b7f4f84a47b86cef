package registry

import "testing"

func TestInferProtocol(t *testing.T) {
	for name, want := range map[string]string{
		"http": "HTTP", "HTTP-api": "HTTP", "http2": "HTTP2", "grpc": "GRPC", "grpc-web": "GRPC-WEB",
		"grpc-web-ui": "GRPC-WEB", "grpc-health": "GRPC", "tcp-db": "TCP", "redis": "REDIS", "https-admin": "HTTPS",
		"custom": "", "9080": "", "": "", "httpx": "", "-http": "", "web-http": "",
	} {
		if got := InferProtocol(name); got != want {
			t.Errorf("InferProtocol(%q) = %q, want %q", name, got, want)
		}
	}
	if got := ProtocolOf(Port{Name: "http", Protocol: "TCP"}); got != "TCP" {
		t.Errorf("a declared protocol wins over the name: %q", got)
	}
}
