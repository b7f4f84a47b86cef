package engine

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
	"github.com/weftmesh/weft/internal/testutil/freeport"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// testCerts is a static workload identity signed by a throwaway ECDSA
// P-256 mesh CA (what the CA issues).
type testCerts struct {
	cert  *tls.Certificate
	roots *x509.CertPool
	ca    []byte // the CA certificate (DER)
	// handshakes counts server-side handshakes (GetCertificate calls).
	handshakes atomic.Int64
}

func (c *testCerts) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.handshakes.Add(1)
	return c.cert, nil
}
func (c *testCerts) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.cert, nil
}
func (c *testCerts) Roots() *x509.CertPool { return c.roots }

// newTestMesh returns two workload identities (client, server) under one CA.
func newTestMesh(tb testing.TB) (client, server *testCerts) {
	tb.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"weft test"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	leaf := func(serial int64, spiffe string) *testCerts {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(spiffe)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(24 * time.Hour), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			tb.Fatal(err)
		}
		return &testCerts{cert: &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, roots: roots, ca: caDER}
	}
	return leaf(2, "spiffe://cluster.local/ns/default/sa/client"), leaf(3, "spiffe://cluster.local/ns/default/sa/server")
}

func socketAddr(ap netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

func sdsConfig(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
}

// httpListener is a listener with one HTTP connection manager whose inline
// route sends everything to cluster (Istio's default retry policy), with
// mesh TLS termination when tlsCtx is set.
func httpListener(name string, addr netip.AddrPort, cluster string, tlsCtx *tlsv3.DownstreamTlsContext) *listenerv3.Listener {
	router, _ := anypb.New(&routerv3.Router{})
	rc := &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "all", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
				Timeout:          durationpb.New(0),
				RetryPolicy: &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
					NumRetries: wrapperspb.UInt32(2)},
			}},
		}},
	}}}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}}})
	if err != nil {
		panic(err)
	}
	fc := &listenerv3.FilterChain{Name: name, Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}
	if tlsCtx != nil {
		ts, _ := anypb.New(tlsCtx)
		fc.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ts}}
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "tls"}
	}
	return &listenerv3.Listener{Name: name, Address: socketAddr(addr), FilterChains: []*listenerv3.FilterChain{fc}}
}

// staticCluster is a STATIC cluster with one endpoint, originating mesh
// TLS (ISTIO_MUTUAL as pilot emits it) when mtls is set.
func staticCluster(name string, ep netip.AddrPort, mtls bool) *clusterv3.Cluster {
	c := &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(10 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddr(ep)}}}}}}}}
	if mtls {
		up := &tlsv3.UpstreamTlsContext{Sni: "outbound_.8080_._.server.default.svc.cluster.local", CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  []string{"istio-peer-exchange", "istio"},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsConfig(sdsCert)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_URI,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://cluster.local/ns/default/sa/server"}}}}},
				ValidationContextSdsSecretConfig: sdsConfig(sdsRoot)}},
		}}
		ts, _ := anypb.New(up)
		c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ts}}
		if os.Getenv("WEFT_ENGINE_BENCH_MESH_H2") == "1" { // HTTP/2 between the sidecars
			//lint:ignore SA1019 Envoy still accepts this field and Istio-era configs use it
			c.Http2ProtocolOptions = &corev3.Http2ProtocolOptions{} //nolint:staticcheck // honoured by the compiler
		}
	}
	return c
}

func freeAddr(tb testing.TB) netip.AddrPort {
	tb.Helper()
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(freeport.Get(tb)))
}

// newEngine serves one listener and one cluster.
func newEngine(certs Certs, l *listenerv3.Listener, c *clusterv3.Cluster) (*Engine, error) {
	opts := Options{Certs: certs}
	if os.Getenv("WEFT_BENCH_PEER") != "" {
		opts.NodeID = "sidecar~127.0.0.1~" + l.GetName() + ".default~default.svc.cluster.local"
		opts.Workload = telemetry.Peer{Workload: l.GetName(), Namespace: "default", App: "app", Version: "v1"}
	}
	return newEngineOpts(opts, l, c)
}

