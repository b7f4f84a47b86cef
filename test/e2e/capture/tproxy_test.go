package capture

import (
	"fmt"
	"strings"
	"testing"
)

// TestTProxyKeepsClientAddress: host B captures inbound traffic with TPROXY
// (`weft-proxy iptables --inbound-mode TPROXY`) and runs its sidecar with
// --inbound-capture-mode TPROXY, as an unprivileged user holding only
// CAP_NET_ADMIN. A client on host A (no sidecar) calls B's HTTP and TCP
// ports; both pass through B's sidecar (its inbound metrics count them),
// and the application sees A's address as the source, not the sidecar's.
func TestTProxyKeepsClientAddress(t *testing.T) {
	requireNetns(t)
	buildMesh(t)
	hosts := map[string]string{"cp": "10.83.0.1", "a": "10.83.0.2", "b": "10.83.0.3"}
	ns := bridgeNet(t, "weft-tproxy", hosts)
	_, weft := controlPlane(t, ns["cp"], "--xds-listen", "127.0.0.1:15012", "--xds-plaintext-listen", hosts["cp"]+":15010")
	if _, err := weft(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9091, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.83.0.3, labels: {app: reviews}}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	bg(t, "app-http", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9080", "-name", "reviews")
	bg(t, "app-tcp", ns["b"], appBin, "serve", "-addr", "0.0.0.0:9091", "-name", "reviews-tcp")
	if out, err := in(ns["b"], proxyBin, "iptables", "-u", proxyUID, "--owner", "host-b", "--inbound-mode", "TPROXY"); err != nil {
		t.Fatalf("iptables on b: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = in(ns["b"], proxyBin, "iptables", "--cleanup", "--owner", "host-b") })
	bg(t, "sidecar-b", ns["b"], "setpriv", "--reuid="+proxyUID, "--regid="+proxyUID, "--clear-groups",
		"--inh-caps=+net_admin", "--ambient-caps=+net_admin",
		proxyBin, "sidecar", "--ip", hosts["b"], "--name", "reviews-1", "--labels", "app=reviews",
		"--inbound-capture-mode", "TPROXY", "--discovery-address", hosts["cp"]+":15010", "--log-level", "debug")
	eventually(t, "sidecar on b ready", func() error {
		_, err := in(ns["b"], appBin, "fetch", "-url", "http://127.0.0.1:15021/healthz/ready")
		return err
	})

	for _, port := range []string{"9080", "9091"} {
		url := "http://" + hosts["b"] + ":" + port + "/peer"
		var got string
		eventually(t, "A's call to "+url, func() error {
			out, err := in(ns["a"], appBin, "fetch", "-url", url)
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			got = strings.TrimSpace(out)
			if got != hosts["a"] {
				return fmt.Errorf("the app saw the call come from %q, want A's address %s", got, hosts["a"])
			}
			return nil
		})
		t.Logf("port %s: the app on B saw the client as %s", port, got)
	}

	// Both calls went through B's sidecar: HTTP as a request, TCP as a
	// connection to the inbound cluster.
	m, err := in(ns["b"], appBin, "fetch", "-url", "http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	var httpLine, tcpLine string
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, "istio_requests_total{") && strings.Contains(line, `reporter="destination"`) && strings.Contains(line, `response_code="200"`) {
			httpLine = line
		}
		if strings.HasPrefix(line, "istio_tcp_connections_opened_total{") && strings.Contains(line, `reporter="destination"`) {
			tcpLine = line
		}
	}
	if httpLine == "" || tcpLine == "" {
		t.Fatalf("B's sidecar did not carry both calls:\nhttp: %q\ntcp: %q\n%.3000s", httpLine, tcpLine, m)
	}
	t.Logf("b: %s\nb: %s", httpLine, tcpLine)
}
