package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
)

// proxyDump is one proxy's xDS config, from whichever source: a sidecar's
// admin /config_dump (Envoy's admin.v3.ConfigDump, also a file saved from
// Envoy or weft-proxy) or discovery's /debug/config_dump (what weft sent
// the proxy, by xDS type).
type proxyDump struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Secrets   []*tlsv3.Secret
	// Bootstrap is the proxy's bootstrap (an admin or Envoy dump only).
	Bootstrap *bootstrapv3.Bootstrap
	// live is the upstream hosts' state from a sidecar's /clusters:
	// cluster → address → health flags ("healthy", "/failed_outlier_check",
	// …). Nil when the source has none (discovery, a file).
	live map[string]map[string]string
}

// all lists every resource: clusters, listeners, routes, endpoints, then
// secrets.
func (d *proxyDump) all() []proto.Message {
	return slices.Concat(messages(d.Clusters), messages(d.Listeners), messages(d.Routes), messages(d.Endpoints), messages(d.Secrets))
}

func messages[M proto.Message](list []M) []proto.Message {
	out := make([]proto.Message, len(list))
	for i, m := range list {
		out[i] = m
	}
	return out
}

// lenientResolver resolves the type URLs of Any fields the way
// protoregistry does, but an unknown type (an extension weft does not
// link, in a dump from Envoy) becomes an empty message instead of an
// error, so that the rest of the dump can still be shown.
type lenientResolver struct{}

func (lenientResolver) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(n); err == nil {
		return mt, nil
	}
	return emptyMessageType(n)
}

func (r lenientResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	n := url
	if i := strings.LastIndexByte(url, '/'); i >= 0 {
		n = url[i+1:]
	}
	return r.FindMessageByName(protoreflect.FullName(n))
}

func (lenientResolver) FindExtensionByName(n protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(n)
}

func (lenientResolver) FindExtensionByNumber(m protoreflect.FullName, f protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(m, f)
}

// emptyMessageType is a message type named n with no fields.
func emptyMessageType(n protoreflect.FullName) (protoreflect.MessageType, error) {
	if !n.IsValid() {
		return nil, fmt.Errorf("invalid type name %q", n)
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:        proto.String("weft-unknown/" + string(n) + ".proto"),
		Package:     proto.String(string(n.Parent())),
		Syntax:      proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String(string(n.Name()))}},
	}, nil)
	if err != nil {
		return nil, err
	}
	return dynamicpb.NewMessageType(fd.Messages().Get(0)), nil
}

var dumpJSON = protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: lenientResolver{}}

// parseDump reads either shape of config dump.
func parseDump(b []byte) (*proxyDump, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("not a config dump (a JSON object): %w", err)
	}
	switch {
	case top["configs"] != nil:
		return parseEnvoyDump(b)
	case top["cds"] != nil || top["lds"] != nil:
		return parseDiscoveryDump(top)
	}
	return nil, errors.New("not a config dump: want Envoy's admin /config_dump (a \"configs\" list) or weft discovery's /debug/config_dump (\"cds\", \"lds\", …)")
}

func parseEnvoyDump(b []byte) (*proxyDump, error) {
	var cd adminv3.ConfigDump
	if err := dumpJSON.Unmarshal(b, &cd); err != nil {
		return nil, fmt.Errorf("reading the config dump: %w", err)
	}
	d := &proxyDump{}
	for _, a := range cd.GetConfigs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			continue // a section of a type weft does not know
		}
		if err := d.addSection(m); err != nil {
			return nil, fmt.Errorf("reading the config dump's %s: %w", a.GetTypeUrl(), err)
		}
	}
	return d, nil
}

