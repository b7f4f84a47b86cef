// Package model is pilot's immutable view of the world: every Istio config
// object and the merged service registry at one moment (Snapshot), and the
// description of a connected proxy (Proxy). Snapshots are built once, never
// modified, and shared between goroutines.
package model

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// Config is one Istio config object.
type Config struct {
	// Kind is the Istio kind, e.g. "VirtualService".
	Kind            string
	Name            string
	Namespace       string
	Labels          map[string]string
	Annotations     map[string]string
	CreationTime    time.Time
	ResourceVersion string
	// Spec is the istio.io/api message (e.g. *networking.VirtualService);
	// for a Secret, a *structpb.Struct of its credential entries (SecretKind).
	Spec proto.Message
}

// Key is "Kind/namespace/name".
func (c *Config) Key() string { return c.Kind + "/" + c.Namespace + "/" + c.Name }

// Mesh holds mesh-wide settings (Istio's MeshConfig subset weft uses).
type Mesh struct {
	// RootNamespace holds mesh-wide policy. Default "istio-system".
	RootNamespace string
	// TrustDomain of SPIFFE identities. Default "cluster.local".
	TrustDomain string
	// TrustDomainAliases are trust domains whose identities are the same
	// workloads' as TrustDomain's (meshConfig.trustDomainAliases, for a
	// trust domain migration): authorization principals and the
	// identities a client accepts from a server cover them all. Sorted,
	// without TrustDomain.
	TrustDomainAliases []string
	// DomainSuffix of Kubernetes-style service names. Default "svc.cluster.local".
	DomainSuffix string
	// OutboundTrafficPolicyAllowAny lets unknown destinations pass through
	// (Istio's ALLOW_ANY, the default) instead of being refused (REGISTRY_ONLY).
	OutboundTrafficPolicyAllowAny bool
	// ConnectTimeout for upstream clusters. Default 10s.
	ConnectTimeout time.Duration
	// EnableAutoMTLS sends Istio mutual TLS to destinations whose endpoints
	// all run sidecars (label security.istio.io/tlsMode: istio) when no
	// DestinationRule sets a TLS mode (Istio's enableAutoMtls). Default true.
	EnableAutoMTLS bool
	// PathNormalization is how sidecars normalise request paths before
	// authorization and routing (Istio's pathNormalization). Default
	// PathNormalizationBase.
	PathNormalization PathNormalization
	// AccessLog holds the access log settings (accessLogFile and the file
	// access log extensionProviders); nil: none. Immutable once built.
	AccessLog *AccessLogging
	// ProxyHeaders is defaultConfig.proxyHeaders: the headers sidecars
	// add to requests and responses. The zero value is Istio's default.
	ProxyHeaders ProxyHeaders
	// Tracing holds the span reporting settings (enableTracing,
	// defaultConfig.tracing, the zipkin and opentelemetry extensionProviders and
	// defaultProviders.tracing). Immutable once built.
	Tracing Tracing
	// LocalityLB is localityLbSetting: locality load balancing for
	// clusters whose DestinationRule sets none. nil is Istio's default,
	// enabled (failover by locality for clusters with outlier
	// detection). Immutable once built.
	LocalityLB *networking.LocalityLoadBalancerSetting
}

