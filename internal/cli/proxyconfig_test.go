package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// An Envoy-shaped dump as weft-proxy's admin (or Envoy) writes it. The
// listener's second chain names a filter type weft does not link.
const envoyDump = `{"configs": [
 {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
  "dynamicActiveClusters": [
   {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "outbound|9080|v1|reviews.default.svc.cluster.local", "type": "EDS",
     "edsClusterConfig": {"serviceName": "outbound|9080|v1|reviews.default.svc.cluster.local"},
     "metadata": {"filterMetadata": {"istio": {"config": "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews"}}}}},
   {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "inbound|9080||", "type": "STATIC",
     "loadAssignment": {"clusterName": "inbound|9080||", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 9080}}}}]}]}}},
   {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "PassthroughCluster", "type": "ORIGINAL_DST"}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
  "dynamicListeners": [{"name": "0.0.0.0_9080", "activeState": {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
   "name": "0.0.0.0_9080", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 9080}},
   "filterChains": [
    {"filterChainMatch": {"transportProtocol": "raw_buffer", "applicationProtocols": ["http/1.1", "h2c"]},
     "filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
       "statPrefix": "outbound_0.0.0.0_9080", "rds": {"routeConfigName": "9080"}}}]},
    {"filters": [{"name": "example.unknown", "typedConfig": {"@type": "type.googleapis.com/example.vendor.v1.Unknown", "setting": 3}}]}]}}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
  "dynamicRouteConfigs": [{"routeConfig": {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "9080",
   "virtualHosts": [{"name": "reviews.default.svc.cluster.local:9080", "domains": ["reviews.default.svc.cluster.local", "reviews", "reviews.default", "10.0.0.7"],
     "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "outbound|9080|v1|reviews.default.svc.cluster.local"},
       "metadata": {"filterMetadata": {"istio": {"config": "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"}}}}]}]}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
  "dynamicEndpointConfigs": [{"endpointConfig": {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
   "clusterName": "outbound|9080|v1|reviews.default.svc.cluster.local",
   "endpoints": [{"lbEndpoints": [
     {"endpoint": {"address": {"socketAddress": {"address": "10.1.0.5", "portValue": 9080}}}},
     {"endpoint": {"address": {"socketAddress": {"address": "10.1.0.6", "portValue": 9080}}}, "healthStatus": "UNHEALTHY"}]}]}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": {"id": "sidecar~10.1.0.9~x.default~default.svc.cluster.local"}}}
]}`

