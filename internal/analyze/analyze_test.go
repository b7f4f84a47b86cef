package analyze

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/resource"
)

const samples = "../../../shared/istio-samples"

// configsOf reads YAML documents as the API server would store them.
func configsOf(t *testing.T, docs ...string) []*model.Config {
	t.Helper()
	var out []*model.Config
	for _, d := range docs {
		parsed, err := resource.SplitYAML([]byte(d))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range parsed {
			av, _ := doc.Object["apiVersion"].(string)
			kindName, _ := doc.Object["kind"].(string)
			k, err := resource.ByKind(av, kindName)
			if err != nil {
				t.Fatal(err)
			}
			k.Normalize(doc.Object)
			md, _ := doc.Object["metadata"].(map[string]any)
			ns, _ := md["namespace"].(string)
			if ns == "" {
				ns = "default"
			}
			spec := k.NewSpec()
			b, _ := json.Marshal(doc.Object["spec"])
			if err := resource.UnmarshalSpec(b, spec, false); err != nil {
				t.Fatal(err)
			}
			out = append(out, &model.Config{Kind: k.Kind, Namespace: ns, Name: md["name"].(string), Spec: spec})
		}
	}
	return out
}

func sample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(samples, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func lines(msgs []Message) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString(m.String() + "\n")
	}
	return b.String()
}

func TestIstioSamples(t *testing.T) {
	for _, c := range []struct {
		name  string
		files []string
		want  string
	}{
		{"subsets defined", []string{"bookinfo-networking/destination-rule-all.yaml", "bookinfo-networking/virtual-service-reviews-v3.yaml"}, ""},
		{"no DestinationRule", []string{"bookinfo-networking/virtual-service-reviews-v3.yaml"},
			`Error [IST0101] (VirtualService default/reviews) Referenced host+subset in destinationrule not found: "reviews+v3"` + "\n"},
		{"reviews has a rule, ratings none", []string{"bookinfo-networking/destination-rule-reviews.yaml", "bookinfo-networking/virtual-service-ratings-db.yaml"},
			`Error [IST0101] (VirtualService default/ratings) Referenced host+subset in destinationrule not found: "ratings+v2"` + "\n"},
		{"gateway and its VirtualService", []string{"bookinfo-networking/bookinfo-gateway.yaml"}, ""},
		{"a fault rule that takes every request", []string{"bookinfo-networking/fault-injection-details-v1.yaml"},
			"Info [IST0131] (VirtualService default/details) VirtualService rule #1 is not used: rule #0 before it matches every request.\n"},
		{"CUSTOM authorization, for workloads not defined here", []string{"other/authorization-policy-custom-provider.yaml"},
			"Warning [IST0127] (AuthorizationPolicy foo/httpbin-1) No matching workloads for this resource with the following labels: app=httpbin,version=v1\n" +
				"Warning [WEFT0001] (AuthorizationPolicy foo/httpbin-1) action CUSTOM (external authorization) is not supported by weft; the requests it matches are denied\n" +
				"Warning [IST0127] (AuthorizationPolicy foo/httpbin-2) No matching workloads for this resource with the following labels: app=httpbin,version=v1\n" +
				"Warning [WEFT0001] (AuthorizationPolicy foo/httpbin-2) action CUSTOM (external authorization) is not supported by weft; the requests it matches are denied\n"},
		{"deprecated abort percent", []string{"bookinfo-networking/destination-rule-all.yaml", "bookinfo-networking/virtual-service-ratings-test-abort.yaml"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var docs []string
			for _, f := range c.files {
				docs = append(docs, sample(t, f))
			}
			if got := lines(Analyze(configsOf(t, docs...), model.DefaultMesh(), registry.State{})); got != c.want {
				t.Errorf("got:\n%swant:\n%s", got, c.want)
			}
		})
	}
}