// ProxyHeaders is ProxyConfig.proxyHeaders, as istiod applies it to a
// sidecar's connection managers and routes. The zero value is Istio's
// default: Server "istio-envoy", x-request-id generated,
// x-envoy-attempt-count sent, Envoy's debug headers
// (x-envoy-upstream-service-time, …) added, and inbound
// x-forwarded-client-cert APPEND_FORWARD with the subject, URI and DNS.
type ProxyHeaders struct {
	// ServerName replaces "istio-envoy" (server.value).
	ServerName string
	// ServerDisabled leaves the application's Server header alone and
	// adds none (server.disabled).
	ServerDisabled bool
	// RequestIDDisabled: no x-request-id is generated (requestId.disabled).
	RequestIDDisabled bool
	// AttemptCountDisabled: no x-envoy-attempt-count (attemptCount.disabled).
	AttemptCountDisabled bool
	// EnvoyDebugHeadersDisabled suppresses x-envoy-upstream-service-time
	// and the like (envoyDebugHeaders.disabled).
	EnvoyDebugHeadersDisabled bool
	// ForwardedClientCert is the inbound x-forwarded-client-cert mode
	// (forwardedClientCert: "SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD",
	// "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"); "": APPEND_FORWARD.
	ForwardedClientCert string
	// ClientCertDetails is setCurrentClientCertDetails (nil: subject, URI
	// and DNS).
	ClientCertDetails *ClientCertDetails
}

// ClientCertDetails are the parts of the client certificate that
// x-forwarded-client-cert carries.
type ClientCertDetails struct{ Subject, Cert, Chain, DNS, URI bool }

// Tracing is MeshConfig's tracing settings.
type Tracing struct {
	// Enabled is enableTracing (Istio's default true): without a
	// Telemetry or default provider, sidecars report to ZipkinAddress
	// when it is set.
	Enabled bool
	// Sampling is defaultConfig.tracing.sampling, the percentage of new
	// traces sampled (Istio's default 1).
	Sampling float64
	// ZipkinAddress is defaultConfig.tracing.zipkin.address, host:port;
	// "" (Istio's default since 1.22, which dropped
	// "zipkin.istio-system:9411"): no tracer.
	ZipkinAddress string
	// Providers are the zipkin and opentelemetry extensionProviders, by
	// name.
	Providers map[string]TracingProvider
	// DefaultProviders are defaultProviders.tracing.
	DefaultProviders []string
}

// ZipkinHostPort splits ZipkinAddress; ok is false when it is not
// host:port with a numeric port.
func (t Tracing) ZipkinHostPort() (host string, port uint32, ok bool) {
	h, p, err := net.SplitHostPort(t.ZipkinAddress)
	if err != nil {
		return "", 0, false
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, false
	}
	return h, uint32(n), true
}

// TracingProvider is a zipkin or opentelemetry extensionProvider: the
// collector service (a hostname, or "namespace/hostname") and port, and
// how spans are sent and trace ids made and carried.
type TracingProvider struct {
	Service      string
	Port         uint32
	MaxTagLength uint32
	// OTel: an opentelemetry provider (Envoy's OpenTelemetry tracer: W3C
	// trace context, spans as OTLP); else a zipkin one.
	OTel bool
	// Path is a zipkin collector's path ("" Zipkin's /api/v2/spans), or
	// with OTLPHTTP the OTLP/HTTP path.
	Path string
	// TraceID64 is zipkin's enable64bitTraceId: new traces get 64-bit ids.
	TraceID64 bool
	// W3C is zipkin's traceContextOption USE_B3_WITH_W3C_PROPAGATION: a
	// W3C traceparent is read when B3 is absent, and written beside B3.
	W3C bool
	// OTLPHTTP: an opentelemetry provider's http, spans sent over
	// OTLP/HTTP; else over OTLP/gRPC.
	OTLPHTTP bool
	// Timeout bounds an export (zipkin's timeout, opentelemetry's http or
	// grpc one; 0: the sidecar's default).
	Timeout time.Duration
	// Headers go with every export: zipkin's or opentelemetry's http
	// headers, or opentelemetry's grpc initialMetadata; envName values
	// read when the mesh config is.
	Headers []Header
}

// Header is a header name and value.
type Header struct{ Name, Value string }

