package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil/etcdtest"
	"sigs.k8s.io/yaml"
)

func samples(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"../../../shared/istio-samples", "../../shared/istio-samples"} {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			abs, _ := filepath.Abs(p)
			return abs
		}
	}
	t.Fatal("../shared/istio-samples not found beside the repository")
	return ""
}

func kubectl(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl not found: this machine image ships /usr/bin/kubectl")
	}
	return p
}

// TestKubectlBookinfo applies Istio's Bookinfo networking samples with a
// real kubectl and reads them back, then does the same with weft.
func TestKubectlBookinfo(t *testing.T) {
	s := startServer(t, t.TempDir())
	kc := s.kubeconfigFor(t)
	dir := filepath.Join(samples(t), "bookinfo-networking")
	out, err := run(t, "", kubectl(t), "--kubeconfig", kc, "apply", "-f", dir)
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s\nserver log:\n%s", err, out, s.log())
	}
	for _, want := range []string{"gateway.networking.istio.io/bookinfo-gateway created", "virtualservice.networking.istio.io/reviews", "destinationrule.networking.istio.io/reviews", "serviceentry.networking.istio.io/googleapis created"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply output lacks %q:\n%s", want, out)
		}
	}
	// Re-apply one file so its content is known, and read it back.
	out, err = run(t, "", kubectl(t), "--kubeconfig", kc, "apply", "-f", filepath.Join(dir, "virtual-service-reviews-80-20.yaml"))
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	out, err = run(t, "", kubectl(t), "--kubeconfig", kc, "get", "virtualservices", "-o", "yaml")
	if err != nil {
		t.Fatalf("kubectl get: %v\n%s", err, out)
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct {
				HTTP []struct {
					Route []struct {
						Destination struct{ Host, Subset string }
						Weight      int
					}
				}
			}
		}
	}
	if err := yaml.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("kubectl get -o yaml: %v\n%s", err, out)
	}
	names := map[string]bool{}
	for _, it := range list.Items {
		names[it.Metadata.Name] = true
		if it.Metadata.Name == "reviews" {
			r := it.Spec.HTTP[0].Route
			if len(r) != 2 || r[0].Weight != 80 || r[1].Weight != 20 || r[1].Destination.Subset != "v2" {
				t.Errorf("reviews routes read back as %+v, want 80%% v1 / 20%% v2", r)
			}
		}
	}
	for _, n := range []string{"bookinfo", "reviews", "ratings", "details", "productpage"} {
		if !names[n] {
			t.Errorf("kubectl get virtualservices lacks %s; got %v", n, names)
		}
	}
	// kubectl's table view shows Istio's columns.
	out, err = run(t, "", kubectl(t), "--kubeconfig", kc, "get", "vs", "bookinfo")
	if err != nil || !strings.Contains(out, "GATEWAYS") || !strings.Contains(out, `["bookinfo-gateway"]`) {
		t.Errorf("kubectl get vs bookinfo: %v\n%s", err, out)
	}
	// weft reads the same objects.
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "get", "destinationrule", "reviews", "-o", "json")
	if err != nil || !strings.Contains(out, `"subsets"`) {
		t.Errorf("weft get dr reviews -o json: %v\n%s", err, out)
	}
	// The Kubernetes-invalid name in an Istio sample is refused by kubectl,
	// with the field named, and the valid objects of that file still apply
	// (kubectl applies document by document).
	out, err = run(t, "", kubectl(t), "--kubeconfig", kc, "apply", "-f", filepath.Join(samples(t), "other", "gateway-ingress-simple-and-passthrough.yaml"))
	if err == nil || !strings.Contains(out, `"BACKEND" is invalid: metadata.name`) {
		t.Errorf("kubectl apply of the BACKEND sample: err=%v\n%s", err, out)
	}
	// kubectl delete and get agree.
	if out, err := run(t, "", kubectl(t), "--kubeconfig", kc, "delete", "vs", "ratings"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	var he httpError
	if s.do("GET", vsPath+"/ratings", nil, &he); he.code != http.StatusNotFound {
		t.Errorf("after kubectl delete, GET ratings = %d %s", he.code, he.body)
	}
}

// TestWeftApplyAllOrNothing checks that a file with one bad document is not
// half-applied and that the error names the document's position.
func TestWeftApplyAllOrNothing(t *testing.T) {
	s := startServer(t, t.TempDir())
	kc := s.kubeconfigFor(t)
	f := filepath.Join(t.TempDir(), "mixed.yaml")
	content := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good-one}
spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad-one}
spec:
  host: b
  trafficPolicy: {loadBalancer: {simple: FASTEST}}
