package cluster

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/weftmesh/weft/internal/proxy/cluster/lb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ErrUnsupported marks Compile errors for settings weft-proxy does not
// implement (the xDS client NACKs them). Compile rejects, besides invalid
// values:
//
//   - cluster: custom cluster_type, load_balancing_policy, lb_subset_config,
//     health_checks (active health checking), transport_socket_matches,
//     filters, dns_resolvers / typed_dns_resolver_config /
//     dns_resolution_config, lrs_server, upstream_config,
//     upstream_bind_config other than a source address, lb_policy
//     CLUSTER_PROVIDED on a type other than ORIGINAL_DST;
//   - lb configs: least request active_request_bias
//     other than 1, original_dst_lb_config.metadata_key,
//     common_lb_config.consistent_hashing_lb_config (hostname hashing,
//     bounded loads) and override_host_status;
//   - circuit_breakers: retry_budget.budget_interval, max_connection_pools,
//     per_host_thresholds;
//   - outlier_detection: success-rate ejection (enforcing_success_rate
//     unset or above 0, enforcing_local_origin_success_rate above 0),
//     failure-percentage ejection (enforcing_failure_percentage or its
//     local-origin variant above 0), monitors, detect_degraded_hosts;
//   - load assignment: priorities above 0, drop_overloads, named_endpoints,
//     LEDS, endpoints that are not TCP socket addresses (pipes, UDP, named
//     ports, custom resolvers);
//   - typed_extension_protocol_options other than the upstream
//     HttpProtocolOptions, HTTP/3, upstream HTTP filters, hash/retry
//     policies and outlier error matchers in HttpProtocolOptions;
//   - transport sockets other than TLS and raw_buffer, and the TLS settings
//     listed in compile_tls.go.
var ErrUnsupported = errors.New("not supported")

// Defaults, Envoy's.
const (
	defaultConnectTimeout = 5 * time.Second
	defaultPanicThreshold = 50
	defaultOverprovision  = 140
	defaultDNSRefreshRate = 5 * time.Second
	defaultLimit          = 1024
	defaultMaxRetries     = 3
)

// compiler accumulates the first error of one Compile call.
type compiler struct {
	name string
	err  error
}

// unsupported records that field is set to something weft cannot honour.
func (k *compiler) unsupported(field string) {
	if k.err == nil {
		k.err = fmt.Errorf("cluster %q: %s: %w", k.name, field, ErrUnsupported)
	}
}

// invalid records a bad value of field.
func (k *compiler) invalid(field, format string, args ...any) {
	if k.err == nil {
		k.err = fmt.Errorf("cluster %q: %s: %s", k.name, field, fmt.Sprintf(format, args...))
	}
}

// Compile turns a CDS cluster and, for EDS clusters, its load assignment
// (nil until EDS delivers it: the cluster then has no endpoints) into a
// Cluster with a new State. la is ignored for other types, which carry
// their endpoints in c.load_assignment. Settings weft cannot honour are
// an error naming the cluster and the field (wrapping ErrUnsupported).
func Compile(c *clusterv3.Cluster, la *endpointv3.ClusterLoadAssignment) (*Cluster, error) {
	if c == nil || c.GetName() == "" {
		return nil, errors.New("cluster: no name")
	}
	k := &compiler{name: c.GetName()}
	out := &Cluster{
		Name:                   c.GetName(),
		ConnectTimeout:         defaultConnectTimeout,
		PanicThreshold:         defaultPanicThreshold,
		OverprovisioningFactor: defaultOverprovision,
		DNSRefreshRate:         defaultDNSRefreshRate,
	}
	k.checkUnsupported(c)
	k.discoveryType(c, out)
	k.lbPolicy(c, out)
	k.commonLB(c.GetCommonLbConfig(), out)
	out.Limits = k.limits(c.GetCircuitBreakers())
	out.Outlier = k.outlier(c.GetOutlierDetection())
	k.connection(c, out)
	out.HTTP = k.httpOptions(c)
	out.TLS = k.transportSocket(c.GetTransportSocket())
	out.Service = metadataService(c.GetMetadata())
	switch out.Type {
	case EDS:
		if la != nil {
			want := c.GetEdsClusterConfig().GetServiceName()
			if want == "" {
				want = c.GetName()
			}
			if la.GetClusterName() != want {
				k.invalid("load_assignment.cluster_name", "%q, want %q (eds_cluster_config.service_name)", la.GetClusterName(), want)
			}
			k.loadAssignment("load_assignment", la, out, false)
		}
	case OriginalDst:
		if len(c.GetLoadAssignment().GetEndpoints()) > 0 {
			k.invalid("load_assignment", "ORIGINAL_DST clusters take no endpoints")
		}
	default:
		k.loadAssignment("load_assignment", c.GetLoadAssignment(), out, out.Type == StrictDNS || out.Type == LogicalDNS)
	}
	if k.err != nil {
		return nil, k.err
	}
	out.state = newState(nil)
	out.state.configure(out)
	out.state.bind(out.endpoints)
	return out, nil
}

