package xdsclient

import (
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// NodeInfo describes the workload a proxy serves, as weft's discovery reads
// it from the node (see pilot/xds ProxyFromNode).
type NodeInfo struct {
	// Type is "sidecar" (the default) or "router" (a gateway).
	Type string
	// IP is the workload's primary address (the node ID's second field).
	IP string
	// Name and Namespace name the workload; Namespace defaults to "default".
	Name, Namespace string
	// Domain is the node ID's DNS domain; default
	// "<namespace>.svc.cluster.local".
	Domain string
	// Labels are the workload's labels (metadata LABELS).
	Labels map[string]string
	// ServiceAccount is the workload's identity (metadata SERVICE_ACCOUNT).
	ServiceAccount string
	// WorkloadGroup names the WorkloadGroup the workload registers into
	// (metadata WORKLOAD_GROUP); empty for none.
	WorkloadGroup string
	// InstanceIPs are all the workload's addresses (metadata INSTANCE_IPS);
	// default: IP.
	InstanceIPs []string
	// Explicit is explicit mode, no traffic capture: metadata
	// INTERCEPTION_MODE=NONE (else REDIRECT).
	Explicit bool
}

// NodeID returns Istio's node ID "<type>~<ip>~<name>.<namespace>~<domain>".
func (n NodeInfo) NodeID() string {
	n = n.withDefaults()
	return n.Type + "~" + n.IP + "~" + n.Name + "." + n.Namespace + "~" + n.Domain
}

func (n NodeInfo) withDefaults() NodeInfo {
	if n.Type == "" {
		n.Type = "sidecar"
	}
	if n.Namespace == "" {
		n.Namespace = "default"
	}
	if n.Domain == "" {
		n.Domain = n.Namespace + ".svc.cluster.local"
	}
	if len(n.InstanceIPs) == 0 && n.IP != "" {
		n.InstanceIPs = []string{n.IP}
	}
	return n
}

// NewNode returns the node a proxy announces to weft's discovery.
func NewNode(info NodeInfo) *core.Node {
	n := info.withDefaults()
	fields := map[string]*structpb.Value{
		"NAMESPACE":         structpb.NewStringValue(n.Namespace),
		"WORKLOAD_NAME":     structpb.NewStringValue(n.Name),
		"INTERCEPTION_MODE": structpb.NewStringValue("REDIRECT"),
	}
	if n.Explicit {
		fields["INTERCEPTION_MODE"] = structpb.NewStringValue("NONE")
	}
	if len(n.Labels) > 0 {
		labels := map[string]*structpb.Value{}
		for k, v := range n.Labels {
			labels[k] = structpb.NewStringValue(v)
		}
		fields["LABELS"] = structpb.NewStructValue(&structpb.Struct{Fields: labels})
	}
	if n.ServiceAccount != "" {
		fields["SERVICE_ACCOUNT"] = structpb.NewStringValue(n.ServiceAccount)
	}
	if n.WorkloadGroup != "" {
		fields["WORKLOAD_GROUP"] = structpb.NewStringValue(n.WorkloadGroup)
	}
	if len(n.InstanceIPs) > 0 {
		fields["INSTANCE_IPS"] = structpb.NewStringValue(strings.Join(n.InstanceIPs, ","))
	}
	return &core.Node{Id: info.NodeID(), Metadata: &structpb.Struct{Fields: fields}, UserAgentName: "weft-proxy"}
}
