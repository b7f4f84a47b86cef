package nomad

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/registrytest"
	"github.com/weftmesh/weft/internal/testutil/freeport"
)

// nomadBinary finds a Nomad binary: $WEFT_NOMAD_BIN, else nomad on $PATH.
func nomadBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WEFT_NOMAD_BIN"); p != "" {
		return p
	}
	p, err := exec.LookPath("nomad")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no nomad binary in CI: scripts/test.sh builds one with scripts/nomad.sh")
		}
		t.Skip("no nomad binary: run scripts/nomad.sh and set WEFT_NOMAD_BIN, or put nomad on PATH")
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	return freeport.Get(t)
}

// startAgent runs `nomad agent -dev` on free loopback ports and returns its
// address once a client node is ready.
func startAgent(t *testing.T) string {
	t.Helper()
	bin := nomadBinary(t)
	dir := t.TempDir()
	http, rpc, serf := freePort(t), freePort(t), freePort(t)
	cfg := fmt.Sprintf(`ports {
  http = %d
  rpc  = %d
  serf = %d
}
client {
  options = { "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean" }
}
`, http, rpc, serf)
	cfgPath := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "agent", "-dev", "-bind", "127.0.0.1", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	for _, kv := range os.Environ() {
		// The AWS fingerprinter refuses a custom CA bundle; keep NOMAD_* out.
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "NOMAD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The agent starts plugin processes (logmon) of its own, which a
	// killed agent leaves behind (one outlived a CI run): the agent runs
	// in a process group of its own, is asked to stop (SIGINT, as nomad
	// shuts its plugins down then), and the group is killed after it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // what is left of the group
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("agent log (tail):\n%s", tail(string(b), 3000))
		}
	})
	addr := fmt.Sprintf("http://127.0.0.1:%d", http)
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for a ready client node with blocking queries on /v1/nodes
	// (connection errors while the agent starts are retried).
	deadline := time.Now().Add(60 * time.Second)
	var index uint64
	for time.Now().Before(deadline) {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}).WithContext(ctx)
		nodes, meta, err := client.Nodes().List(q)
		if err != nil {
			retry := time.NewTimer(100 * time.Millisecond)
			<-retry.C
			continue
		}
		index = meta.LastIndex
		for _, n := range nodes {
			if n.Status == "ready" {
				return addr
			}
		}
	}
	t.Fatal("nomad agent -dev did not get a ready node within 60s")
	return ""
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func webJob(tags ...string) *api.Job {
	job := api.NewServiceJob("web", "web", "global", 50)
	job.Datacenters = []string{"*"}
	tg := api.NewTaskGroup("web", 1)
	tg.Networks = []*api.NetworkResource{{DynamicPorts: []api.Port{{Label: "http"}}}}
	tg.Services = []*api.Service{{Name: "web", PortLabel: "http", Provider: "nomad", Tags: tags}}
	task := api.NewTask("web", "mock_driver")
	task.Config = map[string]any{"run_for": "1h"}
	tg.AddTask(task)
	job.AddTaskGroup(tg)
	return job
}

// TestRealAgent runs the source against `nomad agent -dev` (mock driver, no
// Docker), when a nomad binary is available.
func TestRealAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a nomad agent")
	}
	addr := startAgent(t)
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	rec := start(t, Config{Address: addr}, registrytest.Quiet())
	rec.WaitFor(t, 0, 10*time.Second, "initial empty state", func(s registry.State) bool { return len(s.Services) == 0 })

	const host = "web.default.nomad"
	const slow = 60 * time.Second // scheduling and starting an allocation
	n, begin := rec.Count(), time.Now()
	if _, _, err := client.Jobs().Register(webJob("protocol=http", "version=v1"), nil); err != nil {
		t.Fatal(err)
	}
	st := rec.WaitFor(t, n, slow, "web registered", func(s registry.State) bool { return len(registrytest.Endpoints(s, host)) == 1 })
	t.Logf("job registered -> endpoint in the sink: %v (includes scheduling)", time.Since(begin).Round(time.Millisecond))
	ep := registrytest.Endpoints(st, host)[0]
	if ep.Address == "" || ep.Labels["version"] != "v1" || st.Services[0].Ports[0].Protocol != "HTTP" || ep.Locality != "dc1" {
		t.Errorf("state from a real agent: %s", registrytest.Dump(st))
	}

	n, begin = rec.Count(), time.Now()
	if _, _, err := client.Jobs().Register(webJob("protocol=http", "version=v2"), nil); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, n, slow, "tags updated", func(s registry.State) bool {
		eps := registrytest.Endpoints(s, host)
		return len(eps) == 1 && eps[0].Labels["version"] == "v2"
	})
	t.Logf("job tags changed -> sink: %v", time.Since(begin).Round(time.Millisecond))

	n, begin = rec.Count(), time.Now()
	if _, _, err := client.Jobs().Deregister("web", true, nil); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, n, slow, "web gone", func(s registry.State) bool { return len(s.Services) == 0 })
	t.Logf("job stopped -> service gone from the sink: %v", time.Since(begin).Round(time.Millisecond))
}
