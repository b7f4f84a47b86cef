// Package etcdtest runs real etcd clusters for tests.
//
// Start launches N etcd processes (the etcd binary on PATH, e.g. Debian's
// etcd-server package) on free loopback ports with data directories under
// t.TempDir(), waits until the cluster serves linearizable reads, and kills
// the processes when the test ends. fsync stays on: durability tests rely on
// it.
//
// If the binary is missing the test fails with "etcd not found: run
// scripts/test-deps.sh"; it is skipped only when WEFT_SKIP_ETCD=1 is set.
package etcdtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// StartTimeout bounds how long a cluster or a restarted member may take to
// become healthy.
const StartTimeout = 30 * time.Second

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	token   string
	initial string // --initial-cluster value
	members []*member
}

type member struct {
	name       string
	dir        string
	clientURL  string
	peerURL    string
	logPath    string
	mu         sync.Mutex
	cmd        *exec.Cmd
	exited     chan struct{} // closed when the current process exits
	exitErr    error
	generation int
}

// Start starts a cluster of members etcd processes and waits until it is
// healthy. Cleanup kills the processes.
func Start(t testing.TB, members int) *Cluster {
	t.Helper()
	if os.Getenv("WEFT_SKIP_ETCD") == "1" {
		t.Skip("WEFT_SKIP_ETCD=1: skipping test that needs a real etcd")
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd not found: run scripts/test-deps.sh (%v)", err)
	}
	if members < 1 {
		t.Fatalf("etcdtest.Start: members = %d", members)
	}
	base := t.TempDir()
	c := &Cluster{t: t, bin: bin, token: fmt.Sprintf("weft-test-%d", time.Now().UnixNano())}
	addrs := freeAddrs(t, 2*members)
	var initial []string
	for i := 0; i < members; i++ {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(base, fmt.Sprintf("m%d", i)),
			clientURL: "http://" + addrs[2*i],
			peerURL:   "http://" + addrs[2*i+1],
		}
		m.logPath = filepath.Join(m.dir, "etcd.log")
		if err := os.MkdirAll(m.dir, 0o700); err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		initial = append(initial, m.name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	c.initial = strings.Join(initial, ",")
	t.Cleanup(c.killAll)
	for i := range c.members {
		if err := c.start(i); err != nil {
			c.fail("start member %d: %v", i, err)
		}
	}
	if err := c.waitHealthy(c.Endpoints()); err != nil {
		c.fail("cluster of %d not healthy within %s: %v", members, StartTimeout, err)
	}
	return c
}

// Endpoints returns the client URLs of all members.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL)
	}
	return eps
}

// Endpoint returns member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].clientURL }

// Stop kills member i with SIGKILL and waits for it to exit.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	c.members[i].kill()
}

// Restart starts member i again on its old data directory and ports, and
// waits until it serves linearizable reads.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.members[i].kill()
	if err := c.start(i); err != nil {
		c.fail("restart member %d: %v", i, err)
	}
	if err := c.waitHealthy([]string{c.members[i].clientURL}); err != nil {
		c.fail("member %d not healthy within %s after restart: %v", i, StartTimeout, err)
	}
}

func (c *Cluster) start(i int) error {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	m.generation++
	fmt.Fprintf(logf, "=== etcdtest: start %s (generation %d) ===\n", m.name, m.generation)
	cmd := exec.Command(c.bin,
		"--name", m.name,
		"--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", c.initial,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", c.token,
		"--logger", "zap",
		"--log-outputs", "stderr",
	)
	cmd.Env = cleanEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	m.cmd, m.exited, m.exitErr = cmd, exited, nil
	go func() {
		err := cmd.Wait()
		logf.Close()
		m.mu.Lock()
		m.exitErr = err
		m.mu.Unlock()
		close(exited)
	}()
	return nil
}

func (m *member) kill() {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
	}
}

func (c *Cluster) killAll() {
	for _, m := range c.members {
		m.kill()
	}
}

// waitHealthy polls a linearizable Get through the given endpoints until it
// succeeds, a member process exits, or StartTimeout passes.
func (c *Cluster) waitHealthy(endpoints []string) error {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(StartTimeout)
	var last error
	for time.Now().Before(deadline) {
		for i, m := range c.members {
			m.mu.Lock()
			exited, exitErr := m.exited, m.exitErr
			m.mu.Unlock()
			if !contains(endpoints, m.clientURL) {
				continue
			}
			select {
			case <-exited:
				return fmt.Errorf("member %d exited: %v", i, exitErr)
			default:
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "etcdtest-health")
		cancel()
		if err == nil {
			return nil
		}
		last = err
		// Poll with a short pause; this is a readiness probe, not a
		// synchronisation between goroutines of the test.
		t := time.NewTimer(50 * time.Millisecond)
		<-t.C
	}
	if last == nil {
		last = errors.New("timed out")
	}
	return last
}

func (c *Cluster) fail(format string, args ...any) {
	c.t.Helper()
	for _, m := range c.members {
		c.t.Logf("--- tail of %s log (%s) ---\n%s", m.name, m.logPath, tail(m.logPath, 40))
	}
	c.t.Fatalf("etcdtest: "+format, args...)
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// freeAddrs returns n distinct loopback host:ports that were free a moment
// ago (all listeners are held until every port is picked).
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("etcdtest: pick a free port: %v", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// cleanEnv drops ETCD_* variables so the host environment cannot change the
// flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