// AccessLogging is MeshConfig's access log settings.
type AccessLogging struct {
	// File is accessLogFile: every sidecar logs there when no Telemetry
	// configures access logging for it ("" none; "/dev/stdout").
	File string
	// JSON is accessLogEncoding JSON (default TEXT).
	JSON bool
	// Format is accessLogFormat: an Envoy text format (TEXT) or a JSON
	// object of key → operator (JSON); "" is Istio's default.
	Format string
	// Providers are the envoyFileAccessLog extensionProviders, by name.
	Providers map[string]FileLogProvider
	// OTelProviders are the envoyOtelAls extensionProviders, by name.
	OTelProviders map[string]OTelLogProvider
	// DefaultProviders are defaultProviders.accessLogging.
	DefaultProviders []string
}

// FileLogProvider is an envoyFileAccessLog extension provider.
type FileLogProvider struct {
	Path string
	// Text is logFormat.text; Labels (logFormat.labels) make the log JSON;
	// neither: Istio's default TEXT format.
	Text   string
	Labels map[string]string
}

// OTelLogProvider is an envoyOtelAls extension provider: entries go as
// OTLP log records over gRPC to the collector service (a hostname, or
// "namespace/hostname") and port.
type OTelLogProvider struct {
	Service string
	Port    uint32
	// LogName is logName ("" Istio's otel_envoy_accesslog).
	LogName string
	// Text is logFormat.text, the record's body ("" Istio's TEXT format);
	// Labels (logFormat.labels) are its attributes.
	Text   string
	Labels map[string]string
}

// PathNormalization is Istio's MeshConfig.ProxyPathNormalization.
type PathNormalization string

// The path normalisations, as Istio names them.
const (
	// PathNormalizationNone forwards paths as received.
	PathNormalizationNone PathNormalization = "NONE"
	// PathNormalizationBase normalises per RFC 3986 ("/a/../b" → "/b",
	// "%61" → "a") and turns backslashes into slashes.
	PathNormalizationBase PathNormalization = "BASE"
	// PathNormalizationMergeSlashes is BASE plus merging slashes
	// ("//a" → "/a").
	PathNormalizationMergeSlashes PathNormalization = "MERGE_SLASHES"
	// PathNormalizationDecodeAndMergeSlashes also decodes %2F and %5C
	// first ("/a%2Fb" → "/a/b").
	PathNormalizationDecodeAndMergeSlashes PathNormalization = "DECODE_AND_MERGE_SLASHES"
)

// DefaultMesh returns Istio's defaults.
func DefaultMesh() Mesh {
	return Mesh{RootNamespace: "istio-system", TrustDomain: "cluster.local", DomainSuffix: "svc.cluster.local",
		OutboundTrafficPolicyAllowAny: true, ConnectTimeout: 10 * time.Second,
		EnableAutoMTLS: true, PathNormalization: PathNormalizationBase,
		Tracing: Tracing{Enabled: true, Sampling: 1}}
}

// Snapshot is config plus registry at one moment. Immutable.
type Snapshot struct {
	// Version identifies the snapshot (increases with every change).
	Version string
	Mesh    Mesh
	// configs by kind, each sorted oldest first (then namespace, name): the
	// order Istio uses to resolve conflicts.
	configs  map[string][]*Config
	Registry *registry.Snapshot
	// TrustBundle holds the mesh CA's trusted roots (PEM), served to
	// sidecars as the SDS secret ROOTCA; empty when discovery runs
	// without a CA.
	TrustBundle []string
}

// NewSnapshot builds a snapshot, sorting configs into conflict order.
func NewSnapshot(version string, mesh Mesh, configs []*Config, reg *registry.Snapshot) *Snapshot {
	if reg == nil {
		reg = &registry.Snapshot{Endpoints: map[string][]registry.Endpoint{}}
	}
	s := &Snapshot{Version: version, Mesh: mesh, configs: map[string][]*Config{}, Registry: reg}
	for _, c := range configs {
		s.configs[c.Kind] = append(s.configs[c.Kind], c)
	}
	for _, list := range s.configs {
		SortOldestFirst(list)
	}
	return s
}

