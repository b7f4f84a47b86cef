package xdsclient

import (
	"fmt"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The xDS type URLs the client subscribes to.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

	hcmType = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// Snapshot is one consistent, validated set of xDS resources. It is
// immutable: the client never changes a Snapshot after handing it out, and
// consumers must not either (maps and messages are shared between
// snapshots).
type Snapshot struct {
	// Listeners by name (LDS, wildcard).
	Listeners map[string]*listenerv3.Listener
	// Routes by name: the route configurations the listeners' HTTP
	// connection managers name through RDS.
	Routes map[string]*routev3.RouteConfiguration
	// Clusters by name (CDS, wildcard).
	Clusters map[string]*clusterv3.Cluster
	// Endpoints by EDS service name (the cluster's eds_cluster_config
	// service_name, else its name), one per EDS cluster. A name the
	// server never sent within the warming timeout holds an empty
	// ClusterLoadAssignment.
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// Secrets by name: the SDS secrets of Config.Secrets received so far
	// (validation contexts only).
	Secrets map[string]*tlsv3.Secret
	// Versions maps each type URL to the version_info (delta:
	// system_version_info) of the last response of that type included.
	Versions map[string]string

	// resVersions holds per-resource versions by type URL (delta
	// responses name them; SotW resources carry their response's version).
	resVersions map[string]map[string]string
	// routeRefs maps a listener name to the route configurations it names.
	routeRefs map[string][]string
}

// Validator checks a candidate snapshot before it is applied; the data
// plane compiles the config here. A non-nil error rejects (NACKs) the whole
// candidate with the error's message.
type Validator func(*Snapshot) error

// candidate is the client's view of the server's latest state on one
// stream, on top of the last applied snapshot. It is only used by the
// stream's goroutine.
type candidate struct {
	res         map[string]map[string]proto.Message // type URL -> name -> resource
	resVersions map[string]map[string]string
	versions    map[string]string
	routeRefs   map[string][]string
	have        map[string]bool // LDS/CDS received (or seeded from an applied snapshot)
	dirty       bool            // differs from the applied snapshot
	rejected    error           // validation error of the current content
	// credentials accepts gateway credentials with their private keys
	// (Config.GatewayCredentials).
	credentials bool
}

// newCandidate starts from the applied snapshot s (nil: nothing yet);
// credentials accepts gateway credentials.
func newCandidate(s *Snapshot, credentials bool) *candidate {
	c := &candidate{res: map[string]map[string]proto.Message{}, resVersions: map[string]map[string]string{},
		versions: map[string]string{}, routeRefs: map[string][]string{}, have: map[string]bool{}, credentials: credentials}
	for _, t := range allTypes {
		c.res[t] = map[string]proto.Message{}
		c.resVersions[t] = map[string]string{}
	}
	if s == nil {
		return c
	}
	copyInto(c.res[ListenerType], s.Listeners)
	copyInto(c.res[RouteType], s.Routes)
	copyInto(c.res[ClusterType], s.Clusters)
	copyInto(c.res[EndpointType], s.Endpoints)
	copyInto(c.res[SecretType], s.Secrets)
	for t, m := range s.resVersions {
		for k, v := range m {
			c.resVersions[t][k] = v
		}
	}
	for k, v := range s.Versions {
		c.versions[k] = v
	}
	for k, v := range s.routeRefs {
		c.routeRefs[k] = v
	}
	c.have[ListenerType], c.have[ClusterType] = true, true
	return c
}

var allTypes = []string{ListenerType, RouteType, ClusterType, EndpointType, SecretType}

func copyInto[M proto.Message](dst map[string]proto.Message, src map[string]M) {
	for k, v := range src {
		dst[k] = v
	}
}

// decoded is one resource of a response, decoded.
type decoded struct {
	name    string
	version string
	msg     proto.Message
	refs    []string // listeners: route configurations named
}

// decode unmarshals a of type typeURL and checks its name.
func decode(typeURL string, a *anypb.Any, credentials bool) (decoded, error) {
	if a == nil {
		return decoded{}, fmt.Errorf("empty resource")
	}
	if a.GetTypeUrl() != typeURL {
		return decoded{}, fmt.Errorf("resource of type %q in a %s response", a.GetTypeUrl(), typeURL)
	}
	var d decoded
	switch typeURL {
	case ListenerType:
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			return d, fmt.Errorf("listener: %w", err)
		}
		refs, err := routeRefs(l)
		if err != nil {
			return d, fmt.Errorf("listener %q: %w", l.GetName(), err)
		}
		d = decoded{name: l.GetName(), msg: l, refs: refs}
	case RouteType:
		r := &routev3.RouteConfiguration{}
		if err := a.UnmarshalTo(r); err != nil {
			return d, fmt.Errorf("route configuration: %w", err)
		}
		d = decoded{name: r.GetName(), msg: r}
	case ClusterType:
		c := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			return d, fmt.Errorf("cluster: %w", err)
		}
		d = decoded{name: c.GetName(), msg: c}
	case EndpointType:
		e := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(e); err != nil {
			return d, fmt.Errorf("cluster load assignment: %w", err)
		}
		d = decoded{name: e.GetClusterName(), msg: e}
	case SecretType:
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			return d, fmt.Errorf("secret: %w", err)
		}
		switch {
		case sec.GetValidationContext() != nil:
		case credentials && sec.GetTlsCertificate() != nil && strings.HasPrefix(sec.GetName(), CredentialPrefix):
		case credentials:
			return d, fmt.Errorf("secret %q: only validation contexts (trust bundles), and certificates named %s<credentialName>, are accepted over xDS", sec.GetName(), CredentialPrefix)
		default:
			return d, fmt.Errorf("secret %q: only validation contexts (trust bundles) are accepted over xDS, never certificates or keys", sec.GetName())
		}
		d = decoded{name: sec.GetName(), msg: sec}
	default:
		return d, fmt.Errorf("unsupported resource type %q", typeURL)
	}
	if d.name == "" {
		return d, fmt.Errorf("%s without a name", shortType(typeURL))
	}
	return d, nil
}

