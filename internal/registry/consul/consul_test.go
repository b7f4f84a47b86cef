package consul

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/registrytest"
	"github.com/weftmesh/weft/internal/testutil/fakeconsul"
)

// propagation is how soon a change in Consul must reach the sink.
const propagation = time.Second

// start runs a source against fake until the test ends.
func start(t *testing.T, cfg Config, logger *slog.Logger) *registrytest.Recorder {
	t.Helper()
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 30 * time.Second // long: changes must come from index moves
	}
	src, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return registrytest.Run(t, src)
}

func web(node, addr string, port int, tags ...string) fakeconsul.Instance {
	return fakeconsul.Instance{Node: node, NodeAddress: addr, Service: "web", ID: "web-" + node, Port: port, Tags: tags}
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
	rec := start(t, Config{Address: fake.URL(), ExtraDomains: []string{"consul.example."}, Namespace: "legacy"}, registrytest.Quiet())
	got := rec.WaitFor(t, 0, 5*time.Second, "initial state", func(registry.State) bool { return true })

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
	rec := start(t, Config{Address: fake.URL()}, registrytest.Quiet())
	rec.WaitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(registrytest.Endpoints(s, "web.service.consul")) == 1 })

	rec.Change(t, propagation, "new instance", func() { fake.Register(web("n2", "10.0.0.2", 8080)) }, func(s registry.State) bool {
		return len(registrytest.Endpoints(s, "web.service.consul")) == 2
	})
	rec.Change(t, propagation, "new service", func() {
		fake.Register(fakeconsul.Instance{Node: "n3", NodeAddress: "10.0.0.3", Service: "api", Port: 9000})
	}, func(s registry.State) bool { return len(registrytest.Endpoints(s, "api.service.consul")) == 1 })
	rec.Change(t, propagation, "tag change", func() { fake.Register(web("n1", "10.0.0.1", 8080, "version=v2")) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, "web.service.consul")
		return len(eps) == 2 && eps[0].Labels["version"] == "v2"
	})
	rec.Change(t, propagation, "port change", func() { fake.Register(web("n1", "10.0.0.1", 8081, "version=v2")) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, "web.service.consul")
		return len(eps) == 2 && eps[0].Ports["tcp-8081"] == 8081
	})
	rec.Change(t, propagation, "health critical", func() { fake.SetCheck("n2", "web-n2", fakeconsul.Critical) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, "web.service.consul")
		return len(eps) == 2 && !eps[1].Healthy
	})
	rec.Change(t, propagation, "health passing", func() { fake.SetCheck("n2", "web-n2", fakeconsul.Passing) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, "web.service.consul")
		return len(eps) == 2 && eps[1].Healthy
	})
	rec.Change(t, propagation, "health warning (only passing is healthy)", func() { fake.SetCheck("n2", "web-n2", fakeconsul.Warning) }, func(s registry.State) bool {
		eps := registrytest.Endpoints(s, "web.service.consul")
		return len(eps) == 2 && !eps[1].Healthy && eps[0].Healthy
	})
	rec.Change(t, propagation, "instance removed", func() { fake.Deregister("n2", "web-n2") }, func(s registry.State) bool {
		return len(registrytest.Endpoints(s, "web.service.consul")) == 1
	})
	rec.Change(t, propagation, "service removed", func() { fake.Deregister("n3", "api") }, func(s registry.State) bool {
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
	rec := start(t, Config{Address: fake.URL(), WaitTime: 7 * time.Second}, registrytest.Quiet())
	rec.WaitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(s.Services) == 1 })
	rec.Change(t, propagation, "second instance", func() { fake.Register(web("n2", "10.0.0.2", 8080)) }, func(s registry.State) bool {
		return len(s.Endpoints) == 2
	})
	registrytest.CheckBlocking(t, fake.Agent, "7000ms", "/v1/catalog/services", "/v1/health/service/web")
}

func TestOutageBacksOffAndRecovers(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.Register(web("n1", "10.0.0.1", 8080))
	logs := registrytest.NewLogCounter()
	rec := start(t, Config{Address: fake.URL(), RetryMin: 20 * time.Millisecond, RetryMax: 160 * time.Millisecond}, slog.New(logs))
	rec.WaitFor(t, 0, 5*time.Second, "initial web", func(s registry.State) bool { return len(s.Services) == 1 })

	fake.Stop()
	logs.Await(t, "catalog query failed", 5, 5*time.Second)
	logs.CheckSpacing(t, "catalog query failed", 10*time.Millisecond, time.Second)
	fake.Register(web("n2", "10.0.0.2", 8080)) // changed while Consul is unreachable
	if err := fake.Start(); err != nil {
		t.Fatalf("restart fake: %v", err)
	}
	st := rec.Change(t, propagation, "recovery after outage", func() {}, func(s registry.State) bool { return len(s.Endpoints) == 2 })
	if len(st.Services) != 1 {
		t.Errorf("services after recovery: %s", registrytest.Dump(st.Services))
	}
	logs.Await(t, "catalog query recovered", 1, 5*time.Second)
}

func TestTokenAndDatacenter(t *testing.T) {
	fake := fakeconsul.New()
	t.Cleanup(fake.Close)
	fake.RequireToken("s3cret")
	fake.Register(web("n1", "10.0.0.1", 8080))
	rec := start(t, Config{Address: strings.TrimPrefix(fake.URL(), "http://"), Token: "s3cret", Datacenter: "dc1"}, registrytest.Quiet())
	rec.WaitFor(t, 0, 5*time.Second, "web with token", func(s registry.State) bool { return len(s.Endpoints) == 1 })
	for _, r := range fake.Requests() {
		if r.Token != "s3cret" || r.Query.Get("dc") != "dc1" {
			t.Fatalf("request %s?%s token %q: want token and dc=dc1", r.Path, r.Query.Encode(), r.Token)
		}
	}

	logs := registrytest.NewLogCounter()
	bad := start(t, Config{Address: fake.URL(), Token: "wrong", RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond}, slog.New(logs))
	logs.Await(t, "catalog query failed", 2, 5*time.Second)
	if n := bad.Count(); n != 0 {
		t.Errorf("%d states reported without access to the catalog", n)
	}
}
