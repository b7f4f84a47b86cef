// Package e2e runs weft's real binaries against real dependencies: a real
// `weft server` process, a real kubectl, a real etcd cluster.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/testutil/freeport"
)

// weftBin is the weft binary built once for the whole suite.
var weftBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	weftBin = filepath.Join(dir, "weft")
	build := exec.Command("go", "build", "-o", weftBin, "github.com/weftmesh/weft/cmd/weft")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building weft:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freeport.Get(t)))
}

// weftServer is a `weft server` process.
type weftServer struct {
	t       *testing.T
	dataDir string
	addr    string
	args    []string
	cmd     *exec.Cmd
	logPath string
	client  *http.Client
	token   string
}

// startServer runs `weft server` with extra args on a fresh port and waits
// until it answers.
func startServer(t *testing.T, dataDir string, extra ...string) *weftServer {
	t.Helper()
	s := &weftServer{t: t, dataDir: dataDir, addr: freePort(t)}
	s.args = append([]string{"server", "--data-dir", dataDir, "--listen", s.addr, "--monitoring-listen", "", "--log-level", "debug",
		"--xds-listen", "127.0.0.1:0", "--xds-plaintext-listen", ""}, extra...)
	s.logPath = filepath.Join(t.TempDir(), "server.log")
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *weftServer) start() {
	t := s.t
	t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(weftBin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("weft server exited during start-up:\n%s", s.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("weft server did not answer on %s within 30s:\n%s", s.addr, s.log())
		}
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond) // polling a process we do not control
	}
	kc, err := kubeconfig.Load(s.kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	res, err := kc.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	s.token = res.Token
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: res.TLS.Clone(), ForceAttemptHTTP2: true}}
	// The kubeconfig is written once per data dir; make sure its TLS setup
	// reaches this server (the port may differ from the one it names).
	s.do("GET", "/api", nil, nil)
}

func (s *weftServer) kubeconfig() string { return filepath.Join(s.dataDir, "kubeconfig") }

func (s *weftServer) log() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// kill sends SIGKILL and waits for the process to go.
func (s *weftServer) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	for i := 0; i < 200; i++ {
		if err := s.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd = nil
}

// url is the server's base URL (the kubeconfig's may name another port
// after a restart on a new address, so tests use this one).
func (s *weftServer) url() string { return "https://" + s.addr }

// do sends an authenticated JSON request and decodes the reply; a non-2xx
// reply fails the test unless out is a *httpError.
func (s *weftServer) do(method, path string, body, out any) int {
	s.t.Helper()
	code, raw, err := s.try(method, path, body)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	if he, ok := out.(*httpError); ok {
		he.code, he.body = code, raw
		return code
	}
	if code >= 300 {
		s.t.Fatalf("%s %s: %d %s", method, path, code, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			s.t.Fatalf("%s %s: decoding %s: %v", method, path, raw, err)
		}
	}
	return code
}

type httpError struct {
	code int
	body []byte
}

// try is do without failing: it returns transport errors.
func (s *weftServer) try(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, s.url()+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// run executes a command with a bounded time and returns its combined output.
func run(t *testing.T, stdin string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// kubeconfigFor writes a copy of s's kubeconfig pointing at s's current
// address, for kubectl and weft.
func (s *weftServer) kubeconfigFor(t *testing.T) string {
	t.Helper()
	kc, err := kubeconfig.Load(s.kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	kc.Clusters[0].Cluster.Server = s.url()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kc.Write(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func vsObject(name string) map[string]any {
	return map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{"hosts": []string{name},
			"http": []any{map[string]any{"route": []any{map[string]any{"destination": map[string]any{"host": name}}}}}},
	}
}

const vsPath = "/apis/networking.istio.io/v1/namespaces/default/virtualservices"
