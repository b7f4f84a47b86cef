package serviceentry

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/weftmesh/weft/internal/registry"
)

// object is one decoded ServiceEntry or WorkloadEntry.
type object struct {
	Namespace string
	Name      string
	Labels    map[string]string
	// Created is metadata.creationTimestamp in Unix nanoseconds (0 if unset).
	Created int64
	// SidecarPorts is a WorkloadEntry's registry.AnnotationInboundPorts.
	SidecarPorts map[uint32]uint32
	SE           *networking.ServiceEntry
	WE           *networking.WorkloadEntry
}

// envelope is the part of a stored Kubernetes-style object the source reads.
type envelope struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		CreationTimestamp string            `json:"creationTimestamp"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

var specDecoder = protojson.UnmarshalOptions{DiscardUnknown: true}

// decodeObject decodes a stored object. keyNamespace is the namespace taken
// from the store key, used when metadata.namespace is empty. workload selects
// the WorkloadEntry spec type instead of ServiceEntry.
func decodeObject(value []byte, keyNamespace string, workload bool) (*object, error) {
	var env envelope
	if err := json.Unmarshal(value, &env); err != nil {
		return nil, fmt.Errorf("decode object: %w", err)
	}
	o := &object{
		Namespace: env.Metadata.Namespace,
		Name:      env.Metadata.Name,
		Labels:    env.Metadata.Labels,
	}
	if o.Namespace == "" {
		o.Namespace = keyNamespace
	}
	if ts := env.Metadata.CreationTimestamp; ts != "" {
		t, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			return nil, fmt.Errorf("decode metadata.creationTimestamp: %w", err)
		}
		o.Created = t.UnixNano()
	}
	spec := env.Spec
	if len(spec) == 0 || string(spec) == "null" {
		spec = []byte("{}")
	}
	if workload {
		sp, err := registry.ParseInboundPorts(env.Metadata.Annotations[registry.AnnotationInboundPorts])
		if err != nil {
			return nil, fmt.Errorf("decode annotation %s: %w", registry.AnnotationInboundPorts, err)
		}
		o.SidecarPorts = sp
		o.WE = &networking.WorkloadEntry{}
		if err := specDecoder.Unmarshal(spec, o.WE); err != nil {
			return nil, fmt.Errorf("decode WorkloadEntry spec: %w", err)
		}
	} else {
		o.SE = &networking.ServiceEntry{}
		if err := specDecoder.Unmarshal(spec, o.SE); err != nil {
			return nil, fmt.Errorf("decode ServiceEntry spec: %w", err)
		}
	}
	return o, nil
}

// translate builds the registry state of a set of ServiceEntries and
// WorkloadEntries. Both maps are keyed by store key; the result is
// deterministic (services by hostname and namespace, endpoints in
// ServiceEntry order, then WorkloadEntry name order).
func translate(ses, wes map[string]*object) registry.State {
	var st registry.State
	// WorkloadEntries by namespace, sorted by name, for workloadSelector.
	byNS := map[string][]*object{}
	for _, k := range sortedKeys(wes) {
		o := wes[k]
		byNS[o.Namespace] = append(byNS[o.Namespace], o)
	}
	for _, k := range sortedKeys(ses) {
		o := ses[k]
		svcs, eps := convertServiceEntry(o, byNS[o.Namespace])
		st.Services = append(st.Services, svcs...)
		st.Endpoints = append(st.Endpoints, eps...)
	}
	sort.SliceStable(st.Services, func(i, j int) bool {
		a, b := st.Services[i], st.Services[j]
		if a.Hostname != b.Hostname {
			return a.Hostname < b.Hostname
		}
		return a.Namespace < b.Namespace
	})
	sort.SliceStable(st.Endpoints, func(i, j int) bool {
		a, b := st.Endpoints[i], st.Endpoints[j]
		if a.Hostname != b.Hostname {
			return a.Hostname < b.Hostname
		}
		return a.Namespace < b.Namespace
	})
	return st
}

// convertServiceEntry returns one Service per host and its endpoints.
// workloads are the WorkloadEntries of the ServiceEntry's namespace.
func convertServiceEntry(o *object, workloads []*object) ([]registry.Service, []registry.Endpoint) {
	se := o.SE
	ports := make([]registry.Port, 0, len(se.GetPorts()))
	for _, p := range se.GetPorts() {
		ports = append(ports, registry.Port{
			Name:       p.GetName(),
			Number:     p.GetNumber(),
			Protocol:   registry.ProtocolOf(registry.Port{Name: p.GetName(), Protocol: strings.ToUpper(p.GetProtocol())}),
			TargetPort: p.GetTargetPort(),
		})
	}
	base := registry.Service{
		Namespace:       o.Namespace,
		Addresses:       cloneSlice(se.GetAddresses()),
		Ports:           ports,
		Resolution:      resolution(se.GetResolution()),
		Location:        location(se.GetLocation()),
		Labels:          cloneMap(o.Labels),
		ExportTo:        cloneSlice(se.GetExportTo()),
		SubjectAltNames: cloneSlice(se.GetSubjectAltNames()),
		Source:          SourceName,
		CreationTime:    o.Created,
	}
	// Instances shared by every host, with Hostname filled in per host.
	var instances []registry.Endpoint
	if sel := se.GetWorkloadSelector(); sel != nil {
		for _, w := range workloads {
			labels := mergeLabels(w.Labels, w.WE.GetLabels())
			if registry.LabelsMatch(sel.GetLabels(), labels) {
				ep := fromWorkloadEntry(w.WE, labels)
				ep.WorkloadName = w.Name
				ep.SidecarPorts = w.SidecarPorts
				instances = append(instances, ep)
			}
		}
	} else {
		for _, we := range se.GetEndpoints() {
			instances = append(instances, fromWorkloadEntry(we, cloneMap(we.GetLabels())))
		}
	}
	dnsSelf := len(instances) == 0 && se.GetWorkloadSelector() == nil &&
		(base.Resolution == registry.ResolutionDNS || base.Resolution == registry.ResolutionDNSRoundRobin)

	var svcs []registry.Service
	var eps []registry.Endpoint
	for _, h := range se.GetHosts() {
		svc := base
		svc.Hostname = h
		if len(se.GetHosts()) > 1 {
			// Give every host its own slices and maps: snapshots are immutable
			// but consumers should never see aliasing between services.
			svc.Addresses = cloneSlice(base.Addresses)
			svc.Ports = cloneSlice(base.Ports)
			svc.Labels = cloneMap(base.Labels)
			svc.ExportTo = cloneSlice(base.ExportTo)
			svc.SubjectAltNames = cloneSlice(base.SubjectAltNames)
		}
		svcs = append(svcs, svc)
		for _, in := range instances {
			ep := in
			ep.Hostname, ep.Namespace = h, o.Namespace
			ep.Ports, ep.Labels = cloneMap(in.Ports), cloneMap(in.Labels)
			eps = append(eps, ep)
		}
		// Istio: a DNS ServiceEntry without endpoints resolves its own host.
		if dnsSelf && !strings.Contains(h, "*") {
			eps = append(eps, registry.Endpoint{Hostname: h, Namespace: o.Namespace, Address: h, Healthy: true})
		}
	}
	return svcs, eps
}

// fromWorkloadEntry converts an inline endpoint or a WorkloadEntry spec.
func fromWorkloadEntry(we *networking.WorkloadEntry, labels map[string]string) registry.Endpoint {
	return registry.Endpoint{
		Address:        we.GetAddress(),
		Ports:          cloneMap(we.GetPorts()),
		Labels:         labels,
		Locality:       we.GetLocality(),
		Network:        we.GetNetwork(),
		Healthy:        true,
		ServiceAccount: we.GetServiceAccount(),
		Weight:         we.GetWeight(),
	}
}

func resolution(r networking.ServiceEntry_Resolution) registry.Resolution {
	switch r {
	case networking.ServiceEntry_STATIC:
		return registry.ResolutionStatic
	case networking.ServiceEntry_DNS:
		return registry.ResolutionDNS
	case networking.ServiceEntry_DNS_ROUND_ROBIN:
		return registry.ResolutionDNSRoundRobin
	}
	return registry.ResolutionNone
}

func location(l networking.ServiceEntry_Location) registry.Location {
	if l == networking.ServiceEntry_MESH_INTERNAL {
		return registry.MeshInternal
	}
	return registry.MeshExternal
}

// mergeLabels returns metadata labels overlaid with spec labels (Istio's
// WorkloadEntry label semantics), or nil when both are empty.
func mergeLabels(meta, spec map[string]string) map[string]string {
	if len(meta)+len(spec) == 0 {
		return nil
	}
	out := make(map[string]string, len(meta)+len(spec))
	maps.Copy(out, meta)
	maps.Copy(out, spec)
	return out
}

func cloneMap[V any](m map[string]V) map[string]V {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func cloneSlice[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// Entry is a ServiceEntry or WorkloadEntry given by its spec (one of the
// two set), for StateOf.
type Entry struct {
	Namespace, Name string
	Labels          map[string]string
	ServiceEntry    *networking.ServiceEntry
	WorkloadEntry   *networking.WorkloadEntry
}

// StateOf is the registry state the source would report for entries:
// what weft analyze translates config against, offline.
func StateOf(entries []Entry) registry.State {
	ses, wes := map[string]*object{}, map[string]*object{}
	for _, e := range entries {
		o := &object{Namespace: e.Namespace, Name: e.Name, Labels: e.Labels, SE: e.ServiceEntry, WE: e.WorkloadEntry}
		switch {
		case e.ServiceEntry != nil:
			ses[e.Namespace+"/"+e.Name] = o
		case e.WorkloadEntry != nil:
			wes[e.Namespace+"/"+e.Name] = o
		}
	}
	return translate(ses, wes)
}