// checkUnsupported rejects cluster fields that change behaviour and that
// weft does not implement.
func (k *compiler) checkUnsupported(c *clusterv3.Cluster) {
	switch {
	case c.GetClusterType() != nil:
		k.unsupported("cluster_type " + c.GetClusterType().GetName())
	case c.GetLoadBalancingPolicy() != nil:
		k.unsupported("load_balancing_policy")
	case c.GetLbSubsetConfig() != nil && len(c.GetLbSubsetConfig().GetSubsetSelectors()) > 0:
		k.unsupported("lb_subset_config")
	case len(c.GetHealthChecks()) > 0:
		k.unsupported("health_checks")
	case len(c.GetTransportSocketMatches()) > 0 || c.GetTransportSocketMatcher() != nil:
		k.unsupported("transport_socket_matches")
	case len(c.GetFilters()) > 0:
		k.unsupported("filters")
	//lint:ignore SA1019 rejected, not used
	case len(c.GetDnsResolvers()) > 0 || c.GetTypedDnsResolverConfig() != nil || c.GetDnsResolutionConfig() != nil:
		k.unsupported("dns_resolvers")
	case c.GetLrsServer() != nil:
		k.unsupported("lrs_server")
	case c.GetUpstreamConfig() != nil:
		k.unsupported("upstream_config")
	case c.GetCircuitBreakers() != nil && len(c.GetCircuitBreakers().GetPerHostThresholds()) > 0:
		k.unsupported("circuit_breakers.per_host_thresholds")
	}
}

func (k *compiler) discoveryType(c *clusterv3.Cluster, out *Cluster) {
	switch c.GetType() {
	case clusterv3.Cluster_STATIC:
		out.Type = Static
	case clusterv3.Cluster_EDS:
		out.Type = EDS
		switch src := c.GetEdsClusterConfig().GetEdsConfig(); {
		case src == nil, src.GetAds() != nil, src.GetSelf() != nil:
		default:
			k.unsupported("eds_cluster_config.eds_config (only ADS)")
		}
	case clusterv3.Cluster_STRICT_DNS:
		out.Type = StrictDNS
	case clusterv3.Cluster_LOGICAL_DNS:
		out.Type = LogicalDNS
	case clusterv3.Cluster_ORIGINAL_DST:
		out.Type = OriginalDst
	default:
		k.unsupported(fmt.Sprintf("type %v", c.GetType()))
	}
	if out.Type == StrictDNS || out.Type == LogicalDNS {
		//lint:ignore SA1019 the deprecated field is still what pilot and Envoy use
		if d := dur(c.GetDnsRefreshRate()); d > 0 {
			out.DNSRefreshRate = d
		}
		out.DNSFailureRefreshRate = out.DNSRefreshRate
		//lint:ignore SA1019 the deprecated field is still what pilot and Envoy use
		if d := dur(c.GetDnsFailureRefreshRate().GetBaseInterval()); d > 0 {
			out.DNSFailureRefreshRate = d
		}
		switch c.GetDnsLookupFamily() {
		case clusterv3.Cluster_AUTO:
			out.DNSFamily = DNSAuto
		case clusterv3.Cluster_V4_ONLY:
			out.DNSFamily = DNSV4Only
		case clusterv3.Cluster_V6_ONLY:
			out.DNSFamily = DNSV6Only
		case clusterv3.Cluster_V4_PREFERRED:
			out.DNSFamily = DNSV4Preferred
		case clusterv3.Cluster_ALL:
			out.DNSFamily = DNSAll
		default:
			k.invalid("dns_lookup_family", "unknown value %v", c.GetDnsLookupFamily())
		}
	}
}

