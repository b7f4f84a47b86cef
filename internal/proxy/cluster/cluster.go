// Package cluster is weft-proxy's upstream side: it compiles the Cluster
// and ClusterLoadAssignment resources of CDS and EDS into an immutable
// Cluster (plain Go settings the proxy's connection, HTTP and TLS layers
// read) and picks endpoints for requests.
//
// A Cluster carries a live *State that outlives configuration updates of
// the same cluster name (Manager.Update hands it over): circuit-breaker
// counters, per-endpoint in-flight requests and passive outlier detection
// (ejections), kept for every endpoint whose address persists.
//
// Picking honours endpoint health from EDS, outlier ejections, Envoy's
// healthy panic threshold and locality weights, with the load-balancing
// algorithms of package lb. Compile rejects, with an error naming the
// cluster and the field, every setting weft-proxy cannot honour and whose
// absence would change behaviour, so that the xDS client NACKs the update;
// fields that only tune performance or statistics are ignored. The list of
// rejected settings is in compile.go.
//
// DNS clusters (STRICT_DNS, LOGICAL_DNS) resolve their hostnames in
// Manager.Run, a goroutine the proxy starts; endpoints given as IP
// addresses need no resolution and are usable at once.
//
// Nothing here logs or does I/O besides DNS lookups through the injected
// Resolver; Pick, Acquire and Report are safe for concurrent use and do
// not allocate in the steady state.
package cluster

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/internal/proxy/cluster/lb"
)

// Type is the cluster's service discovery type.
type Type int

const (
	// Static clusters list their endpoints in the cluster itself.
	Static Type = iota
	// EDS clusters get their endpoints from a ClusterLoadAssignment.
	EDS
	// StrictDNS clusters resolve every hostname and use all addresses.
	StrictDNS
	// LogicalDNS clusters resolve one hostname and use its first address.
	LogicalDNS
	// OriginalDst clusters send each request to its original destination.
	OriginalDst
)

// String returns Envoy's name of the type.
func (t Type) String() string {
	return [...]string{"STATIC", "EDS", "STRICT_DNS", "LOGICAL_DNS", "ORIGINAL_DST"}[t]
}

// Protocol is the upstream HTTP protocol.
type Protocol int

const (
	// HTTP1 speaks HTTP/1.1 upstream (the default).
	HTTP1 Protocol = iota
	// HTTP2 speaks HTTP/2 (h2c without TLS) upstream.
	HTTP2
	// DownstreamProtocol uses the protocol of the downstream request.
	DownstreamProtocol
	// AutoProtocol negotiates with ALPN (HTTP/2 if offered, else HTTP/1.1).
	AutoProtocol
)

// DNSFamily selects the addresses of DNS resolution.
type DNSFamily int

const (
	// DNSAuto prefers IPv6, falling back to IPv4 (Envoy's AUTO).
	DNSAuto DNSFamily = iota
	// DNSV4Only keeps IPv4 addresses.
	DNSV4Only
	// DNSV6Only keeps IPv6 addresses.
	DNSV6Only
	// DNSV4Preferred prefers IPv4, falling back to IPv6.
	DNSV4Preferred
	// DNSAll keeps both families.
	DNSAll
)

