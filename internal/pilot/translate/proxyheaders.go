package translate

import (
	"cmp"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// routerConfig is the router filter of the proxy's connection managers:
// defaultConfig.proxyHeaders.envoyDebugHeaders.disabled suppresses Envoy's
// headers, as istiod does.
func (g *netBuilder) routerConfig() *routerv3.Router {
	return &routerv3.Router{SuppressEnvoyHeaders: g.s.Mesh.ProxyHeaders.EnvoyDebugHeadersDisabled}
}

// envoyServerName is the Server header Istio's proxies put on the
// answers they forward and make (istiod's EnvoyServerName; Envoy's own
// default is "envoy").
const envoyServerName = "istio-envoy"

// setProxyHeaders applies defaultConfig.proxyHeaders to a sidecar's
// connection manager (inbound: on the workload's side) as istiod does:
// the Server header (istio-envoy unless set; none added and the
// application's kept when disabled), x-request-id generation, and on the
// inbound side x-forwarded-client-cert's mode and parts.
func (g *netBuilder) setProxyHeaders(h *hcmv3.HttpConnectionManager, inbound bool) {
	ph := &g.s.Mesh.ProxyHeaders
	if ph.ServerDisabled {
		h.ServerHeaderTransformation = hcmv3.HttpConnectionManager_PASS_THROUGH
	} else {
		h.ServerName = cmp.Or(ph.ServerName, envoyServerName)
	}
	if ph.RequestIDDisabled {
		h.GenerateRequestId = wrapperspb.Bool(false)
	}
	if !inbound {
		return
	}
	if m, ok := hcmv3.HttpConnectionManager_ForwardClientCertDetails_value[ph.ForwardedClientCert]; ok {
		h.ForwardClientCertDetails = hcmv3.HttpConnectionManager_ForwardClientCertDetails(m)
	}
	if d := ph.ClientCertDetails; d != nil {
		h.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{
			Subject: wrapperspb.Bool(d.Subject), Cert: d.Cert, Chain: d.Chain, Dns: d.DNS, Uri: d.URI}
	}
}