// routeRefs lists the RDS route configuration names l's HTTP connection
// managers use (filter chains, the default chain, the API listener).
func routeRefs(l *listenerv3.Listener) ([]string, error) {
	var refs []string
	add := func(a *anypb.Any) error {
		if a.GetTypeUrl() != hcmType {
			return nil
		}
		h := &hcmv3.HttpConnectionManager{}
		if err := a.UnmarshalTo(h); err != nil {
			return fmt.Errorf("http connection manager: %w", err)
		}
		if rds := h.GetRds(); rds != nil {
			if rds.GetRouteConfigName() == "" {
				return fmt.Errorf("http connection manager: rds without route_config_name")
			}
			refs = append(refs, rds.GetRouteConfigName())
		}
		return nil
	}
	chains := append([]*listenerv3.FilterChain{l.GetDefaultFilterChain()}, l.GetFilterChains()...)
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			if err := add(f.GetTypedConfig()); err != nil {
				return nil, err
			}
		}
	}
	if err := add(l.GetApiListener().GetApiListener()); err != nil {
		return nil, err
	}
	sort.Strings(refs)
	return compact(refs), nil
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// applySotw merges a state-of-the-world response: it replaces every
// listener or cluster, and adds or replaces route configurations and load
// assignments (the others stay: SotW RDS and EDS responses need only carry
// what changed). On error nothing changes. It reports whether the
// candidate changed.
func (c *candidate) applySotw(typeURL, version string, resources []*anypb.Any) (bool, error) {
	if c.res[typeURL] == nil {
		return false, fmt.Errorf("unsupported resource type %q", typeURL)
	}
	ds := make([]decoded, 0, len(resources))
	seen := map[string]bool{}
	for i, a := range resources {
		d, err := decode(typeURL, a, c.credentials)
		if err != nil {
			return false, fmt.Errorf("resource %d: %w", i, err)
		}
		if seen[d.name] {
			return false, fmt.Errorf("%s %q appears twice", shortType(typeURL), d.name)
		}
		seen[d.name] = true
		d.version = version
		ds = append(ds, d)
	}
	changed := false
	if typeURL == ListenerType || typeURL == ClusterType {
		for name := range c.res[typeURL] {
			if !seen[name] {
				c.remove(typeURL, name)
				changed = true
			}
		}
		if !c.have[typeURL] {
			c.have[typeURL], changed = true, true
		}
	}
	for _, d := range ds {
		changed = c.put(typeURL, d) || changed
	}
	return c.setVersion(typeURL, version) || changed, nil
}

