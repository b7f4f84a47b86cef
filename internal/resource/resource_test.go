package resource

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
)

// samplesDir is where the shared Istio sample files live, beside the repo.
func samplesDir(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"../../../shared/istio-samples", "../../shared/istio-samples"} {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p
		}
	}
	t.Fatalf("istio samples not found beside the repository (../shared/istio-samples)")
	return ""
}

// TestIstioSamplesValidate decodes every document of every shared Istio
// sample and validates it. Istio accepts all of them except the ServiceEntry
// named BACKEND, which a Kubernetes-style API refuses by name.
func TestIstioSamplesValidate(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(samplesDir(t), "*", "*.yaml"))
	if len(files) < 30 {
		t.Fatalf("found only %d sample files", len(files))
	}
	total, refused := 0, 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := SplitYAML(data)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, d := range docs {
			total++
			k, err := ByKind(d.Object["apiVersion"].(string), d.Object["kind"].(string))
			if err != nil {
				t.Errorf("%s: %v", d.Position(f), err)
				continue
			}
			k.Normalize(d.Object)
			es := k.Validate(d.Object)
			name := d.Object["metadata"].(map[string]any)["name"]
			if name == "BACKEND" {
				refused++
				if len(es) == 0 || !strings.Contains(es.Error(), "metadata.name") {
					t.Errorf("%s: ServiceEntry BACKEND accepted, want a metadata.name error; got %v", d.Position(f), es)
				}
				continue
			}
			if len(es) > 0 {
				t.Errorf("%s: %s %v rejected: %v", d.Position(f), k.Kind, name, es)
			}
		}
	}
	if refused != 1 || total < 40 {
		t.Fatalf("validated %d documents, refused %d; want >= 40 and exactly 1", total, refused)
	}
}

// drLocality starts a DestinationRule whose traffic policy's
// localityLbSetting follows (indented by eight spaces).
const drLocality = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
`

func TestValidateNamesField(t *testing.T) {
	cases := []struct {
		yaml string
		want string
	}{
		{`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {hots: reviews}
`, `spec.http[0].route[0].destination.hots: unknown field "hots" (did you mean "host"?)`},
		{`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: "eighty"
`, `spec.http[0].route[0].weight: Invalid value: "eighty": expected an integer`},
		{`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w, annotations: {weft.io/inbound-ports: "9080:15080"}}
spec: {address: 10.0.0.7}
`, `metadata.annotations[weft.io/inbound-ports]: Invalid value: "9080:15080": inbound ports: "9080:15080": want <app port>=<sidecar port>, e.g. 9080=15080`},
		{`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p}
spec:
  mtls: {mode: strict}
`, `spec.mtls.mode: Unsupported value: "strict": supported values: "UNSET", "DISABLE", "PERMISSIVE", "STRICT"`},
		{`apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: d}
spec:
  host: reviews
  subsets: [{name: v1}, {name: v1}]
`, `spec.subsets[1].name: Duplicate value: "v1"`},
		{drLocality + `        distribute: [{from: "us-east/*", to: {"us-east/*": 70, "eu-west/*": 20}}]
`, `spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: Invalid value: the weights add up to 90, not 100`},
		{`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: reviews
  subsets:
  - name: v1
    trafficPolicy:
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}
`, `spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting.failover[0]: Invalid value: from and to are both "us-east": fail over to a different region`},
		{drLocality + `        distribute: [{from: "*/a/*", to: {"us-east/*": 100}}]
        failover: [{from: us-east/a, to: eu-west}]
`, `distribute and failover cannot both be set`},
		{drLocality + `        failoverPriority: [topology.istio.io/network, topology.kubernetes.io/region]
        failover: [{from: us-east, to: eu-west}]
`, `spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[1]: Invalid value: "topology.kubernetes.io/region": failover and a locality label in failoverPriority cannot both be set`},
		{drLocality + `        failover: [{from: us-east, to: eu-west}]
      zoneAwareLbSetting: {}
`, `spec.trafficPolicy.loadBalancer: Invalid value: localityLbSetting and zoneAwareLbSetting cannot both be set`},
		{drLocality + `        distribute: [{from: "*/a/*", to: {"us-east/*": 100}}]
`, `spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from: Invalid value: "*/a/*": a locality takes at most one "*", at its end`},
		{`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, annotations: {istio.io/dry-run: "yes please"}}
spec: {action: DENY, rules: [{}]}
`, `metadata.annotations[istio.io/dry-run]: Invalid value: "yes please": must be "true" or "false"`},
		{`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a}
spec:
  rules:
  - to: [{operation: {paths: ["/api/{*}", "/api/{*}x"]}}]
`, `spec.rules[0].to[0].operation.paths[1]: Invalid value: "/api/{*}x": {*} and {**} must be whole path segments, with no other '*' or braces in the path`},
		{`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: j}
spec:
  jwtRules: [{issuer: i, jwksUri: "/keys"}]
`, `spec.jwtRules[0].jwksUri: Invalid value: "/keys": must be an absolute http or https URI`},
		{`apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: j}
spec:
  jwtRules: [{issuer: i, jwks: "{}", fromHeaders: [{prefix: "Bearer "}], outputClaimToHeaders: [{header: x-sub}]}]
`, `spec.jwtRules[0].fromHeaders[0].name: Required value`},
		{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t}
spec:
  tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 150}]
`, `spec.tracing[0].randomSamplingPercentage: Invalid value: 150: must be in [0, 100]`},
		{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t}
spec:
  tracing: [{customTags: {team: {}}}]
`, `spec.tracing[0].customTags[team]: Required value: literal, environment or header`},
		{`apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - timeout: 10
    route: [{destination: {host: reviews}}]
