package sidecar

import (
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// countingBackend answers with status and counts requests by Host.
func countingBackend(t *testing.T, status int, hosts *atomic.Int64, wantHost string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hosts != nil && r.Host == wantHost {
			hosts.Add(1)
		}
		w.WriteHeader(status)
		fmt.Fprint(w, status)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// checkResilience shows outlier ejection, a fault delay and request
// mirroring by what the backends and the app observe.
// It returns the service port and the port of the endpoint it ejected.
func checkResilience(t *testing.T, apply func(string), call func(port int, host, path string) (int, string)) (svcPort, ejected int) {
	t.Helper()
	var shadowed atomic.Int64
	good, bad := countingBackend(t, 200, nil, ""), countingBackend(t, 503, nil, "")
	svc := freePort(t)
	shadow := countingBackend(t, 200, &shadowed, "resil.mesh-shadow")
	shadowSvc := freePort(t)
	apply(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: resil}
spec:
  hosts: [resil.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: %d}, labels: {role: good}}
  - {address: 127.0.0.1, ports: {http: %d}, labels: {role: bad}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow}
spec:
  hosts: [shadow.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: %d}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: resil}
spec:
  host: resil.mesh
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: resil}
spec:
  hosts: [resil.mesh]
  http:
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: resil.mesh}}]
    retries: {attempts: 0}
  - route: [{destination: {host: resil.mesh}}]
    retries: {attempts: 0}
    mirror: {host: shadow.mesh}
    mirrorPercentage: {value: 100}
`, svc, good, bad, shadowSvc, shadow))
	waitPort(t, svc)

	// Outlier ejection: the always-503 endpoint is ejected after its first
	// failure, so at most one request of 60 fails (round robin alone would
	// fail half of them).
	failed := 0
	for i := 0; i < 60; i++ {
		if code, _ := call(svc, "resil.mesh", "/"); code != 200 {
			failed++
		}
	}
	t.Logf("outlier detection: %d of 60 requests failed", failed)
	if failed > 1 {
		t.Fatalf("%d of 60 requests failed: the failing endpoint was not ejected", failed)
	}

	// Mirroring: every routed request also reached the shadow backend,
	// with the Host Envoy gives shadows.
	deadline := time.Now().Add(10 * time.Second)
	for shadowed.Load() < 60 {
		if time.Now().After(deadline) {
			t.Fatalf("the mirror received %d copies of 60 requests", shadowed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A fault delay holds the request for its fixed delay.
	start := time.Now()
	if code, _ := call(svc, "resil.mesh", "/slow"); code != 200 {
		t.Fatalf("/slow answered %d", code)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("the fault delay did not delay the request (%v)", took)
	}
	return svc, bad
}