func TestParseEnvoyDump(t *testing.T) {
	d, err := parseDump([]byte(envoyDump))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Clusters) != 3 || len(d.Listeners) != 1 || len(d.Routes) != 1 || len(d.Endpoints) != 1 {
		t.Fatalf("parsed %d clusters, %d listeners, %d routes, %d endpoints; want 3, 1, 1, 1", len(d.Clusters), len(d.Listeners), len(d.Routes), len(d.Endpoints))
	}

	var b strings.Builder
	if err := writeBootstrap(&b, d.Bootstrap); err != nil {
		t.Fatal(err)
	}
	wantLines(t, b.String(), "node.id sidecar~10.1.0.9~x.default~default.svc.cluster.local", "admin -")
	b.Reset()
	if err := writeClusters(&b, clusterRows(d, clusterFilter{})); err != nil {
		t.Fatal(err)
	}
	wantLines(t, b.String(),
		"SERVICE FQDN                        PORT   SUBSET   DIRECTION   TYPE           DESTINATION RULE",
		"PassthroughCluster                  -      -        -           ORIGINAL_DST",
		"                                    9080   -        inbound     STATIC",
		"reviews.default.svc.cluster.local   9080   v1       outbound    EDS            reviews.default")
	if rows := clusterRows(d, clusterFilter{direction: "inbound"}); len(rows) != 1 || rows[0].port != "9080" {
		t.Errorf("--direction inbound: %+v", rows)
	}
	if rows := clusterRows(d, clusterFilter{fqdn: "reviews", subset: "v1", port: 9080}); len(rows) != 1 || rows[0].rule != "reviews.default" {
		t.Errorf("--fqdn reviews --subset v1 --port 9080: %+v", rows)
	}
	if rows := clusterRows(d, clusterFilter{port: 9081}); len(rows) != 0 {
		t.Errorf("--port 9081: %+v", rows)
	}

	b.Reset()
	if err := writeListeners(&b, listenerRows(d, listenerFilter{})); err != nil {
		t.Fatal(err)
	}
	wantLines(t, b.String(),
		"ADDRESSES   PORT   MATCH                                     DESTINATION",
		"0.0.0.0     9080   Trans: raw_buffer; App: http/1.1,h2c      Route: 9080",
		"0.0.0.0     9080   ALL                                       Non-HTTP/Non-TCP")
	if rows := listenerRows(d, listenerFilter{typ: "http"}); len(rows) != 1 {
		t.Errorf("--type http: %+v", rows)
	}

	b.Reset()
	if err := writeRoutes(&b, routeRows(d, "")); err != nil {
		t.Fatal(err)
	}
	wantLines(t, b.String(),
		"NAME   VHOST NAME                               DOMAINS                                               MATCH   VIRTUAL SERVICE",
		"9080   reviews.default.svc.cluster.local:9080   reviews.default.svc.cluster.local, reviews + 2 more...   /*      reviews.default")
	if rows := routeRows(d, "80"); len(rows) != 0 {
		t.Errorf("--name 80: %+v", rows)
	}

	// Without live state, endpoints show what discovery sent.
	b.Reset()
	if err := writeEndpoints(&b, endpointRows(d, endpointFilter{})); err != nil {
		t.Fatal(err)
	}
	wantLines(t, b.String(),
		"ENDPOINT       STATUS      OUTLIER CHECK   CLUSTER",
		"10.1.0.5:9080   HEALTHY     -               outbound|9080|v1|reviews.default.svc.cluster.local",
		"10.1.0.6:9080   UNHEALTHY   -               outbound|9080|v1|reviews.default.svc.cluster.local",
		"127.0.0.1:9080   HEALTHY     -               inbound|9080||")
	// With the sidecar's /clusters, they show what it sees.
	d.live = parseClustersText([]byte(`outbound|9080|v1|reviews.default.svc.cluster.local::10.1.0.5:9080::health_flags::/failed_outlier_check
outbound|9080|v1|reviews.default.svc.cluster.local::10.1.0.5:9080::rq_active::0
outbound|9080|v1|reviews.default.svc.cluster.local::10.1.0.6:9080::health_flags::/failed_eds_health
not a clusters line
`))
	rows := endpointRows(d, endpointFilter{cluster: "outbound|9080|v1|reviews.default.svc.cluster.local"})
	if len(rows) != 2 || rows[0].status != "HEALTHY" || rows[0].outlier != "FAILED" || rows[1].status != "UNHEALTHY" || rows[1].outlier != "OK" {
		t.Errorf("live endpoints: %+v", rows)
	}
	if rows := endpointRows(d, endpointFilter{status: "unhealthy"}); len(rows) != 1 || rows[0].endpoint != "10.1.0.6:9080" {
		t.Errorf("--status unhealthy: %+v", rows)
	}
	if rows := endpointRows(d, endpointFilter{address: "127.0.0.1", port: 9080}); len(rows) != 1 || rows[0].cluster != "inbound|9080||" {
		t.Errorf("--address 127.0.0.1 --port 9080: %+v", rows)
	}
}

// wantLines checks that each line appears in out, with runs of spaces
// compared as one (the table's column widths are not the point).
func wantLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		have[norm(l)] = true
	}
	for _, l := range lines {
		if !have[norm(l)] {
			t.Errorf("no line %q in:\n%s", l, out)
		}
	}
}

