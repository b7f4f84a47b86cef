// Package analyze finds mistakes in a set of Istio config objects that
// each object's own validation cannot see: references to subsets and
// gateways that do not exist, VirtualServices that fight over a host,
// rules that can never match, selectors that select nothing. It reports
// them with istioctl analyze's message codes and levels, so that what an
// operator knows from Istio (IST0101, IST0109, …) means the same here.
//
// It is pure: Analyze looks only at the objects it is given.
package analyze

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/pilot/translate"
	"github.com/weftmesh/weft/internal/registry"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// Level is a message's severity, as istioctl's.
type Level int

// Levels, lowest first.
const (
	Info Level = iota
	Warning
	Error
)

func (l Level) String() string {
	switch l {
	case Error:
		return "Error"
	case Warning:
		return "Warning"
	}
	return "Info"
}

// ParseLevel reads "Info", "Warning" or "Error" (any case).
func ParseLevel(s string) (Level, error) {
	for _, l := range []Level{Info, Warning, Error} {
		if strings.EqualFold(s, l.String()) {
			return l, nil
		}
	}
	return Info, fmt.Errorf("level %q: want Info, Warning or Error", s)
}

// Message is one finding.
type Message struct {
	Code  string `json:"code"` // istioctl's, e.g. "IST0101"
	Name  string `json:"name"` // e.g. "ReferencedResourceNotFound"
	Level Level  `json:"-"`    // see LevelName
	Kind  string `json:"kind"` // of the object the message is about
	Ref   string `json:"ref"`  // its namespace/name
	Text  string `json:"message"`
	// LevelName is Level as text, for JSON.
	LevelName string `json:"level"`
}

// String is istioctl analyze's line: "Error [IST0101] (VirtualService
// default/reviews) Referenced …".
func (m Message) String() string {
	return fmt.Sprintf("%s [%s] (%s %s) %s", m.Level, m.Code, m.Kind, m.Ref, m.Text)
}

// The message types weft reports, with istioctl's codes.
var (
	referencedResourceNotFound  = msgType{"IST0101", "ReferencedResourceNotFound", Error}
	conflictingMeshGatewayHosts = msgType{"IST0109", "ConflictingMeshGatewayVirtualServiceHosts", Error}
	noMatchingWorkloadsFound    = msgType{"IST0127", "NoMatchingWorkloadsFound", Warning}
	virtualServiceIneffective   = msgType{"IST0131", "VirtualServiceIneffectiveMatch", Info}
	vsHostNotFoundInGateway     = msgType{"IST0132", "VirtualServiceHostNotFoundInGateway", Warning}
	subsetSelectsNoWorkload     = msgType{"IST0173", "DestinationRuleSubsetNotSelectPods", Warning}
	// SchemaValidationError is for objects that cannot be read at all.
	SchemaValidationError = msgType{"IST0106", "SchemaValidationError", Error}
)

type msgType struct {
	code, name string
	level      Level
}

// New makes a message of type t about the object of kind at ns/name.
func (t msgType) New(kind, ns, name, format string, args ...any) Message {
	return Message{Code: t.code, Name: t.name, Level: t.level, LevelName: t.level.String(), Kind: kind, Ref: ns + "/" + name,
		Text: fmt.Sprintf(format, args...)}
}

func (t msgType) about(c *model.Config, format string, args ...any) Message {
	return t.New(c.Kind, c.Namespace, c.Name, format, args...)
}

// Analyze reports what it finds in configs, sorted by level (highest
// first), then object and code: the cross-object checks, then what
// discovery warns about translating them for sidecars under mesh (whose
// DomainSuffix expands short host names: "reviews" in namespace default
// is reviews.default.<suffix>), with the services of the registries
// other than ServiceEntries in others.
func Analyze(configs []*model.Config, mesh model.Mesh, others registry.State) []Message {
	a := &analysis{domainSuffix: mesh.DomainSuffix, byKind: map[string][]*model.Config{}, others: others}
	for _, c := range configs {
		a.byKind[c.Kind] = append(a.byKind[c.Kind], c)
	}
	for _, list := range a.byKind {
		model.SortOldestFirst(list)
	}
	a.virtualServices()
	a.meshGatewayConflicts()
	a.subsetsSelectWorkloads()
	a.selectors()
	a.out = append(a.out, translationWarnings(configs, mesh, others)...)
	sort.SliceStable(a.out, func(i, j int) bool {
		x, y := a.out[i], a.out[j]
		return cmp.Or(-cmp.Compare(x.Level, y.Level), cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.Ref, y.Ref), cmp.Compare(x.Code, y.Code)) < 0
	})
	return a.out
}