func TestGatewayReferences(t *testing.T) {
	gw := `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop/*.example.com", "./status.example.org"]
`
	for _, c := range []struct{ name, vs, want string }{
		{"by namespace/name", `gateways: [edge/public]
  hosts: [www.example.com]`, ""},
		{"by name.namespace", `gateways: [public.edge.svc.cluster.local]
  hosts: [api.example.com]`, ""},
		{"missing gateway", `gateways: [edge/private]
  hosts: [www.example.com]`, `Error [IST0101] (VirtualService shop/web) Referenced gateway not found: "edge/private"`},
		{"bare name in the VirtualService's namespace", `gateways: [public]
  hosts: [www.example.com]`, `Error [IST0101] (VirtualService shop/web) Referenced gateway not found: "public"`},
		{"host the gateway does not take", `gateways: [edge/public, mesh]
  hosts: [www.example.com, www.example.org, status.example.org]`,
			`Warning [IST0132] (VirtualService shop/web) one or more host [www.example.org status.example.org] defined in VirtualService shop/web not found in Gateway edge/public.`},
	} {
		t.Run(c.name, func(t *testing.T) {
			vs := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\nspec:\n  " + c.vs +
				"\n  http: [{route: [{destination: {host: web.shop.svc.cluster.local}}]}]\n"
			got := strings.TrimSpace(lines(Analyze(configsOf(t, gw, vs), model.DefaultMesh(), registry.State{})))
			if got != c.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, c.want)
			}
		})
	}
}

func TestMeshGatewayConflict(t *testing.T) {
	vs := func(name, host, extra string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: " + name + "}\nspec:\n  hosts: [" + host + "]\n" + extra +
			"  http: [{route: [{destination: {host: " + host + "}}]}]\n"
	}
	got := lines(Analyze(configsOf(t, vs("a", "reviews", ""), vs("b", "reviews.default.svc.cluster.local", "")), model.DefaultMesh(), registry.State{}))
	for _, name := range []string{"a", "b"} {
		want := "Error [IST0109] (VirtualService default/" + name + ") The VirtualServices default/a,default/b associated with mesh gateway define the same host */reviews.default.svc.cluster.local"
		if !strings.Contains(got, want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
	// "." is the VirtualService's own namespace: the same view as naming it.
	same := strings.Replace(vs("c", "reviews.default.svc.cluster.local", "  exportTo: [default]\n"), "{name: c}", "{name: c, namespace: default}", 1)
	if got := lines(Analyze(configsOf(t, vs("a", "reviews", "  exportTo: [.]\n"), same), model.DefaultMesh(), registry.State{})); !strings.Contains(got, "default/a,default/c") {
		t.Errorf("exportTo . and exportTo default in namespace default conflict; got:\n%s", got)
	}
	other := strings.Replace(vs("d", "reviews.default.svc.cluster.local", "  exportTo: [.]\n"), "{name: d}", "{name: d, namespace: shop}", 1)
	if got := lines(Analyze(configsOf(t, vs("a", "reviews", "  exportTo: [.]\n"), other), model.DefaultMesh(), registry.State{})); got != "" {
		t.Errorf("exportTo . in two namespaces: no conflict expected, got:\n%s", got)
	}
	// Bound to a gateway only, or exported to different namespaces: no conflict.
	gw := "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n"
	for _, pair := range [][2]string{
		{vs("a", "reviews", ""), vs("b", "reviews", "  gateways: [g]\n")},
		{vs("a", "reviews", "  exportTo: [.]\n"), vs("b", "reviews", "  exportTo: [other]\n")},
	} {
		if got := lines(Analyze(configsOf(t, gw, pair[0], pair[1]), model.DefaultMesh(), registry.State{})); got != "" {
			t.Errorf("no conflict expected, got:\n%s", got)
		}
	}
}

func TestIneffectiveMatch(t *testing.T) {
	vs := func(rules string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n" + rules
	}
	route := "    route: [{destination: {host: r}}]\n"
	for _, c := range []struct{ rules, want string }{
		{"  - match: [{uri: {prefix: /a}}]\n" + route + "  - match: [{uri: {prefix: /}}]\n" + route, ""},
		{"  - match: [{uri: {prefix: /}}]\n" + route + "  - match: [{uri: {prefix: /a}}]\n" + route,
			"Info [IST0131] (VirtualService default/r) VirtualService rule #1 is not used: rule #0 before it matches every request."},
		{"  - match: [{uri: {prefix: /}, headers: {x: {exact: \"v\"}}}]\n" + route + "  - " + strings.TrimPrefix(route, "    "), ""},
		{"  - match: [{uri: {prefix: /a}}, {}]\n" + route + "  - " + strings.TrimPrefix(route, "    ") + "  - " + strings.TrimPrefix(route, "    "),
			"Info [IST0131] (VirtualService default/r) VirtualService rule #1 is not used: rule #0 before it matches every request.\n" +
				"Info [IST0131] (VirtualService default/r) VirtualService rule #2 is not used: rule #0 before it matches every request."},
	} {
		if got := strings.TrimSpace(lines(Analyze(configsOf(t, vs(c.rules)), model.DefaultMesh(), registry.State{}))); got != c.want {
			t.Errorf("rules:\n%sgot:\n%s\nwant:\n%s", c.rules, got, c.want)
		}
	}
}

func TestSelectors(t *testing.T) {
	se := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: vms}
spec:
  hosts: [ratings.vms.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: vms}
spec: {address: 10.0.0.5, labels: {app: ratings, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: vms}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: vms}
spec: {selector: {matchLabels: {app: ratings}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: vms}
spec: {selector: {matchLabels: {app: ratigns}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: elsewhere, namespace: other}
spec: {selector: {matchLabels: {app: ratings}}, mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: namespace-wide, namespace: other}
spec: {mtls: {mode: STRICT}}
`
	want := `Warning [IST0127] (AuthorizationPolicy vms/typo) No matching workloads for this resource with the following labels: app=ratigns
Warning [IST0173] (DestinationRule vms/ratings) The subset v2 (version=v2) of host ratings.vms.svc.cluster.local selects no workload instance.
Warning [IST0127] (PeerAuthentication other/elsewhere) No matching workloads for this resource with the following labels: app=ratings
`
	if got := lines(Analyze(configsOf(t, se), model.DefaultMesh(), registry.State{})); got != want {
		t.Errorf("got:\n%swant:\n%s", got, want)
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]Level{"error": Error, "Warning": Warning, "INFO": Info} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%s) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseLevel("fatal"); err == nil {
		t.Error("ParseLevel(fatal) accepted")
	}
}

// TestTranslationWarnings: what discovery would warn about, translating
// for the sidecars the objects define, is reported as WEFT0001, about the
// object named when there is one.
func TestTranslationWarnings(t *testing.T) {
	got := lines(Analyze(configsOf(t, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - useRequestIdForTraceSampling: false
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides: {"bad-label": {value: "request.host"}}
`), model.DefaultMesh(), registry.State{}))
	for _, want := range []string{
		"Warning [WEFT0001] (Telemetry istio-system/mesh-default) tracing useRequestIdForTraceSampling: false has no effect: weft samples new traces at random, never by x-request-id\n",
		`Warning [WEFT0001] (Sidecar istio-system/(the namespace's sidecars)) metrics tagOverrides "bad-label": not a Prometheus label name; left out` + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
}

