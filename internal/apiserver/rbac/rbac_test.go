package rbac

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/storetest"
)

const istioNet = "networking.istio.io"

// world builds RBAC objects in a storetest.MemStore.
type world struct {
	t testing.TB
	s *storetest.MemStore
}

func newWorld(t testing.TB) *world { return &world{t: t, s: storetest.NewMemStore()} }

func (w *world) put(key string, obj any) {
	w.t.Helper()
	b, err := json.Marshal(obj)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.s.Create(context.Background(), key, b); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) clusterRole(name string, rules ...rbacv1.PolicyRule) {
	w.put(ClusterRoleKey(name), rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules,
	})
}

func (w *world) role(ns, name string, rules ...rbacv1.PolicyRule) {
	w.put(RoleKey(ns, name), rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Rules: rules,
	})
}

func (w *world) clusterRoleBinding(name, roleKind, role string, subjects ...rbacv1.Subject) {
	w.put(ClusterRoleBindingKey(name), rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Subjects:   subjects,
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: roleKind, Name: role},
	})
}

func (w *world) roleBinding(ns, name, roleKind, role string, subjects ...rbacv1.Subject) {
	w.put(RoleBindingKey(ns, name), rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Subjects:   subjects,
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: roleKind, Name: role},
	})
}

func user(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: name}
}

func group(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: name}
}

func serviceAccount(ns, name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}
}

func pr(verbs, groups, resources []string, names ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{Verbs: verbs, APIGroups: groups, Resources: resources, ResourceNames: names}
}

func l(s ...string) []string { return s }

// res is a resource request.
func res(u, verb, group, resource, ns, name string) Attributes {
	r, sub, _ := strings.Cut(resource, "/")
	return Attributes{User: u, Groups: []string{"system:authenticated"}, Verb: verb, APIGroup: group,
		Resource: r, Subresource: sub, Namespace: ns, Name: name, ResourceRequest: true}
}

// nonRes is a non-resource request.
func nonRes(u, verb, path string) Attributes {
	return Attributes{User: u, Groups: []string{"system:authenticated"}, Verb: verb, Path: path}
}

func withGroups(a Attributes, groups ...string) Attributes {
	a.Groups = groups
	return a
}

type authzCase struct {
	name  string
	attrs Attributes
	allow bool
}

func runCases(t *testing.T, az *Authorizer, cases []authzCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := az.Authorize(context.Background(), tc.attrs)
			if err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			if d.Allowed != tc.allow {
				t.Fatalf("Allowed = %v, want %v (reason: %s)", d.Allowed, tc.allow, d.Reason)
			}
			if d.Reason == "" {
				t.Fatal("empty reason")
			}
		})
	}
}