func TestParseDiscoveryDump(t *testing.T) {
	d, err := parseDump([]byte(`{"cds": [{"name": "outbound|80||web.mesh", "type": "STRICT_DNS"}], "eds": [], "lds": [], "rds": [],
		"sds": [{"name": "ROOTCA", "validationContext": {"trustedCa": {"inlineBytes": ""}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Clusters) != 1 || d.Clusters[0].GetType() != clusterv3.Cluster_STRICT_DNS || len(d.Secrets) != 1 {
		t.Fatalf("parsed %+v", d)
	}
	if d.live != nil {
		t.Error("discovery has no live endpoint state")
	}
}

func TestParseDumpRefusesOtherJSON(t *testing.T) {
	for in, want := range map[string]string{
		`not json`:                      "not a config dump (a JSON object)",
		`{"kind": "VirtualService"}`:    `want Envoy's admin /config_dump`,
		`{"cds": [{"name": 7}]}`:        `reading "cds"[0]`,
		`{"configs": [{"@type": 1}]}`:   "reading the config dump",
		`{"cds": {"name": "not-list"}}`: `reading "cds"`,
	} {
		if _, err := parseDump([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseDump(%s): %v, want an error with %q", in, err, want)
		}
	}
}

func TestChainDestination(t *testing.T) {
	mk := func(m proto.Message) *listenerv3.FilterChain {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{Name: "f", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}}}
	}
	for _, c := range []struct {
		fc   *listenerv3.FilterChain
		want string
	}{
		{mk(&tcpv3.TcpProxy{ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "outbound|3306||db"}}), "Cluster: outbound|3306||db"},
		{mk(&tcpv3.TcpProxy{ClusterSpecifier: &tcpv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpv3.TcpProxy_WeightedCluster{
			Clusters: []*tcpv3.TcpProxy_WeightedCluster_ClusterWeight{{Name: "a"}, {Name: "b"}}}}}), "WeightedCluster: a,b"},
		{mk(&hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			VirtualHosts: []*routev3.VirtualHost{{Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/healthz/ready"}}}}}}}}}),
			"Inline Route: /healthz/ready"},
		{&listenerv3.FilterChain{}, "Non-HTTP/Non-TCP"},
	} {
		if got, _, _ := chainDestination(c.fc); got != c.want {
			t.Errorf("chainDestination = %q, want %q", got, c.want)
		}
	}
	m := &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(8080), ServerNames: []string{"a.example"},
		PrefixRanges: []*corev3.CidrRange{{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(8)}}}
	if got := chainMatch(m); got != "Port: 8080; SNI: a.example; Addr: 10.0.0.0/8" {
		t.Errorf("chainMatch = %q", got)
	}
}

func TestSecretRows(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	valid := testCert(t, 0x1a2b, now.Add(-time.Hour), now.Add(time.Hour))
	expired := testCert(t, 0x3c, now.Add(-2*time.Hour), now.Add(-time.Hour))
	d := &proxyDump{Secrets: []*tlsv3.Secret{
		{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: append(valid, expired...)}}}}},
		{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(expired) + string(valid)}}}}},
		{Name: "broken", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{}}},
	}}
	var b strings.Builder
	if err := writeSecrets(&b, secretRows(d, now)); err != nil {
		t.Fatal(err)
	}
	wantLines(t, b.String(),
		"RESOURCE NAME   TYPE   STATUS   VALID CERT   SERIAL NUMBER   NOT AFTER   NOT BEFORE",
		"default   Cert Chain   ACTIVE   true   1a2b   2026-12-07T13:00:00Z   2026-12-07T11:00:00Z",
		"ROOTCA   CA   ACTIVE   false   3c   2026-12-07T11:00:00Z   2026-12-07T10:00:00Z",
		"ROOTCA   CA   ACTIVE   true   1a2b   2026-12-07T13:00:00Z   2026-12-07T11:00:00Z",
		"broken   Cert Chain   ACTIVE   false   -   -   -")
}