// TestOtherRegistries: a route to a service another registry (Consul)
// holds is not reported as unknown when that registry's services are
// given, as discovery's /debug/registryz has them.
func TestOtherRegistries(t *testing.T) {
	vs := configsOf(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.8}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.mesh]
  http: [{route: [{destination: {host: web.service.consul, port: {number: 80}}}]}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: app}
spec: {address: 10.0.0.9, labels: {app: a}}
`)
	unknown := "destination host web.service.consul is not a service visible to this proxy"
	if got := lines(Analyze(vs, model.DefaultMesh(), registry.State{})); !strings.Contains(got, unknown) {
		t.Fatalf("without Consul's services, want %q in:\n%s", unknown, got)
	}
	consul := registry.State{
		Services: []registry.Service{{Hostname: "web.service.consul", Namespace: "default", Source: "consul",
			Ports: []registry.Port{{Name: "http", Number: 80, Protocol: "HTTP"}}}},
		Endpoints: []registry.Endpoint{{Hostname: "web.service.consul", Namespace: "default", Address: "10.1.0.1", Healthy: true}},
	}
	if got := lines(Analyze(vs, model.DefaultMesh(), consul)); strings.Contains(got, unknown) {
		t.Errorf("with Consul's services, the route is not unknown:\n%s", got)
	}

	// Consul's instances count as workloads: a subset or a policy only
	// they satisfy selects something.
	policies := configsOf(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web.service.consul
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web}
spec:
  selector: {matchLabels: {version: v1}}
  action: ALLOW
  rules: [{}]
`)
	consul.Endpoints[0].Labels = map[string]string{"version": "v1"}
	got := lines(Analyze(policies, model.DefaultMesh(), consul))
	if !strings.Contains(got, "IST0173") || !strings.Contains(got, "The subset v2 (version=v2) of host web.service.consul selects no workload instance") {
		t.Errorf("want IST0173 for subset v2 only, got:\n%s", got)
	}
	if strings.Contains(got, "subset v1 ") || strings.Contains(got, "IST0127") {
		t.Errorf("subset v1 and the policy select Consul's instance, got:\n%s", got)
	}
	if got := lines(Analyze(policies, model.DefaultMesh(), registry.State{})); !strings.Contains(got, "IST0127") {
		t.Errorf("without Consul's instances the policy selects nothing, want IST0127 in:\n%s", got)
	}
}
