package translate

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

const (
	// httpProtocolOptionsKey is the typed_extension_protocol_options key of
	// upstream HTTP options.
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// defaultConnectTimeout applies when the mesh config leaves it unset.
	defaultConnectTimeout = 10 * time.Second
	// defaultRingSize is Envoy's default minimum ring size for RING_HASH.
	defaultRingSize = 1024
	// defaultDomainSuffix expands short DestinationRule hosts when the mesh
	// config leaves DomainSuffix unset.
	defaultDomainSuffix = "svc.cluster.local"
)

// cdsRun is the state of one clusters() call: it de-duplicates warnings
// (one DestinationRule conflict touches every port and subset).
type cdsRun struct {
	*builder
	seen map[string]bool
	// pa indexes PeerAuthentications for auto mTLS (see peerAuthn).
	pa *paIndex
	// locality is the proxy's, once worked out (see proxyLocality).
	locality *corev3.Locality
}

func (r *cdsRun) warnOnce(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if r.seen[msg] {
		return
	}
	r.seen[msg] = true
	r.warn("%s", msg)
}

// clusters builds the proxy's CDS clusters and the EDS assignments of its
// EDS clusters, both sorted by name:
//   - per visible service port: outbound|<port>||<host> plus one cluster
//     per DestinationRule subset, typed by the service's resolution;
//   - sidecars: inbound|<endpoint port>|| for the proxy's own endpoints,
//     BlackHoleCluster, PassthroughCluster and InboundPassthroughCluster;
//   - routers: BlackHoleCluster;
//   - proxyless clients: only EDS clusters (gRPC supports no other type).
func (b *builder) clusters() ([]*clusterv3.Cluster, []*endpointv3.ClusterLoadAssignment) {
	r := &cdsRun{builder: b, seen: map[string]bool{}}
	var cs []*clusterv3.Cluster
	var las []*endpointv3.ClusterLoadAssignment
	add := func(c *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) {
		if c == nil {
			return
		}
		cs = append(cs, c)
		if la != nil {
			las = append(las, la)
		}
	}
	for _, svc := range r.uniqueServices() {
		dr := b.destinationRule(svc, r.warnOnce)
		if dr != nil {
			r.warnUnsupported(dr)
		}
		all := b.s.Endpoints(svc.Namespace, svc.Hostname)
		for _, port := range svc.Ports {
			add(r.outboundCluster(svc, port, dr, nil, all))
			for _, ss := range dr.subsetList() {
				add(r.outboundCluster(svc, port, dr, ss, all))
			}
		}
	}
	switch b.p.Type {
	case model.Proxyless:
	case model.Router:
		cs = append(cs, r.blackHoleCluster())
	default:
		cs = append(cs, r.inboundClusters()...)
		cs = append(cs, r.blackHoleCluster(), r.passthroughCluster(), r.inboundPassthroughCluster())
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].GetName() < cs[j].GetName() })
	sort.SliceStable(las, func(i, j int) bool { return las[i].GetClusterName() < las[j].GetClusterName() })
	return cs, las
}

// uniqueServices returns the visible services with one definition per
// hostname (cluster names carry no namespace): the oldest wins, as Istio
// resolves conflicting ServiceEntries; the others are reported.
func (r *cdsRun) uniqueServices() []*registry.Service {
	var out []*registry.Service
	idx := map[string]int{}
	for i := range r.services {
		svc := &r.services[i]
		j, dup := idx[svc.Hostname]
		if !dup {
			idx[svc.Hostname] = len(out)
			out = append(out, svc)
			continue
		}
		kept := out[j]
		if svc.CreationTime < kept.CreationTime {
			out[j], svc, kept = svc, kept, svc
		}
		r.warnOnce("Service %s/%s: hostname also defined in namespace %s (older); ignored for clusters",
			svc.Namespace, svc.Hostname, kept.Namespace)
	}
	return out
}

// serviceByHost finds a visible service by hostname, with the same
// conflict rule as uniqueServices.
func (b *builder) serviceByHost(host string) *registry.Service {
	var found *registry.Service
	for i := range b.services {
		svc := &b.services[i]
		if svc.Hostname == host && (found == nil || svc.CreationTime < found.CreationTime) {
			found = svc
		}
	}
	return found
}

