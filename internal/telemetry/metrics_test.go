package telemetry

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestObserveRequestLabelsAndCache(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	r := Request{Reporter: "source", Source: Peer{Workload: "productpage", Namespace: "bookinfo"},
		DestinationService: "reviews.bookinfo.svc.cluster.local", DestinationServiceName: "reviews",
		DestinationServiceNamespace: "bookinfo", Protocol: "http", Code: 200, Duration: 3 * time.Millisecond, ResponseBytes: 1024}
	// Through a connection's cache and without one, alike: the cache
	// keeps the last label set, so the 503 and the 200 after it miss.
	var c RequestCache
	m.ObserveRequest(r)
	m.ObserveRequestCached(r, &c)
	r.Code = 503
	m.ObserveRequestCached(r, &c)
	r.Code = 200
	m.ObserveRequestCached(r, &c)
	want := `
# HELP istio_requests_total Requests handled by the proxy.
# TYPE istio_requests_total counter
istio_requests_total{connection_security_policy="none",destination_app="unknown",destination_principal="unknown",destination_service="reviews.bookinfo.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="bookinfo",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",grpc_response_status="",reporter="source",request_protocol="http",response_code="200",response_flags="-",source_app="unknown",source_principal="unknown",source_version="unknown",source_workload="productpage",source_workload_namespace="bookinfo"} 3
istio_requests_total{connection_security_policy="none",destination_app="unknown",destination_principal="unknown",destination_service="reviews.bookinfo.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="bookinfo",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",grpc_response_status="",reporter="source",request_protocol="http",response_code="503",response_flags="-",source_app="unknown",source_principal="unknown",source_version="unknown",source_workload="productpage",source_workload_namespace="bookinfo"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "istio_requests_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.RequestDuration); n != 2 {
		t.Fatalf("duration series: %d, want 2", n)
	}
}

func BenchmarkObserveRequest(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	r := Request{Reporter: "source", Source: Peer{Workload: "productpage", Namespace: "bookinfo", App: "productpage", Version: "v1"},
		DestinationService: "reviews.bookinfo.svc.cluster.local", DestinationServiceName: "reviews", DestinationServiceNamespace: "bookinfo",
		Protocol: "http", Code: 200, Duration: time.Millisecond}
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.ObserveRequest(r)
		}
	})
	b.Run("cached", func(b *testing.B) {
		var c RequestCache
		b.ReportAllocs()
		for b.Loop() {
			m.ObserveRequestCached(r, &c)
		}
	})
}