// slowStart reads a slow start config (nil when unset or without a
// window, which Envoy takes as off). The aggression's runtime key is not
// looked up: weft-proxy has no runtime, so its default value applies.
func (k *compiler) slowStart(field string, cfg *clusterv3.Cluster_SlowStartConfig) *SlowStart {
	w := cfg.GetSlowStartWindow()
	if w == nil {
		return nil
	}
	out := &SlowStart{Window: w.AsDuration(), Aggression: 1, MinWeight: 0.1}
	if !w.IsValid() || out.Window < 0 {
		k.invalid(field+".slow_start_window", "not a valid duration")
		return nil
	}
	if out.Window == 0 {
		return nil
	}
	if a := cfg.GetAggression(); a != nil {
		if v := a.GetDefaultValue(); v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			k.invalid(field+".aggression", "%v, must be above 0", v)
		} else {
			out.Aggression = v
		}
	}
	if p := cfg.GetMinWeightPercent(); p != nil {
		if v := p.GetValue(); v < 0 || v > 100 || math.IsNaN(v) {
			k.invalid(field+".min_weight_percent", "%v is not a percentage", v)
		} else {
			out.MinWeight = v / 100
		}
	}
	return out
}

func (k *compiler) lbPolicy(c *clusterv3.Cluster, out *Cluster) {
	switch p := c.GetLbPolicy(); p {
	case clusterv3.Cluster_ROUND_ROBIN:
		out.Policy = lb.RoundRobin
		out.SlowStart = k.slowStart("round_robin_lb_config.slow_start_config", c.GetRoundRobinLbConfig().GetSlowStartConfig())
	case clusterv3.Cluster_LEAST_REQUEST:
		out.Policy = lb.LeastRequest
		cfg := c.GetLeastRequestLbConfig()
		out.LB.Choices = 2
		if n := cfg.GetChoiceCount(); n != nil {
			if n.GetValue() < 2 {
				k.invalid("least_request_lb_config.choice_count", "%d, must be at least 2", n.GetValue())
			}
			out.LB.Choices = int(min(n.GetValue(), 100))
		}
		if b := cfg.GetActiveRequestBias(); b != nil && b.GetDefaultValue() != 1 {
			k.unsupported("least_request_lb_config.active_request_bias other than 1")
		}
		out.SlowStart = k.slowStart("least_request_lb_config.slow_start_config", cfg.GetSlowStartConfig())
	case clusterv3.Cluster_RANDOM:
		out.Policy = lb.Random
	case clusterv3.Cluster_RING_HASH:
		out.Policy = lb.RingHash
		cfg := c.GetRingHashLbConfig()
		out.LB.MinRingSize, out.LB.MaxRingSize = lb.DefaultMinRingSize, lb.DefaultMaxRingSize
		if v := cfg.GetMinimumRingSize(); v != nil {
			out.LB.MinRingSize = v.GetValue()
		}
		if v := cfg.GetMaximumRingSize(); v != nil {
			out.LB.MaxRingSize = v.GetValue()
		}
		// The hash function (XX_HASH, MURMUR_HASH_2) only places hosts:
		// weft uses its own, the same on every weft-proxy.
		switch {
		case out.LB.MaxRingSize > lb.DefaultMaxRingSize:
			k.invalid("ring_hash_lb_config.maximum_ring_size", "%d above %d", out.LB.MaxRingSize, lb.DefaultMaxRingSize)
		case out.LB.MinRingSize == 0 || out.LB.MinRingSize > out.LB.MaxRingSize:
			k.invalid("ring_hash_lb_config.minimum_ring_size", "%d, must be in 1..%d", out.LB.MinRingSize, out.LB.MaxRingSize)
		}
	case clusterv3.Cluster_MAGLEV:
		out.Policy = lb.Maglev
		out.LB.TableSize = lb.DefaultTableSize
		if v := c.GetMaglevLbConfig().GetTableSize(); v != nil {
			out.LB.TableSize = v.GetValue()
			if !lb.ValidTableSize(v.GetValue()) {
				k.invalid("maglev_lb_config.table_size", "%d is not a prime up to %d", v.GetValue(), lb.MaxTableSize)
			}
		}
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		if c.GetType() != clusterv3.Cluster_ORIGINAL_DST {
			k.unsupported("lb_policy CLUSTER_PROVIDED on a " + c.GetType().String() + " cluster")
		}
	default:
		k.unsupported("lb_policy " + p.String())
	}
	if c.GetType() == clusterv3.Cluster_ORIGINAL_DST {
		if p := c.GetLbPolicy(); p != clusterv3.Cluster_CLUSTER_PROVIDED && p != clusterv3.Cluster_ROUND_ROBIN {
			k.invalid("lb_policy", "%v on an ORIGINAL_DST cluster, want CLUSTER_PROVIDED", p)
		}
		od := c.GetOriginalDstLbConfig()
		if od.GetUseHttpHeader() {
			out.OriginalDstHeader = "x-envoy-original-dst-host"
			if h := od.GetHttpHeaderName(); h != "" {
				out.OriginalDstHeader = h
			}
		}
		if p := od.GetUpstreamPortOverride(); p != nil {
			if p.GetValue() == 0 || p.GetValue() > 65535 {
				k.invalid("original_dst_lb_config.upstream_port_override", "%d", p.GetValue())
			}
			out.OriginalDstPort = p.GetValue()
		}
		if od.GetMetadataKey() != nil {
			k.unsupported("original_dst_lb_config.metadata_key")
		}
	}
}

