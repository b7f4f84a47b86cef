package sidecar

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// countingBackend answers with status and counts requests by Host.
func countingBackend(t *testing.T, status int, hosts *atomic.Int64, wantHost string) int {
	t.Helper()
	return serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hosts != nil && r.Host == wantHost {
			hosts.Add(1)
		}
		w.WriteHeader(status)
		fmt.Fprint(w, status)
	})})
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

// switchBackend answers 200, or 503 once failing is set, and counts the
// requests it gets.
func switchBackend(t *testing.T, failing *atomic.Bool, served *atomic.Int64) int {
	t.Helper()
	return serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served.Add(1)
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})})
}

// checkLocalityFailover shows Istio's default locality load balancing
// from a sidecar in us-east/zone-a (its istio-locality label): with
// outlier detection in the DestinationRule, requests stay with the
// endpoint in the sidecar's zone while it works, and fail over to the
// other region's once outlier detection ejects it.
func checkLocalityFailover(t *testing.T, apply func(string), call func(port int, host, path string) (int, string)) {
	t.Helper()
	var nearFailing, farFailing atomic.Bool
	var near, far atomic.Int64
	nearPort, farPort := switchBackend(t, &nearFailing, &near), switchBackend(t, &farFailing, &far)
	svc := freePort(t)
	apply(fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local}
spec:
  hosts: [local.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: %d}, locality: eu-west/zone-x}
  - {address: 127.0.0.1, ports: {http: %d}, locality: us-east/zone-a}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: local}
spec:
  host: local.mesh
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 100}
`, svc, farPort, nearPort))
	waitPort(t, svc)
	for range 30 {
		if code, _ := call(svc, "local.mesh", "/"); code != 200 {
			t.Fatalf("local.mesh answered %d", code)
		}
	}
	if near.Load() != 30 || far.Load() != 0 {
		t.Fatalf("with both up: %d requests in the sidecar's zone, %d in the other region; want all 30 in its zone", near.Load(), far.Load())
	}
	nearFailing.Store(true)
	failed := 0
	for range 30 {
		if code, _ := call(svc, "local.mesh", "/"); code != 200 {
			failed++
		}
	}
	t.Logf("locality failover: %d of 30 requests failed, %d reached the other region", failed, far.Load())
	if failed > 1 || far.Load() < 29 {
		t.Fatalf("after the zone's endpoint failed: %d of 30 requests failed and %d reached the other region; want at most 1 and at least 29",
			failed, far.Load())
	}
}

// checkWarmup shows a DestinationRule's warmup: an endpoint that joins a
// round robin service, beside one past its own 3 s window, gets a small
// share of the requests in its first moments (10-20 % of its weight),
// not half.
func checkWarmup(t *testing.T, apply func(string), call func(port int, host, path string) (int, string)) {
	t.Helper()
	var never atomic.Bool
	var old, joined atomic.Int64
	oldPort, newPort := switchBackend(t, &never, &old), switchBackend(t, &never, &joined)
	svc := freePort(t)
	config := func(endpoints string) string {
		return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: warm}
spec:
  hosts: [warm.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %d, name: http, protocol: HTTP}]
  endpoints:
%s---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: warm}
spec:
  host: warm.mesh
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 3s}}
`, svc, endpoints)
	}
	apply(config(fmt.Sprintf("  - {address: 127.0.0.1, ports: {http: %d}}\n", oldPort)))
	waitPort(t, svc)
	time.Sleep(3500 * time.Millisecond) // the first endpoint's window passes
	apply(config(fmt.Sprintf("  - {address: 127.0.0.1, ports: {http: %d}}\n  - {address: 127.0.0.1, ports: {http: %d}}\n", oldPort, newPort)))
	deadline := time.Now().Add(10 * time.Second)
	for joined.Load() == 0 { // the sidecar has the new endpoint
		if code, _ := call(svc, "warm.mesh", "/"); code != 200 {
			t.Fatalf("warm.mesh answered %d", code)
		}
		if time.Now().After(deadline) {
			t.Fatal("the new endpoint got no request within 10s")
		}
	}
	old.Store(0)
	joined.Store(0)
	for range 200 {
		if code, _ := call(svc, "warm.mesh", "/"); code != 200 {
			t.Fatalf("warm.mesh answered %d", code)
		}
	}
	share := float64(joined.Load()) / 200
	t.Logf("warmup: the new endpoint answered %.1f%% of 200 requests right after joining", share*100)
	if share > 0.25 {
		t.Fatalf("the new endpoint answered %.0f%% of requests right after joining, want 10-15%% (slow start), not half", share*100)
	}
}
