package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/testutil/wefttest"
)

// TestAnalyzeServerAndFiles: weft analyze reads the API server's objects,
// lets files stand in for stored objects, and fails only on errors.
func TestAnalyzeServerAndFiles(t *testing.T) {
	srv := wefttest.Start(t, nil)
	srv.Apply(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v3}}]}]
`)
	if code, body := srv.Do("POST", "/api/v1/namespaces", `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop"}}`); code != 201 {
		t.Fatalf("creating namespace shop: %d %s", code, body)
	}
	if code, body := srv.Do("POST", "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies",
		`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"typo","namespace":"shop"},"spec":{"selector":{"matchLabels":{"app":"ratigns"}}}}`); code != 201 {
		t.Fatalf("creating shop/typo: %d %s", code, body)
	}
	kc := srv.Kubeconfig()

	out, stderr, err := weftCmd(t, kc, "analyze")
	if strings.Contains(stderr, "without discovery's registry") {
		t.Errorf("analyze could not read discovery's registry: %s", stderr)
	}
	if code, body := srv.Do("GET", "/weft/v1/debug/registryz", ""); code != 200 || !strings.Contains(body, `"Services"`) {
		t.Errorf("/weft/v1/debug/registryz: %d %.300s", code, body)
	}
	wantErr := `Error [IST0101] (VirtualService default/reviews) Referenced host+subset in destinationrule not found: "reviews+v3"`
	if err == nil || !strings.Contains(out, wantErr) || strings.Contains(out, "shop/typo") {
		t.Fatalf("analyze (namespace default): err %v, output:\n%s", err, out)
	}

	// The DestinationRule in a file, as if applied: nothing left in default.
	dr := filepath.Join(t.TempDir(), "dr.yaml")
	if err := os.WriteFile(dr, []byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v3, labels: {version: v3}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err = weftCmd(t, kc, "analyze", "-f", dr)
	if err != nil || out != "✔ No validation issues found when analyzing namespace: default.\n" {
		t.Fatalf("analyze -f dr.yaml: err %v, output:\n%s", err, out)
	}

	// Another namespace's warning does not fail the command unless asked.
	out, _, err = weftCmd(t, kc, "analyze", "-n", "shop", "-o", "json")
	var msgs []map[string]string
	if err != nil || json.Unmarshal([]byte(out), &msgs) != nil || len(msgs) != 1 || msgs[0]["code"] != "IST0127" ||
		msgs[0]["level"] != "Warning" || msgs[0]["ref"] != "shop/typo" {
		t.Fatalf("analyze -n shop -o json: err %v, output:\n%s", err, out)
	}
	if _, _, err = weftCmd(t, kc, "analyze", "-A", "--failure-threshold", "warning"); err == nil || !strings.Contains(err.Error(), "2 message(s)") {
		t.Fatalf("analyze -A --failure-threshold warning: %v", err)
	}
	// The server's mesh config: a file it refuses is refused here too.
	mc := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(mc, []byte("trustDomain: [not, a, string]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := weftCmd(t, kc, "analyze", "-f", dr, "--mesh-config", mc); err == nil || !strings.Contains(err.Error(), "--mesh-config") {
		t.Errorf("a broken --mesh-config: %v", err)
	}
	if err := os.WriteFile(mc, []byte("rootNamespace: istio-system\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, _, err := weftCmd(t, kc, "analyze", "-f", dr, "--mesh-config", mc); err != nil || !strings.Contains(out, "No validation issues") {
		t.Errorf("analyze --mesh-config: %v\n%s", err, out)
	}
	// Bad flags say what they want.
	for _, args := range [][]string{{"analyze", "--failure-threshold", "fatal"}, {"analyze", "-o", "table"}, {"analyze", "--use-server=false"}} {
		if _, _, err := weftCmd(t, kc, args...); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}