func (k *compiler) commonLB(cfg *clusterv3.Cluster_CommonLbConfig, out *Cluster) {
	if cfg == nil {
		return
	}
	if p := cfg.GetHealthyPanicThreshold(); p != nil {
		if p.GetValue() < 0 || p.GetValue() > 100 {
			k.invalid("common_lb_config.healthy_panic_threshold", "%v not in 0..100", p.GetValue())
		}
		out.PanicThreshold = p.GetValue()
	}
	if cfg.GetConsistentHashingLbConfig().GetUseHostnameForHashing() || cfg.GetConsistentHashingLbConfig().GetHashBalanceFactor() != nil {
		k.unsupported("common_lb_config.consistent_hashing_lb_config")
	}
	if cfg.GetOverrideHostStatus() != nil {
		k.unsupported("common_lb_config.override_host_status")
	}
	// zone_aware_lb_config needs the local cluster, which weft-proxy does
	// not know; like Envoy without it, routing stays locality-weighted.
}

// limits reads the default-priority thresholds (HIGH priority ones only
// apply to high-priority routes, which weft does not emit).
func (k *compiler) limits(cb *clusterv3.CircuitBreakers) Limits {
	l := Limits{MaxConnections: defaultLimit, MaxPendingRequests: defaultLimit, MaxRequests: defaultLimit, MaxRetries: defaultMaxRetries}
	set := func(dst *uint32, v *wrapperspb.UInt32Value) {
		if v != nil {
			*dst = v.GetValue()
		}
	}
	for _, th := range cb.GetThresholds() {
		if th.GetMaxConnectionPools() != nil {
			k.unsupported("circuit_breakers.thresholds.max_connection_pools")
		}
		if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		set(&l.MaxConnections, th.GetMaxConnections())
		set(&l.MaxPendingRequests, th.GetMaxPendingRequests())
		set(&l.MaxRequests, th.GetMaxRequests())
		set(&l.MaxRetries, th.GetMaxRetries())
		if rb := th.GetRetryBudget(); rb != nil {
			b := &RetryBudget{BudgetPercent: 20, MinRetryConcurrency: 3}
			if p := rb.GetBudgetPercent(); p != nil {
				b.BudgetPercent = p.GetValue()
			}
			if m := rb.GetMinRetryConcurrency(); m != nil {
				b.MinRetryConcurrency = m.GetValue()
			}
			if rb.GetBudgetInterval().AsDuration() > 0 {
				k.unsupported("circuit_breakers.thresholds.retry_budget.budget_interval")
			}
			l.RetryBudget = b
		}
	}
	return l
}