// addSection takes the resources of one section of an Envoy config dump.
func (d *proxyDump) addSection(m proto.Message) error {
	var errs []error
	add := func(a *anypb.Any, into proto.Message) bool {
		if a == nil {
			return false
		}
		if err := a.UnmarshalTo(into); err != nil {
			errs = append(errs, err)
			return false
		}
		return true
	}
	switch s := m.(type) {
	case *adminv3.BootstrapConfigDump:
		d.Bootstrap = s.GetBootstrap()
	case *adminv3.ListenersConfigDump:
		for _, l := range s.GetStaticListeners() {
			if r := new(listenerv3.Listener); add(l.GetListener(), r) {
				d.Listeners = append(d.Listeners, r)
			}
		}
		for _, l := range s.GetDynamicListeners() {
			if r := new(listenerv3.Listener); add(l.GetActiveState().GetListener(), r) {
				d.Listeners = append(d.Listeners, r)
			}
		}
	case *adminv3.ClustersConfigDump:
		for _, c := range s.GetStaticClusters() {
			if r := new(clusterv3.Cluster); add(c.GetCluster(), r) {
				d.Clusters = append(d.Clusters, r)
			}
		}
		for _, c := range s.GetDynamicActiveClusters() {
			if r := new(clusterv3.Cluster); add(c.GetCluster(), r) {
				d.Clusters = append(d.Clusters, r)
			}
		}
	case *adminv3.RoutesConfigDump:
		for _, rc := range s.GetStaticRouteConfigs() {
			if r := new(routev3.RouteConfiguration); add(rc.GetRouteConfig(), r) {
				d.Routes = append(d.Routes, r)
			}
		}
		for _, rc := range s.GetDynamicRouteConfigs() {
			if r := new(routev3.RouteConfiguration); add(rc.GetRouteConfig(), r) {
				d.Routes = append(d.Routes, r)
			}
		}
	case *adminv3.EndpointsConfigDump:
		for _, e := range s.GetStaticEndpointConfigs() {
			if r := new(endpointv3.ClusterLoadAssignment); add(e.GetEndpointConfig(), r) {
				d.Endpoints = append(d.Endpoints, r)
			}
		}
		for _, e := range s.GetDynamicEndpointConfigs() {
			if r := new(endpointv3.ClusterLoadAssignment); add(e.GetEndpointConfig(), r) {
				d.Endpoints = append(d.Endpoints, r)
			}
		}
	case *adminv3.SecretsConfigDump:
		for _, sec := range s.GetStaticSecrets() {
			if r := new(tlsv3.Secret); add(sec.GetSecret(), r) {
				d.Secrets = append(d.Secrets, r)
			}
		}
		for _, sec := range s.GetDynamicActiveSecrets() {
			if r := new(tlsv3.Secret); add(sec.GetSecret(), r) {
				if r.Name == "" {
					r.Name = sec.GetName()
				}
				d.Secrets = append(d.Secrets, r)
			}
		}
	}
	return errors.Join(errs...)
}

func parseDiscoveryDump(top map[string]json.RawMessage) (*proxyDump, error) {
	d := &proxyDump{}
	each := func(key string, newMsg func() proto.Message, keep func(proto.Message)) error {
		var list []json.RawMessage
		if raw := top[key]; raw != nil {
			if err := json.Unmarshal(raw, &list); err != nil {
				return fmt.Errorf("reading %q: %w", key, err)
			}
		}
		for i, raw := range list {
			m := newMsg()
			if err := dumpJSON.Unmarshal(raw, m); err != nil {
				return fmt.Errorf("reading %q[%d]: %w", key, i, err)
			}
			keep(m)
		}
		return nil
	}
	return d, errors.Join(
		each("lds", func() proto.Message { return new(listenerv3.Listener) }, func(m proto.Message) { d.Listeners = append(d.Listeners, m.(*listenerv3.Listener)) }),
		each("rds", func() proto.Message { return new(routev3.RouteConfiguration) }, func(m proto.Message) { d.Routes = append(d.Routes, m.(*routev3.RouteConfiguration)) }),
		each("cds", func() proto.Message { return new(clusterv3.Cluster) }, func(m proto.Message) { d.Clusters = append(d.Clusters, m.(*clusterv3.Cluster)) }),
		each("eds", func() proto.Message { return new(endpointv3.ClusterLoadAssignment) }, func(m proto.Message) {
			d.Endpoints = append(d.Endpoints, m.(*endpointv3.ClusterLoadAssignment))
		}),
		each("sds", func() proto.Message { return new(tlsv3.Secret) }, func(m proto.Message) { d.Secrets = append(d.Secrets, m.(*tlsv3.Secret)) }),
	)
}

// parseClustersText reads Envoy's text /clusters ("cluster::address::
// health_flags::flags" lines; other lines are ignored).
func parseClustersText(b []byte) map[string]map[string]string {
	out := map[string]map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		// The address holds no "::" (IPv6 addresses are bracketed
		// there), but a cluster name may not be split on it safely
		// either way: take the fields from the right.
		line := sc.Text()
		rest, flags, ok := strings.Cut(line, "::health_flags::")
		if !ok {
			continue
		}
		i := strings.LastIndex(rest, "::")
		if i < 0 {
			continue
		}
		cluster, addr := rest[:i], rest[i+2:]
		if out[cluster] == nil {
			out[cluster] = map[string]string{}
		}
		out[cluster][addr] = flags
	}
	return out
}