// connectTimeout is the mesh-wide upstream connect timeout.
func (b *builder) connectTimeout() *durationpb.Duration {
	if d := b.s.Mesh.ConnectTimeout; d > 0 {
		return durationpb.New(d)
	}
	return durationpb.New(defaultConnectTimeout)
}

// defaultCircuitBreakers lifts Envoy's default limits of 1024, as Istio
// does: a mesh applies no limits unless a DestinationRule asks for them.
func defaultCircuitBreakers() *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
		MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
		MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
		MaxRetries:         wrapperspb.UInt32(math.MaxUint32),
		TrackRemaining:     true,
	}}}
}

func clusterType(t clusterv3.Cluster_DiscoveryType) *clusterv3.Cluster_Type {
	return &clusterv3.Cluster_Type{Type: t}
}

// adsConfigSource points at the ADS stream the proxy already has.
func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// isH2 reports whether a port's protocol speaks HTTP/2 to the upstream.
func isH2(protocol string) bool {
	switch strings.ToUpper(protocol) {
	case "HTTP2", "GRPC":
		return true
	}
	return false
}

// httpOptions collects what ends in the cluster's upstream
// HttpProtocolOptions.
type httpOptions struct {
	common *corev3.HttpProtocolOptions
	h2     *corev3.Http2ProtocolOptions
	// downstream: the port's protocol is detected, so requests go upstream
	// in the protocol they came in (use_downstream_protocol_config, as
	// Istio does for such ports): h2c and gRPC stay HTTP/2.
	downstream bool
}

func (o *httpOptions) commonOpts() *corev3.HttpProtocolOptions {
	if o.common == nil {
		o.common = &corev3.HttpProtocolOptions{}
	}
	return o.common
}

// apply stores the options on c; HTTP/2 ports get explicit HTTP/2, others
// explicit HTTP/1.1 (the upstream protocol is a required field).
func (o *httpOptions) apply(c *clusterv3.Cluster) {
	if o.common == nil && o.h2 == nil && !o.downstream {
		return
	}
	opts := &httpv3.HttpProtocolOptions{CommonHttpProtocolOptions: o.common}
	if o.downstream && o.h2 == nil {
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(opts)}
		return
	}
	explicit := &httpv3.HttpProtocolOptions_ExplicitHttpConfig{}
	if o.h2 != nil {
		explicit.ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: o.h2}
	} else {
		explicit.ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}
	}
	opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: explicit}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(opts)}
}

// mustAny packs m deterministically. Marshalling a well-formed generated
// message cannot fail.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("translate: packing %T: %v", m, err))
	}
	return a
}

