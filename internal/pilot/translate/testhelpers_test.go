package translate

// Shared by the CDS and LDS golden-case loaders (testhelpers_cds_test.go,
// testhelpers_lds_test.go): the -update flag, the golden comparison, the
// TestRegistry and TestProxy documents, and the snapshot a case builds.
// Each loader reads its own file format and embeds caseLoader.

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
)

var updateGoldens = flag.Bool("update", false, "rewrite golden files")

// compareGolden compares got with the golden file at path, or rewrites it
// with -update. diff formats the difference (-got +want).
func compareGolden(t *testing.T, path string, got []byte, diff func(got, want string) string) {
	t.Helper()
	if *updateGoldens {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (-got +want):\n%s\n(run with -update to accept)", path, diff(string(got), string(want)))
	}
}

// testService is a registry.Service in a TestRegistry document (camelCase
// fields; resolution STATIC|DNS|DNS_ROUND_ROBIN|NONE, location
// MESH_INTERNAL|MESH_EXTERNAL).
type testService struct {
	Hostname        string            `json:"hostname"`
	Namespace       string            `json:"namespace"`
	Addresses       []string          `json:"addresses"`
	Ports           []testPort        `json:"ports"`
	Resolution      string            `json:"resolution"`
	Location        string            `json:"location"`
	Labels          map[string]string `json:"labels"`
	ExportTo        []string          `json:"exportTo"`
	SubjectAltNames []string          `json:"subjectAltNames"`
	CreationTime    int64             `json:"creationTime"`
}

// testPort is a registry.Port in a TestRegistry document.
type testPort struct {
	Name       string `json:"name"`
	Number     uint32 `json:"number"`
	Protocol   string `json:"protocol"`
	TargetPort uint32 `json:"targetPort"`
}

// testEndpoint is a registry.Endpoint in a TestRegistry document, healthy
// unless healthy: false.
type testEndpoint struct {
	Hostname       string            `json:"hostname"`
	Namespace      string            `json:"namespace"`
	Address        string            `json:"address"`
	Ports          map[string]uint32 `json:"ports"`
	Labels         map[string]string `json:"labels"`
	Locality       string            `json:"locality"`
	Network        string            `json:"network"`
	Healthy        *bool             `json:"healthy"`
	ServiceAccount string            `json:"serviceAccount"`
	Weight         uint32            `json:"weight"`
	// SidecarPorts maps application ports to explicit-mode sidecar ports.
	SidecarPorts map[uint32]uint32 `json:"sidecarPorts"`
}

// testRegistryDoc is the body of a TestRegistry document.
type testRegistryDoc struct {
	Services  []testService  `json:"services"`
	Endpoints []testEndpoint `json:"endpoints"`
}

// testProxyDoc is the body of a TestProxy document: the proxy under test.
// Namespace is also TestInclude's default namespace.
type testProxyDoc struct {
	// Type is sidecar, router or proxyless (default sidecar).
	Type           string            `json:"type"`
	Namespace      string            `json:"namespace"`
	IPs            []string          `json:"ips"`
	Labels         map[string]string `json:"labels"`
	ServiceAccount string            `json:"serviceAccount"`
	Explicit       bool              `json:"explicit"`
	TProxy         bool              `json:"tproxy"`
	// Locality is the proxy's, "region/zone/subzone".
	Locality string `json:"locality"`
}

// caseBaseTime is the creation time of the first config object read.
var caseBaseTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// caseLoader collects what a golden case describes.
type caseLoader struct {
	t       *testing.T
	mesh    model.Mesh
	proxy   *model.Proxy
	configs []*model.Config
	svcs    []registry.Service
	eps     []registry.Endpoint
	seq     int
}

// nextCreationTime is the creation time of a config read without
// metadata.creationTimestamp: one second after the previous one, so file
// order is age order.
func (l *caseLoader) nextCreationTime() time.Time {
	ct := caseBaseTime.Add(time.Duration(l.seq) * time.Second)
	l.seq++
	return ct
}

// setProxy applies a TestProxy document to the proxy under test.
func (l *caseLoader) setProxy(d testProxyDoc) {
	p := l.proxy
	if d.Type != "" {
		p.Type = model.NodeType(d.Type)
	}
	if d.Namespace != "" {
		p.Namespace = d.Namespace
	}
	p.IPs, p.Labels, p.ServiceAccount, p.Explicit, p.TProxy, p.Locality = d.IPs, d.Labels, d.ServiceAccount, d.Explicit, d.TProxy, d.Locality
	setProxyID(p)
}

// addRegistry adds the services and endpoints of a TestRegistry document.
func (l *caseLoader) addRegistry(path string, d testRegistryDoc) {
	res := map[string]registry.Resolution{"": registry.ResolutionStatic, "STATIC": registry.ResolutionStatic,
		"DNS": registry.ResolutionDNS, "DNS_ROUND_ROBIN": registry.ResolutionDNSRoundRobin, "NONE": registry.ResolutionNone}
	for _, s := range d.Services {
		r, ok := res[s.Resolution]
		if !ok {
			l.t.Fatalf("%s: service %s: unknown resolution %q", path, s.Hostname, s.Resolution)
		}
		svc := registry.Service{Hostname: s.Hostname, Namespace: s.Namespace, Addresses: s.Addresses, Resolution: r,
			Labels: s.Labels, ExportTo: s.ExportTo, SubjectAltNames: s.SubjectAltNames, Source: "test", CreationTime: s.CreationTime}
		if s.Location == "MESH_EXTERNAL" {
			svc.Location = registry.MeshExternal
		}
		for _, p := range s.Ports {
			svc.Ports = append(svc.Ports, registry.Port{Name: p.Name, Number: p.Number, Protocol: strings.ToUpper(p.Protocol), TargetPort: p.TargetPort})
		}
		l.svcs = append(l.svcs, svc)
	}
	for _, e := range d.Endpoints {
		healthy := e.Healthy == nil || *e.Healthy
		l.eps = append(l.eps, registry.Endpoint{Hostname: e.Hostname, Namespace: e.Namespace, Address: e.Address,
			Ports: e.Ports, Labels: e.Labels, Locality: e.Locality, Network: e.Network, Healthy: healthy,
			ServiceAccount: e.ServiceAccount, Weight: e.Weight, SidecarPorts: e.SidecarPorts})
	}
}

// snapshot builds the case's snapshot: services in host name order, then
// namespace.
func (l *caseLoader) snapshot() *model.Snapshot {
	sort.SliceStable(l.svcs, func(i, j int) bool {
		if l.svcs[i].Hostname != l.svcs[j].Hostname {
			return l.svcs[i].Hostname < l.svcs[j].Hostname
		}
		return l.svcs[i].Namespace < l.svcs[j].Namespace
	})
	reg := &registry.Snapshot{Version: 1, Services: l.svcs, Endpoints: map[string][]registry.Endpoint{}}
	for _, e := range l.eps {
		k := registry.Key(e.Namespace, e.Hostname)
		reg.Endpoints[k] = append(reg.Endpoints[k], e)
	}
	return model.NewSnapshot("test", l.mesh, l.configs, reg)
}

// setProxyID gives p the node ID a proxy of its type, first IP (default
// 0.0.0.0) and namespace would send.
func setProxyID(p *model.Proxy) {
	ip := "0.0.0.0"
	if len(p.IPs) > 0 {
		ip = p.IPs[0]
	}
	p.ID = string(p.Type) + "~" + ip + "~test." + p.Namespace + "~" + p.Namespace + ".svc.cluster.local"
}
