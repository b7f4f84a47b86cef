package xdsclient_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	pilotxds "github.com/weftmesh/weft/internal/pilot/xds"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/store"
	_ "github.com/weftmesh/weft/internal/store/all"
)

// weft is an in-process weft server (the real control plane).
type weft struct {
	t      *testing.T
	api    string
	token  string
	client *http.Client
	xds    string
}

func logger() *slog.Logger {
	if os.Getenv("WEFT_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startWeft(t *testing.T) *weft {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{
		DataDir: dir, Listen: "127.0.0.1:0", Store: store.Config{Backend: "bolt"},
		Discovery: server.DiscoveryConfig{Listen: "127.0.0.1:0", PlaintextListen: "127.0.0.1:0", Debounce: 20 * time.Millisecond},
	}, logger())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("weft server did not stop within 15s")
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	addr, err := srv.Addr(wctx)
	if err != nil {
		t.Fatal(err)
	}
	_, plain, err := srv.XDSAddrs(wctx)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kubeconfig.Load(filepath.Join(dir, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := kc.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	return &weft{t: t, api: "https://" + addr, token: res.Token, xds: plain,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: res.TLS}}}
}

// create posts objects from YAML through the API.
func (w *weft) create(yamlDocs string) {
	w.t.Helper()
	docs, err := resource.SplitYAML([]byte(yamlDocs))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, d := range docs {
		k, err := resource.ByKind(d.Object["apiVersion"].(string), d.Object["kind"].(string))
		if err != nil {
			w.t.Fatal(err)
		}
		body, err := json.Marshal(d.Object)
		if err != nil {
			w.t.Fatal(err)
		}
		url := fmt.Sprintf("%s/apis/%s/%s/namespaces/default/%s", w.api, k.Group, k.StorageVersion(), k.Resource)
		req, _ := http.NewRequest("POST", url, strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+w.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := w.client.Do(req)
		if err != nil {
			w.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			w.t.Fatalf("POST %s: %d %s", url, resp.StatusCode, b)
		}
	}
}

const serviceEntry = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 18080}}
`

// TestAgainstWeft follows a real weft server: a ServiceEntry applied
// through the API reaches the client as a validated snapshot whose
// listeners, routes, cluster and endpoints are consistent.
func TestAgainstWeft(t *testing.T) {
	const cluster = "outbound|8080||echo.mesh"
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%v", delta), func(t *testing.T) {
			// A server each: weft's xDS server keys streams by
			// go-control-plane's stream ID, which SotW and delta count
			// separately, so concurrent streams of both kinds collide.
			w := startWeft(t)
			w.create(serviceEntry)
			info := xdsclient.NodeInfo{IP: "127.0.0.1", Name: fmt.Sprintf("app-%v", delta), Namespace: "default",
				Labels: map[string]string{"app": "app"}, Explicit: true}
			node := xdsclient.NewNode(info)
			p, err := pilotxds.ProxyFromNode(node)
			if err != nil || p.Namespace != "default" || !p.Explicit || p.Labels["app"] != "app" || p.WorkloadName != info.Name {
				t.Fatalf("weft reads the node as %+v (%v)", p, err)
			}
			var validated atomic.Int32
			c := xdsclient.New(xdsclient.Config{Server: w.xds, Node: node, Delta: delta}, func(s *xdsclient.Snapshot) error {
				validated.Add(1)
				return nil
			}, logger())
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			deadline := time.After(15 * time.Second)
			for {
				var s *xdsclient.Snapshot
				select {
				case s = <-c.Updates():
				case <-deadline:
					t.Fatalf("no snapshot with %s and its endpoints within 15s; current: %v", cluster, c.Current())
				}
				cl := s.Clusters[cluster]
				if cl == nil || len(s.Listeners) == 0 {
					continue
				}
				name := cl.GetEdsClusterConfig().GetServiceName()
				if name == "" {
					name = cluster
				}
				la := s.Endpoints[name]
				if len(la.GetEndpoints()) == 0 || len(la.GetEndpoints()[0].GetLbEndpoints()) != 1 {
					continue
				}
				if port := la.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); port != 18080 {
					t.Fatalf("endpoint port %d, want 18080", port)
				}
				for _, typ := range []string{xdsclient.ListenerType, xdsclient.ClusterType, xdsclient.EndpointType} {
					if s.Versions[typ] == "" {
						t.Errorf("no %s version in %v", typ, s.Versions)
					}
				}
				t.Logf("snapshot: %d listeners, %d routes, %d clusters, %d load assignments, versions %v",
					len(s.Listeners), len(s.Routes), len(s.Clusters), len(s.Endpoints), s.Versions)
				if validated.Load() == 0 {
					t.Fatal("published without validating")
				}
				return
			}
		})
	}
}
