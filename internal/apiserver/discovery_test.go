package apiserver

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func decodeInto(t *testing.T, resp response, v any) {
	t.Helper()
	if resp.code != http.StatusOK {
		t.Fatalf("status %d: %s", resp.code, resp.body)
	}
	if ct := resp.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	if err := json.Unmarshal(resp.body, v); err != nil {
		t.Fatalf("decoding %T: %v\n%s", v, err, resp.body)
	}
}

func TestDiscoveryCoreVersions(t *testing.T) {
	h := newHarness(t, Options{})
	// Any authenticated user may read discovery (weft:discovery is bound to
	// system:authenticated), not only the admin.
	nobody := h.token("nobody")
	var v metav1.APIVersions
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/api", token: nobody}), &v)
	if v.Kind != "APIVersions" || !slices.Equal(v.Versions, []string{"v1"}) {
		t.Fatalf("/api = %+v", v)
	}
	if len(v.ServerAddressByClientCIDRs) != 1 || v.ServerAddressByClientCIDRs[0].ServerAddress != strings.TrimPrefix(h.ts.URL, "http://") {
		t.Fatalf("/api serverAddressByClientCIDRs = %+v, want host %s", v.ServerAddressByClientCIDRs, h.ts.URL)
	}
}

func findResource(list metav1.APIResourceList, name string) (metav1.APIResource, bool) {
	for _, r := range list.APIResources {
		if r.Name == name {
			return r, true
		}
	}
	return metav1.APIResource{}, false
}

func TestDiscoveryResourceLists(t *testing.T) {
	h := newHarness(t, Options{})
	allVerbsWant := []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
	type want struct {
		name, kind, singular string
		namespaced           bool
		short                []string
	}
	tests := []struct {
		path         string
		groupVersion string
		want         []want
		absent       []string
	}{
		{
			path: "/api/v1", groupVersion: "v1",
			want: []want{
				{"namespaces", "Namespace", "namespace", false, []string{"ns"}},
				{"secrets", "Secret", "secret", true, nil},
			},
			absent: []string{"virtualservices", "roles"},
		},
		{
			path: "/apis/networking.istio.io/v1alpha3", groupVersion: "networking.istio.io/v1alpha3",
			want: []want{
				{"virtualservices", "VirtualService", "virtualservice", true, []string{"vs"}},
				{"destinationrules", "DestinationRule", "destinationrule", true, []string{"dr"}},
				{"gateways", "Gateway", "gateway", true, []string{"gw"}},
				{"serviceentries", "ServiceEntry", "serviceentry", true, []string{"se"}},
				{"sidecars", "Sidecar", "sidecar", true, nil},
			},
			absent: []string{"authorizationpolicies", "secrets"},
		},
		{
			path: "/apis/networking.istio.io/v1", groupVersion: "networking.istio.io/v1",
			want: []want{{"virtualservices", "VirtualService", "virtualservice", true, []string{"vs"}}},
		},
		{
			path: "/apis/security.istio.io/v1beta1", groupVersion: "security.istio.io/v1beta1",
			want:   []want{{"authorizationpolicies", "AuthorizationPolicy", "authorizationpolicy", true, []string{"ap"}}},
			absent: []string{"virtualservices"},
		},
		{
			path: "/apis/rbac.authorization.k8s.io/v1", groupVersion: "rbac.authorization.k8s.io/v1",
			want: []want{
				{"clusterroles", "ClusterRole", "clusterrole", false, nil},
				{"rolebindings", "RoleBinding", "rolebinding", true, nil},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			var list metav1.APIResourceList
			decodeInto(t, h.do(t, req{method: http.MethodGet, path: tc.path, token: h.admin}), &list)
			if list.Kind != "APIResourceList" || list.GroupVersion != tc.groupVersion {
				t.Fatalf("kind %q groupVersion %q, want APIResourceList %q", list.Kind, list.GroupVersion, tc.groupVersion)
			}
			for _, w := range tc.want {
				r, ok := findResource(list, w.name)
				if !ok {
					t.Fatalf("resource %s missing from %s", w.name, tc.path)
				}
				if r.Kind != w.kind || r.SingularName != w.singular || r.Namespaced != w.namespaced {
					t.Errorf("%s = kind %q singular %q namespaced %v, want %q %q %v", w.name, r.Kind, r.SingularName, r.Namespaced, w.kind, w.singular, w.namespaced)
				}
				if !slices.Equal(r.ShortNames, w.short) {
					t.Errorf("%s shortNames %v, want %v", w.name, r.ShortNames, w.short)
				}
				verbs := slices.Clone([]string(r.Verbs))
				slices.Sort(verbs)
				if !slices.Equal(verbs, allVerbsWant) {
					t.Errorf("%s verbs %v, want %v", w.name, verbs, allVerbsWant)
				}
			}
			for _, name := range tc.absent {
				if _, ok := findResource(list, name); ok {
					t.Errorf("%s unexpectedly listed in %s", name, tc.path)
				}
			}
		})
	}
	t.Run("istio categories", func(t *testing.T) {
		var list metav1.APIResourceList
		decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/apis/networking.istio.io/v1alpha3", token: h.admin}), &list)
		r, _ := findResource(list, "virtualservices")
		if !slices.Contains(r.Categories, "istio-io") || !slices.Contains(r.Categories, "networking-istio-io") {
			t.Fatalf("virtualservices categories %v", r.Categories)
		}
	})
}

