package registry

import "strings"

// namedProtocols are the protocols a port name may announce, Istio's
// "<protocol>[-<suffix>]" naming convention.
var namedProtocols = map[string]string{
	"http": "HTTP", "http2": "HTTP2", "https": "HTTPS", "grpc": "GRPC", "grpc-web": "GRPC-WEB",
	"tcp": "TCP", "tls": "TLS", "udp": "UDP", "mongo": "MONGO", "redis": "REDIS", "mysql": "MYSQL",
}

// InferProtocol returns the protocol a port's name announces ("http",
// "http-api", "grpc-web", "tcp-db" …, case-insensitive), or "" when the
// name names none ("custom", "9080"): the protocol is then detected per
// connection.
func InferProtocol(name string) string {
	n := strings.ToLower(name)
	if p, ok := namedProtocols[n]; ok {
		return p
	}
	if strings.HasPrefix(n, "grpc-web-") {
		return "GRPC-WEB"
	}
	if i := strings.IndexByte(n, '-'); i > 0 {
		return namedProtocols[n[:i]]
	}
	return ""
}

// ProtocolOf is p's protocol: declared, else announced by its name (see
// InferProtocol); "" means detected.
func ProtocolOf(p Port) string {
	if p.Protocol != "" {
		return p.Protocol
	}
	return InferProtocol(p.Name)
}
