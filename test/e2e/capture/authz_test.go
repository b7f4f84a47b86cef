package capture

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// authzHosts: the control plane, client "sleep" (sa sleep, namespace
// default), client "other" (sa other, namespace ops), and the backend
// httpbin (HTTP 9080, TCP 9000), all with sidecars and STRICT mTLS.
var authzHosts = map[string]string{"cp": "10.81.0.1", "a": "10.81.0.2", "b": "10.81.0.3", "c": "10.81.0.4"}

// authzMeshYAML is the mesh's config (the WorkloadGroups come with the
// sidecars).
const authzMeshYAML = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.mesh]
  addresses: [240.240.0.20]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]
  endpoints:
  - {address: 10.81.0.3, serviceAccount: httpbin, labels: {app: httpbin, security.istio.io/tlsMode: istio}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, /admin/*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-templates, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/{*}/secret", "/files/{**}"], ports: ["9080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-dry
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/dry], ports: ["9080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-callers, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
  - from: [{source: {namespaces: [ops]}}]
    to: [{operation: {paths: [/ops/*]}}]
`

// authzMesh starts the hosts, the control plane (with meshConfig as
// --mesh-config when set), the apps and the sidecars, and waits until
// sleep reaches httpbin. It returns the namespaces and the weft CLI.
func authzMesh(t *testing.T, prefix, meshConfig string) (map[string]string, func(string, ...string) (string, error)) {
	t.Helper()
	requireNetns(t)
	buildMesh(t)
	ns := bridgeNet(t, prefix, authzHosts)
	flags := []string{"--tls-san", authzHosts["cp"], "--xds-listen", "0.0.0.0:15012", "--xds-plaintext-listen", ""}
	if meshConfig != "" {
		f := filepath.Join(t.TempDir(), "mesh.yaml")
		if err := os.WriteFile(f, []byte(meshConfig), 0o644); err != nil {
			t.Fatal(err)
		}
		flags = append(flags, "--mesh-config", f)
	}
	data, weft := controlPlane(t, ns["cp"], flags...)
	if _, err := weft("apiVersion: v1\nkind: Namespace\nmetadata: {name: ops}\n", "apply", "-f", "-"); err != nil {
		t.Logf("creating namespace ops: %v (continuing)", err)
	}
	if _, err := weft(authzMeshYAML, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	bg(t, "httpbin-9080", ns["b"], appBin, "record", "-addr", "0.0.0.0:9080", "-name", "httpbin")
	bg(t, "httpbin-9000", ns["b"], appBin, "record", "-addr", "0.0.0.0:9000", "-name", "httpbin-tcp")
	startMTLSSidecars(t, ns, authzHosts, data, weft,
		map[string]meshedHost{"a": {"sleep", "default"}, "b": {"httpbin", "default"}, "c": {"other", "ops"}}, "--log-level", "debug")
	eventually(t, "sleep reaches httpbin, /admin denied", func() error {
		if st, body, err := raw(ns["a"], "/"); err != nil || st != 200 || body != "httpbin uri=/" {
			return fmt.Errorf("/: %d %q %v", st, body, err)
		}
		if st, body, err := raw(ns["a"], "/admin"); err != nil || st != 403 {
			return fmt.Errorf("/admin: %d %q %v", st, body, err)
		}
		return nil
	})
	return ns, weft
}

// raw sends one raw request line from the app side of ns through its
// sidecar to httpbin.mesh:9080.
func raw(ns, target string) (int, string, error) {
	out, err := asApp(ns, "raw", "-addr", "240.240.0.20:9080", "-host", "httpbin.mesh", "-target", target)
	if err != nil {
		return 0, "", fmt.Errorf("%v: %s", err, out)
	}
	line, body, _ := strings.Cut(out, "\n")
	var st int
	if _, err := fmt.Sscanf(line, "STATUS %d", &st); err != nil {
		return 0, "", fmt.Errorf("unexpected output %q", out)
	}
	return st, body, nil
}

// pathVariant is one request target and what must happen to it: denied
// (403 from httpbin's sidecar), or forwarded with exactly the given path
// (which is also the path the DENY policy evaluated).
type pathVariant struct {
	target string
	base   string // "403" or the path httpbin receives under BASE
	decode string // the same under DECODE_AND_MERGE_SLASHES
}

var pathMatrix = []pathVariant{
	{"/admin", "403", "403"},
	{"/admin/x", "403", "403"},
	{"/admin?x=1", "403", "403"},
	{"//admin", "//admin", "403"},
	{"/./admin", "403", "403"},
	{"/x/../admin", "403", "403"},
	{"/%61dmin", "403", "403"},
	{"/%2e%2e/admin", "403", "403"},
	{"/ADMIN", "/ADMIN", "/ADMIN"},
	{"/admin%2fx", "/admin%2Fx", "403"},
	{"/x/..%2fadmin", "/x/..%2Fadmin", "403"},
	{"/admin#x", "403", "403"},
	{"/x\\..\\admin", "403", "403"},
	{"/public", "/public", "/public"},
	// Path templates: {*} is one segment, {**} the rest of the path.
	{"/api/v1/secret", "403", "403"},
	{"/api/./v1/secret", "403", "403"},
	{"/api/v1/x/secret", "/api/v1/x/secret", "/api/v1/x/secret"},
	{"/files/a/b", "403", "403"},
	{"/files", "/files", "/files"},
	// A dry-run DENY is evaluated, not enforced.
	{"/dry", "/dry", "/dry"},
}

// checkMatrix sends every variant from the sleep client and checks the
// outcome; it returns the table rows for the log.
func checkMatrix(t *testing.T, ns string, decode bool) string {
	t.Helper()
	var b strings.Builder
	for _, v := range pathMatrix {
		want := v.base
		if decode {
			want = v.decode
		}
		st, body, err := raw(ns, v.target)
		if err != nil {
			t.Errorf("%s: %v", v.target, err)
			continue
		}
		got := fmt.Sprintf("%d %s", st, body)
		fmt.Fprintf(&b, "  %-16q -> %s\n", v.target, got)
		if strings.HasPrefix(body, "ADMIN ") {
			t.Errorf("%s: the backend served admin: %s", v.target, got)
		}
		switch want {
		case "403":
			if st != 403 || body != "RBAC: access denied" {
				t.Errorf("%s: %s, want 403 RBAC: access denied", v.target, got)
			}
		default:
			if st != 200 || body != "httpbin uri="+want {
				t.Errorf("%s: %s, want 200 from httpbin with uri=%s", v.target, got, want)
			}
		}
	}
	return b.String()
}

// TestAuthzBase: under the default BASE normalisation the DENY on
// /admin, /admin/* holds against every dot-segment and unreserved-escape
// variant; the variants it forwards reach the backend exactly as the
// policy saw them. An ALLOW by principal admits sleep only, a namespace
// rule admits namespace ops on /ops/*, and a TCP-port DENY closes the
// connection.
func TestAuthzBase(t *testing.T) {
	ns, weft := authzMesh(t, "weft-authz", "")
	t.Logf("BASE path matrix (sleep -> httpbin, DENY /admin, /admin/*):\n%s", checkMatrix(t, ns["a"], false))

	// ALLOW: sleep may call anything not denied; "other" (namespace ops)
	// only /ops/*.
	if st, body, err := raw(ns["c"], "/"); err != nil || st != 403 {
		t.Errorf("other -> /: %d %q %v, want 403", st, body, err)
	}
	if st, body, err := raw(ns["c"], "/ops/x"); err != nil || st != 200 || body != "httpbin uri=/ops/x" {
		t.Errorf("other -> /ops/x: %d %q %v, want 200", st, body, err)
	}
	if st, body, err := raw(ns["a"], "/ops/x"); err != nil || st != 200 {
		t.Errorf("sleep -> /ops/x: %d %q %v, want 200", st, body, err)
	}

	// TCP port 9000. deny-admin's only field, paths, is HTTP-only: on TCP
	// chains a DENY rule drops it and denies every connection (Istio's
	// conservative behaviour).
	tcp := func(h string) (string, error) {
		return asApp(ns[h], "fetch", "-url", "http://240.240.0.20:9000/tcp")
	}
	if out, err := tcp("a"); err == nil {
		t.Errorf("sleep over TCP 9000 got through a DENY with HTTP-only fields: %q", out)
	}
	// Scoped to the HTTP port, it leaves TCP alone: sleep is allowed (its
	// ALLOW rule is L4-only); other is not (its rule needs paths, which TCP
	// cannot see: dropped from ALLOW).
	if _, err := weft(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, /admin/*], ports: ["9080"]}}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "sleep over TCP 9000", func() error {
		if out, err := tcp("a"); err != nil || out != "httpbin-tcp uri=/tcp" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	if out, err := tcp("c"); err == nil {
		t.Errorf("other over TCP 9000 got through: %q", out)
	}
	if st, body, err := raw(ns["a"], "/%61dmin"); err != nil || st != 403 {
		t.Errorf("/%%61dmin after scoping deny-admin to 9080: %d %q %v, want 403", st, body, err)
	}
	if _, err := weft(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-tcp, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9000"]}}]}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "TCP port DENY closes sleep's connection", func() error {
		if out, err := tcp("a"); err == nil {
			return fmt.Errorf("still served: %q", out)
		}
		return nil
	})
	if st, body, err := raw(ns["a"], "/"); err != nil || st != 200 {
		t.Errorf("HTTP on 9080 after the TCP deny: %d %q %v", st, body, err)
	}
}

// TestAuthzDecodeAndMergeSlashes: with pathNormalization
// DECODE_AND_MERGE_SLASHES every variant except /ADMIN is denied.
func TestAuthzDecodeAndMergeSlashes(t *testing.T) {
	ns, _ := authzMesh(t, "weft-authzd", "pathNormalization:\n  normalization: DECODE_AND_MERGE_SLASHES\n")
	t.Logf("DECODE_AND_MERGE_SLASHES path matrix:\n%s", checkMatrix(t, ns["a"], true))
}

// TestAuthzTrustDomain: a mesh whose trust domain is not cluster.local
// (meshConfig trustDomain: example.org, migrating from old.example).
// The CA issues example.org identities and the clients' sidecars verify
// servers as example.org — with the CA left in cluster.local no request
// got through — and the base ALLOW policy's
// "cluster.local/ns/default/sa/sleep", istiod's name for the mesh's own
// trust domain, still lets sleep in (authzMesh waits for that), while
// other (namespace ops) gets only /ops/*.
func TestAuthzTrustDomain(t *testing.T) {
	ns, _ := authzMesh(t, "weft-td", "trustDomain: example.org\ntrustDomainAliases: [old.example]\n")
	if st, body, err := raw(ns["c"], "/"); err != nil || st != 403 {
		t.Errorf("other -> /: %d %q %v, want 403", st, body, err)
	}
	if st, body, err := raw(ns["c"], "/ops/x"); err != nil || st != 200 || body != "httpbin uri=/ops/x" {
		t.Errorf("other -> /ops/x: %d %q %v, want 200", st, body, err)
	}
}
