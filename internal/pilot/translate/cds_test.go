package translate

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	networking "istio.io/api/networking/v1alpha3"
)

// cdsResult is what one clusters() call produced.
type cdsResult struct {
	clusters     []*clusterv3.Cluster
	endpoints    []*endpointv3.ClusterLoadAssignment
	hashPolicies map[string][]*routev3.RouteAction_HashPolicy
	warnings     []string
}

func buildCDS(in *cdsInput) *cdsResult {
	b := &builder{s: in.snap, p: in.proxy, services: VisibleServices(in.snap, in.proxy)}
	cs, las := b.clusters()
	r := &cdsResult{clusters: cs, endpoints: las, hashPolicies: map[string][]*routev3.RouteAction_HashPolicy{}}
	for _, c := range cs {
		if port, subset, host, ok := ParseOutboundCluster(c.GetName()); ok {
			if hp := b.hashPolicy(host, port, subset); hp != nil {
				r.hashPolicies[c.GetName()] = hp
			}
		}
	}
	r.warnings = b.warnings
	return r
}

func (r *cdsResult) cluster(t *testing.T, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range r.clusters {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q; have %v", name, r.names())
	return nil
}

func (r *cdsResult) has(name string) bool { return slices.Contains(r.names(), name) }

func (r *cdsResult) names() []string {
	var out []string
	for _, c := range r.clusters {
		out = append(out, c.GetName())
	}
	return out
}

func (r *cdsResult) cla(t *testing.T, name string) *endpointv3.ClusterLoadAssignment {
	t.Helper()
	for _, la := range r.endpoints {
		if la.GetClusterName() == name {
			return la
		}
	}
	t.Fatalf("no load assignment %q", name)
	return nil
}

// subsetClusters counts the subset clusters of host's port.
func (r *cdsResult) subsetClusters(port uint32, host string) []string {
	var out []string
	for _, n := range r.names() {
		if p, subset, h, ok := ParseOutboundCluster(n); ok && p == port && h == host && subset != "" {
			out = append(out, subset)
		}
	}
	slices.Sort(out)
	return out
}

// addrs lists "ip:port" of a load assignment (inline or EDS), sorted.
func addrs(la *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range la.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, sa.GetAddress()+":"+itoa(sa.GetPortValue()))
		}
	}
	slices.Sort(out)
	return out
}

func itoa(n uint32) string { return OutboundRouteName(n) }

func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	if c.GetTransportSocket() == nil {
		return nil
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatalf("%s: %v", c.GetName(), err)
	}
	return ctx
}

func httpOpts(t *testing.T, c *clusterv3.Cluster) *httpv3.HttpProtocolOptions {
	t.Helper()
	a := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]
	if a == nil {
		return nil
	}
	o := &httpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(o); err != nil {
		t.Fatal(err)
	}
	return o
}

func wantLB(t *testing.T, c *clusterv3.Cluster, want clusterv3.Cluster_LbPolicy) {
	t.Helper()
	if c.GetLbPolicy() != want {
		t.Errorf("%s: lb policy %v, want %v", c.GetName(), c.GetLbPolicy(), want)
	}
}

func wantType(t *testing.T, c *clusterv3.Cluster, want clusterv3.Cluster_DiscoveryType) {
	t.Helper()
	if c.GetType() != want {
		t.Errorf("%s: type %v, want %v", c.GetName(), c.GetType(), want)
	}
}

func wantStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

func wantWarning(t *testing.T, r *cdsResult, substr string) {
	t.Helper()
	for _, w := range r.warnings {
		if strings.Contains(w, substr) {
			return
		}
	}
	t.Errorf("no warning containing %q in %q", substr, r.warnings)
}

