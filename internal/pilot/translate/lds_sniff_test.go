package translate

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// protoShape is chainShape with the chain's application protocols.
func protoShape(fc *listenerv3.FilterChain) string {
	s := chainShape(fc)
	if ap := fc.GetFilterChainMatch().GetApplicationProtocols(); len(ap) > 0 {
		s += " alpn=" + strings.Join(ap, ",")
	}
	if len(fc.GetFilters()) > 0 && fc.GetFilters()[len(fc.GetFilters())-1].GetName() == hcmFilterName {
		return s + " hcm"
	}
	return s + " tcp"
}

func wantProtoChains(t *testing.T, l *listenerv3.Listener, want []string) {
	t.Helper()
	var got []string
	for _, fc := range l.GetFilterChains() {
		got = append(got, protoShape(fc))
	}
	wantStrings(t, l.GetName()+" chains", got, want)
}

// wantHTTPInspector checks the http_inspector and the detection timeout.
func wantHTTPInspector(t *testing.T, l *listenerv3.Listener, want bool) {
	t.Helper()
	has := slices.ContainsFunc(l.GetListenerFilters(), func(f *listenerv3.ListenerFilter) bool { return f.GetName() == httpInspectorFilterName })
	if has != want {
		t.Errorf("%s: http_inspector %v, want %v", l.GetName(), has, want)
	}
	if has && (l.GetListenerFiltersTimeout().AsDuration() != ProtocolDetectionTimeout || !l.GetContinueOnListenerFiltersTimeout()) {
		t.Errorf("%s: listener_filters_timeout %v continue %v, want %v and true", l.GetName(),
			l.GetListenerFiltersTimeout().AsDuration(), l.GetContinueOnListenerFiltersTimeout(), ProtocolDetectionTimeout)
	}
}

const (
	plainALPN = "alpn=http/1.0,http/1.1,h2c"
	mtlsALPN  = "alpn=http/1.0,http/1.1,h2,istio-http/1.0,istio-http/1.1,istio-h2"
)

func TestSniffedPortCapture(t *testing.T) {
	r := runMTLSCase(t, "sniff")
	in := r.listener(t, VirtualInboundListener)
	wantProtoChains(t, in, []string{
		"inbound|5000||-mtls port=5000 tls tls tcp", "inbound|5000|| port=5000 raw_buffer plain tcp",
		"inbound|9999||-mtls port=9999 tls tls " + mtlsALPN + " hcm", "inbound|9999|| port=9999 raw_buffer plain " + plainALPN + " hcm",
		"inbound|9999||-tcp-mtls port=9999 tls tls tcp", "inbound|9999||-tcp port=9999 raw_buffer plain tcp",
		"virtualInbound-passthrough-mtls tls tls tcp",
	})
	wantHTTPInspector(t, in, true)
	out := r.listener(t, "0.0.0.0_9999")
	wantProtoChains(t, out, []string{"http plain " + plainALPN + " hcm", "outbound|9999||custom.default.svc.cluster.local plain tcp"})
	wantHTTPInspector(t, out, true)
	if out.GetDefaultFilterChain() == nil {
		t.Errorf("0.0.0.0_9999: no passthrough default chain")
	}
	wantHTTPInspector(t, r.listener(t, "0.0.0.0_5000"), false)
	wantDownstreamProtocol(t, r, OutboundCluster(9999, "", "custom.default.svc.cluster.local"), InboundCluster(9999))
	if !slices.ContainsFunc(r.res.Routes, func(rc *routev3.RouteConfiguration) bool { return rc.GetName() == "9999" }) {
		t.Errorf("no route configuration 9999 for the detected port's HTTP chain")
	}
}

func TestSniffedPortExplicitStrict(t *testing.T) {
	r := runMTLSCase(t, "sniff-explicit")
	in := r.listener(t, ExplicitInboundListener(15999))
	wantProtoChains(t, in, []string{
		"inbound|9999||-mtls tls tls " + mtlsALPN + " hcm",
		"inbound|9999||-tcp-mtls tls tls tcp",
	})
	// STRICT: nothing plaintext to sniff.
	wantHTTPInspector(t, in, false)
	out := r.listener(t, "explicit_9999")
	wantProtoChains(t, out, []string{"http plain " + plainALPN + " hcm", "outbound|9999||custom.default.svc.cluster.local plain tcp"})
	wantHTTPInspector(t, out, true)
}

// wantDownstreamProtocol checks that the clusters of a detected port send
// requests upstream in the protocol they came in.
func wantDownstreamProtocol(t *testing.T, r *mtlsResult, names ...string) {
	t.Helper()
	for _, name := range names {
		i := slices.IndexFunc(r.res.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == name })
		if i < 0 {
			t.Errorf("no cluster %s", name)
			continue
		}
		if httpOpts(t, r.res.Clusters[i]).GetUseDownstreamProtocolConfig() == nil {
			t.Errorf("cluster %s: upstream protocol %v, want use_downstream_protocol_config", name, httpOpts(t, r.res.Clusters[i]))
		}
	}
}