func TestRuleForms(t *testing.T) {
	w := newWorld(t)
	bind := func(u string, rules ...rbacv1.PolicyRule) {
		w.clusterRole("cr-"+u, rules...)
		w.clusterRoleBinding("crb-"+u, "ClusterRole", "cr-"+u, user(u))
	}
	bind("verbstar", pr(l("*"), l(istioNet), l("virtualservices")))
	bind("groupstar", pr(l("get"), l("*"), l("virtualservices")))
	bind("core", pr(l("get"), l(""), l("secrets")))
	bind("resstar", pr(l("get"), l(istioNet), l("*")))
	bind("sub", pr(l("update"), l(istioNet), l("virtualservices/status")))
	bind("starsub", pr(l("update"), l(istioNet), l("*/status")))
	bind("resourcestar", pr(l("update"), l(istioNet), l("virtualservices/*")))
	bind("names", pr(l("get", "list", "watch", "create", "update", "deletecollection"), l(istioNet), l("virtualservices"), "vs1", "vs2"))
	bind("multi", pr(l("get"), l(""), l("pods")), pr(l("list"), l(istioNet), l("gateways")))
	bind("noverbs", pr(nil, l("*"), l("*")))

	az := New(w.s)
	runCases(t, az, []authzCase{
		{"verb * any verb", res("verbstar", "deletecollection", istioNet, "virtualservices", "ns", ""), true},
		{"verb * other resource", res("verbstar", "get", istioNet, "gateways", "ns", ""), false},
		{"verb * other group", res("verbstar", "get", "security.istio.io", "virtualservices", "ns", ""), false},
		{"verb * subresource not implied", res("verbstar", "get", istioNet, "virtualservices/status", "ns", "x"), false},
		{"group * any group", res("groupstar", "get", "example.com", "virtualservices", "", "x"), true},
		{"group * core", res("groupstar", "get", "", "virtualservices", "ns", "x"), true},
		{"group * verb still checked", res("groupstar", "list", istioNet, "virtualservices", "ns", ""), false},
		{"core group", res("core", "get", "", "secrets", "ns", "s"), true},
		{"core group is not istio", res("core", "get", istioNet, "secrets", "ns", "s"), false},
		{"resource * any resource", res("resstar", "get", istioNet, "gateways", "ns", "g"), true},
		{"resource * subresource", res("resstar", "get", istioNet, "virtualservices/status", "ns", "v"), true},
		{"resource * other group", res("resstar", "get", "", "pods", "ns", "p"), false},
		{"resource/sub exact", res("sub", "update", istioNet, "virtualservices/status", "ns", "v"), true},
		{"resource/sub not the resource", res("sub", "update", istioNet, "virtualservices", "ns", "v"), false},
		{"resource/sub other sub", res("sub", "update", istioNet, "virtualservices/scale", "ns", "v"), false},
		{"resource/sub other resource", res("sub", "update", istioNet, "gateways/status", "ns", "v"), false},
		{"*/sub any resource", res("starsub", "update", istioNet, "gateways/status", "ns", "g"), true},
		{"*/sub not the resource", res("starsub", "update", istioNet, "gateways", "ns", "g"), false},
		{"*/sub other sub", res("starsub", "update", istioNet, "gateways/statusx", "ns", "g"), false},
		// Kubernetes does not treat "resource/*" as a wildcard.
		{"resource/* is literal", res("resourcestar", "update", istioNet, "virtualservices/status", "ns", "v"), false},
		{"resource/* literal *", res("resourcestar", "update", istioNet, "virtualservices/*", "ns", "v"), true},
		{"resource/* not the resource", res("resourcestar", "update", istioNet, "virtualservices", "ns", "v"), false},
		{"names get listed", res("names", "get", istioNet, "virtualservices", "ns", "vs2"), true},
		{"names update listed", res("names", "update", istioNet, "virtualservices", "", "vs1"), true},
		{"names get unlisted", res("names", "get", istioNet, "virtualservices", "ns", "vs3"), false},
		{"names list", res("names", "list", istioNet, "virtualservices", "ns", ""), false},
		{"names watch", res("names", "watch", istioNet, "virtualservices", "ns", ""), false},
		{"names create", res("names", "create", istioNet, "virtualservices", "ns", ""), false},
		{"names deletecollection", res("names", "deletecollection", istioNet, "virtualservices", "ns", ""), false},
		{"names list by name", res("names", "list", istioNet, "virtualservices", "ns", "vs1"), true},
		{"multi first rule", res("multi", "get", "", "pods", "ns", "p"), true},
		{"multi second rule", res("multi", "list", istioNet, "gateways", "ns", ""), true},
		{"multi no mixing", res("multi", "list", "", "pods", "ns", ""), false},
		{"no verbs", res("noverbs", "get", "", "pods", "ns", "p"), false},
		{"unbound user", res("nobody", "get", "", "pods", "ns", "p"), false},
		{"resource rule not for paths", nonRes("resstar", "get", "/api"), false},
	})
}

