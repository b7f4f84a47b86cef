package cluster

import (
	"errors"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster/lb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestCompileRejects(t *testing.T) {
	tests := []struct {
		name        string
		mutate      func(c *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment)
		field       string
		unsupported bool
	}{
		{"subset lb", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.LbSubsetConfig = &clusterv3.Cluster_LbSubsetConfig{SubsetSelectors: []*clusterv3.Cluster_LbSubsetConfig_LbSubsetSelector{{Keys: []string{"v"}}}}
		}, "lb_subset_config", true},
		{"health checks", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.HealthChecks = []*corev3.HealthCheck{{}}
		}, "health_checks", true},
		{"success rate", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.OutlierDetection = &clusterv3.OutlierDetection{}
		}, "enforcing_success_rate", true},
		{"priority out of range", func(_ *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
			la.Endpoints[0].Priority = 4000000000
		}, "priorities run from 0 without gaps", false},
		{"priority gap", func(_ *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
			la.Endpoints = append(la.Endpoints, &endpointv3.LocalityLbEndpoints{Priority: 2, LbEndpoints: la.Endpoints[0].LbEndpoints},
				&endpointv3.LocalityLbEndpoints{Priority: 2, LbEndpoints: la.Endpoints[0].LbEndpoints})
		}, "no locality has priority 1", false},
		{"drop overloads", func(_ *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
			la.Policy = &endpointv3.ClusterLoadAssignment_Policy{DropOverloads: []*endpointv3.ClusterLoadAssignment_Policy_DropOverload{{Category: "x"}}}
		}, "drop_overloads", true},
		{"retry budget interval", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
				BudgetInterval: durationpb.New(time.Second)}}}}
		}, "retry_budget.budget_interval", true},
		{"http3", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			o, _ := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http3ProtocolOptions{Http3ProtocolOptions: &corev3.Http3ProtocolOptions{}}}}})
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: o}
		}, "http3", true},
		{"spki pinning", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.TransportSocket = tlsSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					VerifyCertificateSpki: []string{"x"}}}}})
		}, "verify_certificate_spki", true},
		{"slow start aggression", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.LbConfig = &clusterv3.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &clusterv3.Cluster_RoundRobinLbConfig{SlowStartConfig: &clusterv3.Cluster_SlowStartConfig{
				SlowStartWindow: durationpb.New(time.Minute), Aggression: &corev3.RuntimeDouble{DefaultValue: 0, RuntimeKey: "k"}}}}
		}, "slow_start_config.aggression", false},
		{"slow start minimum", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{SlowStartConfig: &clusterv3.Cluster_SlowStartConfig{
				SlowStartWindow: durationpb.New(time.Minute), MinWeightPercent: &typev3.Percent{Value: 150}}}}
		}, "least_request_lb_config.slow_start_config.min_weight_percent", false},
		{"unix endpoint", func(_ *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
			la.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/s"}}}
		}, "socket_address", true},
		{"maglev size", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(65536)}}
		}, "maglev_lb_config.table_size", false},
		{"hostname on EDS", func(_ *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
			la.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "db.example.com"
		}, "not an IP", false},
		{"cla name", func(_ *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
			la.ClusterName = "other"
		}, "load_assignment.cluster_name", false},
		{"cluster provided", func(c *clusterv3.Cluster, _ *endpointv3.ClusterLoadAssignment) {
			c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
		}, "CLUSTER_PROVIDED", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := edsCluster("out|80||svc", clusterv3.Cluster_ROUND_ROBIN)
			la := cla("out|80||svc", loc{eps: []ep{{addr: "10.0.0.1"}}})
			tt.mutate(c, la)
			_, err := Compile(c, la)
			if err == nil {
				t.Fatal("compiled")
			}
			if !strings.Contains(err.Error(), `cluster "out|80||svc"`) || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name the cluster and %s", err, tt.field)
			}
			if errors.Is(err, ErrUnsupported) != tt.unsupported {
				t.Errorf("errors.Is(ErrUnsupported) = %v, want %v", !tt.unsupported, tt.unsupported)
			}
		})
	}
}

func tlsSocket(ctx *tlsv3.UpstreamTlsContext) *corev3.TransportSocket {
	a, _ := anypb.New(ctx)
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func TestCompileSettings(t *testing.T) {
	c := edsCluster("c", clusterv3.Cluster_RING_HASH)
	c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(2048)}}
	c.TransportSocket = tlsSocket(&tlsv3.UpstreamTlsContext{Sni: "outbound_.80_._.svc", CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"istio", "h2"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: ads()}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://cluster.local/ns/default/sa/svc"}}}}},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: ads()},
		}},
	}})
	o, _ := anypb.New(&httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(30 * time.Second), MaxRequestsPerConnection: wrapperspb.UInt32(5)},
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(100)}}}},
	})
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: o}
	got := mustCompile(t, c, nil)
	if got.Policy != lb.RingHash || got.LB.MinRingSize != 2048 || got.LB.MaxRingSize != lb.DefaultMaxRingSize {
		t.Errorf("lb %v %+v", got.Policy, got.LB)
	}
	if got.ConnectTimeout != time.Second || got.PanicThreshold != 50 {
		t.Errorf("connect timeout %v panic %v", got.ConnectTimeout, got.PanicThreshold)
	}
	tls := got.TLS
	if tls == nil || tls.SNI != "outbound_.80_._.svc" || tls.CertSDS != "default" || tls.CASDS != "ROOTCA" || !tls.Verify ||
		len(tls.ALPN) != 2 || len(tls.SANs) != 1 || tls.SANs[0].Type != SANURI || !tls.SANs[0].Match("spiffe://cluster.local/ns/default/sa/svc") ||
		tls.SANs[0].Match("spiffe://cluster.local/ns/default/sa/other") {
		t.Errorf("tls %+v", tls)
	}
	h := got.HTTP
	if h.Protocol != HTTP2 || h.IdleTimeout != 30*time.Second || !h.IdleTimeoutSet || h.MaxRequestsPerConnection != 5 || h.MaxConcurrentStreams != 100 {
		t.Errorf("http %+v", h)
	}
}
