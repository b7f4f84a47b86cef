// Package translate turns a model.Snapshot into the Envoy v3 xDS resources
// (LDS, RDS, CDS, EDS) one proxy needs. It is pure: no I/O, no clocks, no
// globals; the same snapshot and proxy always give the same resources, which
// golden tests pin down (testdata/*.yaml in, testdata/*.json out).
package translate

import (
	"fmt"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/types/known/structpb"
)

// Well-known listener and cluster names, as Istio names them so that
// operators' tools and habits carry over.
const (
	// VirtualOutboundListener captures outbound traffic on 15001.
	VirtualOutboundListener = "virtualOutbound"
	// VirtualInboundListener captures inbound traffic on 15006.
	VirtualInboundListener = "virtualInbound"
	// BlackHoleCluster refuses traffic (REGISTRY_ONLY, unknown routes).
	BlackHoleCluster = "BlackHoleCluster"
	// PassthroughCluster forwards to the original destination (ALLOW_ANY).
	PassthroughCluster = "PassthroughCluster"
	// InboundPassthroughCluster forwards captured inbound traffic to the app.
	InboundPassthroughCluster = "InboundPassthroughCluster"

	// TProxyMark marks the proxy's source-preserving connections to the
	// application under TPROXY capture, as Istio's 1337 (weft-proxy
	// iptables --tproxy-mark's default): the capture rules route the
	// application's replies back to the proxy by it.
	TProxyMark = 1337

	// OutboundCapturePort and InboundCapturePort are the capture ports.
	OutboundCapturePort = 15001
	InboundCapturePort  = 15006
)

// OutboundCluster names the cluster for a service port and subset:
// "outbound|<port>|<subset>|<hostname>".
func OutboundCluster(port uint32, subset, hostname string) string {
	return fmt.Sprintf("outbound|%d|%s|%s", port, subset, hostname)
}

// InboundCluster names the cluster for the workload's own port:
// "inbound|<port>||".
func InboundCluster(port uint32) string { return fmt.Sprintf("inbound|%d||", port) }

// ExplicitInboundListener names an explicit-mode sidecar's inbound
// listener on its sidecar port: "explicit_inbound_<port>".
func ExplicitInboundListener(sidecarPort uint32) string {
	return "explicit_inbound_" + strconv.FormatUint(uint64(sidecarPort), 10)
}

// ParseOutboundCluster splits an outbound cluster name.
func ParseOutboundCluster(name string) (port uint32, subset, hostname string, ok bool) {
	parts := strings.SplitN(name, "|", 4)
	if len(parts) != 4 || parts[0] != "outbound" {
		return 0, "", "", false
	}
	n, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return 0, "", "", false
	}
	return uint32(n), parts[2], parts[3], true
}

// OutboundRouteName names the RDS config shared by all HTTP services on one
// port of a sidecar ("8080"), as Istio does.
func OutboundRouteName(port uint32) string { return strconv.FormatUint(uint64(port), 10) }

// ProxylessListenerName is the name a gRPC xds:/// client asks for:
// "<hostname>:<port>".
func ProxylessListenerName(hostname string, port uint32) string {
	return hostname + ":" + strconv.FormatUint(uint64(port), 10)
}

// IstioMetadataKey is the filter metadata namespace under which istiod
// names the config a resource came from, and ConfigMetadataField its
// field: "/apis/networking.istio.io/v1/namespaces/<ns>/<kind>/<name>".
// istioctl proxy-config (and weft's) shows it as a cluster's DESTINATION
// RULE and a route's VIRTUAL SERVICE.
const (
	IstioMetadataKey    = "istio"
	ConfigMetadataField = "config"
	// ServicesMetadataField lists, on a cluster, the services it carries
	// traffic for ({host, name, namespace}), as istiod sets it: the
	// standard metrics' destination_service labels read the first.
	ServicesMetadataField = "services"
)

// ConfigPath is the istio.config value for an Istio networking object;
// kind is istiod's resource path segment, as "destination-rule".
func ConfigPath(kind, namespace, name string) string {
	return "/apis/networking.istio.io/v1/namespaces/" + namespace + "/" + kind + "/" + name
}

// ParseConfigPath returns name.namespace and the kind of an istio.config
// value, and false for anything else.
func ParseConfigPath(p string) (kind, nameNamespace string, ok bool) {
	rest, found := strings.CutPrefix(p, "/apis/networking.istio.io/")
	parts := strings.Split(rest, "/")
	if !found || len(parts) != 5 || parts[1] != "namespaces" {
		return "", "", false
	}
	return parts[3], parts[4] + "." + parts[2], true
}

// configMetadata is the metadata istiod sets on a resource built from one
// Istio object.
func configMetadata(kind, namespace, name string) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{IstioMetadataKey: {Fields: map[string]*structpb.Value{
		ConfigMetadataField: structpb.NewStringValue(ConfigPath(kind, namespace, name)),
	}}}}
}

// withServices adds svcs as istio.services to md (nil: new metadata).
func withServices(md *corev3.Metadata, svcs ...*registry.Service) *corev3.Metadata {
	if len(svcs) == 0 {
		return md
	}
	if md == nil {
		md = &corev3.Metadata{}
	}
	if md.FilterMetadata == nil {
		md.FilterMetadata = map[string]*structpb.Struct{}
	}
	istio := md.FilterMetadata[IstioMetadataKey]
	if istio == nil {
		istio = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		md.FilterMetadata[IstioMetadataKey] = istio
	}
	list := make([]*structpb.Value, 0, len(svcs))
	for _, s := range svcs {
		name, _ := registry.ShortName(s.Hostname)
		list = append(list, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"host": structpb.NewStringValue(s.Hostname), "name": structpb.NewStringValue(name),
			"namespace": structpb.NewStringValue(s.Namespace),
		}}))
	}
	istio.Fields[ServicesMetadataField] = structpb.NewListValue(&structpb.ListValue{Values: list})
	return md
}