`, `spec.http[0].timeout: Invalid value: a duration must be a string`},
		{`apiVersion: v1
kind: Secret
metadata: {name: s}
data: {key: "not base64!"}
`, `data.key: Invalid value: not valid base64`},
		{`apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: b}
roleRef: {kind: Bogus, name: x, apiGroup: rbac.authorization.k8s.io}
subjects: [{kind: User, name: alice}]
`, `roleRef.kind: Unsupported value: "Bogus"`},
		{`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g}
spec: {servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ["*"]}]}
`, `spec.servers[0].tls: Required value: protocol HTTPS needs tls settings`},
		{`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g}
spec: {servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE, privateKey: /k.pem}}]}
`, `spec.servers[0].tls.serverCertificate: Required value: SIMPLE needs a server certificate (or a credentialName)`},
		{`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g}
spec: {servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ["*"], tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}]}
`, `spec.servers[0].tls.caCertificates: Required value: MUTUAL needs a client CA bundle`},
		{`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g}
spec: {servers: [{port: {number: 443, name: tls, protocol: TLS}, hosts: ["*"], tls: {mode: ISTIO_MUTUAL, credentialName: c}}]}
`, `spec.servers[0].tls: Invalid value: ISTIO_MUTUAL uses the mesh certificate`},
		{`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, labels: {"bad label": x}}
spec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
`, `metadata.labels: Invalid value: "bad label"`},
		{`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g}
spec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
extra: 1
`, `extra: unknown field "extra"`},
	}
	for _, c := range cases {
		docs, err := SplitYAML([]byte(c.yaml))
		if err != nil {
			t.Fatal(err)
		}
		o := docs[0].Object
		k, err := ByKind(o["apiVersion"].(string), o["kind"].(string))
		if err != nil {
			t.Fatal(err)
		}
		es := k.Validate(o)
		if !strings.Contains(es.Error(), c.want) {
			t.Errorf("validate:\n%s\ngot  %v\nwant %s", c.yaml, es, c.want)
		}
	}
}

func TestSplitYAMLPositions(t *testing.T) {
	in := "# leading comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\n\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: [unclosed\n"
	docs, err := SplitYAML([]byte(in))
	if err == nil {
		t.Fatalf("want an error for the second document")
	}
	if len(docs) != 1 || docs[0].Line != 3 || docs[0].Index != 1 {
		t.Fatalf("first document: %+v", docs)
	}
	if !strings.Contains(err.Error(), "document 2 (line 9)") {
		t.Fatalf("error %q does not name document 2 at line 9", err)
	}
}

func TestLookup(t *testing.T) {
	for in, want := range map[string]string{"vs": "VirtualService", "virtualservices": "VirtualService",
		"VirtualService": "VirtualService", "dr": "DestinationRule", "ns": "Namespace",
		"authorizationpolicies.security.istio.io": "AuthorizationPolicy", "clusterrolebinding": "ClusterRoleBinding"} {
		k, err := Lookup(in)
		if err != nil || k.Kind != want {
			t.Errorf("Lookup(%q) = %v, %v; want %s", in, k, err, want)
		}
	}
	if _, err := Lookup("pods"); err == nil {
		t.Errorf("Lookup(pods) succeeded")
	}
}

func FuzzValidate(f *testing.F) {
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := SplitYAML(data)
		if err != nil {
			return
		}
		for _, d := range docs {
			av, _ := d.Object["apiVersion"].(string)
			kind, _ := d.Object["kind"].(string)
			if k, err := ByKind(av, kind); err == nil {
				_ = k.Validate(d.Object)
			}
		}
	})
}

// Istio's documentation writes durations Go-style ("3m", "300ms"); they
// must validate and decode to the same values as "180s" and "0.3s".
func TestGoStyleDurations(t *testing.T) {
	docs, err := SplitYAML([]byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {interval: 1m30s, baseEjectionTime: 3m}
    connectionPool: {tcp: {connectTimeout: 300ms}}
`))
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ByKind("networking.istio.io/v1", "DestinationRule")
	if es := k.Validate(docs[0].Object); len(es) > 0 {
		t.Fatalf("Go-style durations refused: %v", es)
	}
	raw, _ := json.Marshal(docs[0].Object["spec"])
	m := k.NewSpec()
	if err := UnmarshalSpec(raw, m, false); err != nil {
		t.Fatal(err)
	}
	dr := m.(*networking.DestinationRule)
	od := dr.GetTrafficPolicy().GetOutlierDetection()
	if od.GetInterval().AsDuration() != 90*time.Second || od.GetBaseEjectionTime().AsDuration() != 3*time.Minute ||
		dr.GetTrafficPolicy().GetConnectionPool().GetTcp().GetConnectTimeout().AsDuration() != 300*time.Millisecond {
		t.Fatalf("decoded %v", dr.GetTrafficPolicy())
	}
	if err := UnmarshalSpec([]byte(`{"host":"r","trafficPolicy":{"outlierDetection":{"interval":"soon"}}}`), k.NewSpec(), false); err == nil {
		t.Fatal("a non-duration was accepted")
	}
}

// TestPathTemplateError: Istio's rules for AuthorizationPolicy path
// templates.
func TestPathTemplateError(t *testing.T) {
	for _, ok := range []string{"/api/{*}/info", "/api/{**}", "/{*}/foo/{**}/bar", "/{*}/{*}/x", "/plain/*", "*.js", "/a{b}"} {
		if err := PathTemplateError(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"api/{*}", "/a/{**}/b/{*}", "/a/{**}/{**}", "/a/{*}b", "/a/*/{*}", "/a/{x}/{*}", "/a/{*}*"} {
		if err := PathTemplateError(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