// outboundCluster builds the cluster of one service port (and subset, when
// ss is set) and, for EDS clusters, its load assignment. A nil cluster
// means the cluster cannot be built for this proxy (reported unless it is
// a type proxyless clients do not support).
func (r *cdsRun) outboundCluster(svc *registry.Service, port registry.Port, dr *destRule, ss *networking.Subset,
	all []registry.Endpoint) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	proxyless := r.p.Type == model.Proxyless
	if proxyless && svc.Resolution != registry.ResolutionStatic {
		return nil, nil
	}
	name := OutboundCluster(port.Number, ss.GetName(), svc.Hostname)
	eps := all
	if ss != nil {
		eps = filterEndpoints(all, ss.GetLabels())
	}
	c := &clusterv3.Cluster{Name: name, ConnectTimeout: r.connectTimeout(), CircuitBreakers: defaultCircuitBreakers()}
	policy := dr.policyFor(ss, port.Number)
	prio := r.failoverPriority(policy)
	var la *endpointv3.ClusterLoadAssignment
	switch svc.Resolution {
	case registry.ResolutionStatic:
		c.ClusterDiscoveryType = clusterType(clusterv3.Cluster_EDS)
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource(), ServiceName: name}
		la = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: r.localityEndpoints(svc, port, eps, true, prio)}
	case registry.ResolutionDNS, registry.ResolutionDNSRoundRobin:
		lle := r.localityEndpoints(svc, port, eps, false, prio)
		if len(all) == 0 {
			if strings.Contains(svc.Hostname, "*") {
				r.warnOnce("Service %s/%s: DNS resolution of a wildcard host without endpoints; no cluster", svc.Namespace, svc.Hostname)
				return nil, nil
			}
			lle = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
				lbEndpoint(svc.Hostname, port.Number, true, 1)}}}
		}
		if svc.Resolution == registry.ResolutionDNS {
			c.ClusterDiscoveryType = clusterType(clusterv3.Cluster_STRICT_DNS)
		} else {
			c.ClusterDiscoveryType = clusterType(clusterv3.Cluster_LOGICAL_DNS)
			lle = r.singleEndpoint(svc, lle)
		}
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: lle}
		c.DnsLookupFamily = clusterv3.Cluster_V4_ONLY
	case registry.ResolutionNone:
		c.ClusterDiscoveryType = clusterType(clusterv3.Cluster_ORIGINAL_DST)
		c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
	default:
		r.warnOnce("Service %s/%s: unknown resolution %d; no cluster", svc.Namespace, svc.Hostname, svc.Resolution)
		return nil, nil
	}

	if !r.applyLoadBalancer(c, policy.GetLoadBalancer()) {
		// PASSTHROUGH: forward to the original destination.
		if proxyless {
			r.warnOnce("%s: loadBalancer PASSTHROUGH is not supported for proxyless clients; no cluster %s", dr.key(), name)
			return nil, nil
		}
		c.ClusterDiscoveryType = clusterType(clusterv3.Cluster_ORIGINAL_DST)
		c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
		c.EdsClusterConfig, c.LoadAssignment, la = nil, nil, nil
		c.DnsLookupFamily = clusterv3.Cluster_AUTO
	}
	opts := &httpOptions{downstream: ldsIsAuto(registry.ProtocolOf(port))}
	if isH2(port.Protocol) || (strings.EqualFold(port.Protocol, "HTTP") &&
		policy.GetConnectionPool().GetHttp().GetH2UpgradePolicy() == networking.ConnectionPoolSettings_HTTPSettings_UPGRADE) {
		opts.h2 = &corev3.Http2ProtocolOptions{}
	}
	applyConnectionPool(c, policy.GetConnectionPool(), opts)
	applyRetryBudget(c, policy.GetRetryBudget())
	applyOutlierDetection(c, policy.GetOutlierDetection())
	// Per proxy: priorities and weights follow the proxy's locality.
	r.applyLocalityLB(la, policy.GetLoadBalancer(), policy.GetOutlierDetection() != nil)
	r.applyLocalityLB(c.GetLoadAssignment(), policy.GetLoadBalancer(), policy.GetOutlierDetection() != nil)
	// Without TLS settings in a DestinationRule, auto mTLS decides (mtls.go).
	if !r.applyTLS(c, svc, port, ss.GetName(), all, r.clusterTLS(policy, svc, port, eps), dr) {
		return nil, nil
	}
	opts.apply(c)
	if dr != nil && dr.first != nil {
		c.Metadata = configMetadata("destination-rule", dr.first.Namespace, dr.first.Name)
	}
	c.Metadata = withServices(c.Metadata, svc)
	return c, la
}

// singleEndpoint keeps the first endpoint: LOGICAL_DNS clusters take one.
func (r *cdsRun) singleEndpoint(svc *registry.Service, lle []*endpointv3.LocalityLbEndpoints) []*endpointv3.LocalityLbEndpoints {
	n := 0
	for _, l := range lle {
		n += len(l.GetLbEndpoints())
	}
	if n <= 1 {
		return lle
	}
	r.warnOnce("Service %s/%s: DNS_ROUND_ROBIN resolution uses only the first of %d endpoints", svc.Namespace, svc.Hostname, n)
	for _, l := range lle {
		if len(l.GetLbEndpoints()) > 0 {
			first := proto.Clone(l).(*endpointv3.LocalityLbEndpoints)
			first.LbEndpoints = first.LbEndpoints[:1]
			first.LoadBalancingWeight = first.LbEndpoints[0].GetLoadBalancingWeight()
			return []*endpointv3.LocalityLbEndpoints{first}
		}
	}
	return lle
}

