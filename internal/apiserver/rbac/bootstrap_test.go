package rbac

import (
	"encoding/json"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

func TestBootstrapObjects(t *testing.T) {
	roles := BootstrapClusterRoles()
	names := map[string]bool{}
	for _, r := range roles {
		names[r.Name] = true
		if r.APIVersion != "rbac.authorization.k8s.io/v1" || r.Kind != "ClusterRole" {
			t.Errorf("%s: TypeMeta %+v", r.Name, r.TypeMeta)
		}
		if r.Labels["kubernetes.io/bootstrapping"] != "rbac-defaults" {
			t.Errorf("%s: labels %v", r.Name, r.Labels)
		}
		if r.AggregationRule != nil {
			t.Errorf("%s: has an aggregation rule", r.Name)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil || m["apiVersion"] != "rbac.authorization.k8s.io/v1" || m["kind"] != "ClusterRole" {
			t.Errorf("%s: JSON %s", r.Name, b)
		}
	}
	for _, n := range []string{"cluster-admin", "admin", "edit", "view", "weft:discovery"} {
		if !names[n] {
			t.Errorf("missing ClusterRole %q", n)
		}
	}
	bindings := BootstrapClusterRoleBindings()
	want := map[string]string{"cluster-admin": "system:masters", "weft:discovery": "system:authenticated"}
	if len(bindings) != len(want) {
		t.Fatalf("got %d bindings", len(bindings))
	}
	for _, b := range bindings {
		if b.APIVersion != "rbac.authorization.k8s.io/v1" || b.Kind != "ClusterRoleBinding" ||
			b.Labels["kubernetes.io/bootstrapping"] != "rbac-defaults" {
			t.Errorf("%s: %+v %v", b.Name, b.TypeMeta, b.Labels)
		}
		if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != b.Name || len(b.Subjects) != 1 ||
			b.Subjects[0].Kind != rbacv1.GroupKind || b.Subjects[0].Name != want[b.Name] {
			t.Errorf("%s: roleRef %+v subjects %+v", b.Name, b.RoleRef, b.Subjects)
		}
	}
	// Fresh values each call.
	roles[0].Rules[0].Verbs[0] = "mutated"
	if BootstrapClusterRoles()[0].Rules[0].Verbs[0] == "mutated" {
		t.Error("BootstrapClusterRoles shares state between calls")
	}
}

func TestBootstrapRoles(t *testing.T) {
	w := newWorld(t)
	for _, r := range BootstrapClusterRoles() {
		w.put(ClusterRoleKey(r.Name), r)
	}
	for _, b := range BootstrapClusterRoleBindings() {
		w.put(ClusterRoleBindingKey(b.Name), b)
	}
	w.roleBinding("team", "viewers", "ClusterRole", View, user("viewer"))
	w.roleBinding("team", "editors", "ClusterRole", Edit, user("editor"))
	w.roleBinding("team", "admins", "ClusterRole", Admin, user("adm"))

	root := withGroups(res("root", "", "", "", "", ""), "system:masters", "system:authenticated")
	as := func(base Attributes, verb, group, resource, ns, name string) Attributes {
		a := res(base.User, verb, group, resource, ns, name)
		a.Groups = base.Groups
		return a
	}
	rootPath := func(verb, path string) Attributes {
		a := nonRes("root", verb, path)
		a.Groups = root.Groups
		return a
	}
	anon := func(verb, path string) Attributes { // authenticated user without bindings
		return nonRes("someone", verb, path)
	}
	const sec, rbac = "security.istio.io", "rbac.authorization.k8s.io"

	runCases(t, New(w.s), []authzCase{
		// view
		{"view gets virtualservices", res("viewer", "get", istioNet, "virtualservices", "team", "v"), true},
		{"view lists authorizationpolicies", res("viewer", "list", sec, "authorizationpolicies", "team", ""), true},
		{"view watches telemetries", res("viewer", "watch", "telemetry.istio.io", "telemetries", "team", ""), true},
		{"view reads status", res("viewer", "get", istioNet, "virtualservices/status", "team", "v"), true},
		{"view cannot get secrets", res("viewer", "get", "", "secrets", "team", "s"), false},
		{"view cannot list secrets", res("viewer", "list", "", "secrets", "team", ""), false},
		{"view cannot create", res("viewer", "create", istioNet, "virtualservices", "team", ""), false},
		{"view cannot read roles", res("viewer", "get", rbac, "roles", "team", "r"), false},
		{"view only in its namespace", res("viewer", "get", istioNet, "virtualservices", "other", "v"), false},
		{"view gets its namespace", res("viewer", "get", "", "namespaces", "team", "team"), true},
		// edit
		{"edit creates virtualservices", res("editor", "create", istioNet, "virtualservices", "team", ""), true},
		{"edit deletes peerauthentications", res("editor", "delete", sec, "peerauthentications", "team", "p"), true},
		{"edit deletecollection", res("editor", "deletecollection", "telemetry.istio.io", "telemetries", "team", ""), true},
		{"edit creates secrets", res("editor", "create", "", "secrets", "team", ""), true},
		{"edit gets secrets", res("editor", "get", "", "secrets", "team", "s"), true},
		{"edit cannot create rolebindings", res("editor", "create", rbac, "rolebindings", "team", ""), false},
		{"edit cannot read roles", res("editor", "list", rbac, "roles", "team", ""), false},
		{"edit cannot delete namespace", res("editor", "delete", "", "namespaces", "team", "team"), false},
		{"edit only in its namespace", res("editor", "create", "", "secrets", "other", ""), false},
		// admin
		{"admin creates rolebindings", res("adm", "create", rbac, "rolebindings", "team", ""), true},
		{"admin updates roles", res("adm", "update", rbac, "roles", "team", "r"), true},
		{"admin creates virtualservices", res("adm", "create", istioNet, "virtualservices", "team", ""), true},
		{"admin gets secrets", res("adm", "get", "", "secrets", "team", "s"), true},
		{"admin reads namespace", res("adm", "get", "", "namespaces", "team", "team"), true},
		{"admin cannot delete namespace", res("adm", "delete", "", "namespaces", "team", "team"), false},
		{"admin cannot bind", res("adm", "bind", rbac, "clusterroles", "team", "admin"), false},
		{"admin not in other namespace", res("adm", "create", rbac, "rolebindings", "other", ""), false},
		{"admin not at cluster scope", res("adm", "create", rbac, "rolebindings", "", ""), false},
		{"admin cannot create clusterrolebindings", res("adm", "create", rbac, "clusterrolebindings", "", ""), false},
		{"admin cannot list namespaces", res("adm", "list", "", "namespaces", "", ""), false},
		// cluster-admin
		{"cluster-admin creates clusterrolebindings", as(root, "create", rbac, "clusterrolebindings", "", ""), true},
		{"cluster-admin deletes namespaces", as(root, "delete", "", "namespaces", "", "team"), true},
		{"cluster-admin gets secrets anywhere", as(root, "get", "", "secrets", "kube-system", "s"), true},
		{"cluster-admin any verb", as(root, "escalate", rbac, "clusterroles", "", "x"), true},
		{"cluster-admin subresources", as(root, "update", istioNet, "gateways/status", "x", "g"), true},
		{"cluster-admin any path", rootPath("post", "/metrics/anything"), true},
		{"system:masters needed", res("root", "get", "", "secrets", "team", "s"), false},
		// discovery, for every authenticated user
		{"discovery /api", anon("get", "/api"), true},
		{"discovery /api/v1", anon("get", "/api/v1"), true},
		{"discovery /apis", anon("get", "/apis"), true},
		{"discovery /apis group", anon("get", "/apis/networking.istio.io/v1"), true},
		{"discovery /version", anon("get", "/version"), true},
		{"discovery /openapi/v3", anon("get", "/openapi/v3"), true},
		{"discovery /openapi", anon("get", "/openapi"), true},
		{"discovery no post", anon("post", "/api"), false},
		{"discovery no /metrics", anon("get", "/metrics"), false},
		{"discovery no /apix", anon("get", "/apix"), false},
		{"discovery no /versions", anon("get", "/versions"), false},
		{"discovery needs the group", Attributes{User: "someone", Verb: "get", Path: "/api"}, false},
		{"discovery grants no resources", res("someone", "get", "", "namespaces", "", "team"), false},
	})
}