func TestBindings(t *testing.T) {
	w := newWorld(t)
	w.clusterRole("pod-reader", pr(l("get", "list"), l(""), l("pods")))
	w.clusterRole("vs-admin", pr(l("*"), l(istioNet), l("virtualservices")))
	w.role("team", "vs-editor", pr(l("create", "get"), l(istioNet), l("virtualservices")))
	w.role("other", "secret-reader", pr(l("get"), l(""), l("secrets")))

	// Role vs ClusterRole through RoleBindings.
	w.roleBinding("team", "dana-edits", "Role", "vs-editor", user("dana"))
	w.roleBinding("team", "erin-reads", "ClusterRole", "pod-reader", user("erin"))
	// A RoleBinding cannot use a Role of another namespace.
	w.roleBinding("other", "ivan-edits", "Role", "vs-editor", user("ivan"))
	// Namespace names that share a prefix stay separate.
	w.roleBinding("team-x", "hank-reads", "ClusterRole", "pod-reader", user("hank"))
	// Groups.
	w.clusterRoleBinding("readers", "ClusterRole", "pod-reader", group("readers"))
	w.roleBinding("team", "vs-admins", "ClusterRole", "vs-admin", group("team-admins"))
	// Service accounts.
	w.roleBinding("team", "bot", "ClusterRole", "vs-admin", serviceAccount("", "bot"))
	w.roleBinding("team", "ci-deployer", "Role", "vs-editor", serviceAccount("ci", "deployer"))
	w.clusterRoleBinding("sa-everywhere", "ClusterRole", "pod-reader", serviceAccount("ci", "reader"))
	w.clusterRoleBinding("sa-no-ns", "ClusterRole", "pod-reader", serviceAccount("", "lost"))
	// Missing roles are skipped; other bindings still apply.
	w.clusterRoleBinding("a-dangling", "ClusterRole", "does-not-exist", user("gina"))
	w.clusterRoleBinding("b-gina", "ClusterRole", "pod-reader", user("gina"))
	w.roleBinding("team", "a-dangling", "Role", "does-not-exist", user("gina"))
	w.roleBinding("team", "b-dangling", "ClusterRole", "does-not-exist", user("gina"))
	// A ClusterRoleBinding cannot reference a Role.
	w.role("", "weird", pr(l("*"), l("*"), l("*")))
	w.clusterRoleBinding("crb-to-role", "Role", "weird", user("judy"))
	// Undecodable objects are skipped.
	if _, err := w.s.Create(context.Background(), ClusterRoleBindingKey("corrupt"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.Create(context.Background(), RoleBindingKey("team", "corrupt"), []byte(`{"subjects":7}`)); err != nil {
		t.Fatal(err)
	}
	// Extra fields are tolerated.
	extra := `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"extra","uid":"u","resourceVersion":"7","managedFields":[{"manager":"kubectl"}]},"status":{"x":1},"subjects":[{"kind":"User","name":"kim","extra":true}],"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"pod-reader"}}`
	if _, err := w.s.Create(context.Background(), ClusterRoleBindingKey("extra"), []byte(extra)); err != nil {
		t.Fatal(err)
	}

	az := New(w.s)
	runCases(t, az, []authzCase{
		{"role via rolebinding", res("dana", "create", istioNet, "virtualservices", "team", ""), true},
		{"role via rolebinding other verb", res("dana", "delete", istioNet, "virtualservices", "team", "v"), false},
		{"role not in other namespace", res("dana", "create", istioNet, "virtualservices", "other", ""), false},
		{"role not at cluster scope", res("dana", "get", istioNet, "virtualservices", "", "v"), false},
		{"clusterrole via rolebinding", res("erin", "get", "", "pods", "team", "p"), true},
		{"clusterrole via rolebinding other namespace", res("erin", "get", "", "pods", "other", "p"), false},
		{"clusterrole via rolebinding not cluster-wide", res("erin", "list", "", "pods", "", ""), false},
		{"role of another namespace", res("ivan", "create", istioNet, "virtualservices", "other", ""), false},
		{"role of another namespace where it lives", res("ivan", "create", istioNet, "virtualservices", "team", ""), false},
		{"namespace prefix", res("hank", "get", "", "pods", "team", "p"), false},
		{"namespace prefix own", res("hank", "get", "", "pods", "team-x", "p"), true},
		{"group clusterrolebinding", withGroups(res("frank", "list", "", "pods", "", ""), "readers"), true},
		{"group clusterrolebinding in namespace", withGroups(res("frank", "get", "", "pods", "any", "p"), "readers"), true},
		{"group missing", withGroups(res("frank", "list", "", "pods", "", "")), false},
		{"group name is not a user", res("readers", "list", "", "pods", "", ""), false},
		{"user name is not a group", withGroups(res("x", "get", istioNet, "virtualservices", "team", "v"), "dana"), false},
		{"group rolebinding", withGroups(res("lee", "delete", istioNet, "virtualservices", "team", "v"), "team-admins"), true},
		{"group rolebinding other namespace", withGroups(res("lee", "delete", istioNet, "virtualservices", "other", "v"), "team-admins"), false},
		{"sa defaults to binding namespace", res("system:serviceaccount:team:bot", "patch", istioNet, "virtualservices", "team", "v"), true},
		{"sa of other namespace", res("system:serviceaccount:other:bot", "patch", istioNet, "virtualservices", "team", "v"), false},
		{"sa bare name is not a user", res("bot", "patch", istioNet, "virtualservices", "team", "v"), false},
		{"sa explicit namespace", res("system:serviceaccount:ci:deployer", "create", istioNet, "virtualservices", "team", ""), true},
		{"sa explicit namespace wrong user", res("system:serviceaccount:team:deployer", "create", istioNet, "virtualservices", "team", ""), false},
		{"sa clusterrolebinding", res("system:serviceaccount:ci:reader", "list", "", "pods", "", ""), true},
		{"sa without namespace in clusterrolebinding", res("system:serviceaccount::lost", "list", "", "pods", "", ""), false},
		{"missing clusterrole skipped", res("gina", "list", "", "pods", "", ""), true},
		{"missing roles only", res("gina", "get", istioNet, "virtualservices", "team", "v"), false},
		{"clusterrolebinding to role", res("judy", "get", "", "pods", "", "p"), false},
		{"extra fields tolerated", res("kim", "get", "", "pods", "", "p"), true},
	})

	d, err := az.Authorize(context.Background(), res("gina", "get", istioNet, "virtualservices", "team", "v"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`clusterrole.rbac.authorization.k8s.io "does-not-exist" not found`, `role.rbac.authorization.k8s.io "does-not-exist" not found`} {
		if !strings.Contains(d.Reason, want) {
			t.Errorf("reason %q lacks %q", d.Reason, want)
		}
	}
	d, err = az.Authorize(context.Background(), res("system:serviceaccount:team:bot", "get", istioNet, "virtualservices", "team", "v"))
	if err != nil || d.Reason != `RBAC: allowed by RoleBinding "team/bot" of ClusterRole "vs-admin" to ServiceAccount "team/bot"` {
		t.Errorf("allow reason %q, %v", d.Reason, err)
	}
	d, err = az.Authorize(context.Background(), withGroups(res("frank", "list", "", "pods", "", ""), "readers"))
	if err != nil || d.Reason != `RBAC: allowed by ClusterRoleBinding "readers" of ClusterRole "pod-reader" to Group "readers"` {
		t.Errorf("allow reason %q, %v", d.Reason, err)
	}
}

func TestNonResourceURLs(t *testing.T) {
	w := newWorld(t)
	w.clusterRole("health", rbacv1.PolicyRule{Verbs: l("get"), NonResourceURLs: l("/healthz", "/logs/*")})
	w.clusterRole("everything-get", rbacv1.PolicyRule{Verbs: l("get"), NonResourceURLs: l("*")})
	w.clusterRole("mixed", rbacv1.PolicyRule{Verbs: l("*"), APIGroups: l("*"), Resources: l("*"), NonResourceURLs: l("/metrics")})
	w.clusterRoleBinding("health", "ClusterRole", "health", user("mon"))
	w.clusterRoleBinding("everything-get", "ClusterRole", "everything-get", user("crawler"))
	w.clusterRoleBinding("mixed", "ClusterRole", "mixed", user("mixer"))
	// RoleBindings never grant non-resource URLs.
	w.roleBinding("team", "health", "ClusterRole", "health", user("nsmon"))
	w.roleBinding("team", "everything", "ClusterRole", "everything-get", user("nsmon"))

	az := New(w.s)
	runCases(t, az, []authzCase{
		{"exact", nonRes("mon", "get", "/healthz"), true},
		{"exact is not a prefix", nonRes("mon", "get", "/healthz/ready"), false},
		{"exact other verb", nonRes("mon", "post", "/healthz"), false},
		{"prefix", nonRes("mon", "get", "/logs/kube/x.log"), true},
		{"prefix itself", nonRes("mon", "get", "/logs/"), true},
		{"prefix without slash", nonRes("mon", "get", "/logs"), false},
		{"other path", nonRes("mon", "get", "/metrics"), false},
		{"url rule not for resources", res("mon", "get", "", "healthz", "", ""), false},
		{"star", nonRes("crawler", "get", "/anything/at/all"), true},
		{"star other verb", nonRes("crawler", "put", "/anything"), false},
		{"mixed rule path", nonRes("mixer", "delete", "/metrics"), true},
		{"mixed rule resource", res("mixer", "delete", "", "pods", "team", "p"), true},
		{"mixed rule other path", nonRes("mixer", "get", "/version"), false},
		{"rolebinding does not grant urls", nonRes("nsmon", "get", "/healthz"), false},
		{"rolebinding does not grant urls with namespace set", Attributes{User: "nsmon", Verb: "get", Path: "/healthz", Namespace: "team"}, false},
	})
}

func TestDeniedReason(t *testing.T) {
	az := New(storetest.NewMemStore())
	cases := []struct {
		attrs Attributes
		want  string
	}{
		{res("alice", "list", istioNet, "virtualservices", "default", ""),
			`User "alice" cannot list resource "virtualservices" in API group "networking.istio.io" in the namespace "default"`},
		{res("alice", "create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
			`User "alice" cannot create resource "clusterrolebindings" in API group "rbac.authorization.k8s.io" at the cluster scope`},
		{res("alice", "update", istioNet, "gateways/status", "ns", "g"),
			`User "alice" cannot update resource "gateways/status" in API group "networking.istio.io" in the namespace "ns"`},
		{res("alice", "get", "", "secrets", "ns", "s"),
			`User "alice" cannot get resource "secrets" in API group "" in the namespace "ns"`},
		{nonRes("alice", "get", "/metrics"), `User "alice" cannot get path "/metrics"`},
	}
	for _, tc := range cases {
		d, err := az.Authorize(context.Background(), tc.attrs)
		if err != nil || d.Allowed || d.Reason != tc.want {
			t.Errorf("got %+v, %v; want denial %q", d, err, tc.want)
		}
	}
}

// failingReader fails List for keys with the given prefix.
type failingReader struct {
	store.Reader
	failPrefix string
	failGet    bool
}

var errBoom = errors.New("boom")

func (f failingReader) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	if strings.HasPrefix(prefix, f.failPrefix) {
		return nil, 0, errBoom
	}
	return f.Reader.List(ctx, prefix)
}

func (f failingReader) Get(ctx context.Context, key string) (store.KV, error) {
	if f.failGet {
		return store.KV{}, errBoom
	}
	return f.Reader.Get(ctx, key)
}

func TestStoreErrors(t *testing.T) {
	w := newWorld(t)
	w.clusterRole("pod-reader", pr(l("get"), l(""), l("pods")))
	w.clusterRoleBinding("alice", "ClusterRole", "pod-reader", user("alice"))
	w.roleBinding("team", "bob", "ClusterRole", "pod-reader", user("bob"))
	ctx := context.Background()

	// A failing rolebinding list does not matter when a clusterrolebinding allows.
	az := New(failingReader{Reader: w.s, failPrefix: RoleBindingsPrefix})
	if d, err := az.Authorize(ctx, res("alice", "get", "", "pods", "team", "p")); err != nil || !d.Allowed {
		t.Fatalf("got %+v, %v", d, err)
	}
	if d, err := az.Authorize(ctx, res("bob", "get", "", "pods", "team", "p")); !errors.Is(err, errBoom) || d.Allowed {
		t.Fatalf("got %+v, %v; want denial with error", d, err)
	}
	az = New(failingReader{Reader: w.s, failPrefix: ClusterRoleBindingsPrefix})
	if d, err := az.Authorize(ctx, res("bob", "get", "", "pods", "team", "p")); err != nil || !d.Allowed {
		t.Fatalf("got %+v, %v", d, err)
	}
	if d, err := az.Authorize(ctx, res("alice", "get", "", "pods", "team", "p")); !errors.Is(err, errBoom) || d.Allowed {
		t.Fatalf("got %+v, %v; want denial with error", d, err)
	}
	az = New(failingReader{Reader: w.s, failPrefix: "/nothing", failGet: true})
	if d, err := az.Authorize(ctx, res("alice", "get", "", "pods", "", "p")); !errors.Is(err, errBoom) || d.Allowed {
		t.Fatalf("got %+v, %v; want denial with error", d, err)
	}
	// Users no binding applies to never cause a role read.
	if d, err := az.Authorize(ctx, res("carol", "get", "", "pods", "team", "p")); err != nil || d.Allowed {
		t.Fatalf("got %+v, %v; want plain denial", d, err)
	}
}

// BenchmarkAuthorize measures a request that only the last of 50 bindings
// (25 cluster-wide, 25 in the namespace) allows.
func BenchmarkAuthorize(b *testing.B) {
	w := newWorld(b)
	for i := range 25 {
		w.clusterRole(fmt.Sprintf("cr-%02d", i),
			pr(l("get", "list", "watch"), l(istioNet), l(fmt.Sprintf("res%d", i))),
			pr(l("update"), l("security.istio.io"), l("*/status")))
		w.clusterRoleBinding(fmt.Sprintf("crb-%02d", i), "ClusterRole", fmt.Sprintf("cr-%02d", i),
			user(fmt.Sprintf("user%d", i)), group("devs"))
		w.role("team", fmt.Sprintf("role-%02d", i), pr(l("create"), l(istioNet), l(fmt.Sprintf("res%d", i))))
		w.roleBinding("team", fmt.Sprintf("rb-%02d", i), "Role", fmt.Sprintf("role-%02d", i),
			user(fmt.Sprintf("user%d", i)), group("devs"), serviceAccount("", "bot"))
	}
	w.roleBinding("other", "rb", "ClusterRole", "cr-00", group("devs"))
	az := New(w.s)
	ctx := context.Background()
	a := withGroups(res("carol", "create", istioNet, "res24", "team", ""), "devs", "system:authenticated")
	if d, err := az.Authorize(ctx, a); err != nil || !d.Allowed {
		b.Fatalf("setup: %+v, %v", d, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if d, err := az.Authorize(ctx, a); err != nil || !d.Allowed {
			b.Fatalf("%+v, %v", d, err)
		}
	}
}