`
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "", weftBin, "--kubeconfig", kc, "apply", "-f", f)
	if err == nil {
		t.Fatalf("weft apply of a bad file succeeded:\n%s", out)
	}
	for _, want := range []string{"document 2 (line 6)", "spec.trafficPolicy.loadBalancer.simple", "nothing was applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
	var he httpError
	if s.do("GET", vsPath+"/good-one", nil, &he); he.code != http.StatusNotFound {
		t.Errorf("good-one was applied although its file had a bad document (GET = %d)", he.code)
	}
	// Fixed, the same file applies, and re-applying it is a no-op.
	if err := os.WriteFile(f, []byte(strings.Replace(content, "FASTEST", "LEAST_REQUEST", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "apply", "-f", f)
	if err != nil || !strings.Contains(out, "virtualservice.networking.istio.io/good-one created") {
		t.Fatalf("weft apply: %v\n%s", err, out)
	}
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "apply", "-f", "-")
	if err == nil {
		t.Fatalf("weft apply of empty stdin should fail: %s", out)
	}
	out, err = run(t, content, weftBin, "--kubeconfig", kc, "apply", "-f", "-")
	if err == nil || !strings.Contains(out, "<stdin>: document 2") {
		t.Errorf("apply from stdin: %v\n%s", err, out)
	}
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "apply", "-f", f)
	if err != nil || !strings.Contains(out, "good-one unchanged") {
		t.Errorf("re-apply: %v\n%s", err, out)
	}
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "get", "vs")
	if err != nil || !strings.Contains(out, "good-one") || !strings.Contains(out, "HOSTS") {
		t.Errorf("weft get vs: %v\n%s", err, out)
	}
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "delete", "-f", f)
	if err != nil || !strings.Contains(out, `"good-one" deleted`) {
		t.Errorf("weft delete -f: %v\n%s", err, out)
	}
}

// TestTokenAndRBAC creates a token for a user with the CLI and checks 401,
// 403 and a RoleBinding's effect through the real server.
func TestTokenAndRBAC(t *testing.T) {
	s := startServer(t, t.TempDir())
	kc := s.kubeconfigFor(t)
	out, err := run(t, "", weftBin, "--kubeconfig", kc, "token", "create", "--user", "alice", "--group", "devs", "--ttl", "1h")
	if err != nil {
		t.Fatalf("token create: %v\n%s", err, out)
	}
	alice := *s
	alice.token = strings.TrimSpace(out)
	var he httpError
	if alice.do("GET", vsPath, nil, &he); he.code != http.StatusForbidden ||
		!strings.Contains(string(he.body), `cannot list resource \"virtualservices\" in API group \"networking.istio.io\" in the namespace \"default\"`) {
		t.Fatalf("alice without bindings: %d %s", he.code, he.body)
	}
	anon := *s
	anon.token = ""
	if anon.do("GET", vsPath, nil, &he); he.code != http.StatusUnauthorized {
		t.Fatalf("anonymous: %d %s", he.code, he.body)
	}
	binding := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"name": "devs-edit"},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
		"subjects": []any{map[string]any{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}},
	}
	s.do("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", binding, nil)
	if code := alice.do("POST", vsPath, vsObject("by-alice"), nil); code != http.StatusCreated {
		t.Fatalf("alice create with edit: %d", code)
	}
	if alice.do("POST", "/apis/networking.istio.io/v1/namespaces/istio-system/virtualservices", vsObject("x"), &he); he.code != http.StatusForbidden {
		t.Fatalf("alice in istio-system: %d %s", he.code, he.body)
	}
	if alice.do("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", binding, &he); he.code != http.StatusForbidden {
		t.Fatalf("edit may not create rolebindings: %d %s", he.code, he.body)
	}
}

// TestSIGKILLLosesNothing kills weft server with SIGKILL while clients are
// writing, restarts it, and checks that every acknowledged write is there.
func TestSIGKILLLosesNothing(t *testing.T) {
	for _, backend := range []string{"bolt", "etcd"} {
		t.Run(backend, func(t *testing.T) {
			var extra []string
			var cluster *etcdtest.Cluster
			if backend == "etcd" {
				cluster = etcdtest.Start(t, 1)
				extra = []string{"--store=etcd", "--etcd-endpoints=" + strings.Join(cluster.Endpoints(), ",")}
			}
			s := startServer(t, t.TempDir(), extra...)
			const writers, perWriter = 4, 40
			var mu sync.Mutex
			acked := map[string]bool{}
			var wg sync.WaitGroup
			killAfter := make(chan struct{})
			var once sync.Once
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; i < perWriter; i++ {
						name := fmt.Sprintf("w%d-%d", w, i)
						code, _, err := s.try("POST", vsPath, vsObject(name))
						if err != nil {
							return // the server is gone
						}
						if code == http.StatusCreated {
							mu.Lock()
							acked[name] = true
							if len(acked) == writers*perWriter/2 {
								once.Do(func() { close(killAfter) })
							}
							mu.Unlock()
						}
					}
				}(w)
			}
			select {
			case <-killAfter:
			case <-time.After(60 * time.Second):
				t.Fatalf("writes did not get halfway within 60s:\n%s", s.log())
			}
			s.kill()
			wg.Wait()
			if cluster != nil {
				// The store process dies too: acknowledged means on disk.
				cluster.Stop(0)
				cluster.Restart(0)
			}
			s.start()
			var list struct {
				Items []struct{ Metadata struct{ Name string } }
			}
			s.do("GET", vsPath, nil, &list)
			have := map[string]bool{}
			for _, it := range list.Items {
				have[it.Metadata.Name] = true
			}
			mu.Lock()
			defer mu.Unlock()
			for name := range acked {
				if !have[name] {
					t.Errorf("acknowledged write %s lost after SIGKILL", name)
				}
			}
			if len(acked) < writers*perWriter/2 {
				t.Fatalf("only %d writes acknowledged", len(acked))
			}
			t.Logf("%s: %d acknowledged writes, %d objects after restart", backend, len(acked), len(list.Items))
		})
	}
}