// Cluster is one compiled upstream cluster. Its settings never change
// after Compile; its State is live and shared with later versions of the
// same cluster once a Manager took it over.
type Cluster struct {
	// Name is the cluster name (CDS resource name).
	Name string
	// Type is the discovery type.
	Type Type
	// Policy is the load-balancing policy (unused by OriginalDst).
	Policy lb.Policy
	// LB tunes the policy (ring sizes, Maglev table size, choice count).
	LB lb.Config
	// SlowStart ramps up the weight of endpoints that joined recently
	// (round robin and least request only); nil: off.
	SlowStart *SlowStart
	// ConnectTimeout bounds connection establishment. Default 5s.
	ConnectTimeout time.Duration
	// PanicThreshold is the healthy panic threshold in percent: when fewer
	// endpoints than this are available, picking ignores health. 0
	// disables panic mode. Default 50.
	PanicThreshold float64
	// OverprovisioningFactor scales locality availability, in percent.
	// Default 140.
	OverprovisioningFactor uint32
	// Limits are the circuit-breaker thresholds (default priority).
	Limits Limits
	// Outlier is passive outlier detection; nil when disabled.
	Outlier *OutlierConfig
	// HTTP holds the upstream HTTP settings.
	HTTP HTTPOptions
	// TLS holds the upstream TLS settings; nil means plaintext.
	TLS *UpstreamTLS
	// BindAddress is the local address upstream connections bind to
	// (upstream_bind_config); invalid when unset.
	BindAddress netip.Addr
	// TCPKeepalive is the upstream socket keepalive; nil when unset.
	TCPKeepalive *TCPKeepalive
	// PerConnectionBufferLimit is the per-connection buffer limit in
	// bytes; 0 means the proxy's default (Envoy's 1 MiB).
	PerConnectionBufferLimit uint32
	// DNSRefreshRate is how often DNS clusters re-resolve. Default 5s.
	DNSRefreshRate time.Duration
	// DNSFailureRefreshRate is the retry delay after a failed
	// resolution. Default DNSRefreshRate.
	DNSFailureRefreshRate time.Duration
	// DNSFamily filters resolved addresses. Default DNSAuto.
	DNSFamily DNSFamily
	// OriginalDstHeader, when set, names the request header that carries
	// the original destination ("ip:port") of OriginalDst clusters; the
	// proxy reads it into PickContext.OriginalDst.
	OriginalDstHeader string
	// OriginalDstPort, when non-zero, replaces the port of the original
	// destination (upstream_port_override).
	OriginalDstPort uint32
	// Service is the first service of the cluster's istio.services
	// metadata: the destination_service of its standard metrics (zero
	// without one).
	Service ServiceRef

	// endpoints of Static and EDS clusters (and IP endpoints of DNS
	// clusters), in load-assignment order.
	endpoints []*Endpoint
	// dnsTargets are the hostnames DNS clusters resolve.
	dnsTargets []dnsTarget
	// resolved is the current endpoint list of DNS clusters.
	resolved atomic.Pointer[resolution]
	// hosts caches the pick structures for the State's generation.
	hosts   atomic.Pointer[hostSet]
	buildMu sync.Mutex
	// state is the live state; replaced only before publication.
	state *State
}

// ServiceRef names a service as istiod's istio.services cluster metadata
// does.
type ServiceRef struct {
	Host, Name, Namespace string
}

// SlowStart is Envoy's slow start mode: for Window after an endpoint
// joins the cluster, while healthy, its weight is scaled by
// max(MinWeight, (age / Window)^(1/Aggression)), age at least 1 ms.
type SlowStart struct {
	Window     time.Duration
	Aggression float64 // > 0; 1 ramps up linearly
	MinWeight  float64 // a fraction, Envoy's min_weight_percent / 100
}

// factor is the weight scale of an endpoint that joined age ago, and
// whether it is still in its window.
func (s *SlowStart) factor(age time.Duration) (float64, bool) {
	if age >= s.Window {
		return 1, false
	}
	f := float64(max(age, time.Millisecond)) / float64(s.Window)
	if s.Aggression != 1 {
		f = math.Pow(f, 1/s.Aggression)
	}
	return max(f, s.MinWeight), true
}

// slowStartRefresh is how often the weights of a cluster with endpoints
// in slow start are worked out again.
const slowStartRefresh = time.Second

// State returns the cluster's live state.
func (c *Cluster) State() *State { return c.state }

// Endpoints returns the cluster's current endpoints: the load assignment's
// for Static and EDS clusters, the latest resolution's for DNS clusters,
// none for OriginalDst. The slice must not be modified.
func (c *Cluster) Endpoints() []*Endpoint {
	if c.Type == StrictDNS || c.Type == LogicalDNS {
		if r := c.resolved.Load(); r != nil {
			return r.endpoints
		}
	}
	return c.endpoints
}