// applyDelta merges an incremental response. Removing a route
// configuration or load assignment a listener or cluster still names
// leaves an empty one in its place. On error nothing changes.
func (c *candidate) applyDelta(typeURL, version string, resources []*discovery.Resource, removed []string) (bool, error) {
	if c.res[typeURL] == nil {
		return false, fmt.Errorf("unsupported resource type %q", typeURL)
	}
	ds := make([]decoded, 0, len(resources))
	seen := map[string]bool{}
	for i, r := range resources {
		if r.GetResource() == nil {
			continue // a TTL heartbeat: nothing changes
		}
		d, err := decode(typeURL, r.GetResource(), c.credentials)
		if err != nil {
			return false, fmt.Errorf("resource %d (%q): %w", i, r.GetName(), err)
		}
		if r.GetName() != "" && r.GetName() != d.name {
			return false, fmt.Errorf("resource named %q holds %s %q", r.GetName(), shortType(typeURL), d.name)
		}
		if seen[d.name] {
			return false, fmt.Errorf("%s %q appears twice", shortType(typeURL), d.name)
		}
		seen[d.name] = true
		d.version = r.GetVersion()
		ds = append(ds, d)
	}
	changed := false
	if (typeURL == ListenerType || typeURL == ClusterType) && !c.have[typeURL] {
		c.have[typeURL], changed = true, true
	}
	for _, name := range removed {
		if _, ok := c.res[typeURL][name]; ok && !seen[name] {
			c.remove(typeURL, name)
			changed = true
		}
	}
	for _, d := range ds {
		changed = c.put(typeURL, d) || changed
	}
	if typeURL == RouteType || typeURL == EndpointType {
		// Still-referenced removals become empty placeholders.
		eds, rds := c.refs()
		want := map[string]map[string]bool{EndpointType: eds, RouteType: rds}[typeURL]
		for _, name := range removed {
			if want[name] && !seen[name] {
				c.res[typeURL][name] = placeholder(typeURL, name)
			}
		}
	}
	return c.setVersion(typeURL, version) || changed, nil
}

func (c *candidate) put(typeURL string, d decoded) bool {
	old, ok := c.res[typeURL][d.name]
	c.resVersions[typeURL][d.name] = d.version
	if typeURL == ListenerType {
		c.routeRefs[d.name] = d.refs
	}
	if ok && proto.Equal(old, d.msg) {
		return false
	}
	c.res[typeURL][d.name] = d.msg
	return true
}

func (c *candidate) remove(typeURL, name string) {
	delete(c.res[typeURL], name)
	delete(c.resVersions[typeURL], name)
	if typeURL == ListenerType {
		delete(c.routeRefs, name)
	}
}

func (c *candidate) setVersion(typeURL, version string) bool {
	if c.versions[typeURL] == version {
		return false
	}
	c.versions[typeURL] = version
	return true
}

// edsName is the load assignment an EDS cluster needs ("" for others).
func edsName(cl *clusterv3.Cluster) string {
	if cl.GetType() != clusterv3.Cluster_EDS {
		return ""
	}
	if n := cl.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return cl.GetName()
}

