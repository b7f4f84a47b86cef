package translate

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// proxylessListeners builds what a gRPC xds:/// client asks for: for every
// HTTP, HTTP2 or gRPC port of a visible service, an API listener named
// ProxylessListenerName(host, port) whose connection manager fetches the
// route configuration of the same name over ADS. That route configuration
// has one virtual host (domains "host:port" and "host") with the same
// routes a sidecar gets, minus CORS (gRPC has no CORS filter and rejects
// per-route configs of filters it does not know). The fault filter is
// listed before the router only when a route injects faults, so clients
// without faults get the minimal [router] chain.
func (g *netBuilder) proxylessListeners() ([]*listenerv3.Listener, []*routev3.RouteConfiguration) {
	var ls []*listenerv3.Listener
	var rs []*routev3.RouteConfiguration
	for _, svc := range g.services {
		for _, p := range svc.Ports {
			if !ldsIsHTTP(p.Protocol) {
				continue
			}
			name := ProxylessListenerName(svc.Hostname, p.Number)
			routes := g.httpRoutes(svc, p, true)
			rs = append(rs, &routev3.RouteConfiguration{
				Name: name,
				VirtualHosts: []*routev3.VirtualHost{{
					Name:    name,
					Domains: []string{name, svc.Hostname},
					Routes:  routes,
				}},
			})
			filters := []*hcmv3.HttpFilter{httpFilter(routerFilterName, &routerv3.Router{})}
			if injectsFaults(routes) {
				filters = append([]*hcmv3.HttpFilter{httpFilter(faultFilterName, &faultv3.HTTPFault{})}, filters...)
			}
			h := &hcmv3.HttpConnectionManager{
				StatPrefix:     name,
				RouteSpecifier: rdsRoute(name),
				HttpFilters:    filters,
			}
			ls = append(ls, &listenerv3.Listener{
				Name:        name,
				ApiListener: &listenerv3.ApiListener{ApiListener: ldsAny(h)},
			})
		}
	}
	return ls, rs
}

// injectsFaults reports whether a route carries a fault filter config.
func injectsFaults(routes []*routev3.Route) bool {
	for _, r := range routes {
		if _, ok := r.GetTypedPerFilterConfig()[faultFilterName]; ok {
			return true
		}
	}
	return false
}