type analysis struct {
	domainSuffix string
	byKind       map[string][]*model.Config
	others       registry.State // Consul's and Nomad's services and instances
	out          []Message
}

func (a *analysis) add(m Message) { a.out = append(a.out, m) }

// fqdn is Istio's reading of a host in namespace ns, as discovery's.
func (a *analysis) fqdn(host, ns string) string {
	return translate.ResolveHost(host, ns, a.domainSuffix)
}

type destination struct {
	host, subset string
}

func routeDestinations(vs *networking.VirtualService) []destination {
	var out []destination
	add := func(d *networking.Destination) {
		if d != nil {
			out = append(out, destination{d.GetHost(), d.GetSubset()})
		}
	}
	for _, r := range vs.GetHttp() {
		for _, rd := range r.GetRoute() {
			add(rd.GetDestination())
		}
		add(r.GetMirror())
		for _, m := range r.GetMirrors() {
			add(m.GetDestination())
		}
	}
	for _, r := range vs.GetTcp() {
		for _, rd := range r.GetRoute() {
			add(rd.GetDestination())
		}
	}
	for _, r := range vs.GetTls() {
		for _, rd := range r.GetRoute() {
			add(rd.GetDestination())
		}
	}
	return out
}

// virtualServices checks each VirtualService's references (subsets,
// gateways, the gateways' hosts) and its rules' order.
func (a *analysis) virtualServices() {
	for _, c := range a.byKind["VirtualService"] {
		vs, ok := c.Spec.(*networking.VirtualService)
		if !ok {
			continue
		}
		seen := map[destination]bool{}
		for _, d := range routeDestinations(vs) {
			if d.subset == "" || seen[d] {
				continue
			}
			seen[d] = true
			if !a.subsetDefined(a.fqdn(d.host, c.Namespace), d.subset) {
				a.add(referencedResourceNotFound.about(c, "Referenced host+subset in destinationrule not found: %q", d.host+"+"+d.subset))
			}
		}
		for _, g := range vs.GetGateways() {
			if g == "mesh" {
				continue
			}
			gw := a.gateway(g, c.Namespace)
			if gw == nil {
				a.add(referencedResourceNotFound.about(c, "Referenced gateway not found: %q", g))
				continue
			}
			var missing []string
			for _, h := range vs.GetHosts() {
				if !gatewayHasHost(gw, h, c.Namespace) {
					missing = append(missing, h)
				}
			}
			if len(missing) > 0 {
				a.add(vsHostNotFoundInGateway.about(c, "one or more host %v defined in VirtualService %s/%s not found in Gateway %s/%s.",
					missing, c.Namespace, c.Name, gw.Namespace, gw.Name))
			}
		}
		for i, r := range vs.GetHttp() {
			if !catchAll(r) {
				continue
			}
			for j := i + 1; j < len(vs.GetHttp()); j++ {
				a.add(virtualServiceIneffective.about(c, "VirtualService rule #%d is not used: rule #%d before it matches every request.", j, i))
			}
			break
		}
	}
}

// subsetDefined reports whether a DestinationRule for host defines subset.
func (a *analysis) subsetDefined(host, subset string) bool {
	for _, c := range a.byKind["DestinationRule"] {
		dr, ok := c.Spec.(*networking.DestinationRule)
		if !ok || !translate.HostMatches(a.fqdn(dr.GetHost(), c.Namespace), host) {
			continue
		}
		for _, s := range dr.GetSubsets() {
			if s.GetName() == subset {
				return true
			}
		}
	}
	return false
}