// validateCDS runs protoc-gen-validate on every resource (packed
// extensions included) and checks the structural invariants: sorted unique
// names, one load assignment per EDS cluster and none for others.
func validateCDS(t *testing.T, r *cdsResult) {
	t.Helper()
	validateAny := func(name string, a *anypb.Any) {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%s: %T: %v", name, m, err)
			}
		}
	}
	eds := map[string]bool{}
	for i, c := range r.clusters {
		if err := c.ValidateAll(); err != nil {
			t.Errorf("cluster %s: %v", c.GetName(), err)
		}
		if i > 0 && r.clusters[i-1].GetName() >= c.GetName() {
			t.Errorf("clusters not sorted/unique at %q", c.GetName())
		}
		for k, a := range c.GetTypedExtensionProtocolOptions() {
			validateAny(c.GetName()+" "+k, a)
		}
		if ts := c.GetTransportSocket(); ts != nil {
			validateAny(c.GetName()+" transport socket", ts.GetTypedConfig())
		}
		if c.GetType() == clusterv3.Cluster_EDS {
			eds[c.GetName()] = true
			if c.GetEdsClusterConfig().GetServiceName() != c.GetName() {
				t.Errorf("%s: eds service name %q", c.GetName(), c.GetEdsClusterConfig().GetServiceName())
			}
		}
		if c.GetType() == clusterv3.Cluster_ORIGINAL_DST && c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			t.Errorf("%s: ORIGINAL_DST with lb %v", c.GetName(), c.GetLbPolicy())
		}
	}
	for i, la := range r.endpoints {
		if err := la.ValidateAll(); err != nil {
			t.Errorf("load assignment %s: %v", la.GetClusterName(), err)
		}
		if i > 0 && r.endpoints[i-1].GetClusterName() >= la.GetClusterName() {
			t.Errorf("load assignments not sorted/unique at %q", la.GetClusterName())
		}
		if !eds[la.GetClusterName()] {
			t.Errorf("load assignment %s without EDS cluster", la.GetClusterName())
		}
		delete(eds, la.GetClusterName())
		for _, l := range la.GetEndpoints() {
			var sum uint32
			for _, e := range l.GetLbEndpoints() {
				sum += e.GetLoadBalancingWeight().GetValue()
			}
			if l.GetLoadBalancingWeight().GetValue() != sum || sum == 0 {
				t.Errorf("%s: locality %v weight %d, endpoints sum %d", la.GetClusterName(), l.GetLocality(), l.GetLoadBalancingWeight().GetValue(), sum)
			}
		}
	}
	for n := range eds {
		t.Errorf("EDS cluster %s without load assignment", n)
	}
}

const (
	reviews = "reviews.default.svc.cluster.local"
	ratings = "ratings.default.svc.cluster.local"
	details = "details.default.svc.cluster.local"
	product = "productpage.default.svc.cluster.local"
	apiHost = "api.default.svc.cluster.local"
)

