// Package wefttest runs a real weft server in-process for tests.
//
// Start gives the server a bolt store in t.TempDir(), the config API and
// both xDS listeners (TLS and plaintext) on loopback ports and a 20 ms push
// debounce, waits until it listens and stops it when the test ends. Set
// WEFT_TEST_VERBOSE=1 to see its debug log on stderr.
package wefttest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/store"
	_ "github.com/weftmesh/weft/internal/store/all" // link the bolt backend
)

// Server is a running in-process weft server.
type Server struct {
	DataDir string // its data directory (CA, kubeconfig, store)
	API     string // the config API's URL, https://host:port
	XDSTLS  string // the TLS xDS (and CA) listener's address
	XDS     string // the plaintext xDS listener's address
	Token   string // the admin's bearer token, from its kubeconfig

	t      testing.TB
	client *http.Client // trusts the API's certificate
}

// Logger returns a logger that discards everything, or logs at debug level
// to stderr when WEFT_TEST_VERBOSE is set.
func Logger() *slog.Logger {
	if os.Getenv("WEFT_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Start runs a weft server until the test ends. edit, if not nil, may
// change the configuration first.
func Start(t testing.TB, edit func(*server.Config)) *Server {
	t.Helper()
	cfg := server.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Store: store.Config{Backend: "bolt"},
		Discovery: server.DiscoveryConfig{Listen: "127.0.0.1:0", PlaintextListen: "127.0.0.1:0", Debounce: 20 * time.Millisecond},
	}
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, Logger())
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
	tlsAddr, plain, err := srv.XDSAddrs(wctx)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kubeconfig.Load(filepath.Join(cfg.DataDir, server.KubeconfigFile))
	if err != nil {
		t.Fatal(err)
	}
	res, err := kc.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	return &Server{DataDir: cfg.DataDir, API: "https://" + addr, XDSTLS: tlsAddr, XDS: plain, Token: res.Token,
		t: t, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: res.TLS}}}
}

// Kubeconfig writes a copy of the server's kubeconfig that names the bound
// API address (the server's own names the configured port, 0) and returns
// its path.
func (s *Server) Kubeconfig() string {
	s.t.Helper()
	kc, err := kubeconfig.Load(filepath.Join(s.DataDir, server.KubeconfigFile))
	if err != nil {
		s.t.Fatal(err)
	}
	for i := range kc.Clusters {
		kc.Clusters[i].Cluster.Server = s.API
	}
	path := filepath.Join(s.t.TempDir(), "kubeconfig")
	if err := kc.Write(path); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// CAPool returns a pool with the server's CA (ca.crt), which signs the
// certificates of the API and of the TLS xDS listener.
func (s *Server) CAPool() *x509.CertPool {
	s.t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(s.DataDir, "ca.crt"))
	if err != nil {
		s.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		s.t.Fatal("no certificate in ca.crt")
	}
	return pool
}

// Do sends a request with the admin token to path on the API (such as
// "/weft/v1/debug/syncz"), with a JSON body ("" for none), and returns the
// status code and the response body. A request that fails to send is fatal.
func (s *Server) Do(method, path, body string) (int, string) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.API+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Apply creates, or replaces, the objects of a YAML stream in namespace
// default through the API. Any failure is fatal.
func (s *Server) Apply(yamlDocs string) {
	s.t.Helper()
	docs, err := resource.SplitYAML([]byte(yamlDocs))
	if err != nil {
		s.t.Fatal(err)
	}
	for _, d := range docs {
		k, err := resource.ByKind(d.Object["apiVersion"].(string), d.Object["kind"].(string))
		if err != nil {
			s.t.Fatal(err)
		}
		meta := d.Object["metadata"].(map[string]any)
		name := meta["name"].(string)
		coll := fmt.Sprintf("/apis/%s/%s/namespaces/default/%s", k.Group, k.StorageVersion(), k.Resource)
		if code, body := s.Do("GET", coll+"/"+name, ""); code == http.StatusOK {
			// Replace: carry the resourceVersion for compare-and-swap.
			var cur struct {
				Metadata struct{ ResourceVersion string } `json:"metadata"`
			}
			if err := json.Unmarshal([]byte(body), &cur); err != nil {
				s.t.Fatalf("GET %s: %v", name, err)
			}
			meta["resourceVersion"] = cur.Metadata.ResourceVersion
			if code, body := s.Do("PUT", coll+"/"+name, jsonOf(s.t, d.Object)); code != http.StatusOK {
				s.t.Fatalf("PUT %s: %d %s", name, code, body)
			}
			continue
		}
		if code, body := s.Do("POST", coll, jsonOf(s.t, d.Object)); code != http.StatusCreated {
			s.t.Fatalf("POST %s: %d %s", name, code, body)
		}
	}
}

func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
