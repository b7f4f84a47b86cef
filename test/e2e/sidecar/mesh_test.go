package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/proxy/memtrim"
)

// mesh is a running weft server with its xDS on TLS only, in which
// explicit-mode sidecars get their workload certificates with a bootstrap
// token (mesh mTLS between them).
type mesh struct {
	t       *testing.T
	dataDir string
	kc      string
	tlsPort int
	// shared holds the files sidecars read (readable by nobody).
	shared string
	caFile string
}

// sidecarPorts are one sidecar's local ports, its process ID and log.
type sidecarPorts struct {
	admin, stats, ready, pid int
	log                      string
}

// startMesh starts the control plane (with extra weft server flags);
// apply config before starting sidecars.
func startMesh(t *testing.T, serverArgs ...string) *mesh {
	t.Helper()
	m := &mesh{t: t, dataDir: t.TempDir(), tlsPort: freePort(t)}
	apiPort := freePort(t)
	process(t, weftBin, append([]string{"server", "--data-dir", m.dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--monitoring-listen", "", "--xds-listen", fmt.Sprintf("127.0.0.1:%d", m.tlsPort), "--xds-plaintext-listen", "", "--debounce", "20ms"}, serverArgs...)...)
	m.kc = filepath.Join(m.dataDir, "kubeconfig")
	return m
}

// weft runs the CLI against the server, retrying while it starts.
func (m *mesh) weft(stdin string, args ...string) string {
	m.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cmd := exec.Command(weftBin, append([]string{"--kubeconfig", m.kc}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err == nil {
			return string(out)
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("weft %v: %v\n%s", args, err, out)
		}
		time.Sleep(100 * time.Millisecond) // the server is a process starting up
	}
}

// apply applies YAML documents.
func (m *mesh) apply(doc string) { m.t.Helper(); m.weft(doc, "apply", "-f", "-") }

// prepare creates the directory sidecars read the CA from (once).
func (m *mesh) prepare() {
	t := m.t
	t.Helper()
	if m.shared != "" {
		return
	}
	// The sidecars run as nobody when the test runs as root: their files
	// must be reachable for that user.
	shared, err := os.MkdirTemp("", "weft-mesh-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	mustChmod(t, shared, 0o755)
	ca, err := os.ReadFile(filepath.Join(m.dataDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	m.caFile = filepath.Join(shared, "ca.crt")
	if err := os.WriteFile(m.caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	m.shared = shared
}

// sidecar starts an explicit-mode sidecar for WorkloadGroup name (service
// account and app label name) on ip, and waits until it is ready.
func (m *mesh) sidecar(name, ip string, extra ...string) sidecarPorts {
	m.t.Helper()
	return m.proxy(name, ip, append([]string{"sidecar", "--explicit", "--workload-group", name,
		"--service-account", name, "--labels", "app=" + name}, extra...)...)
}

// proxy starts weft-proxy with args (its subcommand first) as a workload
// of WorkloadGroup name on ip, with a bootstrap token for that group, and
// waits until it is ready.
func (m *mesh) proxy(name, ip string, args ...string) sidecarPorts {
	t := m.t
	t.Helper()
	m.prepare()
	token := strings.TrimSpace(m.weft("", "workload", "token", "create", "--group", name, "--ttl", "1h"))
	certDir := filepath.Join(m.shared, name)
	if err := os.Mkdir(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bin, pre := asNobody()
	if bin != "" {
		if err := os.Chown(certDir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	s := sidecarPorts{admin: freePort(t), stats: freePort(t), ready: freePort(t)}
	args = append(append(pre, proxyBin), append(args, "--ip", ip, "--name", name,
		"--discovery-address", fmt.Sprintf("127.0.0.1:%d", m.tlsPort), "--ca-root-file", m.caFile,
		"--bootstrap-token", token, "--cert-dir", certDir,
		"--admin-port", fmt.Sprint(s.admin), "--stats-port", fmt.Sprint(s.stats), "--ready-port", fmt.Sprint(s.ready))...)
	if bin == "" {
		bin, args = args[0], args[1:]
	}
	// setpriv and the sidecar's own re-execution keep the process ID.
	cmd := process(t, bin, args...)
	s.pid, s.log = cmd.Process.Pid, cmd.Stdout.(*os.File).Name()
	waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", s.ready))
	return s
}

// metricSum scrapes a sidecar's /stats/prometheus and sums the samples of
// metric whose labels contain every one of labels (`reporter="source"`).
// metricSeries are the series of metric a sidecar exposes, one line
// each (failure messages).
func metricSeries(t *testing.T, stats int, metric string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", stats))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), metric+"{") {
			out = append(out, sc.Text())
		}
	}
	return strings.Join(out, "\n")
}

func metricSum(t *testing.T, stats int, metric string, labels ...string) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", stats))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(metric) + `(?:\{(.*)\})? (\S+)`)
	total := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(m[1], l) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("%s: sample %q: %v", metric, m[2], err)
		}
		total += int(v)
	}
	return total
}

// get fetches url and returns its status code and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// statusKB reads a kB field (RssFile, VmRSS) of /proc/<pid>/status.
func statusKB(t *testing.T, pid int, key string) int64 {
	t.Helper()
	kb, err := memtrim.StatusKB(pid, key)
	if err != nil {
		t.Fatal(err)
	}
	return kb
}