func newEngineOpts(opts Options, l *listenerv3.Listener, c *clusterv3.Cluster) (*Engine, error) {
	e := New(slog.New(slog.DiscardHandler), opts)
	s := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{l.GetName(): l},
		Clusters: map[string]*clusterv3.Cluster{c.GetName(): c}}
	if err := e.Apply(s); err != nil {
		e.shutdown()
		return nil, err
	}
	return e, nil
}

func startEngine(tb testing.TB, certs Certs, l *listenerv3.Listener, c *clusterv3.Cluster) {
	tb.Helper()
	e, err := newEngine(certs, l, c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.shutdown)
}

// inboundTLS is the mesh TLS termination of an inbound chain under STRICT
// PeerAuthentication.
func inboundTLS() *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"h2", "http/1.1"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsConfig(sdsCert)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
			ValidationContextSdsSecretConfig: sdsConfig(sdsRoot)}},
	}}
}

// startBackend serves size bytes on every request.
func startBackend(tb testing.TB, size int) netip.AddrPort {
	tb.Helper()
	payload := bytes.Repeat([]byte("x"), size)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		_, _ = w.Write(payload)
	}))
	tb.Cleanup(backend.Close)
	return netip.MustParseAddrPort(backend.Listener.Addr().String())
}

// twoHop starts the benchmark topology: app → outbound sidecar (plaintext
// HTTP/1.1) → mTLS → inbound sidecar → backend returning size bytes. It
// returns the outbound sidecar's address.
func twoHop(tb testing.TB, size int) netip.AddrPort {
	addr, _ := twoHopIDs(tb, size)
	return addr
}

// twoHopIDs is twoHop, also returning the inbound sidecar's identity.
func twoHopIDs(tb testing.TB, size int) (netip.AddrPort, *testCerts) {
	tb.Helper()
	backendAddr := startBackend(tb, size)
	clientID, serverID := newTestMesh(tb)

	inAddr := freeAddr(tb)
	// The inbound connection manager as pilot configures it (Istio's):
	// x-forwarded-client-cert appended for the backend.
	startEngine(tb, serverID, xfccInbound(tb, inAddr, inboundTLS(), hcmv3.HttpConnectionManager_APPEND_FORWARD),
		staticCluster("inbound|8080||", backendAddr, false))

	outAddr := freeAddr(tb)
	const svc = "outbound|8080||server.default.svc.cluster.local"
	startEngine(tb, clientID, httpListener("0.0.0.0_8080", outAddr, svc, nil), staticCluster(svc, inAddr, true))
	return outAddr, serverID
}

// TestTwoHopReusesMeshConnections: keep-alive requests through the chain
// reuse the mTLS connections between the sidecars (handshakes scale with
// the concurrency, not with the requests).
func TestTwoHopReusesMeshConnections(t *testing.T) {
	addr, serverID := twoHopIDs(t, 1024)
	const conns, perConn = 4, 100
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for range perConn {
				resp, err := tr.RoundTrip(httptest.NewRequest(http.MethodGet, "http://"+addr.String()+"/", nil).WithContext(t.Context()))
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	// net/http dials when a request finds no idle connection, also when
	// one is about to be handed back (more often on a busy machine), and
	// keeps both: a few spare connections, but never one per request.
	if n, most := serverID.handshakes.Load(), int64(conns*perConn/10); n < 1 || n > most {
		t.Fatalf("%d mesh TLS handshakes for %d requests on %d connections, want 1..%d", n, conns*perConn, conns, most)
	}
}

// BenchmarkTwoHopMTLS measures one request through two sidecars with
// mutual TLS between them (bench/mesh's weft chain, in process): a
// keep-alive HTTP/1.1 client, 1 KiB responses.
func BenchmarkTwoHopMTLS(b *testing.B) {
	addr := twoHop(b, 1024)
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	target := "http://" + addr.String() + "/echo?size=1024"
	get := func() error {
		resp, err := client.Get(target)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", target, resp.Status)
		}
		return nil
	}
	if err := get(); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8) // 16 client connections on 2 CPUs, as bench/mesh's fortio -c 16
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := get(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	// CPU time (client, both sidecars and backend together) is steadier
	// than ns/op on a shared machine.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
