package telemetry

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestObserveRequestLabelsAndCache(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	r := Request{Reporter: "source", Source: Peer{Workload: "productpage", Namespace: "bookinfo", CanonicalService: "productpage",
		CanonicalRevision: "v1", Cluster: "Kubernetes", Principal: "spiffe://cluster.local/ns/bookinfo/sa/productpage"},
		DestinationService: "reviews.bookinfo.svc.cluster.local", DestinationServiceName: "reviews",
		DestinationServiceNamespace: "bookinfo", Protocol: "http", Code: 200, Duration: 3 * time.Millisecond, ResponseBytes: 1024,
		Security: "unknown"}
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
istio_requests_total{connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="latest",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="reviews.bookinfo.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="bookinfo",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",grpc_response_status="",reporter="source",request_protocol="http",response_code="200",response_flags="-",source_app="unknown",source_canonical_revision="v1",source_canonical_service="productpage",source_cluster="Kubernetes",source_principal="spiffe://cluster.local/ns/bookinfo/sa/productpage",source_version="unknown",source_workload="productpage",source_workload_namespace="bookinfo"} 3
istio_requests_total{connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="latest",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="reviews.bookinfo.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="bookinfo",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",grpc_response_status="",reporter="source",request_protocol="http",response_code="503",response_flags="-",source_app="unknown",source_canonical_revision="v1",source_canonical_service="productpage",source_cluster="Kubernetes",source_principal="spiffe://cluster.local/ns/bookinfo/sa/productpage",source_version="unknown",source_workload="productpage",source_workload_namespace="bookinfo"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "istio_requests_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.RequestVec(RequestDurationMilliseconds)); n != 2 {
		t.Fatalf("duration series: %d, want 2", n)
	}
}

// TestConnectionLabels: a TCP connection's labels are the standard TCP
// label names exactly, with request_protocol "tcp" and Istio's defaults
// for what is not known.
func TestConnectionLabels(t *testing.T) {
	c := Connection{Reporter: "destination", Source: Peer{Workload: "ratings-v2", Namespace: "bookinfo", App: "ratings",
		CanonicalService: "ratings", Principal: "spiffe://cluster.local/ns/bookinfo/sa/ratings"},
		Destination:        Peer{Workload: "mongodb-v1", Namespace: "bookinfo", Cluster: "Kubernetes"},
		DestinationService: "mongodb.bookinfo.svc.cluster.local", DestinationServiceName: "mongodb",
		DestinationServiceNamespace: "bookinfo", Security: "mutual_tls"}
	l := c.Labels()
	names := slices.Sorted(maps.Keys(l))
	if want := slices.Sorted(slices.Values(tcpLabels)); !slices.Equal(names, want) {
		t.Fatalf("label names %v, want %v", names, want)
	}
	for k, want := range map[string]string{"request_protocol": "tcp", "source_workload": "ratings-v2", "source_app": "ratings",
		"source_canonical_service": "ratings", "source_canonical_revision": "latest", "source_cluster": "unknown",
		"source_principal": "spiffe://cluster.local/ns/bookinfo/sa/ratings", "destination_workload": "mongodb-v1",
		"destination_cluster": "Kubernetes", "destination_canonical_service": "unknown", "destination_version": "unknown",
		"destination_service_namespace": "bookinfo", "connection_security_policy": "mutual_tls", "response_flags": "-"} {
		if l[k] != want {
			t.Errorf("%s = %q, want %q", k, l[k], want)
		}
	}
	if got := (Connection{Reporter: "source"}).Labels()["connection_security_policy"]; got != "none" {
		t.Errorf("default connection_security_policy %q, want none", got)
	}
}

// TestCanonicalNames: Istio's order of labels for the canonical service
// and revision, and its fallbacks.
func TestCanonicalNames(t *testing.T) {
	for _, c := range []struct {
		labels   map[string]string
		svc, rev string
	}{
		{nil, "reviews-v2", "latest"},
		{map[string]string{"app": "reviews", "version": "v2"}, "reviews", "v2"},
		{map[string]string{"app": "reviews", "app.kubernetes.io/name": "reviews-k", "app.kubernetes.io/version": "2.1", "version": "v2"}, "reviews-k", "2.1"},
		{map[string]string{"app": "reviews", CanonicalNameLabel: "rev", CanonicalRevisionLabel: "r2", "version": "v2"}, "rev", "r2"},
	} {
		svc, rev := CanonicalNames(c.labels, "reviews-v2")
		if svc != c.svc || rev != c.rev {
			t.Errorf("CanonicalNames(%v) = %q, %q; want %q, %q", c.labels, svc, rev, c.svc, c.rev)
		}
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

// TestExtraLabels: labels beyond Istio's standard ones (istio.stats
// dimensions) replace the metrics with ones that have them, starting from
// zero; a connection's cache does not keep recording into the old ones;
// overrides set the extra labels (others empty), and a label the current
// metrics do not have is left out rather than failing.
func TestExtraLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	r := Request{Reporter: "source", Protocol: "http", Code: 200}
	var c RequestCache
	m.ObserveRequestCached(r, &c)
	if !m.SetExtraLabels([]string{"request_host"}, []string{"tenant"}) || m.SetExtraLabels([]string{"request_host"}, []string{"tenant"}) {
		t.Fatal("SetExtraLabels: want a change, then none")
	}
	m.ObserveRequestCached(r, &c)
	m.ObserveRequestOverridden(r, &LabelOverrides{Labels: [NumMetrics]map[string]string{RequestsTotal: {"request_host": "h", "bogus": "x"}}})
	tl := prometheus.Labels{}
	for _, l := range tcpLabels {
		tl[l] = "unknown"
	}
	m.RecordTCP(&LabelOverrides{Labels: [NumMetrics]map[string]string{TCPConnectionsOpenedTotal: {"tenant": "t1"}}}, TCPConnectionsOpenedTotal, tl, 1)
	m.RecordTCP(&LabelOverrides{Drop: [NumMetrics]bool{TCPConnectionsClosedTotal: true}}, TCPConnectionsClosedTotal, tl, 1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var ls []string
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "request_host" || lp.GetName() == "tenant" || lp.GetName() == "bogus" {
					ls = append(ls, lp.GetName()+"="+lp.GetValue())
				}
			}
			v := mt.GetCounter().GetValue()
			got[mf.GetName()] = append(got[mf.GetName()], strings.Join(ls, ",")+" "+strconv.FormatFloat(v, 'f', -1, 64))
		}
	}
	slices.Sort(got["istio_requests_total"])
	if want := []string{"request_host= 1", "request_host=h 1"}; !slices.Equal(got["istio_requests_total"], want) {
		t.Errorf("istio_requests_total %q, want %q (the count before the change gone)", got["istio_requests_total"], want)
	}
	if want := []string{"tenant=t1 1"}; !slices.Equal(got["istio_tcp_connections_opened_total"], want) {
		t.Errorf("istio_tcp_connections_opened_total %q, want %q", got["istio_tcp_connections_opened_total"], want)
	}
	if n := got["istio_tcp_connections_closed_total"]; len(n) != 0 {
		t.Errorf("istio_tcp_connections_closed_total %q: dropped", n)
	}
}

func TestValidLabelName(t *testing.T) {
	for name, want := range map[string]bool{"request_host": true, "_x": true, "A1": true,
		"": false, "1a": false, "request-host": false, "__x": false, "é": false} {
		if got := ValidLabelName(name); got != want {
			t.Errorf("ValidLabelName(%q) = %v, want %v", name, got, want)
		}
	}
}