func TestClustersGolden(t *testing.T) {
	cases := []struct {
		name  string
		check func(t *testing.T, r *cdsResult)
	}{
		{"bookinfo-subsets", func(t *testing.T, r *cdsResult) {
			wantStrings(t, "reviews subsets", r.subsetClusters(9080, reviews), []string{"v1", "v2", "v3"})
			wantStrings(t, "ratings subsets", r.subsetClusters(9080, ratings), []string{"v1", "v2", "v2-mysql", "v2-mysql-vm"})
			wantStrings(t, "details subsets", r.subsetClusters(9080, details), []string{"v1", "v2"})
			wantStrings(t, "productpage subsets", r.subsetClusters(9080, product), []string{"v1"})
			if len(r.clusters) != 14+4 || len(r.endpoints) != 14 {
				t.Errorf("got %d clusters, %d assignments; want 18, 14", len(r.clusters), len(r.endpoints))
			}
			c := r.cluster(t, OutboundCluster(9080, "v2", reviews))
			wantType(t, c, clusterv3.Cluster_EDS)
			wantLB(t, c, clusterv3.Cluster_LEAST_REQUEST)
			if c.GetTransportSocket() != nil {
				t.Errorf("plaintext expected without TLS settings")
			}
			wantStrings(t, "reviews v2 endpoints", addrs(r.cla(t, OutboundCluster(9080, "v2", reviews))), []string{"10.1.1.2:9080"})
			wantStrings(t, "reviews endpoints", addrs(r.cla(t, OutboundCluster(9080, "", reviews))), []string{"10.1.1.1:9080", "10.1.1.2:9080", "10.1.1.3:9080"})
			v3 := r.cla(t, OutboundCluster(9080, "v3", reviews)).GetEndpoints()[0].GetLbEndpoints()[0]
			if v3.GetHealthStatus() != corev3.HealthStatus_UNHEALTHY {
				t.Errorf("reviews v3 health %v, want UNHEALTHY", v3.GetHealthStatus())
			}
			if n := len(addrs(r.cla(t, OutboundCluster(9080, "v2-mysql", ratings)))); n != 0 {
				t.Errorf("ratings v2-mysql has %d endpoints, want 0", n)
			}
			in := r.cluster(t, InboundCluster(9080))
			wantType(t, in, clusterv3.Cluster_STATIC)
			wantStrings(t, "inbound", addrs(in.GetLoadAssignment()), []string{"127.0.0.1:9080"})
			for _, n := range []string{BlackHoleCluster, PassthroughCluster, InboundPassthroughCluster} {
				r.cluster(t, n)
			}
			wantType(t, r.cluster(t, PassthroughCluster), clusterv3.Cluster_ORIGINAL_DST)
			if c.GetConnectTimeout().AsDuration().Seconds() != 10 {
				t.Errorf("connect timeout %v, want mesh default 10s", c.GetConnectTimeout().AsDuration())
			}
		}},
		{"bookinfo-mtls", func(t *testing.T, r *cdsResult) {
			for _, c := range r.clusters {
				if _, _, _, ok := ParseOutboundCluster(c.GetName()); !ok {
					continue
				}
				ctx := upstreamTLS(t, c)
				if ctx == nil {
					t.Errorf("%s: no ISTIO_MUTUAL transport socket", c.GetName())
					continue
				}
				common := ctx.GetCommonTlsContext()
				if got := common.GetTlsCertificateSdsSecretConfigs(); len(got) != 1 || got[0].GetName() != "default" || got[0].GetSdsConfig().GetAds() == nil {
					t.Errorf("%s: cert SDS %v", c.GetName(), got)
				}
				if got := common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName(); got != "ROOTCA" {
					t.Errorf("%s: root SDS %q", c.GetName(), got)
				}
				wantStrings(t, c.GetName()+" alpn", common.GetAlpnProtocols(), []string{"istio-peer-exchange", "istio"})
			}
			ctx := upstreamTLS(t, r.cluster(t, OutboundCluster(9080, "v1", reviews)))
			if ctx.GetSni() != "outbound_.9080_.v1_."+reviews {
				t.Errorf("sni %q", ctx.GetSni())
			}
			sans := ctx.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
			if len(sans) != 1 || sans[0].GetMatcher().GetExact() != "spiffe://cluster.local/ns/default/sa/bookinfo-reviews" ||
				sans[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
				t.Errorf("reviews SANs %v", sans)
			}
			if upstreamTLS(t, r.cluster(t, PassthroughCluster)) != nil {
				t.Errorf("PassthroughCluster must stay plaintext")
			}
		}},
		{"reviews-random", func(t *testing.T, r *cdsResult) {
			for _, s := range []string{"", "v1", "v2", "v3"} {
				wantLB(t, r.cluster(t, OutboundCluster(9080, s, reviews)), clusterv3.Cluster_RANDOM)
			}
			wantLB(t, r.cluster(t, OutboundCluster(9080, "", ratings)), clusterv3.Cluster_LEAST_REQUEST)
			if len(r.subsetClusters(9080, ratings)) != 0 {
				t.Errorf("ratings has no DestinationRule here")
			}
		}},
		{"service-entries", func(t *testing.T, r *cdsResult) {
			c := r.cluster(t, OutboundCluster(1200, "", "test.seexamples"))
			wantType(t, c, clusterv3.Cluster_EDS)
			wantStrings(t, "workload", addrs(r.cla(t, c.GetName())), []string{"10.12.0.1:21200"})
			wantStrings(t, "inbound", addrs(r.cluster(t, InboundCluster(21200)).GetLoadAssignment()), []string{"127.0.0.1:21200"})
			mongo := r.cluster(t, OutboundCluster(27018, "", "mymongodb.somedomain"))
			wantStrings(t, "mongo", addrs(r.cla(t, mongo.GetName())), []string{"2.2.2.2:27018", "3.3.3.3:27018"})
			ctx := upstreamTLS(t, mongo)
			if ctx.GetSni() != "v1.mymongodb.somedomain" {
				t.Errorf("mongo sni %q", ctx.GetSni())
			}
			cert := ctx.GetCommonTlsContext().GetTlsCertificates()
			if len(cert) != 1 || cert[0].GetCertificateChain().GetFilename() != "tests/testdata/certs/default/cert-chain.pem" ||
				cert[0].GetPrivateKey().GetFilename() != "tests/testdata/certs/default/key.pem" {
				t.Errorf("mongo client cert %v", cert)
			}
			vc := ctx.GetCommonTlsContext().GetValidationContext()
			if vc.GetTrustedCa().GetFilename() != "tests/testdata/certs/default/root-cert.pem" ||
				len(vc.GetMatchTypedSubjectAltNames()) != 1 || vc.GetMatchTypedSubjectAltNames()[0].GetSanType() != tlsv3.SubjectAltNameMatcher_DNS {
				t.Errorf("mongo validation %v", vc)
			}
			for _, h := range []string{"api.dropboxapi.com", "www.googleapis.com", "api.facebook.com"} {
				c := r.cluster(t, OutboundCluster(443, "", h))
				wantType(t, c, clusterv3.Cluster_STRICT_DNS)
				wantStrings(t, h, addrs(c.GetLoadAssignment()), []string{h + ":443"})
			}
			dns := r.cluster(t, OutboundCluster(8000, "", "foo.bar.com"))
			wantType(t, dns, clusterv3.Cluster_STRICT_DNS)
			wantStrings(t, "foo.bar.com", addrs(dns.GetLoadAssignment()), []string{"in.foo.bar.com:7080", "uk.foo.bar.com:9080", "us.foo.bar.com:8080"})
			wild := r.cluster(t, OutboundCluster(80, "", "*.bar.com"))
			wantType(t, wild, clusterv3.Cluster_ORIGINAL_DST)
			if len(addrs(r.cla(t, OutboundCluster(8001, "", "example.unix.local")))) != 0 {
				t.Errorf("unix socket endpoint must be skipped")
			}
			wantWarning(t, r, `"unix:///var/run/example/socket" is not an IP`)
		}},
		{"weighted-localities", func(t *testing.T, r *cdsResult) {
			la := r.cla(t, OutboundCluster(80, "", "weighted.static.svc.cluster.local"))
			var got []string
			for _, l := range la.GetEndpoints() {
				got = append(got, l.GetLocality().GetRegion()+"="+itoa(l.GetLoadBalancingWeight().GetValue()))
			}
			wantStrings(t, "locality weights", got, []string{"a=9", "b=3"})
			la = r.cla(t, OutboundCluster(8080, "", "zones.default.svc.cluster.local"))
			if l := la.GetEndpoints()[0].GetLocality(); l.GetRegion() != "us-east1" || l.GetZone() != "us-east1-b" || l.GetSubZone() != "rack1" {
				t.Errorf("locality %v", l)
			}
		}},
		{"traffic-policy", func(t *testing.T, r *cdsResult) {
			http := r.cluster(t, OutboundCluster(8080, "", apiHost))
			wantLB(t, http, clusterv3.Cluster_RING_HASH)
			if http.GetRingHashLbConfig().GetMinimumRingSize().GetValue() != 2048 {
				t.Errorf("ring size %v", http.GetRingHashLbConfig())
			}
			th := http.GetCircuitBreakers().GetThresholds()[0]
			if th.GetMaxConnections().GetValue() != 100 || th.GetMaxPendingRequests().GetValue() != 10 ||
				th.GetMaxRequests().GetValue() != 1000 || th.GetMaxRetries().GetValue() != 3 {
				t.Errorf("thresholds %v", th)
			}
			if http.GetConnectTimeout().AsDuration().Seconds() != 3 {
				t.Errorf("connect timeout %v", http.GetConnectTimeout())
			}
			if od := http.GetOutlierDetection(); od.GetConsecutive_5Xx().GetValue() != 7 || od.GetConsecutiveGatewayFailure().GetValue() != 5 ||
				od.GetMaxEjectionPercent().GetValue() != 50 || http.GetCommonLbConfig().GetHealthyPanicThreshold().GetValue() != 20 {
				t.Errorf("outlier detection %v", od)
			}
			o := httpOpts(t, http)
			if o.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration().Seconds() != 30 ||
				o.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection().GetValue() != 5 ||
				o.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
				t.Errorf("http options %v", o)
			}
			if http.GetUpstreamConnectionOptions().GetTcpKeepalive().GetKeepaliveTime().GetValue() != 7200 {
				t.Errorf("keepalive %v", http.GetUpstreamConnectionOptions())
			}
			if hp := r.hashPolicies[http.GetName()]; len(hp) != 1 || hp[0].GetHeader().GetHeaderName() != "x-user" {
				t.Errorf("hash policy %v", hp)
			}
			grpc := r.cluster(t, OutboundCluster(9090, "", apiHost))
			wantLB(t, grpc, clusterv3.Cluster_MAGLEV)
			if httpOpts(t, grpc).GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
				t.Errorf("grpc port without http2")
			}
			if grpc.GetOutlierDetection() != nil || grpc.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue() != 1<<32-1 {
				t.Errorf("port-level settings must not inherit connectionPool/outlierDetection")
			}
			if hp := r.hashPolicies[grpc.GetName()]; len(hp) != 1 || !hp[0].GetConnectionProperties().GetSourceIp() {
				t.Errorf("grpc hash policy %v", hp)
			}
			tcp := r.cluster(t, OutboundCluster(5432, "", apiHost))
			wantType(t, tcp, clusterv3.Cluster_ORIGINAL_DST)
			if hp := r.hashPolicies[OutboundCluster(8080, "v1", apiHost)]; len(hp) != 1 || hp[0].GetCookie().GetName() != "session" {
				t.Errorf("v1 hash policy %v", hp)
			}
			v1 := r.cluster(t, OutboundCluster(8080, "v1", apiHost))
			if v1.GetRingHashLbConfig().GetMinimumRingSize().GetValue() != 1024 || v1.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue() != 100 {
				t.Errorf("v1 must override lb and inherit connectionPool: %v", v1)
			}
			v2 := r.cluster(t, OutboundCluster(8080, "v2", apiHost))
			wantLB(t, v2, clusterv3.Cluster_LEAST_REQUEST)
			if ctx := upstreamTLS(t, v2); ctx.GetSni() != "api.internal" || ctx.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename() != "/etc/certs/ca.pem" {
				t.Errorf("v2 SIMPLE tls %v", ctx)
			}
			wantLB(t, r.cluster(t, OutboundCluster(5432, "v2", apiHost)), clusterv3.Cluster_ROUND_ROBIN)
			if upstreamTLS(t, r.cluster(t, OutboundCluster(9090, "v2", apiHost))) != nil {
				t.Errorf("v2 port-level tls applies to 8080 only")
			}
			if hp := r.hashPolicies[OutboundCluster(80, "", "web.default.svc.cluster.local")]; len(hp) != 1 || hp[0].GetQueryParameter().GetName() != "user" {
				t.Errorf("web hash policy %v", hp)
			}
		}},
		{"dr-precedence", func(t *testing.T, r *cdsResult) {
			lb := func(host string) clusterv3.Cluster_LbPolicy {
				return r.cluster(t, OutboundCluster(80, "", host)).GetLbPolicy()
			}
			want := map[string]clusterv3.Cluster_LbPolicy{
				"a.svc1.svc.cluster.local": clusterv3.Cluster_ROUND_ROBIN, // proxy namespace
				"b.svc1.svc.cluster.local": clusterv3.Cluster_RANDOM,      // service namespace
				"c.svc1.svc.cluster.local": clusterv3.Cluster_ROUND_ROBIN, // root wildcard
				"d.svc1.svc.cluster.local": clusterv3.Cluster_ROUND_ROBIN, // service ns rule not exported
				"e.example.com":            clusterv3.Cluster_ROUND_ROBIN, // exact beats wildcard
				"f.example.com":            clusterv3.Cluster_RANDOM,      // wildcard
				"g.svc1.svc.cluster.local": clusterv3.Cluster_MAGLEV,      // workload selector first
			}
			for h, w := range want {
				if got := lb(h); got != w {
					t.Errorf("%s: lb %v, want %v", h, got, w)
				}
			}
			wantStrings(t, "merged subsets", r.subsetClusters(80, "e.example.com"), []string{"v1", "v2"})
			if got := r.cla(t, OutboundCluster(80, "v1", "e.example.com")); len(addrs(got)) != 1 || addrs(got)[0] != "10.5.0.1:80" {
				t.Errorf("v1 must keep the older rule's labels: %v", addrs(got))
			}
			wantWarning(t, r, `DestinationRule/client/e-later: subset "v1" of host e.example.com already defined by DestinationRule/client/e-exact`)
			wantWarning(t, r, "DestinationRule/client/e-later: trafficPolicy for host e.example.com ignored; DestinationRule/client/e-exact sets it")
		}},
		{"resolutions", func(t *testing.T, r *cdsResult) {
			dns := r.cluster(t, OutboundCluster(443, "", "dns.example.com"))
			wantType(t, dns, clusterv3.Cluster_STRICT_DNS)
			wantStrings(t, "dns", addrs(dns.GetLoadAssignment()), []string{"eu.dns.example.com:443", "us.dns.example.com:443"})
			wantStrings(t, "dns eu subset", addrs(r.cluster(t, OutboundCluster(443, "eu", "dns.example.com")).GetLoadAssignment()), []string{"eu.dns.example.com:443"})
			wantStrings(t, "dns without endpoints", addrs(r.cluster(t, OutboundCluster(80, "", "dnsnoep.example.com")).GetLoadAssignment()), []string{"dnsnoep.example.com:80"})
			rr := r.cluster(t, OutboundCluster(80, "", "rr.example.com"))
			wantType(t, rr, clusterv3.Cluster_LOGICAL_DNS)
			wantStrings(t, "rr2", addrs(r.cluster(t, OutboundCluster(80, "", "rr2.example.com")).GetLoadAssignment()), []string{"a.rr2.example.com:80"})
			wantType(t, r.cluster(t, OutboundCluster(3306, "", "orig.example.com")), clusterv3.Cluster_ORIGINAL_DST)
			pass := r.cluster(t, OutboundCluster(80, "", "pass.default.svc.cluster.local"))
			wantType(t, pass, clusterv3.Cluster_ORIGINAL_DST)
			if r.has(OutboundCluster(80, "", "*.wild.com")) {
				t.Errorf("wildcard DNS host without endpoints must have no cluster")
			}
			la := r.cla(t, OutboundCluster(80, "", "static.default.svc.cluster.local"))
			wantStrings(t, "static", addrs(la), []string{"10.0.0.1:8080", "10.0.0.2:8080"})
			wantStrings(t, "static grpc", addrs(r.cla(t, OutboundCluster(9000, "", "static.default.svc.cluster.local"))), []string{"10.0.0.1:9100", "10.0.0.2:9000"})
			for _, l := range la.GetEndpoints() {
				for _, e := range l.GetLbEndpoints() {
					ip := e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
					if ip == "10.0.0.1" && (e.GetLoadBalancingWeight().GetValue() != 1 || e.GetHealthStatus() != corev3.HealthStatus_HEALTHY) {
						t.Errorf("10.0.0.1: %v", e)
					}
					if ip == "10.0.0.2" && (e.GetLoadBalancingWeight().GetValue() != 5 || e.GetHealthStatus() != corev3.HealthStatus_UNHEALTHY) {
						t.Errorf("10.0.0.2: %v", e)
					}
				}
			}
			wantWarning(t, r, `"not-an-ip.example.com" is not an IP`)
			wantWarning(t, r, "dup.example.com: hostname also defined in namespace b (older)")
			if r.cluster(t, OutboundCluster(80, "", "static.default.svc.cluster.local")).GetConnectTimeout().AsDuration().Seconds() != 5 {
				t.Errorf("mesh connect timeout not applied")
			}
			h2 := r.cluster(t, OutboundCluster(80, "", "h2up.default.svc.cluster.local"))
			if o := httpOpts(t, h2).GetExplicitHttpConfig().GetHttp2ProtocolOptions(); o.GetMaxConcurrentStreams().GetValue() != 100 {
				t.Errorf("h2 upgrade: %v", o)
			}
			if od := h2.GetOutlierDetection(); od.GetConsecutiveGatewayFailure().GetValue() != 4 || od.GetEnforcingConsecutive_5Xx().GetValue() != 0 {
				t.Errorf("deprecated consecutiveErrors: %v", od)
			}
			wantStrings(t, "inbound", []string{addrs(r.cluster(t, InboundCluster(8080)).GetLoadAssignment())[0],
				addrs(r.cluster(t, InboundCluster(9100)).GetLoadAssignment())[0]}, []string{"127.0.0.1:8080", "127.0.0.1:9100"})
			if httpOpts(t, r.cluster(t, InboundCluster(9100))).GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
				t.Errorf("inbound grpc without http2")
			}
		}},
		{"proxyless", func(t *testing.T, r *cdsResult) {
			for _, c := range r.clusters {
				wantType(t, c, clusterv3.Cluster_EDS)
				if _, _, _, ok := ParseOutboundCluster(c.GetName()); !ok {
					t.Errorf("proxyless got %s", c.GetName())
				}
			}
			g := r.cluster(t, OutboundCluster(50051, "", "greeter.default.svc.cluster.local"))
			wantLB(t, g, clusterv3.Cluster_ROUND_ROBIN)
			ctx := upstreamTLS(t, g)
			if ctx.GetCommonTlsContext().GetTlsCertificateProviderInstance().GetInstanceName() != "default" ||
				ctx.GetCommonTlsContext().GetValidationContext().GetCaCertificateProviderInstance().GetCertificateName() != "ROOTCA" {
				t.Errorf("proxyless mTLS %v", ctx)
			}
			wantStrings(t, "greeter subsets", r.subsetClusters(50051, "greeter.default.svc.cluster.local"), []string{"v1"})
			wantLB(t, r.cluster(t, OutboundCluster(50051, "v1", "greeter.default.svc.cluster.local")), clusterv3.Cluster_RING_HASH)
			if r.has(OutboundCluster(443, "", "simple.default.svc.cluster.local")) || r.has(OutboundCluster(80, "", "pass.default.svc.cluster.local")) {
				t.Errorf("unsupported clusters must be dropped")
			}
			wantWarning(t, r, "tls mode SIMPLE is not supported for proxyless clients")
			wantWarning(t, r, "PASSTHROUGH is not supported for proxyless clients")
			for _, w := range r.warnings {
				if strings.Contains(w, "dns.example.com") || strings.Contains(w, "orig.example.com") {
					t.Errorf("unexpected warning %q", w)
				}
			}
		}},
		{"router", func(t *testing.T, r *cdsResult) {
			if !r.has(BlackHoleCluster) || r.has(PassthroughCluster) || r.has(InboundPassthroughCluster) || r.has(InboundCluster(8080)) {
				t.Errorf("router clusters %v", r.names())
			}
			c := r.cluster(t, OutboundCluster(8080, "", "web.apps.svc.cluster.local"))
			if upstreamTLS(t, c) == nil {
				t.Errorf("root namespace ISTIO_MUTUAL not applied")
			}
			ext := upstreamTLS(t, r.cluster(t, OutboundCluster(443, "", "api.partner.com")))
			if ext.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName() != "partner-cred" ||
				ext.GetCommonTlsContext().GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName() != "partner-cred-cacert" ||
				ext.GetSni() != "api.partner.com" {
				t.Errorf("credentialName tls %v", ext)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := loadCDSCase(t, filepath.Join("testdata", "cds", tc.name+".yaml"))
			r := buildCDS(in)
			validateCDS(t, r)
			tc.check(t, r)
			again := buildCDS(in)
			if len(again.clusters) != len(r.clusters) || len(again.endpoints) != len(r.endpoints) {
				t.Fatalf("second build differs in size")
			}
			for i := range r.clusters {
				if !proto.Equal(r.clusters[i], again.clusters[i]) {
					t.Errorf("non-deterministic cluster %s", r.clusters[i].GetName())
				}
			}
			for i := range r.endpoints {
				if !proto.Equal(r.endpoints[i], again.endpoints[i]) {
					t.Errorf("non-deterministic load assignment %s", r.endpoints[i].GetClusterName())
				}
			}
			compareGolden(t, filepath.Join("testdata", "cds", tc.name+".json"), renderCDSGolden(t, r),
				func(got, want string) string { return cmp.Diff(strings.Split(got, "\n"), strings.Split(want, "\n")) })
		})
	}
}

