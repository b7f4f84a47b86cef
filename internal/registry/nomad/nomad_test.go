package nomad

import (
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/registrytest"
	"github.com/weftmesh/weft/internal/testutil/fakenomad"
)

func reg(id, ns, svc, addr string, port int, tags ...string) fakenomad.Registration {
	return fakenomad.Registration{ID: id, Namespace: ns, ServiceName: svc, Address: addr, Port: port, Tags: tags,
		NodeID: "node-1", JobID: "job-" + svc, AllocID: "alloc-" + id}
}

func TestMapping(t *testing.T) {
	fake := fakenomad.New()
	t.Cleanup(fake.Close)
	fake.Register(reg("r1", "default", "web", "10.0.0.1", 23001, "protocol=http", "version=v1", "service-account=web", "urlprefix-/"))
	r2 := reg("r2", "default", "web", "10.0.0.2", 23001, "protocol=http", "version=v2")
	r2.Datacenter = "dc2"
	fake.Register(r2)
	fake.Register(reg("r3", "batch", "Web", "10.0.1.1", 9000))
	rec := start(t, Config{Address: fake.URL()}, registrytest.Quiet())
	got := rec.WaitFor(t, 0, 5*time.Second, "initial state", func(registry.State) bool { return true })
	svc := func(host, ns string, ports ...registry.Port) registry.Service {
		return registry.Service{Hostname: host, Namespace: ns, Ports: ports, Resolution: registry.ResolutionStatic,
			Location: registry.MeshInternal, Source: SourceName}
	}
	want := registry.State{
		Services: []registry.Service{
			svc("web.batch.nomad", "batch", registry.Port{Name: "tcp-9000", Number: 9000, Protocol: "TCP"}),
			svc("web.default.nomad", "default", registry.Port{Name: "http-23001", Number: 23001, Protocol: "HTTP"}),
		},
		Endpoints: []registry.Endpoint{
			{Hostname: "web.batch.nomad", Namespace: "batch", Address: "10.0.1.1", Ports: map[string]uint32{"tcp-9000": 9000},
				Locality: "dc1", Healthy: true, WorkloadName: "alloc-r3"},
			{Hostname: "web.default.nomad", Namespace: "default", Address: "10.0.0.1", Ports: map[string]uint32{"http-23001": 23001},
				Labels:   map[string]string{"protocol": "http", "version": "v1", "service-account": "web"},
				Locality: "dc1", Healthy: true, ServiceAccount: "web", WorkloadName: "alloc-r1"},
			{Hostname: "web.default.nomad", Namespace: "default", Address: "10.0.0.2", Ports: map[string]uint32{"http-23001": 23001},
				Labels: map[string]string{"protocol": "http", "version": "v2"}, Locality: "dc2", Healthy: true, WorkloadName: "alloc-r2"},
		},
	}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("state (-got +want):\n%s", d)
	}
}

func TestChangesPropagate(t *testing.T) {
	fake := fakenomad.New()
	t.Cleanup(fake.Close)
	fake.Register(reg("r1", "default", "web", "10.0.0.1", 8080, "version=v1"))
	rec := start(t, Config{Address: fake.URL()}, registrytest.Quiet())
	const host = "web.default.nomad"
	rec.WaitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(registrytest.Endpoints(s, host)) == 1 })

	rec.Change(t, propagation, "new registration", func() { fake.Register(reg("r2", "default", "web", "10.0.0.2", 8080)) }, func(s registry.State) bool {
		return len(registrytest.Endpoints(s, host)) == 2
	})
	rec.Change(t, propagation, "new service in another namespace", func() { fake.Register(reg("r3", "ops", "api", "10.0.0.3", 9000)) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, "api.ops.nomad")
		return len(eps) == 1 && eps[0].Namespace == "ops"
	})
	rec.Change(t, propagation, "tag change", func() { fake.Register(reg("r1", "default", "web", "10.0.0.1", 8080, "version=v2")) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, host)
		return len(eps) == 2 && eps[0].Labels["version"] == "v2"
	})
	rec.Change(t, propagation, "port change", func() { fake.Register(reg("r1", "default", "web", "10.0.0.1", 8081, "version=v2")) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, host)
		return len(eps) == 2 && eps[0].Ports["tcp-8081"] == 8081
	})
	rec.Change(t, propagation, "registration removed", func() { fake.Deregister("r2") }, func(s registry.State) bool {
		return len(registrytest.Endpoints(s, host)) == 1
	})
	rec.Change(t, propagation, "service removed", func() { fake.Deregister("r3") }, func(s registry.State) bool {
		return len(s.Services) == 1 && s.Services[0].Hostname == host
	})
}

