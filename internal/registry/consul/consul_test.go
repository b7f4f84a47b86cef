package consul

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/testutil/fakeconsul"
)

// propagation is how soon a change in Consul must reach the sink.
const propagation = time.Second

// recorder is a registry.Sink keeping every state it receives.
type recorder struct {
	mu     sync.Mutex
	states []registry.State
	notify chan struct{}
}

func (r *recorder) Update(source string, st registry.State) {
	if source != SourceName {
		panic("unexpected source " + source)
	}
	r.mu.Lock()
	r.states = append(r.states, st)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

// waitFor returns the first state after the first `after` updates for which
// ok holds, failing the test if none arrives within timeout.
func (r *recorder) waitFor(t *testing.T, after int, timeout time.Duration, what string, ok func(registry.State) bool) registry.State {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	next := after
	for {
		r.mu.Lock()
		pending := r.states[min(next, len(r.states)):]
		next = len(r.states)
		r.mu.Unlock()
		for _, st := range pending {
			if ok(st) {
				return st
			}
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no state with %s within %v; %d states, last: %s", what, timeout, len(r.states), dump(r.states[max(len(r.states)-1, 0):]))
		}
	}
}

// change applies a change and waits for the state it should produce,
// logging the measured propagation latency.
func (r *recorder) change(t *testing.T, what string, do func(), ok func(registry.State) bool) registry.State {
	t.Helper()
	n := r.count()
	start := time.Now()
	do()
	st := r.waitFor(t, n, propagation, what, ok)
	t.Logf("%s: reached the sink in %v", what, time.Since(start).Round(10*time.Microsecond))
	return st
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// logCounter is a slog.Handler that counts records by message and can
// signal each one.
type logCounter struct {
	mu     sync.Mutex
	counts map[string]int
	times  map[string][]time.Time
	notify chan string
}

func newLogCounter() *logCounter {
	return &logCounter{counts: map[string]int{}, times: map[string][]time.Time{}, notify: make(chan string, 1024)}
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.times[r.Message] = append(h.times[r.Message], r.Time)
	h.mu.Unlock()
	select {
	case h.notify <- r.Message:
	default:
	}
	return nil
}
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

func (h *logCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// start runs a source against fake until the test ends.
func start(t *testing.T, cfg Config, logger *slog.Logger) *recorder {
	t.Helper()
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 30 * time.Second // long: changes must come from index moves
	}
	src, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rec := &recorder{notify: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, rec) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return rec
}

func web(node, addr string, port int, tags ...string) fakeconsul.Instance {
	return fakeconsul.Instance{Node: node, NodeAddress: addr, Service: "web", ID: "web-" + node, Port: port, Tags: tags}
}

func endpoints(st registry.State, host string) []registry.Endpoint {
	var out []registry.Endpoint
	for _, e := range st.Endpoints {
		if e.Hostname == host {
			out = append(out, e)
		}
	}
	return out
}

func TestMapping(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.Register(fakeconsul.Instance{
		Node: "n1", NodeAddress: "10.0.0.1", NodeMeta: map[string]string{"region": "eu", "zone": "eu-1a"},
		Service: "Web", ID: "web-1", Port: 8080, Tags: []string{"protocol=http", "version=v1", "primary"},
		Meta: map[string]string{"service-account": "web-sa", "team": "a"},
	})
	fake.Register(fakeconsul.Instance{
		Node: "n2", NodeAddress: "10.0.0.2", Service: "Web", ID: "web-2", Address: "172.16.0.2", Port: 8080,
		Tags: []string{"version=v2"}, Status: fakeconsul.Warning,
	})
	fake.Register(fakeconsul.Instance{
		Node: "n2", NodeAddress: "10.0.0.2", Service: "db", ID: "db-1", Port: 5432, Meta: map[string]string{"protocol": "tcp"},
	})
	rec := start(t, Config{Address: fake.URL(), ExtraDomains: []string{"consul.example."}, Namespace: "legacy"}, quiet())
	got := rec.waitFor(t, 0, 5*time.Second, "initial state", func(registry.State) bool { return true })

	httpPort := []registry.Port{{Name: "http-8080", Number: 8080, Protocol: "HTTP"}}
	tcpPort := []registry.Port{{Name: "tcp-5432", Number: 5432, Protocol: "TCP"}}
	svc := func(host string, ports []registry.Port) registry.Service {
		return registry.Service{Hostname: host, Namespace: "legacy", Ports: ports, Resolution: registry.ResolutionStatic,
			Location: registry.MeshInternal, Source: SourceName}
	}
	web1 := func(host string) registry.Endpoint {
		return registry.Endpoint{Hostname: host, Namespace: "legacy", Address: "10.0.0.1", Ports: map[string]uint32{"http-8080": 8080},
			Labels:   map[string]string{"protocol": "http", "version": "v1", "service-account": "web-sa", "team": "a"},
			Locality: "eu/eu-1a", Healthy: true, ServiceAccount: "web-sa", Weight: 1, WorkloadName: "web-1"}
	}
	web2 := func(host string) registry.Endpoint {
		return registry.Endpoint{Hostname: host, Namespace: "legacy", Address: "172.16.0.2", Ports: map[string]uint32{"http-8080": 8080},
			Labels: map[string]string{"version": "v2"}, Locality: "dc1", Healthy: false, Weight: 1, WorkloadName: "web-2"}
	}
	want := registry.State{
		Services: []registry.Service{
			svc("db.consul.example", tcpPort), svc("db.service.consul", tcpPort),
			svc("web.consul.example", httpPort), svc("web.service.consul", httpPort),
		},
		Endpoints: []registry.Endpoint{
			{Hostname: "db.consul.example", Namespace: "legacy", Address: "10.0.0.2", Ports: map[string]uint32{"tcp-5432": 5432},
				Labels: map[string]string{"protocol": "tcp"}, Locality: "dc1", Healthy: true, Weight: 1, WorkloadName: "db-1"},
			{Hostname: "db.service.consul", Namespace: "legacy", Address: "10.0.0.2", Ports: map[string]uint32{"tcp-5432": 5432},
				Labels: map[string]string{"protocol": "tcp"}, Locality: "dc1", Healthy: true, Weight: 1, WorkloadName: "db-1"},
			web1("web.consul.example"), web2("web.consul.example"),
			web1("web.service.consul"), web2("web.service.consul"),
		},
	}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("state (-got +want):\n%s", d)
	}
}

func TestChangesPropagate(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.Register(web("n1", "10.0.0.1", 8080, "version=v1"))
	rec := start(t, Config{Address: fake.URL()}, quiet())
	rec.waitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(endpoints(s, "web.service.consul")) == 1 })

	rec.change(t, "new instance", func() { fake.Register(web("n2", "10.0.0.2", 8080)) }, func(s registry.State) bool {
		return len(endpoints(s, "web.service.consul")) == 2
	})
	rec.change(t, "new service", func() {
		fake.Register(fakeconsul.Instance{Node: "n3", NodeAddress: "10.0.0.3", Service: "api", Port: 9000})
	}, func(s registry.State) bool { return len(endpoints(s, "api.service.consul")) == 1 })
	rec.change(t, "tag change", func() { fake.Register(web("n1", "10.0.0.1", 8080, "version=v2")) }, func(s registry.State) bool {
		eps := endpoints(s, "web.service.consul")
		return len(eps) == 2 && eps[0].Labels["version"] == "v2"
	})
	rec.change(t, "port change", func() { fake.Register(web("n1", "10.0.0.1", 8081, "version=v2")) }, func(s registry.State) bool {
		eps := endpoints(s, "web.service.consul")
		return len(eps) == 2 && eps[0].Ports["tcp-8081"] == 8081
	})
	rec.change(t, "health critical", func() { fake.SetCheck("n2", "web-n2", fakeconsul.Critical) }, func(s registry.State) bool {
		eps := endpoints(s, "web.service.consul")
		return len(eps) == 2 && !eps[1].Healthy
	})
	rec.change(t, "health passing", func() { fake.SetCheck("n2", "web-n2", fakeconsul.Passing) }, func(s registry.State) bool {
		eps := endpoints(s, "web.service.consul")
		return len(eps) == 2 && eps[1].Healthy
	})
	rec.change(t, "health warning (only passing is healthy)", func() { fake.SetCheck("n2", "web-n2", fakeconsul.Warning) }, func(s registry.State) bool {
		eps := endpoints(s, "web.service.consul")
		return len(eps) == 2 && !eps[1].Healthy && eps[0].Healthy
	})
	rec.change(t, "instance removed", func() { fake.Deregister("n2", "web-n2") }, func(s registry.State) bool {
		return len(endpoints(s, "web.service.consul")) == 1
	})
	rec.change(t, "service removed", func() { fake.Deregister("n3", "api") }, func(s registry.State) bool {
		for _, svc := range s.Services {
			if svc.Hostname == "api.service.consul" {
				return false
			}
		}
		return len(s.Services) == 1
	})
}

