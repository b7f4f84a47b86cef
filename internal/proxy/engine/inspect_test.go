package engine

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestInspectClientHello: SNI and ALPN are read from the ClientHello, and
// the connection handed on still completes the real handshake.
func TestInspectClientHello(t *testing.T) {
	ids := meshIdentities(t, "spiffe://cluster.local/ns/default/sa/b")
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: "b.mesh", NextProtos: []string{"http/1.1", "istio"}, InsecureSkipVerify: true}) //nolint:gosec // test
		err := c.Handshake()
		if err == nil {
			_, err = c.Write([]byte("ping"))
		}
		done <- err
	}()
	c, in := inspect(b, &inspectNeeds{transport: true, hello: true, timeout: 5 * time.Second})
	if in.transport != "tls" || in.sni != "b.mesh" || strings.Join(in.protocols, ",") != "http/1.1,istio" {
		t.Fatalf("inspection %+v", in)
	}
	tc := tls.Server(c, &tls.Config{GetCertificate: ids[0].GetCertificate, NextProtos: []string{"http/1.1"}})
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("after inspection the handshake failed: %q %v", buf, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestMatchApplicationProtocols(t *testing.T) {
	ls := &listenerSpec{chains: []*chain{
		{name: "http", applicationProtocols: []string{"http/1.1", "h2c"}},
		{name: "tls-http", transportProtocol: "tls", applicationProtocols: []string{"h2", "http/1.1"}},
		{name: "tls-tcp", transportProtocol: "tls"},
		{name: "tcp"},
	}}
	for _, tc := range []struct {
		transport string
		protos    []string
		want      string
	}{
		{"raw_buffer", []string{"http/1.1"}, "http"},
		{"raw_buffer", []string{"h2c"}, "http"},
		{"raw_buffer", nil, "tcp"},
		{"tls", []string{"http/1.1", "istio-peer-exchange", "istio"}, "tls-http"},
		{"tls", []string{"istio-peer-exchange", "istio"}, "tls-tcp"},
		{"tls", nil, "tls-tcp"},
	} {
		ch := ls.match(netip.MustParseAddrPort("127.0.0.1:80"), "", tc.transport, tc.protos...)
		if ch == nil || ch.name != tc.want {
			t.Errorf("match(%s, %v) = %v, want %s", tc.transport, tc.protos, ch, tc.want)
		}
	}
}

// sniffingEngine runs an engine with one listener on loopback that has the
// http_inspector: an HTTP chain for http/1.0, http/1.1 (and h2c unless
// noH2C) answering 200 "http", and, when tcpBackend is set, a TCP chain to
// it. It returns the listener's address.
func sniffingEngine(tb testing.TB, tcpBackend string, noH2C bool) string {
	tb.Helper()
	h := &hcmv3.HttpConnectionManager{StatPrefix: "sniffed",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "r",
			VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "http"}}}},
			}}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAnyT(tb, &routerv3.Router{})}}},
	}
	protos := []string{"http/1.0", "http/1.1", "h2c"}
	if noH2C {
		protos = protos[:2]
	}
	l := &listenerv3.Listener{Name: "sniffed", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}}}},
		ListenerFilters:        []*listenerv3.ListenerFilter{{Name: httpInspectorName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAnyT(tb, &httpinspectorv3.HttpInspector{})}}},
		ListenerFiltersTimeout: durationpb.New(50 * time.Millisecond),
		FilterChains: []*listenerv3.FilterChain{{Name: "http", FilterChainMatch: &listenerv3.FilterChainMatch{ApplicationProtocols: protos},
			Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(tb, h)}}}}},
	}
	snap := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"sniffed": l}, Clusters: map[string]*clusterv3.Cluster{}}
	if tcpBackend != "" {
		host, port, _ := net.SplitHostPort(tcpBackend)
		var p uint32
		fmt.Sscan(port, &p)
		snap.Clusters["backend"] = &clusterv3.Cluster{Name: "backend", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout: durationpb.New(time.Second),
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "backend", Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}}}}}}}}
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Name: "tcp", Filters: []*listenerv3.Filter{{Name: "tcp",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(tb, &tcpproxyv3.TcpProxy{StatPrefix: "backend",
				ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "backend"}})}}}})
	}
	e := New(slog.New(slog.DiscardHandler), Options{})
	if err := e.Apply(snap); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.shutdown)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, bl := range e.bound {
		return bl.ln.Addr().String()
	}
	tb.Fatal("no listener bound")
	return ""
}