// inboundClusters builds inbound|<endpoint port>|| for every service port
// one of the proxy's own endpoints serves: STATIC to 127.0.0.1, as Istio.
// The name carries the endpoint (container) port, not the service port,
// so two services mapping to one workload port share one cluster.
func (r *cdsRun) inboundClusters() []*clusterv3.Cluster {
	if len(r.p.IPs) == 0 {
		return nil
	}
	// Under TPROXY the proxy connects from the client's address, which
	// loopback refuses: the application is reached on the workload's IP.
	appAddr := "127.0.0.1"
	if r.p.TProxy {
		appAddr = r.p.IPs[0]
	}
	byPort := map[uint32]*clusterv3.Cluster{}
	served := map[uint32][]*registry.Service{} // the services each port serves
	for _, svc := range r.s.Services() {
		eps := r.s.Endpoints(svc.Namespace, svc.Hostname)
		for _, port := range svc.Ports {
			for i := range eps {
				ep := &eps[i]
				if !slices.Contains(r.p.IPs, ep.Address) {
					continue
				}
				tp := ep.PortFor(port)
				if l := served[tp]; len(l) == 0 || l[len(l)-1].Hostname != svc.Hostname || l[len(l)-1].Namespace != svc.Namespace {
					served[tp] = append(l, &svc)
				}
				if _, ok := byPort[tp]; ok {
					continue
				}
				name := InboundCluster(tp)
				c := &clusterv3.Cluster{
					Name:                 name,
					ClusterDiscoveryType: clusterType(clusterv3.Cluster_STATIC),
					ConnectTimeout:       r.connectTimeout(),
					CircuitBreakers:      defaultCircuitBreakers(),
					LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
						LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(appAddr, tp, true, 1)}}}},
				}
				if isH2(port.Protocol) {
					(&httpOptions{h2: &corev3.Http2ProtocolOptions{}}).apply(c)
				} else if ldsIsAuto(registry.ProtocolOf(port)) {
					(&httpOptions{downstream: true}).apply(c)
				}
				byPort[tp] = c
			}
		}
	}
	out := make([]*clusterv3.Cluster, 0, len(byPort))
	for tp, c := range byPort {
		svcs := served[tp]
		sort.SliceStable(svcs, func(i, j int) bool { return svcs[i].Hostname < svcs[j].Hostname })
		c.Metadata = withServices(nil, svcs...)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// blackHoleCluster has no endpoints: traffic sent to it fails.
func (r *cdsRun) blackHoleCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: BlackHoleCluster, ClusterDiscoveryType: clusterType(clusterv3.Cluster_STATIC),
		ConnectTimeout: r.connectTimeout()}
}

// passthroughCluster forwards to the original destination (ALLOW_ANY).
func (r *cdsRun) passthroughCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: PassthroughCluster, ClusterDiscoveryType: clusterType(clusterv3.Cluster_ORIGINAL_DST),
		LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ConnectTimeout: r.connectTimeout(), CircuitBreakers: defaultCircuitBreakers()}
}

// inboundPassthroughCluster forwards captured inbound traffic to the
// application, binding to 127.0.0.6 as Istio does so that the capture rules
// can tell this traffic from the application's own outbound traffic.
func (r *cdsRun) inboundPassthroughCluster() *clusterv3.Cluster {
	if r.p.TProxy {
		// original_src on virtualInbound sets the source instead.
		return &clusterv3.Cluster{Name: InboundPassthroughCluster, ClusterDiscoveryType: clusterType(clusterv3.Cluster_ORIGINAL_DST),
			LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ConnectTimeout: r.connectTimeout(), CircuitBreakers: defaultCircuitBreakers()}
	}
	return &clusterv3.Cluster{Name: InboundPassthroughCluster, ClusterDiscoveryType: clusterType(clusterv3.Cluster_ORIGINAL_DST),
		LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ConnectTimeout: r.connectTimeout(), CircuitBreakers: defaultCircuitBreakers(),
		UpstreamBindConfig: &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{
			Address: "127.0.0.6", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}}}}
}
