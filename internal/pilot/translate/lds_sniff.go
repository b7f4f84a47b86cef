package translate

import (
	"slices"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Protocol detection ("auto"), as Istio does it for a service port whose
// protocol is unset: the port gets both an HTTP chain and a TCP chain, and
// the listener's http_inspector (plaintext) or tls_inspector (mesh TLS,
// by ALPN) tells them apart per connection:
//
//   - plaintext: the HTTP chain matches application_protocols
//     plaintextHTTPALPNs, which the http_inspector reports for an HTTP/1.x
//     request line or the HTTP/2 preface; anything else takes the TCP
//     chain;
//   - mesh TLS (inbound): the HTTP chain matches mtlsHTTPALPNs, the
//     protocols a client sidecar offers for HTTP (weft-proxy offers
//     "http/1.1" or "h2", Istio's Envoy "istio-http/1.1" …); a TCP client
//     offers only istioALPN and takes the TCP chain.
//
// A client that sends nothing (a server-first protocol such as SMTP or
// MySQL) is given ProtocolDetectionTimeout, then treated as TCP
// (continue_on_listener_filters_timeout). Istio's default is no timeout
// (such ports must be declared TCP); weft keeps them working at the cost
// of that delay on their first byte.

// ProtocolDetectionTimeout is the listener_filters_timeout of listeners
// that sniff the protocol (Istio's protocolDetectionTimeout before 1.10).
const ProtocolDetectionTimeout = 100 * time.Millisecond

// httpInspectorFilterName is Envoy's HTTP sniffing listener filter.
const httpInspectorFilterName = "envoy.filters.listener.http_inspector"

var (
	// plaintextHTTPALPNs are the http_inspector's answers for HTTP.
	plaintextHTTPALPNs = []string{"http/1.0", "http/1.1", "h2c"}
	// mtlsHTTPALPNs are the ALPN protocols of HTTP over mesh TLS.
	mtlsHTTPALPNs = []string{"http/1.0", "http/1.1", "h2", "istio-http/1.0", "istio-http/1.1", "istio-h2"}
)

// ldsIsAuto reports whether a registry protocol is detected per
// connection (unset).
func ldsIsAuto(protocol string) bool { return protocol == "" }

// ldsServesHTTP reports whether a port may carry HTTP: declared HTTP or
// detected.
func ldsServesHTTP(protocol string) bool { return ldsIsHTTP(protocol) || ldsIsAuto(protocol) }

// sniffedHTTP marks an HTTP chain of a detected port: it takes only
// connections the inspector found to be HTTP.
func sniffedHTTP(fc *listenerv3.FilterChain) *listenerv3.FilterChain {
	if fc.FilterChainMatch == nil {
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{}
	}
	fc.FilterChainMatch.ApplicationProtocols = append([]string(nil), plaintextHTTPALPNs...)
	return fc
}

// addHTTPInspector gives a listener the http_inspector and the detection
// timeout when one of its chains matches plaintext application protocols.
func addHTTPInspector(l *listenerv3.Listener) {
	need := false
	for _, fc := range l.GetFilterChains() {
		m := fc.GetFilterChainMatch()
		if len(m.GetApplicationProtocols()) > 0 && m.GetTransportProtocol() != TransportProtocolTLS {
			need = true
		}
	}
	if !need {
		return
	}
	for _, lf := range l.GetListenerFilters() {
		if lf.GetName() == httpInspectorFilterName {
			return
		}
	}
	l.ListenerFilters = append(l.ListenerFilters, listenerFilter(httpInspectorFilterName, &httpinspectorv3.HttpInspector{}))
	l.ListenerFiltersTimeout = durationpb.New(ProtocolDetectionTimeout)
	l.ContinueOnListenerFiltersTimeout = true
}

// tlsApplicationProtocols rewrites a sniffed HTTP chain's application
// protocols for mesh TLS, where ALPN carries them.
func tlsApplicationProtocols(m *listenerv3.FilterChainMatch) {
	if m != nil && slices.Equal(m.GetApplicationProtocols(), plaintextHTTPALPNs) {
		m.ApplicationProtocols = append([]string(nil), mtlsHTTPALPNs...)
	}
}
