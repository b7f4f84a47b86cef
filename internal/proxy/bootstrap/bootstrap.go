// Package bootstrap turns weft-proxy's flags, environment and optional
// bootstrap file into the xDS node identity and control-plane address.
// Precedence: flag, then environment (WEFT_*), then the bootstrap file,
// then defaults.
package bootstrap

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"
)

// Config is everything that identifies the proxy to the control plane.
type Config struct {
	// Discovery is the xDS server address. Default "127.0.0.1:15010".
	Discovery string `json:"discoveryAddress,omitempty"`
	// Type is sidecar or router (a gateway: no traffic capture, no inbound
	// ports; its node metadata is what Istio's Envoy gateways send,
	// INTERCEPTION_MODE REDIRECT unless Explicit). Default sidecar.
	Type string `json:"type,omitempty"`
	// IP is the workload's address (the node id's second field).
	IP string `json:"ip,omitempty"`
	// Name and Namespace identify the workload. Namespace defaults to "default".
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Labels of the workload (subset selection, sourceLabels matches).
	Labels map[string]string `json:"labels,omitempty"`
	// ServiceAccount is the workload's identity.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// WorkloadGroup asks for auto-registration into that group.
	WorkloadGroup string `json:"workloadGroup,omitempty"`
	// Explicit disables traffic capture: upstreams are local ports. A
	// router never captures traffic and does not need it.
	Explicit bool `json:"explicit,omitempty"`
	// InboundCaptureMode is how `weft-proxy iptables` captures inbound
	// traffic: REDIRECT (default) or TPROXY (its --inbound-mode). Under
	// TPROXY the proxy's 15006 listener is transparent and connections to
	// the application keep the client's address; that needs CAP_NET_ADMIN.
	// Sent as node metadata INTERCEPTION_MODE.
	InboundCaptureMode string `json:"inboundCaptureMode,omitempty"`
	// InboundPorts (explicit mode) are "<app port>=<sidecar port>,…", e.g.
	// "9080=15080": the sidecar accepts mesh traffic for the application's
	// port on <ip>:<sidecar port> and forwards it to 127.0.0.1:<app port>.
	// Sent as node metadata INBOUND_PORTS; auto-registration advertises the
	// sidecar ports to peers. Empty: no inbound side.
	InboundPorts string `json:"inboundPorts,omitempty"`
	// TrustDomain of the mesh. Default "cluster.local".
	TrustDomain string `json:"trustDomain,omitempty"`
	// ClusterID names the cluster the workload runs in (node metadata
	// CLUSTER_ID, the source_cluster and destination_cluster metric
	// labels). Default "Kubernetes", Istio's single-cluster default.
	ClusterID string `json:"clusterID,omitempty"`
}

// LoadFile reads a YAML or JSON bootstrap file; a missing path is an error.
func LoadFile(path string) (Config, error) {
	var c Config
	raw, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("bootstrap: %w", err)
	}
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return c, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	return c, nil
}

// FromEnv fills unset fields from WEFT_* environment variables.
func (c *Config) FromEnv(getenv func(string) string) error {
	set := func(dst *string, key string) {
		if *dst == "" {
			*dst = getenv(key)
		}
	}
	set(&c.Discovery, "WEFT_DISCOVERY_ADDRESS")
	set(&c.Type, "WEFT_NODE_TYPE")
	set(&c.IP, "WEFT_INSTANCE_IP")
	set(&c.Name, "WEFT_WORKLOAD_NAME")
	set(&c.Namespace, "WEFT_NAMESPACE")
	set(&c.ServiceAccount, "WEFT_SERVICE_ACCOUNT")
	set(&c.WorkloadGroup, "WEFT_WORKLOAD_GROUP")
	set(&c.TrustDomain, "WEFT_TRUST_DOMAIN")
	set(&c.ClusterID, "WEFT_CLUSTER_ID")
	set(&c.InboundPorts, "WEFT_INBOUND_PORTS")
	if len(c.Labels) == 0 {
		if l := getenv("WEFT_LABELS"); l != "" {
			labels, err := ParseLabels(l)
			if err != nil {
				return fmt.Errorf("WEFT_LABELS: %w", err)
			}
			c.Labels = labels
		}
	}
	if !c.Explicit && (getenv("WEFT_INTERCEPTION_MODE") == "NONE" || getenv("WEFT_EXPLICIT") == "true") {
		c.Explicit = true
	}
	if m := getenv("WEFT_INTERCEPTION_MODE"); c.InboundCaptureMode == "" && (m == "REDIRECT" || m == "TPROXY") {
		c.InboundCaptureMode = m
	}
	return nil
}

// DefaultClusterID is the cluster ID of a proxy that names none.
const DefaultClusterID = "Kubernetes"

// ParseLabels parses "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