func (k *compiler) outlier(od *clusterv3.OutlierDetection) *OutlierConfig {
	if od == nil {
		return nil
	}
	u32 := func(v *wrapperspb.UInt32Value, def uint32) uint32 {
		if v == nil {
			return def
		}
		return v.GetValue()
	}
	pct := func(field string, v uint32) uint32 {
		if v > 100 {
			k.invalid("outlier_detection."+field, "%d above 100", v)
		}
		return v
	}
	o := &OutlierConfig{
		Consecutive5xx:            max(u32(od.GetConsecutive_5Xx(), 5), 1),
		Enforcing5xx:              pct("enforcing_consecutive_5xx", u32(od.GetEnforcingConsecutive_5Xx(), 100)),
		ConsecutiveGatewayFailure: max(u32(od.GetConsecutiveGatewayFailure(), 5), 1),
		EnforcingGatewayFailure:   pct("enforcing_consecutive_gateway_failure", u32(od.GetEnforcingConsecutiveGatewayFailure(), 0)),
		SplitLocalOrigin:          od.GetSplitExternalLocalOriginErrors(),
		ConsecutiveLocalOrigin:    max(u32(od.GetConsecutiveLocalOriginFailure(), 5), 1),
		EnforcingLocalOrigin:      pct("enforcing_consecutive_local_origin_failure", u32(od.GetEnforcingConsecutiveLocalOriginFailure(), 100)),
		Interval:                  10 * time.Second,
		BaseEjectionTime:          30 * time.Second,
		MaxEjectionPercent:        pct("max_ejection_percent", u32(od.GetMaxEjectionPercent(), 10)),
		AlwaysEjectOne:            od.GetAlwaysEjectOneHost().GetValue(),
	}
	if d := dur(od.GetInterval()); d > 0 {
		o.Interval = d
	}
	if d := dur(od.GetBaseEjectionTime()); d > 0 {
		o.BaseEjectionTime = d
	}
	o.MaxEjectionTime = max(300*time.Second, o.BaseEjectionTime)
	if d := dur(od.GetMaxEjectionTime()); d > 0 {
		o.MaxEjectionTime = d
	}
	switch {
	case od.GetEnforcingSuccessRate() == nil || od.GetEnforcingSuccessRate().GetValue() > 0:
		k.unsupported("outlier_detection.enforcing_success_rate (success-rate ejection; set it to 0)")
	case od.GetEnforcingLocalOriginSuccessRate().GetValue() > 0:
		k.unsupported("outlier_detection.enforcing_local_origin_success_rate")
	case od.GetEnforcingFailurePercentage().GetValue() > 0 || od.GetEnforcingFailurePercentageLocalOrigin().GetValue() > 0:
		k.unsupported("outlier_detection.enforcing_failure_percentage")
	case len(od.GetMonitors()) > 0:
		k.unsupported("outlier_detection.monitors")
	case od.GetDetectDegradedHosts().GetValue():
		k.unsupported("outlier_detection.detect_degraded_hosts")
	}
	return o
}

// connection reads connection-level settings.
func (k *compiler) connection(c *clusterv3.Cluster, out *Cluster) {
	if d := c.GetConnectTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
			k.invalid("connect_timeout", "%v must be positive", d.AsDuration())
		}
		out.ConnectTimeout = d.AsDuration()
	}
	if v := c.GetPerConnectionBufferLimitBytes(); v != nil {
		out.PerConnectionBufferLimit = v.GetValue()
	}
	if ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive(); ka != nil {
		out.TCPKeepalive = &TCPKeepalive{
			Probes:   ka.GetKeepaliveProbes().GetValue(),
			Time:     time.Duration(ka.GetKeepaliveTime().GetValue()) * time.Second,
			Interval: time.Duration(ka.GetKeepaliveInterval().GetValue()) * time.Second,
		}
	}
	if b := c.GetUpstreamBindConfig(); b != nil {
		//lint:ignore SA1019 rejected, not used
		if len(b.GetSocketOptions()) > 0 || len(b.GetAdditionalSourceAddresses()) > 0 || len(b.GetExtraSourceAddresses()) > 0 || b.GetLocalAddressSelector() != nil {
			k.unsupported("upstream_bind_config (only source_address)")
		}
		if sa := b.GetSourceAddress(); sa != nil {
			a, err := netip.ParseAddr(sa.GetAddress())
			if err != nil || sa.GetPortValue() != 0 {
				k.invalid("upstream_bind_config.source_address", "%q port %d: want an IP and port 0", sa.GetAddress(), sa.GetPortValue())
			}
			out.BindAddress = a
		}
	}
}

// dur converts a proto duration, nil and invalid ones to 0.
func dur(d *durationpb.Duration) time.Duration {
	if d == nil || d.CheckValid() != nil {
		return 0
	}
	return d.AsDuration()
}

// metadataService reads the first entry of istiod's istio.services
// cluster metadata ({host, name, namespace}); zero without one. Only the
// metrics read it, so a malformed entry is ignored rather than refused.
func metadataService(md *corev3.Metadata) ServiceRef {
	list := md.GetFilterMetadata()["istio"].GetFields()["services"].GetListValue().GetValues()
	if len(list) == 0 {
		return ServiceRef{}
	}
	f := list[0].GetStructValue().GetFields()
	return ServiceRef{Host: f["host"].GetStringValue(), Name: f["name"].GetStringValue(), Namespace: f["namespace"].GetStringValue()}
}