// SortOldestFirst orders configs by creation time, then namespace and name.
func SortOldestFirst(list []*Config) {
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if !a.CreationTime.Equal(b.CreationTime) {
			return a.CreationTime.Before(b.CreationTime)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}

// Configs returns every config of kind, oldest first. Do not modify.
func (s *Snapshot) Configs(kind string) []*Config { return s.configs[kind] }

// Services returns the registry's services (sorted by hostname).
func (s *Snapshot) Services() []registry.Service { return s.Registry.Services }

// Endpoints returns the endpoints of one service.
func (s *Snapshot) Endpoints(namespace, hostname string) []registry.Endpoint {
	return s.Registry.Endpoints[registry.Key(namespace, hostname)]
}

// SecretKind is the kind of Kubernetes Secrets. Pilot keeps only what a
// gateway credential holds (CredentialKeys), PEM strings in a
// *structpb.Struct Spec, and serves them only to gateways of the Secret's
// namespace (translate, credentialName).
const SecretKind = "Secret"

// CredentialKeys are the Secret entries a gateway credential uses, as
// Istio reads them: a TLS secret's tls.crt, tls.key and ca.crt, or a
// generic secret's cert, key and cacert.
var CredentialKeys = []string{"tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert"}

// NodeType is the kind of xDS client.
type NodeType string

const (
	// Sidecar is weft-proxy (or Envoy) beside a workload.
	Sidecar NodeType = "sidecar"
	// Router is a gateway.
	Router NodeType = "router"
	// Proxyless is an xDS client library (gRPC) inside the application.
	Proxyless NodeType = "proxyless"
)

// Proxy describes a connected xDS client.
type Proxy struct {
	// ID is the node ID: "<type>~<ip>~<name>.<namespace>~<domain>" as in Istio.
	ID   string
	Type NodeType
	// IPs are the workload's addresses.
	IPs            []string
	Namespace      string
	Labels         map[string]string
	ServiceAccount string
	// WorkloadName identifies the workload (e.g. its WorkloadEntry).
	WorkloadName string
	// WorkloadGroup asks for auto-registration into this WorkloadGroup.
	WorkloadGroup string
	// Explicit is true when no traffic capture is installed: the proxy
	// gets one listener per upstream port on 127.0.0.1 instead of 15001.
	Explicit bool
	// TProxy is true when inbound capture uses TPROXY (node metadata
	// INTERCEPTION_MODE=TPROXY): connections reach 15006 with their
	// source address, which the proxy keeps on its way to the app.
	TProxy bool
	// Metadata is the node's raw metadata as strings.
	Metadata map[string]string
	// Locality is where the proxy runs, "region/zone/subzone": the
	// istio-locality label ("region.zone.subzone"), else the node's
	// locality; empty when neither says (translation then looks for the
	// proxy's own workload in the registry).
	Locality string
	// Verified is true when the proxy's xDS stream proved, with a workload
	// certificate or bootstrap token, that it is a workload of Namespace
	// (not over the plaintext port). Only then does a gateway get the
	// private keys of its namespace's Secrets (credentialName).
	Verified bool
}

// ParseNodeID splits an Istio-style node ID. It accepts bare IDs of
// proxyless clients too (type proxyless, no IP).
func ParseNodeID(id string) (typ NodeType, ip, name, namespace string, err error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return "", "", "", "", fmt.Errorf("node id %q: want <type>~<ip>~<name>.<namespace>~<domain>", id)
	}
	switch NodeType(parts[0]) {
	case Sidecar, Router, Proxyless:
	default:
		return "", "", "", "", fmt.Errorf("node id %q: unknown type %q (want sidecar, router or proxyless)", id, parts[0])
	}
	name, namespace = parts[2], ""
	if i := strings.LastIndex(parts[2], "."); i > 0 {
		name, namespace = parts[2][:i], parts[2][i+1:]
	}
	return NodeType(parts[0]), parts[1], name, namespace, nil
}
