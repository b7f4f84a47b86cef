// Package resource knows every kind weft's API serves: its group, versions,
// plural and short names, scope, storage key and how to validate it. Istio
// kinds are validated against the Go types of istio.io/api; Kubernetes kinds
// (Namespace, Secret, RBAC) against k8s.io/api.
package resource

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// Column is one extra column of `get` table output.
type Column struct {
	Name string
	// Path is a dotted path into the object, e.g. "spec.hosts".
	Path string
	// Wide columns are shown only with -o wide.
	Wide bool
}

// Kind describes one served resource type.
type Kind struct {
	Group string
	// Versions are the served versions, the storage version first.
	Versions   []string
	Kind       string
	Resource   string
	Singular   string
	ShortNames []string
	Namespaced bool
	Categories []string
	// NewSpec returns an empty istio.io/api message for the spec, or nil for
	// Kubernetes kinds.
	NewSpec func() proto.Message
	// Columns are the extra table columns after NAME.
	Columns []Column

	validate func(obj map[string]any) FieldErrors
}

// StorageVersion is the version objects are stored in.
func (k *Kind) StorageVersion() string { return k.Versions[0] }

// GroupVersion returns "group/version", or "version" for the core group.
func GroupVersion(group, version string) string {
	if group == "" {
		return version
	}
	return group + "/" + version
}

// APIVersion returns the storage apiVersion string.
func (k *Kind) APIVersion() string { return GroupVersion(k.Group, k.StorageVersion()) }

// Serves reports whether version is served for this kind.
func (k *Kind) Serves(version string) bool {
	for _, v := range k.Versions {
		if v == version {
			return true
		}
	}
	return false
}

// GroupResource returns "resource.group" (or "resource" for core).
func (k *Kind) GroupResource() string {
	if k.Group == "" {
		return k.Resource
	}
	return k.Resource + "." + k.Group
}

// KeyPrefix is the store prefix for all objects of this kind, or, with a
// namespace, for the objects in it.
func (k *Kind) KeyPrefix(namespace string) string {
	g := k.Group
	if g == "" {
		g = "core"
	}
	p := "/registry/" + g + "/" + k.Resource + "/"
	if k.Namespaced && namespace != "" {
		p += namespace + "/"
	}
	return p
}

// Key is the store key of one object.
func (k *Kind) Key(namespace, name string) string {
	if k.Namespaced {
		return k.KeyPrefix(namespace) + name
	}
	return k.KeyPrefix("") + name
}

var istioCategories = []string{"istio-io"}

func istio(group, kind, resource string, short []string, newSpec func() proto.Message, cols ...Column) *Kind {
	versions := []string{"v1", "v1beta1", "v1alpha3"}
	cat := "networking-istio-io"
	switch group {
	case "security.istio.io":
		versions = []string{"v1", "v1beta1"}
		cat = "security-istio-io"
	case "telemetry.istio.io":
		versions = []string{"v1", "v1alpha1"}
		cat = "telemetry-istio-io"
	}
	return &Kind{
		Group: group, Versions: versions, Kind: kind, Resource: resource,
		Singular: strings.ToLower(kind), ShortNames: short, Namespaced: true,
		Categories: append([]string{cat}, istioCategories...), NewSpec: newSpec, Columns: cols,
	}
}

func msg[T any, P interface {
	*T
	proto.Message
}]() func() proto.Message {
	return func() proto.Message { return P(new(T)) }
}

// All returns every served kind, in a stable order.
func All() []*Kind { return kinds }

