package server

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/pki"
	"github.com/weftmesh/weft/internal/store"
	_ "github.com/weftmesh/weft/internal/store/all"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runServer starts a server on a free loopback port and returns its base
// URL and a stop function that waits for Run to return.
func runServer(t *testing.T, dir string) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: store.Config{Backend: "bolt"},
		Discovery: DiscoveryConfig{Listen: "127.0.0.1:0"}}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	addr, err := srv.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	stop := func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return within 15s of cancellation")
		}
	}
	return "https://" + addr, stop
}

func get(t *testing.T, tc *tls.Config, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFirstStartWritesKubeconfigAndAcceptsClientCerts(t *testing.T) {
	dir := t.TempDir()
	base, stop := runServer(t, dir)
	defer stop()

	kcPath := filepath.Join(dir, KubeconfigFile)
	st, err := os.Stat(kcPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig mode %o, want 600", st.Mode().Perm())
	}
	kc, err := kubeconfig.Load(kcPath)
	if err != nil {
		t.Fatal(err)
	}
	res, err := kc.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, res.TLS, base+"/api/v1/namespaces", res.Token); code != 200 || !strings.Contains(body, `"istio-system"`) {
		t.Fatalf("admin list namespaces: %d %s", code, body)
	}

	// A client certificate from the server's CA: CN is the user, O the groups.
	ca, err := pki.LoadCA(filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := ca.Issue("carol", []string{"system:masters"}, nil, time.Hour, time.Now())
	viewer, _ := ca.Issue("dave", []string{"nobody"}, nil, time.Hour, time.Now())
	withCert := func(c tls.Certificate) *tls.Config {
		tc := res.TLS.Clone()
		tc.Certificates = []tls.Certificate{c}
		return tc
	}
	if code, body := get(t, withCert(admin), base+"/api/v1/namespaces", ""); code != 200 {
		t.Errorf("carol (system:masters) by certificate: %d %s", code, body)
	}
	if code, body := get(t, withCert(viewer), base+"/api/v1/namespaces", ""); code != 403 || !strings.Contains(body, `User \"dave\" cannot list resource \"namespaces\"`) {
		t.Errorf("dave by certificate: %d %s", code, body)
	}
	// A certificate from another CA is refused at the TLS layer.
	other, _, err := pki.LoadOrCreateCA(t.TempDir(), "other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Issue("carol", []string{"system:masters"}, nil, time.Hour, time.Now())
	if code, body := get(t, withCert(forged), base+"/api/v1/namespaces", ""); code == 200 {
		t.Errorf("certificate from another CA accepted: %s", body)
	}
	if code, _ := get(t, res.TLS, base+"/api/v1/namespaces", ""); code != 401 {
		t.Errorf("no credentials: %d, want 401", code)
	}
}

func TestRestartKeepsCredentials(t *testing.T) {
	dir := t.TempDir()
	_, stop := runServer(t, dir)
	stop()
	before, _ := os.ReadFile(filepath.Join(dir, KubeconfigFile))
	certBefore, _ := os.ReadFile(filepath.Join(dir, ServingCert))
	base, stop := runServer(t, dir)
	defer stop()
	after, _ := os.ReadFile(filepath.Join(dir, KubeconfigFile))
	certAfter, _ := os.ReadFile(filepath.Join(dir, ServingCert))
	if string(before) != string(after) || string(certBefore) != string(certAfter) {
		t.Fatal("restart rewrote the kubeconfig or the serving certificate")
	}
	kc, _ := kubeconfig.Load(filepath.Join(dir, KubeconfigFile))
	res, _ := kc.Resolve("")
	if code, body := get(t, res.TLS, base+"/api/v1/namespaces/default", res.Token); code != 200 {
		t.Fatalf("admin token after restart: %d %s", code, body)
	}
}

func TestHalfCAIsRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, pki.CACertFile), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), Config{DataDir: dir, Store: store.Config{Backend: "bolt"}}, quiet())
	if err == nil || !strings.Contains(err.Error(), "found only one of") {
		t.Fatalf("New with only ca.crt: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, pki.CAKeyFile)); err == nil {
		t.Fatal("a CA key was written next to a foreign ca.crt")
	}
}

func TestUnknownStore(t *testing.T) {
	_, err := New(context.Background(), Config{DataDir: t.TempDir(), Store: store.Config{Backend: "mysql"}}, quiet())
	if err == nil || !strings.Contains(err.Error(), `unknown backend "mysql" (available: bolt, etcd)`) {
		t.Fatalf("New with store mysql: %v", err)
	}
}
