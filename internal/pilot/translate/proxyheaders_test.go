package translate

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
)

// TestProxyHeaders: defaultConfig.proxyHeaders as istiod applies it to a
// sidecar — the Server header on both sides, x-request-id generation,
// Envoy's debug headers on every router, x-envoy-attempt-count on the
// outbound virtual hosts, and the inbound side's x-forwarded-client-cert
// — against Istio's defaults.
func TestProxyHeaders(t *testing.T) {
	build := func(ph model.ProxyHeaders) *Resources {
		mesh := model.DefaultMesh()
		mesh.ProxyHeaders = ph
		reg := &registry.Snapshot{Version: 1, Services: []registry.Service{
			{Hostname: "reviews.default.svc.cluster.local", Namespace: "default", Addresses: []string{"10.0.0.13"}, Ports: []registry.Port{{Name: "http", Number: 9080, Protocol: "HTTP"}}},
		}, Endpoints: map[string][]registry.Endpoint{
			registry.Key("default", "reviews.default.svc.cluster.local"): {{Hostname: "reviews.default.svc.cluster.local", Namespace: "default",
				Address: "10.0.0.1", Labels: map[string]string{"app": "reviews"}, Healthy: true}}}}
		p := &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "reviews"}, IPs: []string{"10.0.0.1"}}
		r := Build(model.NewSnapshot("1", mesh, nil, reg), p)
		for _, l := range r.Listeners {
			ldsValidate(t, l)
		}
		return r
	}
	type side struct {
		server            string
		mode              hcmv3.HttpConnectionManager_ServerHeaderTransformation
		noRequestID       bool
		suppress          bool
		xfcc              hcmv3.HttpConnectionManager_ForwardClientCertDetails
		subject, uri, dns bool
	}
	sides := func(r *Resources) map[corev3.TrafficDirection]side {
		out := map[corev3.TrafficDirection]side{}
		for _, l := range r.Listeners {
			for _, fc := range append(l.GetFilterChains(), l.GetDefaultFilterChain()) {
				for _, f := range fc.GetFilters() {
					if !f.GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{}) {
						continue
					}
					h := ldsUnpack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
					rt := ldsUnpack(t, h.GetHttpFilters()[len(h.GetHttpFilters())-1].GetTypedConfig(), &routerv3.Router{})
					d := h.GetSetCurrentClientCertDetails()
					s := side{h.GetServerName(), h.GetServerHeaderTransformation(), h.GetGenerateRequestId() != nil && !h.GetGenerateRequestId().GetValue(),
						rt.GetSuppressEnvoyHeaders(), h.GetForwardClientCertDetails(), d.GetSubject().GetValue(), d.GetUri(), d.GetDns()}
					if prev, ok := out[l.GetTrafficDirection()]; ok && prev != s {
						t.Fatalf("%v connection managers differ: %+v and %+v", l.GetTrafficDirection(), prev, s)
					}
					out[l.GetTrafficDirection()] = s
				}
			}
		}
		return out
	}
	attemptCount := func(r *Resources) map[bool]int {
		n := map[bool]int{}
		for _, rc := range r.Routes {
			for _, vh := range rc.GetVirtualHosts() {
				n[vh.GetIncludeRequestAttemptCount()]++
			}
		}
		return n
	}

	def := build(model.ProxyHeaders{})
	got := sides(def)
	if want := (side{server: "istio-envoy"}); got[corev3.TrafficDirection_OUTBOUND] != want {
		t.Errorf("default outbound %+v, want %+v", got[corev3.TrafficDirection_OUTBOUND], want)
	}
	if want := (side{server: "istio-envoy", xfcc: hcmv3.HttpConnectionManager_APPEND_FORWARD, subject: true, uri: true, dns: true}); got[corev3.TrafficDirection_INBOUND] != want {
		t.Errorf("default inbound %+v, want %+v", got[corev3.TrafficDirection_INBOUND], want)
	}
	if n := attemptCount(def); n[false] != 0 || n[true] == 0 {
		t.Errorf("default virtual hosts with x-envoy-attempt-count: %v", n)
	}

	set := build(model.ProxyHeaders{ServerName: "edge", RequestIDDisabled: true, AttemptCountDisabled: true, EnvoyDebugHeadersDisabled: true,
		ForwardedClientCert: "SANITIZE_SET", ClientCertDetails: &model.ClientCertDetails{URI: true}})
	got = sides(set)
	if want := (side{server: "edge", noRequestID: true, suppress: true}); got[corev3.TrafficDirection_OUTBOUND] != want {
		t.Errorf("outbound %+v, want %+v", got[corev3.TrafficDirection_OUTBOUND], want)
	}
	if want := (side{server: "edge", noRequestID: true, suppress: true, xfcc: hcmv3.HttpConnectionManager_SANITIZE_SET, uri: true}); got[corev3.TrafficDirection_INBOUND] != want {
		t.Errorf("inbound %+v, want %+v", got[corev3.TrafficDirection_INBOUND], want)
	}
	if n := attemptCount(set); n[true] != 0 || n[false] == 0 {
		t.Errorf("virtual hosts with x-envoy-attempt-count despite attemptCount.disabled: %v", n)
	}

	got = sides(build(model.ProxyHeaders{ServerDisabled: true}))
	for d, s := range got {
		if s.server != "" || s.mode != hcmv3.HttpConnectionManager_PASS_THROUGH {
			t.Errorf("server disabled: %v %+v, want PASS_THROUGH without a name", d, s)
		}
	}
}