// TestReplicasShareEtcd runs two weft servers on one three-member etcd
// cluster: each serves the other's writes, a watch on one sees writes made
// through the other, and losing an etcd member loses nothing.
func TestReplicasShareEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	flags := []string{"--store=etcd", "--etcd-endpoints=" + strings.Join(cluster.Endpoints(), ",")}
	a := startServer(t, t.TempDir(), flags...)
	// Replicas share the mesh CA through the store; its key is encrypted
	// with the key-encryption key in the first replica's data dir, which
	// every replica needs (docs/identity.md).
	bDir := t.TempDir()
	kek, err := os.ReadFile(filepath.Join(a.dataDir, "ca-kek"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bDir, "ca-kek"), kek, 0o600); err != nil {
		t.Fatal(err)
	}
	b := startServer(t, bDir, flags...)

	a.do("POST", vsPath, vsObject("from-a"), nil)
	var got map[string]any
	b.do("GET", vsPath+"/from-a", nil, &got)
	rv := got["metadata"].(map[string]any)["resourceVersion"].(string)

	// Watch on B from the version B just read; write through A.
	events := make(chan map[string]any, 16)
	req, _ := http.NewRequest("GET", b.url()+vsPath+"?watch=1&resourceVersion="+rv, nil)
	req.Header.Set("Authorization", "Bearer "+b.token)
	watchClient := &http.Client{Transport: b.client.Transport}
	resp, err := watchClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				events <- ev
			}
		}
		close(events)
	}()
	a.do("POST", vsPath, vsObject("from-a-2"), nil)
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("watch on B closed")
		}
		name := ev["object"].(map[string]any)["metadata"].(map[string]any)["name"]
		if ev["type"] != "ADDED" || name != "from-a-2" {
			t.Fatalf("watch on B got %v %v, want ADDED from-a-2", ev["type"], name)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watch on B did not see A's write within 20s")
	}

	// Lose one etcd member; both replicas keep accepting writes.
	cluster.Stop(2)
	var names []string
	for i := 0; i < 10; i++ {
		for _, s := range []*weftServer{a, b} {
			name := fmt.Sprintf("during-outage-%s-%d", strings.ReplaceAll(s.addr[strings.LastIndex(s.addr, ":")+1:], ":", ""), i)
			code, body, err := s.try("POST", vsPath, vsObject(name))
			if err != nil || code != http.StatusCreated {
				t.Fatalf("write with one etcd member down: %v %d %s", err, code, body)
			}
			names = append(names, name)
		}
	}
	cluster.Restart(2)
	for _, s := range []*weftServer{a, b} {
		var list struct {
			Items []struct{ Metadata struct{ Name string } }
		}
		s.do("GET", vsPath, nil, &list)
		have := map[string]bool{}
		for _, it := range list.Items {
			have[it.Metadata.Name] = true
		}
		for _, n := range append(names, "from-a", "from-a-2") {
			if !have[n] {
				t.Errorf("replica %s lacks %s", s.addr, n)
			}
		}
	}
}

// TestWeftApplyNamespaceFirst applies a file that creates a namespace and
// an object in it: the dry run must not refuse the object.
func TestWeftApplyNamespaceFirst(t *testing.T) {
	s := startServer(t, t.TempDir())
	kc := s.kubeconfigFor(t)
	content := `apiVersion: v1
kind: Namespace
metadata: {name: bookinfo}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
`
	out, err := run(t, content, weftBin, "--kubeconfig", kc, "apply", "-f", "-")
	if err != nil || !strings.Contains(out, "namespace/bookinfo created") || !strings.Contains(out, "virtualservice.networking.istio.io/reviews created") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "get", "vs", "-n", "bookinfo", "-o", "yaml")
	if err != nil || !strings.Contains(out, "namespace: bookinfo") {
		t.Fatalf("get: %v\n%s", err, out)
	}
	// A deprecated field comes back as a warning on stderr.
	abort := filepath.Join(samples(t), "bookinfo-networking", "virtual-service-ratings-test-abort.yaml")
	out, err = run(t, "", weftBin, "--kubeconfig", kc, "apply", "-f", abort)
	if err != nil || strings.Count(out, "Warning: spec.http[0].fault.abort.percent is deprecated") != 1 {
		t.Fatalf("apply of the abort sample: %v\n%s", err, out)
	}
}