// gateway resolves a VirtualService's gateway reference: "ns/name",
// "name.ns[.svc…]" or a name in the VirtualService's namespace.
func (a *analysis) gateway(ref, vsNamespace string) *model.Config {
	ns, name := vsNamespace, ref
	if n, g, ok := strings.Cut(ref, "/"); ok {
		ns, name = n, g
	} else if g, rest, ok := strings.Cut(ref, "."); ok {
		name = g
		ns, _, _ = strings.Cut(rest, ".")
	}
	for _, c := range a.byKind["Gateway"] {
		if c.Namespace == ns && c.Name == name {
			return c
		}
	}
	return nil
}

// gatewayHasHost reports whether one of gw's servers takes host from a
// VirtualService in namespace vsNS (server hosts may be "ns/host",
// "./host" for the gateway's own namespace, or "*/host").
func gatewayHasHost(gw *model.Config, host, vsNS string) bool {
	spec, ok := gw.Spec.(*networking.Gateway)
	if !ok {
		return true
	}
	for _, s := range spec.GetServers() {
		for _, h := range s.GetHosts() {
			ns, pattern, found := strings.Cut(h, "/")
			if !found {
				ns, pattern = "*", h
			}
			if ns == "." {
				ns = gw.Namespace
			}
			if ns != "*" && ns != vsNS {
				continue
			}
			if translate.HostMatches(pattern, host) || translate.HostMatches(host, pattern) {
				return true
			}
		}
	}
	return false
}

// catchAll reports whether an HTTP rule matches every request: no match
// conditions, or one match with nothing but a "/" prefix (or nothing).
func catchAll(r *networking.HTTPRoute) bool {
	if len(r.GetMatch()) == 0 {
		return true
	}
	for _, m := range r.GetMatch() {
		uri := m.GetUri()
		if uri != nil && uri.GetPrefix() != "/" {
			continue
		}
		if m.GetScheme() != nil || m.GetMethod() != nil || m.GetAuthority() != nil || len(m.GetHeaders()) > 0 ||
			len(m.GetQueryParams()) > 0 || len(m.GetWithoutHeaders()) > 0 || m.GetPort() != 0 || len(m.GetSourceLabels()) > 0 ||
			len(m.GetGateways()) > 0 || m.GetSourceNamespace() != "" || m.GetStatPrefix() != "" {
			continue
		}
		return true
	}
	return false
}

