package capture

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/testutil/zipkintest"
)

// TestMeshTracing: the installation guide's tracing settings
// (enableTracing, defaultConfig.tracing.sampling: 100) on capture-mode
// sidecars, with a Zipkin collector on the control plane's host
// registered as Istio's add-on names it. A request from sleep to httpbin
// is one trace of two spans — sleep's sidecar's CLIENT span and httpbin's
// sidecar's SERVER span under it — and a request httpbin's sidecar denies
// (RBAC, 403) is a SERVER span too.
func TestMeshTracing(t *testing.T) {
	ns, weft := authzMesh(t, "weft-trace", "enableTracing: true\ndefaultConfig:\n  tracing:\n    sampling: 100.0\n    zipkin: {address: zipkin.istio-system:9411}\n")
	var col zipkintest.Collector
	var ln net.Listener
	inNetns(t, ns["cp"], func() (err error) {
		ln, err = net.Listen("tcp", authzHosts["cp"]+":9411")
		return err
	})
	srv := &http.Server{Handler: &col}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	if _, err := weft(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zipkin, namespace: istio-system}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 9411, name: http-query, protocol: HTTP}]
  endpoints: [{address: `+authzHosts["cp"]+`}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	// pair finds a CLIENT span from sleep's sidecar and the SERVER span of
	// httpbin's sidecar under it, for requests to target with status.
	pair := func(target, status string) (client, server *zipkintest.Span) {
		spans := col.Spans()
		for i := range spans {
			s := &spans[i]
			if s.Kind == "SERVER" && s.Tags["http.status_code"] == status && strings.HasSuffix(s.Tags["http.url"], target) {
				for j := range spans {
					c := &spans[j]
					if c.Kind == "CLIENT" && c.TraceID == s.TraceID && c.ID == s.ParentID {
						return c, s
					}
				}
			}
		}
		return nil, nil
	}
	var c, s *zipkintest.Span
	eventually(t, "a CLIENT and a SERVER span of one request at the collector", func() error {
		// Five requests fill a batch, which each sidecar sends at once.
		for range 5 {
			if st, body, err := raw(ns["a"], "/traced"); err != nil || st != 200 {
				return fmt.Errorf("/traced: %d %q %v", st, body, err)
			}
		}
		if c, s = pair("/traced", "200"); c == nil {
			return fmt.Errorf("%d spans, no CLIENT/SERVER pair yet", len(col.Spans()))
		}
		return nil
	})
	if !strings.HasPrefix(c.LocalEndpoint.ServiceName, "sleep") || !strings.HasPrefix(s.LocalEndpoint.ServiceName, "httpbin") ||
		c.Tags["upstream_cluster"] != "outbound|9080||httpbin.mesh" || !strings.HasPrefix(s.Tags["upstream_cluster"], "inbound|9080|") {
		t.Errorf("client span %+v, server span %+v: want sleep's outbound and httpbin's inbound", c, s)
	}
	eventually(t, "the RBAC denial's SERVER span", func() error {
		for range 5 {
			if st, _, err := raw(ns["a"], "/admin"); err != nil || st != 403 {
				return fmt.Errorf("/admin: %d %v", st, err)
			}
		}
		if _, s := pair("/admin", "403"); s == nil {
			var seen []string
			for _, s := range col.Spans() {
				seen = append(seen, s.Kind+" "+s.Tags["http.status_code"]+" "+s.Tags["http.url"]+" "+s.ID+"<"+s.ParentID)
			}
			return fmt.Errorf("no span pair for /admin yet; spans: %v", seen[max(0, len(seen)-12):])
		}
		return nil
	})
}
