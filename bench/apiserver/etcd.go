package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
)

// etcdStartTimeout bounds how long etcd may take to become healthy.
const etcdStartTimeout = 30 * time.Second

// etcdProc is a single-member etcd started by the benchmark.
type etcdProc struct {
	dir       string
	clientURL string
	version   string
	logPath   string
	cmd       *exec.Cmd
	exited    chan struct{}
	exitErr   error
}

// startEtcd runs bin as a single-member cluster on free loopback ports with
// its data under dir (fsync stays on, as in production) and waits until its
// /health endpoint answers healthy.
func startEtcd(ctx context.Context, bin, dir string) (*etcdProc, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("etcd binary: %w (install Debian's etcd-server or pass -etcd)", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ver, _ := exec.Command(bin, "--version").Output()
	version := "?"
	if f := strings.Fields(string(firstLine(ver))); len(f) > 0 {
		version = f[len(f)-1]
	}
	addrs, err := freeLoopbackAddrs(2)
	if err != nil {
		return nil, err
	}
	e := &etcdProc{
		dir:       dir,
		clientURL: "http://" + addrs[0],
		version:   version,
		logPath:   filepath.Join(dir, "etcd.log"),
		exited:    make(chan struct{}),
	}
	peerURL := "http://" + addrs[1]
	logFile, err := os.Create(e.logPath)
	if err != nil {
		return nil, err
	}
	e.cmd = exec.Command(bin,
		"--name", "bench",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.clientURL,
		"--advertise-client-urls", e.clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "bench="+peerURL,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", fmt.Sprintf("weft-bench-%d", time.Now().UnixNano()),
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	)
	e.cmd.Env = etcdEnv()
	e.cmd.Stdout = logFile
	e.cmd.Stderr = logFile
	// Own process group, so that stop can kill it and anything it forks.
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting etcd: %w", err)
	}
	go func() {
		e.exitErr = e.cmd.Wait()
		logFile.Close()
		close(e.exited)
	}()
	if err := e.waitHealthy(ctx); err != nil {
		e.stop()
		return nil, fmt.Errorf("etcd not healthy within %s: %w\n--- tail of %s ---\n%s", etcdStartTimeout, err, e.logPath, tail(e.logPath, 2000))
	}
	return e, nil
}

// waitHealthy polls GET /health until etcd reports healthy, the process
// exits, or etcdStartTimeout passes.
func (e *etcdProc) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, etcdStartTimeout)
	defer cancel()
	cl := &http.Client{Timeout: time.Second}
	var last error
	for {
		select {
		case <-e.exited:
			return fmt.Errorf("etcd exited: %v", e.exitErr)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.clientURL+"/health", nil)
		resp, err := cl.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`)) {
				return nil
			}
			last = fmt.Errorf("/health: %s: %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return last
		case <-e.exited:
			return fmt.Errorf("etcd exited: %v", e.exitErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop kills etcd's process group and waits (bounded) for it to exit. The
// data directory is removed by the caller.
func (e *etcdProc) stop() {
	select {
	case <-e.exited:
		return
	default:
	}
	_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-e.exited:
	case <-time.After(10 * time.Second):
		harness.Logf("warning: etcd (pid %d) did not exit within 10s of SIGKILL", e.cmd.Process.Pid)
	}
}

// freeLoopbackAddrs returns n distinct free 127.0.0.1 ports. They are
// released before use, so another process could take one in between; etcd
// then fails to start with a clear error.
func freeLoopbackAddrs(n int) ([]string, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var addrs []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// etcdEnv is the environment without ETCD_* variables, which etcd would
// read as flags.
func etcdEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i]
	}
	return b
}

// tail returns up to the last n bytes of the file at path.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	if st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