func testCert(t *testing.T, serial int64, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "t"},
		NotBefore: notBefore, NotAfter: notAfter}, &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "t"}}, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestMatchProxy(t *testing.T) {
	rows := []xds.SyncStatus{
		{ID: "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local"},
		{ID: "sidecar~10.0.0.2~reviews-v1.prod~prod.svc.cluster.local"},
		{ID: "sidecar~10.0.0.3~ratings.default~default.svc.cluster.local"},
	}
	for _, c := range []struct{ name, ns, want, err string }{
		{"sidecar~10.0.0.2~reviews-v1.prod~prod.svc.cluster.local", "default", "sidecar~10.0.0.2~reviews-v1.prod~prod.svc.cluster.local", ""},
		{"reviews-v1.prod", "default", "sidecar~10.0.0.2~reviews-v1.prod~prod.svc.cluster.local", ""},
		{"reviews-v1", "default", "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local", ""},
		{"10.0.0.3", "default", "sidecar~10.0.0.3~ratings.default~default.svc.cluster.local", ""},
		{"details", "default", "", `no proxy "details" is connected to discovery; connected: sidecar~10.0.0.1`},
	} {
		got, err := matchProxy(rows, c.name, c.ns)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("matchProxy(%s): %v, want an error with %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("matchProxy(%s) = %s, %v; want %s", c.name, got, err, c.want)
		}
	}
	two := append(rows, xds.SyncStatus{ID: "sidecar~10.0.0.4~ratings.default~default.svc.cluster.local"})
	if _, err := matchProxy(two, "ratings.default", "default"); err == nil || !strings.Contains(err.Error(), "names 2 proxies") {
		t.Errorf("an ambiguous name: %v", err)
	}
	if _, err := matchProxy(nil, "x", "default"); err == nil || !strings.Contains(err.Error(), "no proxy is connected") {
		t.Errorf("nothing connected: %v", err)
	}
}

func TestConfigRefKind(t *testing.T) {
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: map[string]*structpb.Value{
		"config": structpb.NewStringValue("/apis/networking.istio.io/v1/namespaces/prod/virtual-service/web")}}}}
	if got := configRef(md, "virtual-service"); got != "web.prod" {
		t.Errorf("configRef = %q", got)
	}
	if got := configRef(md, "destination-rule"); got != "" {
		t.Errorf("a virtual service shown as a destination rule: %q", got)
	}
	if got := configRef(nil, "virtual-service"); got != "" {
		t.Errorf("no metadata: %q", got)
	}
}

// FuzzParseDump: any input is a dump or an error, never a panic, and the
// tables render whatever parses.
func FuzzParseDump(f *testing.F) {
	f.Add([]byte(envoyDump))
	f.Add([]byte(`{"cds": [{"name": "a|b|c|d", "type": "EDS", "edsClusterConfig": {}}], "eds": [{"clusterName": "a|b|c|d", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "::1", "portValue": 1}}}}]}]}]}`))
	f.Add([]byte(`{"configs": [{"@type": "type.googleapis.com/x.Y", "a": 1}]}`))
	f.Add([]byte(`{"sds": [{"name": "ROOTCA", "validationContext": {"trustedCa": {"inlineString": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}}], "cds": []}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tm := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("parseDump and the tables took over 10 s on %q", b)) })
		defer tm.Stop()
		d, err := parseDump(b)
		if err != nil {
			return
		}
		var out strings.Builder
		_ = writeClusters(&out, clusterRows(d, clusterFilter{}))
		_ = writeListeners(&out, listenerRows(d, listenerFilter{}))
		_ = writeRoutes(&out, routeRows(d, ""))
		_ = writeEndpoints(&out, endpointRows(d, endpointFilter{}))
		_ = writeSecrets(&out, secretRows(d, time.Now()))
		if d.Bootstrap != nil {
			_ = writeBootstrap(&out, d.Bootstrap)
		}
	})
}