// Validate applies defaults and checks the config.
func (c *Config) Validate() error {
	if c.Discovery == "" {
		c.Discovery = "127.0.0.1:15010"
	}
	if c.Type == "" {
		c.Type = "sidecar"
	}
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.ClusterID == "" {
		c.ClusterID = DefaultClusterID
	}
	var errs []error
	if c.Type != "sidecar" && c.Type != "router" {
		errs = append(errs, fmt.Errorf("type %q: use sidecar or router", c.Type))
	}
	if c.IP == "" {
		errs = append(errs, errors.New("the workload IP is required (--ip or WEFT_INSTANCE_IP)"))
	} else if _, err := netip.ParseAddr(c.IP); err != nil {
		errs = append(errs, fmt.Errorf("ip %q is not an IP address", c.IP))
	}
	if c.Name == "" {
		errs = append(errs, errors.New("the workload name is required (--name or WEFT_WORKLOAD_NAME)"))
	}
	c.InboundCaptureMode = strings.ToUpper(c.InboundCaptureMode)
	if c.Type == "router" {
		errs = append(errs, c.validateRouter()...)
	} else {
		errs = append(errs, c.validateCapture()...)
	}
	if strings.ContainsAny(c.Name+c.Namespace, "~ ") {
		errs = append(errs, fmt.Errorf("name and namespace may not contain '~' or spaces"))
	}
	if strings.ContainsAny(c.ClusterID, " \t\n") {
		errs = append(errs, fmt.Errorf("cluster ID %q may not contain spaces (--cluster-id or WEFT_CLUSTER_ID)", c.ClusterID))
	}
	return errors.Join(errs...)
}

// validateCapture checks a sidecar's capture settings and normalises its
// inbound ports.
func (c *Config) validateCapture() []error {
	var errs []error
	switch c.InboundCaptureMode {
	case "", "REDIRECT":
	case "TPROXY":
		if c.Explicit {
			errs = append(errs, errors.New("--inbound-capture-mode TPROXY is a capture mode; explicit mode captures nothing"))
		}
	default:
		errs = append(errs, fmt.Errorf("inbound capture mode %q: use REDIRECT or TPROXY (as weft-proxy iptables --inbound-mode)", c.InboundCaptureMode))
	}
	if ports, err := registry.ParseInboundPorts(c.InboundPorts); err != nil {
		errs = append(errs, fmt.Errorf("--inbound-ports: %w", err))
	} else if len(ports) > 0 {
		if !c.Explicit {
			errs = append(errs, errors.New("--inbound-ports needs explicit mode (--explicit); with capture, inbound traffic arrives on 15006"))
		}
		c.InboundPorts = registry.FormatInboundPorts(ports)
	}
	return errs
}

// validateRouter refuses what makes no sense for a gateway: it captures
// no traffic and has no inbound side (its listeners bind the ports its
// Gateway resources name).
func (c *Config) validateRouter() []error {
	var errs []error
	if c.InboundCaptureMode != "" {
		errs = append(errs, fmt.Errorf("inbound capture mode %s: a router (gateway) captures no traffic; unset --inbound-capture-mode and WEFT_INTERCEPTION_MODE", c.InboundCaptureMode))
	}
	if strings.TrimSpace(c.InboundPorts) != "" {
		errs = append(errs, errors.New("--inbound-ports: a router (gateway) has no inbound side, its listeners come from its Gateway resources; unset --inbound-ports and WEFT_INBOUND_PORTS"))
	}
	return errs
}

// NodeID is Istio's "<type>~<ip>~<name>.<namespace>~<namespace>.svc.<trust domain>".
func (c *Config) NodeID() string {
	return fmt.Sprintf("%s~%s~%s.%s~%s.svc.%s", c.Type, c.IP, c.Name, c.Namespace, c.Namespace, c.TrustDomain)
}

// Node builds the xDS node with Istio's metadata keys.
func (c *Config) Node() (*core.Node, error) {
	md := map[string]any{
		"NAMESPACE":     c.Namespace,
		"WORKLOAD_NAME": c.Name,
		"INSTANCE_IPS":  c.IP,
		"CLUSTER_ID":    c.ClusterID,
	}
	if c.ServiceAccount != "" {
		md["SERVICE_ACCOUNT"] = c.ServiceAccount
	}
	if c.WorkloadGroup != "" {
		md["WORKLOAD_GROUP"] = c.WorkloadGroup
	}
	if c.Explicit {
		md["INTERCEPTION_MODE"] = "NONE"
		if c.InboundPorts != "" {
			md["INBOUND_PORTS"] = c.InboundPorts
		}
	} else if c.InboundCaptureMode == "TPROXY" {
		md["INTERCEPTION_MODE"] = "TPROXY"
	} else {
		md["INTERCEPTION_MODE"] = "REDIRECT"
	}
	labels := map[string]any{}
	keys := make([]string, 0, len(c.Labels))
	for k := range c.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		labels[k] = c.Labels[k]
	}
	md["LABELS"] = labels
	st, err := structpb.NewStruct(md)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: node metadata: %w", err)
	}
	return &core.Node{Id: c.NodeID(), Cluster: c.Name + "." + c.Namespace, Metadata: st, UserAgentName: "weft-proxy"}, nil
}
