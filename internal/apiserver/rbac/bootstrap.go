package rbac

import (
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Names of the bootstrap objects and the groups they bind.
const (
	// ClusterAdmin may do anything, anywhere.
	ClusterAdmin = "cluster-admin"
	// Admin may manage a namespace's weft resources, secrets and RBAC.
	Admin = "admin"
	// Edit may manage a namespace's weft resources and secrets, not RBAC.
	Edit = "edit"
	// View may read a namespace's weft resources, not secrets.
	View = "view"
	// Discovery may read the API discovery, version and OpenAPI documents.
	Discovery = "weft:discovery"

	// GroupMasters is bound to cluster-admin.
	GroupMasters = "system:masters"
	// GroupAuthenticated is bound to weft:discovery.
	GroupAuthenticated = "system:authenticated"

	// BootstrappingLabel marks the bootstrap objects, with value
	// BootstrappingValue, as in Kubernetes.
	BootstrappingLabel = "kubernetes.io/bootstrapping"
	// BootstrappingValue is the value of BootstrappingLabel.
	BootstrappingValue = "rbac-defaults"
)

// The API groups whose resources weft serves in namespaces.
var istioGroups = []string{"networking.istio.io", "security.istio.io", "telemetry.istio.io"}

var (
	readVerbs      = []string{"get", "list", "watch"}
	readWriteVerbs = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
)

func bootstrapMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:        name,
		Labels:      map[string]string{BootstrappingLabel: BootstrappingValue},
		Annotations: map[string]string{rbacv1.AutoUpdateAnnotationKey: "true"},
	}
}

func clusterRole(name string, rules ...rbacv1.PolicyRule) rbacv1.ClusterRole {
	return rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRole"},
		ObjectMeta: bootstrapMeta(name),
		Rules:      rules,
	}
}

func rule(verbs, groups, resources []string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{
		Verbs:     append([]string(nil), verbs...),
		APIGroups: append([]string(nil), groups...),
		Resources: append([]string(nil), resources...),
	}
}

// BootstrapClusterRoles returns weft's built-in ClusterRoles, modelled on
// Kubernetes' user-facing roles:
//
//   - cluster-admin: every verb on every resource and non-resource URL.
//   - admin: read/write (get, list, watch, create, update, patch, delete,
//     deletecollection) on all resources of networking.istio.io,
//     security.istio.io and telemetry.istio.io, on secrets, and on roles and
//     rolebindings; read namespaces. Meant to be granted per namespace with
//     a RoleBinding.
//   - edit: as admin without roles and rolebindings.
//   - view: get, list and watch on the istio groups and namespaces; not
//     secrets, as in Kubernetes.
//   - weft:discovery: get on /api, /api/*, /apis, /apis/*, /version,
//     /openapi and /openapi/*.
//
// The roles are written out in full: weft ignores aggregationRule. Each
// call returns fresh values.
func BootstrapClusterRoles() []rbacv1.ClusterRole {
	core := []string{""}
	readNamespaces := rule(readVerbs, core, []string{"namespaces"})
	return []rbacv1.ClusterRole{
		clusterRole(ClusterAdmin,
			rule([]string{rbacv1.VerbAll}, []string{rbacv1.APIGroupAll}, []string{rbacv1.ResourceAll}),
			rbacv1.PolicyRule{Verbs: []string{rbacv1.VerbAll}, NonResourceURLs: []string{rbacv1.NonResourceAll}},
		),
		clusterRole(Admin,
			rule(readWriteVerbs, istioGroups, []string{rbacv1.ResourceAll}),
			rule(readWriteVerbs, core, []string{"secrets"}),
			rule(readWriteVerbs, []string{rbacv1.GroupName}, []string{"roles", "rolebindings"}),
			readNamespaces,
		),
		clusterRole(Edit,
			rule(readWriteVerbs, istioGroups, []string{rbacv1.ResourceAll}),
			rule(readWriteVerbs, core, []string{"secrets"}),
			readNamespaces,
		),
		clusterRole(View,
			rule(readVerbs, istioGroups, []string{rbacv1.ResourceAll}),
			readNamespaces,
		),
		clusterRole(Discovery, rbacv1.PolicyRule{
			Verbs:           []string{"get"},
			NonResourceURLs: []string{"/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi", "/openapi/*"},
		}),
	}
}

// BootstrapClusterRoleBindings returns the built-in ClusterRoleBindings:
// cluster-admin to the group system:masters and weft:discovery to the group
// system:authenticated. Each call returns fresh values.
func BootstrapClusterRoleBindings() []rbacv1.ClusterRoleBinding {
	binding := func(role, group string) rbacv1.ClusterRoleBinding {
		return rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRoleBinding"},
			ObjectMeta: bootstrapMeta(role),
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: group}},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		}
	}
	return []rbacv1.ClusterRoleBinding{
		binding(ClusterAdmin, GroupMasters),
		binding(Discovery, GroupAuthenticated),
	}
}