func TestBlockingQueries(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.Register(web("n1", "10.0.0.1", 8080))
	rec := start(t, Config{Address: fake.URL(), WaitTime: 7 * time.Second}, quiet())
	rec.waitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(s.Services) == 1 })
	rec.change(t, "second instance", func() { fake.Register(web("n2", "10.0.0.2", 8080)) }, func(s registry.State) bool {
		return len(s.Endpoints) == 2
	})
	// Wait until both watchers are parked again, then inspect every request.
	for _, p := range []string{"/v1/catalog/services", "/v1/health/service/web"} {
		if !fake.AwaitBlocked(p, 1, 5*time.Second) {
			t.Fatalf("no blocked query on %s", p)
		}
	}
	blocking := map[string]int{}
	for _, r := range fake.Requests() {
		if r.Query.Get("index") == "" || r.Query.Get("index") == "0" {
			continue
		}
		if got := r.Query.Get("wait"); got != "7000ms" {
			t.Errorf("%s?%s: wait=%q, want 7000ms", r.Path, r.Query.Encode(), got)
		}
		blocking[r.Path]++
	}
	for _, p := range []string{"/v1/catalog/services", "/v1/health/service/web"} {
		if blocking[p] == 0 {
			t.Errorf("no blocking query (index>0) on %s; requests: %v", p, fake.Requests())
		}
	}
	// Idle: the source must stay parked in blocking queries, not poll.
	before := len(fake.Requests())
	idle := time.NewTimer(300 * time.Millisecond)
	<-idle.C
	if n := len(fake.Requests()) - before; n != 0 {
		t.Errorf("%d requests while idle, want 0 (blocked)", n)
	}
}