// refs returns the load assignments and route configurations the
// candidate's clusters and listeners need.
func (c *candidate) refs() (eds, rds map[string]bool) {
	eds, rds = map[string]bool{}, map[string]bool{}
	for _, m := range c.res[ClusterType] {
		if n := edsName(m.(*clusterv3.Cluster)); n != "" {
			eds[n] = true
		}
	}
	for name := range c.res[ListenerType] {
		for _, r := range c.routeRefs[name] {
			rds[r] = true
		}
	}
	return eds, rds
}

// prune drops route configurations and load assignments nothing needs.
func (c *candidate) prune() bool {
	eds, rds := c.refs()
	changed := false
	for typ, want := range map[string]map[string]bool{EndpointType: eds, RouteType: rds} {
		for name := range c.res[typ] {
			if !want[name] {
				c.remove(typ, name)
				changed = true
			}
		}
	}
	return changed
}

// missing lists what the candidate still waits for, as keys
// "<type URL> <name>"; LDS and CDS not yet received have an empty name.
func (c *candidate) missing() []string {
	var out []string
	for _, t := range []string{ListenerType, ClusterType} {
		if !c.have[t] {
			out = append(out, t+" ")
		}
	}
	eds, rds := c.refs()
	for typ, want := range map[string]map[string]bool{EndpointType: eds, RouteType: rds} {
		for name := range want {
			if _, ok := c.res[typ][name]; !ok {
				out = append(out, typ+" "+name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// fill puts an empty placeholder in for a missing resource key.
func (c *candidate) fill(key string) bool {
	typ, name := splitKey(key)
	if name == "" || (typ != EndpointType && typ != RouteType) {
		return false
	}
	if _, ok := c.res[typ][name]; ok {
		return false
	}
	c.res[typ][name] = placeholder(typ, name)
	return true
}

func splitKey(key string) (typ, name string) {
	for i := 0; i < len(key); i++ {
		if key[i] == ' ' {
			return key[:i], key[i+1:]
		}
	}
	return key, ""
}

func placeholder(typ, name string) proto.Message {
	if typ == EndpointType {
		return &endpointv3.ClusterLoadAssignment{ClusterName: name}
	}
	return &routev3.RouteConfiguration{Name: name}
}

// build returns the candidate as an immutable Snapshot.
func (c *candidate) build() *Snapshot {
	s := &Snapshot{
		Listeners: typed[*listenerv3.Listener](c.res[ListenerType]),
		Routes:    typed[*routev3.RouteConfiguration](c.res[RouteType]),
		Clusters:  typed[*clusterv3.Cluster](c.res[ClusterType]),
		Endpoints: typed[*endpointv3.ClusterLoadAssignment](c.res[EndpointType]),
		Secrets:   typed[*tlsv3.Secret](c.res[SecretType]),
		Versions:  map[string]string{}, resVersions: map[string]map[string]string{}, routeRefs: map[string][]string{},
	}
	for k, v := range c.versions {
		s.Versions[k] = v
	}
	for t, m := range c.resVersions {
		s.resVersions[t] = map[string]string{}
		for k, v := range m {
			s.resVersions[t][k] = v
		}
	}
	for k, v := range c.routeRefs {
		s.routeRefs[k] = v
	}
	return s
}

func typed[M proto.Message](src map[string]proto.Message) map[string]M {
	out := make(map[string]M, len(src))
	for k, v := range src {
		out[k] = v.(M)
	}
	return out
}

// names returns the sorted keys of a set.
func names(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func shortType(typeURL string) string {
	switch typeURL {
	case ListenerType:
		return "listener"
	case RouteType:
		return "route configuration"
	case ClusterType:
		return "cluster"
	case EndpointType:
		return "cluster load assignment"
	case SecretType:
		return "secret"
	}
	return typeURL
}