// meshGatewayConflicts finds VirtualServices for the sidecars (the mesh
// gateway) that claim the same host in the same namespace's view.
func (a *analysis) meshGatewayConflicts() {
	owners := map[string][]*model.Config{} // namespace-scoped FQDN → VSs
	for _, c := range a.byKind["VirtualService"] {
		vs, ok := c.Spec.(*networking.VirtualService)
		if !ok || !(len(vs.GetGateways()) == 0 || slices.Contains(vs.GetGateways(), "mesh")) {
			continue
		}
		// The namespaces that see it: "." is its own.
		scope := "*"
		if e := vs.GetExportTo(); len(e) > 0 && !slices.Contains(e, "*") {
			seen := make([]string, len(e))
			for i, ns := range e {
				seen[i] = cmp.Or(strings.TrimPrefix(ns, "."), c.Namespace)
			}
			slices.Sort(seen)
			scope = strings.Join(slices.Compact(seen), ",")
		}
		for _, h := range vs.GetHosts() {
			key := scope + "/" + a.fqdn(h, c.Namespace)
			owners[key] = append(owners[key], c)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(owners)) {
		list := owners[key]
		if len(list) < 2 {
			continue
		}
		refs := make([]string, len(list))
		for i, c := range list {
			refs[i] = c.Namespace + "/" + c.Name
		}
		for _, c := range list {
			a.add(conflictingMeshGatewayHosts.about(c, "The VirtualServices %s associated with mesh gateway define the same host %s which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
				strings.Join(refs, ","), key))
		}
	}
}

// workload is an instance the analysed objects define (a WorkloadEntry
// or a ServiceEntry's inline endpoint) or another registry holds.
type workload struct {
	namespace string
	labels    map[string]string
}

func (a *analysis) workloads() []workload {
	var out []workload
	for _, c := range a.byKind["WorkloadEntry"] {
		if we, ok := c.Spec.(*networking.WorkloadEntry); ok {
			out = append(out, workload{c.Namespace, we.GetLabels()})
		}
	}
	for _, c := range a.byKind["ServiceEntry"] {
		se, ok := c.Spec.(*networking.ServiceEntry)
		if !ok {
			continue
		}
		for _, e := range se.GetEndpoints() {
			out = append(out, workload{c.Namespace, e.GetLabels()})
		}
	}
	for _, e := range a.others.Endpoints {
		out = append(out, workload{e.Namespace, e.Labels})
	}
	return out
}

// subsetsSelectWorkloads checks, for hosts whose instances the analysed
// ServiceEntries define (inline endpoints, or WorkloadEntries their
// workloadSelector picks) or another registry holds (Consul's, Nomad's),
// that each DestinationRule subset selects one.
func (a *analysis) subsetsSelectWorkloads() {
	instances := map[string][]map[string]string{} // FQDN → instances' labels
	defined := map[string]bool{}
	wes := a.byKind["WorkloadEntry"]
	for _, c := range a.byKind["ServiceEntry"] {
		se, ok := c.Spec.(*networking.ServiceEntry)
		if !ok {
			continue
		}
		var labels []map[string]string
		for _, e := range se.GetEndpoints() {
			labels = append(labels, e.GetLabels())
		}
		sel := se.GetWorkloadSelector().GetLabels()
		if sel != nil {
			for _, w := range wes {
				if we, ok := w.Spec.(*networking.WorkloadEntry); ok && w.Namespace == c.Namespace && registry.LabelsMatch(sel, we.GetLabels()) {
					labels = append(labels, we.GetLabels())
				}
			}
		}
		if len(se.GetEndpoints()) == 0 && sel == nil {
			continue // instances come from DNS or elsewhere: unknown here
		}
		for _, h := range se.GetHosts() {
			host := a.fqdn(h, c.Namespace)
			defined[host] = true
			instances[host] = append(instances[host], labels...)
		}
	}
	otherSvcs := map[string]bool{} // namespace/hostname
	for _, svc := range a.others.Services {
		defined[svc.Hostname] = true
		otherSvcs[svc.Namespace+"/"+svc.Hostname] = true
	}
	for _, e := range a.others.Endpoints {
		if otherSvcs[e.Namespace+"/"+e.Hostname] {
			instances[e.Hostname] = append(instances[e.Hostname], e.Labels)
		}
	}
	for _, c := range a.byKind["DestinationRule"] {
		dr, ok := c.Spec.(*networking.DestinationRule)
		if !ok {
			continue
		}
		host := a.fqdn(dr.GetHost(), c.Namespace)
		if !defined[host] {
			continue
		}
		for _, s := range dr.GetSubsets() {
			if !slices.ContainsFunc(instances[host], func(l map[string]string) bool { return registry.LabelsMatch(s.GetLabels(), l) }) {
				a.add(subsetSelectsNoWorkload.about(c, "The subset %s (%s) of host %s selects no workload instance.", s.GetName(), labelText(s.GetLabels()), host))
			}
		}
	}
}

// selectorOf is the matchLabels of a workload-scoped object's selector,
// nil for objects without one.
func selectorOf(c *model.Config) map[string]string {
	switch p := c.Spec.(type) {
	case *security.AuthorizationPolicy:
		return p.GetSelector().GetMatchLabels()
	case *security.PeerAuthentication:
		return p.GetSelector().GetMatchLabels()
	case *security.RequestAuthentication:
		return p.GetSelector().GetMatchLabels()
	case *networking.Sidecar:
		return p.GetWorkloadSelector().GetLabels()
	case *telemetry.Telemetry:
		return p.GetSelector().GetMatchLabels()
	}
	return nil
}

// selectors checks that the workload-scoped policies select a workload.
func (a *analysis) selectors() {
	all := a.workloads()
	for _, kind := range []string{"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Sidecar", "Telemetry"} {
		for _, c := range a.byKind[kind] {
			labels := selectorOf(c)
			if len(labels) == 0 {
				continue
			}
			if !slices.ContainsFunc(all, func(w workload) bool { return w.namespace == c.Namespace && registry.LabelsMatch(labels, w.labels) }) {
				a.add(noMatchingWorkloadsFound.about(c, "No matching workloads for this resource with the following labels: %s", labelText(labels)))
			}
		}
	}
}

func labelText(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
