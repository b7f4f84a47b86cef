package translate

import (
	"fmt"
	"testing"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// BenchmarkBuildSidecar: one sidecar's resources in a mesh of 200 HTTP
// and 50 TCP services, without access logs and with Istio's demo
// profile's (accessLogFile: /dev/stdout on every connection manager and
// tcp_proxy).
func BenchmarkBuildSidecar(b *testing.B) {
	var svcs []registry.Service
	for i := range 250 {
		proto, name := "HTTP", "http"
		if i >= 200 {
			proto, name = "TCP", "tcp"
		}
		svcs = append(svcs, registry.Service{Hostname: fmt.Sprintf("svc-%d.default.svc.cluster.local", i), Namespace: "default",
			Addresses: []string{fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)},
			Ports:     []registry.Port{{Name: name, Number: uint32(8000 + i%20), Protocol: proto}}})
	}
	reg := &registry.Snapshot{Version: 1, Services: svcs}
	p := &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "a"}, IPs: []string{"10.1.0.1"}}
	// A Telemetry logging errors only, through the built-in provider: a
	// CEL filter pilot checks for each side of each build.
	filtered := []*model.Config{{Kind: "Telemetry", Namespace: "istio-system", Name: "mesh-default",
		Spec: &telemetry.Telemetry{AccessLogging: []*telemetry.AccessLogging{{Providers: []*telemetry.ProviderRef{{Name: "envoy"}},
			Filter: &telemetry.AccessLogging_Filter{Expression: "response.code >= 400"}}}}}}
	for _, tc := range []struct {
		name    string
		log     *model.AccessLogging
		configs []*model.Config
	}{{"no access log", nil, nil}, {"accessLogFile", &model.AccessLogging{File: "/dev/stdout"}, nil}, {"Telemetry filter", nil, filtered}} {
		b.Run(tc.name, func(b *testing.B) {
			mesh := model.DefaultMesh()
			mesh.AccessLog = tc.log
			s := model.NewSnapshot("1", mesh, tc.configs, reg)
			b.ReportAllocs()
			for b.Loop() {
				if r := Build(s, p); len(r.Listeners) == 0 {
					b.Fatal("no listeners")
				}
			}
		})
	}
}