func TestOutageBacksOffAndRecovers(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.Register(web("n1", "10.0.0.1", 8080))
	logs := newLogCounter()
	rec := start(t, Config{Address: fake.URL(), RetryMin: 20 * time.Millisecond, RetryMax: 160 * time.Millisecond}, slog.New(logs))
	rec.waitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(s.Services) == 1 })

	fake.Stop()
	// Wait (bounded) for several failed catalog queries.
	deadline := time.After(5 * time.Second)
	for logs.count("catalog query failed") < 5 {
		select {
		case <-logs.notify:
		case <-deadline:
			t.Fatalf("only %d failed catalog queries after the outage", logs.count("catalog query failed"))
		}
	}
	logs.mu.Lock()
	times := append([]time.Time(nil), logs.times["catalog query failed"]...)
	logs.mu.Unlock()
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		if gap < 10*time.Millisecond || gap > time.Second {
			t.Errorf("retry %d came %v after the previous one; want backoff within [10ms, 1s]", i, gap)
		}
	}
	fake.Register(web("n2", "10.0.0.2", 8080)) // changed while Consul is unreachable
	if err := fake.Start(); err != nil {
		t.Fatalf("restart fake: %v", err)
	}
	st := rec.change(t, "recovery after outage", func() {}, func(s registry.State) bool { return len(s.Endpoints) == 2 })
	if len(st.Services) != 1 {
		t.Errorf("services after recovery: %s", dump(st.Services))
	}
	deadline = time.After(5 * time.Second)
	for logs.count("catalog query recovered") == 0 {
		select {
		case <-logs.notify:
		case <-deadline:
			t.Fatal("the catalog watcher did not recover")
		}
	}
}

func TestTokenAndDatacenter(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.RequireToken("s3cret")
	fake.Register(web("n1", "10.0.0.1", 8080))
	rec := start(t, Config{Address: strings.TrimPrefix(fake.URL(), "http://"), Token: "s3cret", Datacenter: "dc1"}, quiet())
	rec.waitFor(t, 0, 5*time.Second, "web with token", func(s registry.State) bool { return len(s.Endpoints) == 1 })
	for _, r := range fake.Requests() {
		if r.Token != "s3cret" || r.Query.Get("dc") != "dc1" {
			t.Fatalf("request %s?%s token %q: want token and dc=dc1", r.Path, r.Query.Encode(), r.Token)
		}
	}

	logs := newLogCounter()
	bad := start(t, Config{Address: fake.URL(), Token: "wrong", RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond}, slog.New(logs))
	deadline := time.After(5 * time.Second)
	for logs.count("catalog query failed") < 2 {
		select {
		case <-logs.notify:
		case <-deadline:
			t.Fatal("a wrong token did not fail")
		}
	}
	if n := bad.count(); n != 0 {
		t.Errorf("%d states reported without access to the catalog", n)
	}
}
