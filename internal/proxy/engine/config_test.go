package engine

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func tcpChainProto(name, cluster string, port uint32, prefixes ...string) *listenerv3.FilterChain {
	tp, _ := anypb.New(&tcpproxyv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})
	m := &listenerv3.FilterChainMatch{}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	for _, p := range prefixes {
		pf := netip.MustParsePrefix(p)
		m.PrefixRanges = append(m.PrefixRanges, &corev3.CidrRange{AddressPrefix: pf.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pf.Bits()))})
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m,
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}}
}

func TestChainMatchPrefersMostSpecific(t *testing.T) {
	l := &listenerv3.Listener{
		Name: "0.0.0.0_5432",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 5432}}}},
		BindToPort: wrapperspb.Bool(false),
		FilterChains: []*listenerv3.FilterChain{
			tcpChainProto("wide", "wide", 0, "10.0.0.0/8"),
			tcpChainProto("narrow", "narrow", 0, "10.1.2.0/24"),
			tcpChainProto("other-port", "other", 9999),
		},
		DefaultFilterChain: tcpChainProto("default", "PassthroughCluster", 0),
	}
	ls, err := compileListener(l)
	if err != nil {
		t.Fatal(err)
	}
	if ls.bind {
		t.Fatal("bind_to_port false was ignored")
	}
	for dst, want := range map[string]string{
		"10.1.2.3:5432": "narrow", "10.9.9.9:5432": "wide", "192.168.1.1:5432": "default", "192.168.1.1:9999": "other-port",
	} {
		ch := ls.match(netip.MustParseAddrPort(dst), "", "raw_buffer")
		if ch == nil || ch.name != want {
			t.Errorf("match(%s) = %v, want %s", dst, ch, want)
		}
	}
}

func TestCompileListenerRejects(t *testing.T) {
	bad := &listenerv3.Listener{Name: "x", Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/x"}}}}
	if _, err := compileListener(bad); err == nil {
		t.Fatal("a pipe listener was accepted")
	}
	noFilter := &listenerv3.Listener{Name: "y", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 1}}}},
		FilterChains: []*listenerv3.FilterChain{{Name: "empty"}}}
	if _, err := compileListener(noFilter); err == nil {
		t.Fatal("a chain without filters was accepted")
	}
}

// FuzzCompileListener feeds arbitrary bytes, decoded as a Listener, to the
// compiler: it must return an error or a listener, never panic.
func FuzzCompileListener(f *testing.F) {
	seed, _ := proto.Marshal(&listenerv3.Listener{Name: "seed", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}},
		FilterChains: []*listenerv3.FilterChain{tcpChainProto("c", "c", 80, "10.0.0.0/8")}})
	f.Add(seed)
	// An HCM with Zipkin tracing, as pilot writes it.
	traced := httpListener("traced", netip.MustParseAddrPort("0.0.0.0:8080"), "c", nil)
	h := &hcmv3.HttpConnectionManager{}
	_ = traced.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h)
	h.Tracing = hcmTracing(10, false)
	traced.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(f, h)}
	seed, _ = proto.Marshal(traced)
	f.Add(seed)
	// A gateway's listener: TLS chains by SNI with credentials, and a
	// plaintext chain.
	gw := &listenerv3.Listener{Name: "0.0.0.0_8443", Address: socketAddr(netip.MustParseAddrPort("0.0.0.0:8443")), FilterChains: []*listenerv3.FilterChain{
		gatewayChain("a", "c", gatewayTLS("file-cert:/a/tls.crt~/a/tls.key", "file-root:/a/ca.crt", true), "a.example.com"),
		gatewayChain("b", "c", gatewayTLS("kubernetes://b", "kubernetes://b-cacert", false), "*.example.com"),
		gatewayChain("plain", "c", nil)}}
	seed, _ = proto.Marshal(gw)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &listenerv3.Listener{}
		if proto.Unmarshal(data, l) != nil {
			return
		}
		if ls, err := compileListener(l); err == nil && ls != nil {
			_ = ls.match(netip.MustParseAddrPort("10.0.0.1:80"), "x", "tls")
		}
	})
}

// A port named by some chain never falls back to portless chains: with
// STRICT on 8090, plaintext to 8090 must not reach the passthrough chain.
func TestChainMatchPortFirst(t *testing.T) {
	strict := tcpChainProto("inbound|8090||-mtls", "inbound|8090||", 8090)
	strict.FilterChainMatch.TransportProtocol = "tls"
	l := &listenerv3.Listener{
		Name: "virtualInbound",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15006}}}},
		FilterChains: []*listenerv3.FilterChain{strict, tcpChainProto("virtualInbound-passthrough", "InboundPassthroughCluster", 0)},
	}
	ls, err := compileListener(l)
	if err != nil {
		t.Fatal(err)
	}
	if ch := ls.match(netip.MustParseAddrPort("10.0.0.3:8090"), "", "raw_buffer"); ch != nil {
		t.Fatalf("plaintext to a STRICT port matched %s", ch.name)
	}
	if ch := ls.match(netip.MustParseAddrPort("10.0.0.3:8090"), "", "tls"); ch == nil || ch.name != "inbound|8090||-mtls" {
		t.Fatalf("TLS to the STRICT port matched %v", ch)
	}
	if ch := ls.match(netip.MustParseAddrPort("10.0.0.3:7000"), "", "raw_buffer"); ch == nil || ch.name != "virtualInbound-passthrough" {
		t.Fatalf("an undeclared port matched %v", ch)
	}
}

// TestCompileTProxyListener: transparent and original_src (its mark) are
// read; original_src's bind_port, which weft-proxy cannot honour, is
// refused (NACK) rather than ignored.
func TestCompileTProxyListener(t *testing.T) {
	l := func(src *originalsrcv3.OriginalSrc) *listenerv3.Listener {
		cfg, _ := anypb.New(src)
		return &listenerv3.Listener{
			Name: "virtualInbound",
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15006}}}},
			Transparent:     wrapperspb.Bool(true),
			ListenerFilters: []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.original_src", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: cfg}}},
			FilterChains:    []*listenerv3.FilterChain{tcpChainProto("virtualInbound-passthrough", "InboundPassthroughCluster", 0)},
		}
	}
	ls, err := compileListener(l(&originalsrcv3.OriginalSrc{Mark: 1337}))
	if err != nil {
		t.Fatal(err)
	}
	if !ls.transparent || !ls.originalSrc || ls.srcMark != 1337 {
		t.Errorf("transparent %v originalSrc %v mark %d, want true true 1337", ls.transparent, ls.originalSrc, ls.srcMark)
	}
	if _, err := compileListener(l(&originalsrcv3.OriginalSrc{BindPort: true})); err == nil {
		t.Error("original_src with bind_port was accepted")
	}
}