func TestBlockingQueries(t *testing.T) {
	fake := fakenomad.New()
	t.Cleanup(fake.Close)
	fake.Register(reg("r1", "default", "web", "10.0.0.1", 8080))
	rec := start(t, Config{Address: fake.URL(), WaitTime: 7 * time.Second}, registrytest.Quiet())
	rec.WaitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(s.Services) == 1 })
	rec.Change(t, propagation, "second registration", func() { fake.Register(reg("r2", "default", "web", "10.0.0.2", 8080)) }, func(s registry.State) bool {
		return len(s.Endpoints) == 2
	})
	registrytest.CheckBlocking(t, fake.Agent, "7000ms", "/v1/services", "/v1/service/web")
	for _, r := range fake.Requests() {
		want := "default"
		if r.Path == "/v1/services" {
			want = "*"
		}
		if got := r.Query.Get("namespace"); got != want {
			t.Errorf("%s?%s: namespace=%q, want %q", r.Path, r.Query.Encode(), got, want)
		}
		if _, stale := r.Query["stale"]; !stale {
			t.Errorf("%s?%s: not a stale read", r.Path, r.Query.Encode())
		}
	}
}

func TestOutageBacksOffAndRecovers(t *testing.T) {
	fake := fakenomad.New()
	t.Cleanup(fake.Close)
	fake.Register(reg("r1", "default", "web", "10.0.0.1", 8080))
	logs := registrytest.NewLogCounter()
	rec := start(t, Config{Address: fake.URL(), RetryMin: 20 * time.Millisecond, RetryMax: 160 * time.Millisecond}, slog.New(logs))
	rec.WaitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(s.Services) == 1 })

	fake.Stop()
	logs.Await(t, "service list query failed", 5, 5*time.Second)
	logs.CheckSpacing(t, "service list query failed", 10*time.Millisecond, time.Second)
	fake.Register(reg("r2", "default", "web", "10.0.0.2", 8080))
	if err := fake.Start(); err != nil {
		t.Fatalf("restart fake: %v", err)
	}
	rec.Change(t, propagation, "recovery after outage", func() {}, func(s registry.State) bool { return len(s.Endpoints) == 2 })
	logs.Await(t, "service list query recovered", 1, 5*time.Second)
}

func TestTokenAndRegion(t *testing.T) {
	fake := fakenomad.New()
	t.Cleanup(fake.Close)
	fake.RequireToken("s3cret")
	fake.Register(reg("r1", "default", "web", "10.0.0.1", 8080))
	rec := start(t, Config{Address: fake.URL(), Token: "s3cret", Region: "global"}, registrytest.Quiet())
	rec.WaitFor(t, 0, 5*time.Second, "web with token", func(s registry.State) bool { return len(s.Endpoints) == 1 })
	for _, r := range fake.Requests() {
		if r.Token != "s3cret" || r.Query.Get("region") != "global" {
			t.Fatalf("request %s?%s token %q: want token and region=global", r.Path, r.Query.Encode(), r.Token)
		}
	}
	logs := registrytest.NewLogCounter()
	bad := start(t, Config{Address: fake.URL(), Region: "mars", Token: "s3cret", RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond}, slog.New(logs))
	logs.Await(t, "service list query failed", 2, 5*time.Second)
	if n := bad.Count(); n != 0 {
		t.Errorf("%d states reported without access to the region", n)
	}
}