// TestHashPolicyUnknown covers hashPolicy's nil cases, which goldens miss.
func TestHashPolicyUnknown(t *testing.T) {
	in := loadCDSCase(t, filepath.Join("testdata", "cds", "traffic-policy.yaml"))
	b := &builder{s: in.snap, p: in.proxy, services: VisibleServices(in.snap, in.proxy)}
	if hp := b.hashPolicy("nope.example.com", 80, ""); hp != nil {
		t.Errorf("unknown host: %v", hp)
	}
	if hp := b.hashPolicy(apiHost, 8080, "nosuchsubset"); hp != nil {
		t.Errorf("unknown subset: %v", hp)
	}
	if hp := b.hashPolicy("web.default.svc.cluster.local", 0, ""); len(hp) != 1 {
		t.Errorf("port 0 on a one-port service: %v", hp)
	}
	if len(b.warnings) != 0 {
		t.Errorf("hashPolicy must not warn: %q", b.warnings)
	}
}

// TestWarmup: a DestinationRule's warmup (or the deprecated
// warmupDurationSecs) becomes the slow start config of round robin and
// least request clusters, as istiod writes it; other policies warn.
func TestWarmup(t *testing.T) {
	const host = "api.default.svc.cluster.local"
	for name, tc := range map[string]struct {
		lb        string
		proxyless bool
		want      string // window, aggression, minimum percent ("": no slow start)
		warning   string
	}{
		"round robin": {lb: `{"simple": "ROUND_ROBIN", "warmup": {"duration": "30s", "minimumPercent": 20, "aggression": 2}}`,
			want: "ROUND_ROBIN 30s 2 20"},
		"default least request, deprecated field": {lb: `{"warmupDurationSecs": "10s"}`, want: "LEAST_REQUEST 10s 0 0"},
		"ring hash": {lb: `{"consistentHash": {"httpHeaderName": "x-user"}, "warmup": {"duration": "30s"}}`,
			warning: "loadBalancer.warmup applies to ROUND_ROBIN and LEAST_REQUEST only; ignored"},
		"proxyless": {lb: `{"warmup": {"duration": "30s"}}`, proxyless: true,
			warning: "loadBalancer.warmup is not supported by proxyless gRPC clients; ignored for them"},
	} {
		t.Run(name, func(t *testing.T) {
			dr := &networking.DestinationRule{}
			if err := protojson.Unmarshal([]byte(`{"host": "`+host+`", "trafficPolicy": {"loadBalancer": `+tc.lb+`}}`), dr); err != nil {
				t.Fatal(err)
			}
			reg := &registry.Snapshot{Version: 1, Services: []registry.Service{
				{Hostname: host, Namespace: "default", Ports: []registry.Port{{Name: "http", Number: 80, Protocol: "HTTP"}}}}}
			s := model.NewSnapshot("1", model.DefaultMesh(), []*model.Config{{Kind: "DestinationRule", Namespace: "default", Name: "api", Spec: dr}}, reg)
			p := &model.Proxy{Type: model.Sidecar, Namespace: "default", IPs: []string{"10.0.0.1"}}
			if tc.proxyless {
				p.Type = model.Proxyless
			}
			r := buildCDS(&cdsInput{snap: s, proxy: p})
			c := r.cluster(t, "outbound|80||"+host)
			if err := c.ValidateAll(); err != nil {
				t.Fatalf("cluster does not validate: %v", err)
			}
			ss := c.GetRoundRobinLbConfig().GetSlowStartConfig()
			if ss == nil {
				ss = c.GetLeastRequestLbConfig().GetSlowStartConfig()
			}
			got := ""
			if ss != nil {
				got = fmt.Sprintf("%v %v %g %g", c.GetLbPolicy(), ss.GetSlowStartWindow().AsDuration(), ss.GetAggression().GetDefaultValue(),
					ss.GetMinWeightPercent().GetValue())
			}
			if got != tc.want {
				t.Errorf("slow start %q, want %q", got, tc.want)
			}
			if tc.warning != "" {
				wantWarning(t, r, tc.warning)
			}
		})
	}
}