var kinds = []*Kind{
	istio("networking.istio.io", "VirtualService", "virtualservices", []string{"vs"}, msg[networking.VirtualService](),
		Column{Name: "GATEWAYS", Path: "spec.gateways"}, Column{Name: "HOSTS", Path: "spec.hosts"}),
	istio("networking.istio.io", "DestinationRule", "destinationrules", []string{"dr"}, msg[networking.DestinationRule](),
		Column{Name: "HOST", Path: "spec.host"}),
	istio("networking.istio.io", "Gateway", "gateways", []string{"gw"}, msg[networking.Gateway]()),
	istio("networking.istio.io", "ServiceEntry", "serviceentries", []string{"se"}, msg[networking.ServiceEntry](),
		Column{Name: "HOSTS", Path: "spec.hosts"}, Column{Name: "LOCATION", Path: "spec.location"},
		Column{Name: "RESOLUTION", Path: "spec.resolution"}),
	istio("networking.istio.io", "WorkloadEntry", "workloadentries", []string{"we"}, msg[networking.WorkloadEntry](),
		Column{Name: "ADDRESS", Path: "spec.address"}),
	istio("networking.istio.io", "WorkloadGroup", "workloadgroups", []string{"wg"}, msg[networking.WorkloadGroup]()),
	istio("networking.istio.io", "Sidecar", "sidecars", nil, msg[networking.Sidecar]()),
	istio("security.istio.io", "AuthorizationPolicy", "authorizationpolicies", []string{"ap"}, msg[security.AuthorizationPolicy](),
		Column{Name: "ACTION", Path: "spec.action"}),
	istio("security.istio.io", "PeerAuthentication", "peerauthentications", []string{"pa"}, msg[security.PeerAuthentication](),
		Column{Name: "MODE", Path: "spec.mtls.mode"}),
	istio("security.istio.io", "RequestAuthentication", "requestauthentications", []string{"ra"}, msg[security.RequestAuthentication]()),
	istio("telemetry.istio.io", "Telemetry", "telemetries", []string{"telemetry"}, msg[telemetry.Telemetry]()),
	{Group: "", Versions: []string{"v1"}, Kind: "Namespace", Resource: "namespaces", Singular: "namespace",
		ShortNames: []string{"ns"}, Columns: []Column{{Name: "STATUS", Path: "status.phase"}}},
	{Group: "", Versions: []string{"v1"}, Kind: "Secret", Resource: "secrets", Singular: "secret", Namespaced: true,
		Columns: []Column{{Name: "TYPE", Path: "type"}}},
	{Group: "rbac.authorization.k8s.io", Versions: []string{"v1"}, Kind: "Role", Resource: "roles", Singular: "role", Namespaced: true},
	{Group: "rbac.authorization.k8s.io", Versions: []string{"v1"}, Kind: "ClusterRole", Resource: "clusterroles", Singular: "clusterrole"},
	{Group: "rbac.authorization.k8s.io", Versions: []string{"v1"}, Kind: "RoleBinding", Resource: "rolebindings", Singular: "rolebinding", Namespaced: true,
		Columns: []Column{{Name: "ROLE", Path: "roleRef.name"}}},
	{Group: "rbac.authorization.k8s.io", Versions: []string{"v1"}, Kind: "ClusterRoleBinding", Resource: "clusterrolebindings", Singular: "clusterrolebinding",
		Columns: []Column{{Name: "ROLE", Path: "roleRef.name"}}},
}

func init() {
	for _, k := range kinds {
		k.validate = validatorFor(k)
	}
}

// Groups returns the served API groups (core "" excluded) in sorted order.
func Groups() []string {
	seen := map[string]bool{}
	var out []string
	for _, k := range kinds {
		if k.Group != "" && !seen[k.Group] {
			seen[k.Group] = true
			out = append(out, k.Group)
		}
	}
	sort.Strings(out)
	return out
}

// GroupVersions returns the served versions of group, preferred first.
func GroupVersions(group string) []string {
	var out []string
	seen := map[string]bool{}
	for _, k := range kinds {
		if k.Group != group {
			continue
		}
		for _, v := range k.Versions {
			if !seen[v] {
				seen[v] = true
				out = append(out, v)
			}
		}
	}
	return out
}

// InGroupVersion lists the kinds served at group/version.
func InGroupVersion(group, version string) []*Kind {
	var out []*Kind
	for _, k := range kinds {
		if k.Group == group && k.Serves(version) {
			out = append(out, k)
		}
	}
	return out
}

// ByResource finds the kind served as group/version/resource.
func ByResource(group, version, res string) (*Kind, bool) {
	for _, k := range kinds {
		if k.Group == group && k.Resource == res && k.Serves(version) {
			return k, true
		}
	}
	return nil, false
}

// ByKind finds a kind by its apiVersion ("group/version" or "v1") and Kind.
func ByKind(apiVersion, kind string) (*Kind, error) {
	group, version := "", apiVersion
	if i := strings.LastIndex(apiVersion, "/"); i >= 0 {
		group, version = apiVersion[:i], apiVersion[i+1:]
	}
	for _, k := range kinds {
		if k.Group == group && k.Kind == kind {
			if !k.Serves(version) {
				return nil, fmt.Errorf("kind %s is not served at %s (served versions: %s)", kind, apiVersion, strings.Join(k.Versions, ", "))
			}
			return k, nil
		}
	}
	return nil, fmt.Errorf("no kind %q is registered for version %q", kind, apiVersion)
}

// Lookup resolves what a user typed on the command line (plural, singular,
// short name, Kind, or "resource.group") to a kind.
func Lookup(name string) (*Kind, error) {
	n := strings.ToLower(name)
	var matches []*Kind
	for _, k := range kinds {
		cands := append([]string{k.Resource, k.Singular, strings.ToLower(k.Kind), k.GroupResource()}, k.ShortNames...)
		for _, c := range cands {
			if c == n {
				matches = append(matches, k)
				break
			}
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("the server doesn't have a resource type %q", name)
	case 1:
		return matches[0], nil
	}
	return nil, fmt.Errorf("resource type %q is ambiguous; qualify it with its group (e.g. %s)", name, matches[0].GroupResource())
}