// bannerServer is a server-first TCP backend: it writes a banner, then
// echoes.
func bannerServer(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, "220 banner\r\n")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().String()
}

// TestListenerSniffs: on one listener with the http_inspector, HTTP/1.1
// and h2c reach the HTTP chain, while a server-first protocol (the client
// waits for the banner) and a client-first opaque one reach the TCP chain.
func TestListenerSniffs(t *testing.T) {
	addr := sniffingEngine(t, bannerServer(t), false)
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "http" {
		t.Fatalf("HTTP/1.1: %q", body)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: &protos}}
	resp, err = h2.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "http" || resp.ProtoMajor != 2 {
		t.Fatalf("h2c: %s %q", resp.Proto, body)
	}
	// Server-first: nothing is sent until the banner arrives.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "220 banner\r\n" {
		t.Fatalf("server-first: %q %v", line, err)
	}
	// Client-first, not HTTP: spliced to the backend unchanged.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c2, "\x00\x01binary\n")
	r2 := bufio.NewReader(c2)
	if line, err := r2.ReadString('\n'); err != nil || line != "220 banner\r\n" {
		t.Fatalf("opaque: banner %q %v", line, err)
	}
	if line, err := r2.ReadString('\n'); err != nil || line != "\x00\x01binary\n" {
		t.Fatalf("opaque: echo %q %v", line, err)
	}
}

// FuzzHTTPRequest feeds arbitrary bytes to a sniffing listener whose only
// chain is HTTP/1: the proxy must not panic, and answers with a
// well-formed HTTP/1 response or closes the connection.
func FuzzHTTPRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET /%zz HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
		"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"\x16\x03\x01\x00\x05hello",
	} {
		f.Add([]byte(s))
	}
	addr := sniffingEngine(f, "", true)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			_, _ = c.Write(in)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%q: the proxy neither answered nor closed", in)
		}
		if len(out) == 0 {
			return
		}
		if _, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out))), nil); err != nil {
			t.Fatalf("%q: malformed response %q: %v", in, out, err)
		}
	})
}

// FuzzClientHello: reading SNI and ALPN from arbitrary bytes that start
// like a TLS record never panics or hangs, and the connection handed on
// replays every byte the client sent, in order.
func FuzzClientHello(f *testing.F) {
	// A real ClientHello as a seed.
	a, b := net.Pipe()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "x.mesh", NextProtos: []string{"h2"}, InsecureSkipVerify: true}).Handshake() //nolint:gosec // seed only
	}()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	seed := make([]byte, 4096)
	n, _ := b.Read(seed)
	a.Close()
	b.Close()
	f.Add(seed[:n])
	f.Add([]byte("\x16\x03\x01\x00\x04\x01\x00\x00\x00"))
	f.Add([]byte("\x16\x03"))
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		go func() {
			_, _ = client.Write(in)
			client.Close()
		}()
		c, _ := inspect(server, &inspectNeeds{transport: true, hello: true, timeout: 200 * time.Millisecond})
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, _ := io.ReadAll(c)
		if string(got) != string(in) {
			t.Fatalf("replayed %q, client sent %q", got, in)
		}
	})
}

// BenchmarkInspectHTTP measures sniffing a plaintext HTTP/1.1 request on
// a listener with the http_inspector.
func BenchmarkInspectHTTP(b *testing.B) {
	req := []byte("GET /reviews/1 HTTP/1.1\r\nHost: reviews.bookinfo.mesh\r\nUser-Agent: bench\r\n\r\n")
	needs := &inspectNeeds{transport: true, hello: true, http: true, httpFilter: true, timeout: time.Second}
	b.ReportAllocs()
	for b.Loop() {
		client, server := net.Pipe()
		go func() { _, _ = client.Write(req) }()
		if _, in := inspect(server, needs); len(in.protocols) != 1 || in.protocols[0] != "http/1.1" {
			b.Fatalf("inspection %+v", in)
		}
		client.Close()
		server.Close()
	}
}