func TestDiscoveryGroups(t *testing.T) {
	h := newHarness(t, Options{})
	var groups metav1.APIGroupList
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/apis", token: h.admin}), &groups)
	got := map[string]metav1.APIGroup{}
	for _, g := range groups.Groups {
		got[g.Name] = g
	}
	for name, versions := range map[string][]string{
		"networking.istio.io":       {"v1", "v1beta1", "v1alpha3"},
		"security.istio.io":         {"v1", "v1beta1"},
		"telemetry.istio.io":        {"v1", "v1alpha1"},
		"rbac.authorization.k8s.io": {"v1"},
	} {
		g, ok := got[name]
		if !ok {
			t.Errorf("/apis lacks group %s (have %v)", name, groups.Groups)
			continue
		}
		var vs []string
		for _, v := range g.Versions {
			vs = append(vs, v.Version)
			if v.GroupVersion != name+"/"+v.Version {
				t.Errorf("%s: groupVersion %q", name, v.GroupVersion)
			}
		}
		if !slices.Equal(vs, versions) {
			t.Errorf("%s versions %v, want %v", name, vs, versions)
		}
		if g.PreferredVersion.Version != versions[0] {
			t.Errorf("%s preferred %q, want %q", name, g.PreferredVersion.Version, versions[0])
		}
	}
	if _, ok := got[""]; ok {
		t.Errorf("/apis lists the core group")
	}

	var g metav1.APIGroup
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/apis/networking.istio.io", token: h.admin}), &g)
	if g.Kind != "APIGroup" || g.Name != "networking.istio.io" || len(g.Versions) != 3 || g.PreferredVersion.GroupVersion != "networking.istio.io/v1" {
		t.Fatalf("/apis/networking.istio.io = %+v", g)
	}

	for _, p := range []string{"/apis/nope.example.com", "/apis/networking.istio.io/v9", "/api/v1/nothings", "/no/such/path"} {
		expectStatus(t, h.do(t, req{method: http.MethodGet, path: p, token: h.admin}), http.StatusNotFound, "NotFound")
	}
}

func TestVersion(t *testing.T) {
	h := newHarness(t, Options{Version: "1.2.3"})
	var v map[string]string
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/version", token: h.token("someone")}), &v)
	if v["major"] != "1" || v["minor"] == "" || !strings.HasSuffix(v["gitVersion"], "-weft-1.2.3") || v["goVersion"] == "" || v["platform"] == "" {
		t.Fatalf("/version = %v", v)
	}
}

func TestOpenAPIV3(t *testing.T) {
	h := newHarness(t, Options{})
	var root struct {
		Paths map[string]struct {
			ServerRelativeURL string `json:"serverRelativeURL"`
		} `json:"paths"`
	}
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/openapi/v3", token: h.admin}), &root)
	for _, gv := range []string{"api/v1", "apis/networking.istio.io/v1", "apis/networking.istio.io/v1alpha3", "apis/security.istio.io/v1beta1", "apis/rbac.authorization.k8s.io/v1"} {
		p, ok := root.Paths[gv]
		if !ok || p.ServerRelativeURL != "/openapi/v3/"+gv {
			t.Errorf("openapi root path %s = %+v (present %v)", gv, p, ok)
		}
	}

	type param struct {
		Name string `json:"name"`
		In   string `json:"in"`
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Paths   map[string]map[string]struct {
			OperationID string            `json:"operationId"`
			GVK         map[string]string `json:"x-kubernetes-group-version-kind"`
			Action      string            `json:"x-kubernetes-action"`
			Parameters  []param           `json:"parameters"`
		} `json:"paths"`
	}
	// kubectl fetches the serverRelativeURL of the root index.
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: root.Paths["apis/networking.istio.io/v1alpha3"].ServerRelativeURL, token: h.admin}), &doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	const vsPatchPath = "/apis/networking.istio.io/v1alpha3/namespaces/{namespace}/virtualservices/{name}"
	op, ok := doc.Paths[vsPatchPath]["patch"]
	if !ok {
		t.Fatalf("no PATCH operation at %s; paths: %v", vsPatchPath, doc.Paths)
	}
	if op.Action != "patch" || op.GVK["kind"] != "VirtualService" || op.GVK["group"] != "networking.istio.io" || op.GVK["version"] != "v1alpha3" {
		t.Fatalf("PATCH op = %+v", op)
	}
	if !slices.Contains(op.Parameters, param{Name: "fieldValidation", In: "query"}) {
		t.Fatalf("PATCH op lacks the fieldValidation query parameter: %+v", op.Parameters)
	}

	// The core doc has cluster-scoped namespaces without {namespace}.
	decodeInto(t, h.do(t, req{method: http.MethodGet, path: "/openapi/v3/api/v1", token: h.admin}), &doc)
	if _, ok := doc.Paths["/api/v1/namespaces/{name}"]["patch"]; !ok {
		t.Fatalf("core openapi lacks namespaces PATCH: %v", doc.Paths)
	}
	if _, ok := doc.Paths["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]; !ok {
		t.Fatalf("core openapi lacks secrets PATCH: %v", doc.Paths)
	}

	for _, p := range []string{"/openapi/v3/apis/nope/v1", "/openapi/v3/apis/networking.istio.io/v9", "/openapi/v2"} {
		expectStatus(t, h.do(t, req{method: http.MethodGet, path: p, token: h.admin}), http.StatusNotFound, "NotFound")
	}
}

func TestHealthEndpointsNeedNoAuth(t *testing.T) {
	h := newHarness(t, Options{})
	for _, p := range []string{"/healthz", "/readyz", "/livez"} {
		resp := h.do(t, req{method: http.MethodGet, path: p})
		if resp.code != http.StatusOK || string(resp.body) != "ok" {
			t.Errorf("%s = %d %q", p, resp.code, resp.body)
		}
	}
}