// Limits are circuit-breaker thresholds; Envoy's defaults are 1024
// connections, pending requests and requests and 3 retries.
type Limits struct {
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries uint32
	// RetryBudget, when set, replaces MaxRetries: concurrent retries may
	// be at most BudgetPercent of the active and pending requests, and at
	// least MinRetryConcurrency.
	RetryBudget *RetryBudget
}

// RetryBudget limits retries relative to the load (Envoy's
// circuit_breakers retry_budget).
type RetryBudget struct {
	// BudgetPercent of active plus pending requests. Default 20.
	BudgetPercent float64
	// MinRetryConcurrency is the floor. Default 3.
	MinRetryConcurrency uint32
}

// OutlierConfig is passive outlier detection (Envoy's defaults where the
// resource leaves a field unset).
type OutlierConfig struct {
	// Consecutive5xx ejects after this many 5xx in a row. Default 5.
	Consecutive5xx uint32
	// Enforcing5xx is the percentage of such detections that eject.
	// Default 100.
	Enforcing5xx uint32
	// ConsecutiveGatewayFailure ejects after this many 502/503/504 (or
	// local failures) in a row. Default 5.
	ConsecutiveGatewayFailure uint32
	// EnforcingGatewayFailure is the percentage of such detections that
	// eject. Default 0 (Envoy's).
	EnforcingGatewayFailure uint32
	// SplitLocalOrigin counts local failures (connect failure, reset,
	// timeout) apart from HTTP statuses.
	SplitLocalOrigin bool
	// ConsecutiveLocalOrigin ejects after this many local failures in a
	// row when SplitLocalOrigin. Default 5.
	ConsecutiveLocalOrigin uint32
	// EnforcingLocalOrigin is the percentage of such detections that
	// eject. Default 100.
	EnforcingLocalOrigin uint32
	// Interval is the period of un-ejection sweeps. Default 10s.
	Interval time.Duration
	// BaseEjectionTime is multiplied by the number of times a host was
	// ejected. Default 30s.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps an ejection. Default max(300s, BaseEjectionTime).
	MaxEjectionTime time.Duration
	// MaxEjectionPercent caps the share of ejected endpoints. Default 10.
	MaxEjectionPercent uint32
	// AlwaysEjectOne lets one endpoint be ejected whatever
	// MaxEjectionPercent says.
	AlwaysEjectOne bool
}

// HTTPOptions are the upstream HTTP protocol options.
type HTTPOptions struct {
	// Protocol is the upstream protocol. Default HTTP1.
	Protocol Protocol
	// IdleTimeout closes idle upstream connections; 0 means Envoy's 1h.
	IdleTimeout time.Duration
	// IdleTimeoutSet reports whether IdleTimeout was configured (0 then
	// disables it).
	IdleTimeoutSet bool
	// MaxConnectionDuration closes connections this old; 0 means none.
	MaxConnectionDuration time.Duration
	// MaxStreamDuration bounds each request; 0 means none.
	MaxStreamDuration time.Duration
	// MaxRequestsPerConnection closes a connection after this many
	// requests; 0 means unlimited.
	MaxRequestsPerConnection uint32
	// MaxHeadersCount bounds response headers; 0 means Envoy's 100.
	MaxHeadersCount uint32
	// MaxConcurrentStreams bounds HTTP/2 streams per connection; 0 means
	// Envoy's 2^31-1.
	MaxConcurrentStreams uint32
	// InitialStreamWindowSize and InitialConnectionWindowSize are HTTP/2
	// flow-control windows in bytes; 0 means the defaults.
	InitialStreamWindowSize, InitialConnectionWindowSize uint32
	// AutoSNI sets SNI from the request's Host header.
	AutoSNI bool
	// AutoSANValidation checks the server certificate against the Host.
	AutoSANValidation bool
}

// TCPKeepalive is upstream socket keepalive; zero fields mean the OS
// default.
type TCPKeepalive struct {
	Probes   uint32
	Time     time.Duration
	Interval time.Duration
}

// Locality is where an endpoint runs.
type Locality struct {
	Region, Zone, SubZone string
}

// String is "region/zone/subzone".
func (l Locality) String() string { return l.Region + "/" + l.Zone + "/" + l.SubZone }
