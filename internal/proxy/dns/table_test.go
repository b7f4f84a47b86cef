package dns

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/testutil/ldsgolden"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// dump renders a table as name → "v4,v6" address lists.
func dump(t *Table) map[string]string {
	out := map[string]string{}
	for _, n := range t.Names() {
		v4, v6, _ := t.Lookup(n)
		var s []string
		for _, a := range append(append([]netip.Addr{}, v4...), v6...) {
			s = append(s, a.String())
		}
		out[n] = strings.Join(s, ",")
	}
	return out
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func cidr(prefix string, bits uint32) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: prefix, PrefixLen: wrapperspb.UInt32(bits)}
}

func tcpChain(t testing.TB, name, cluster string, weighted []string, ranges ...*corev3.CidrRange) *listenerv3.FilterChain {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: name}
	if cluster != "" {
		tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}
	} else {
		wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
		for _, c := range weighted {
			wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: c, Weight: 1})
		}
		tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: &listenerv3.FilterChainMatch{PrefixRanges: ranges},
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, tp)}}}}
}

func TestFromSnapshotHandMade(t *testing.T) {
	inline := &routev3.RouteConfiguration{Name: "inline", VirtualHosts: []*routev3.VirtualHost{
		{Name: "v6", Domains: []string{"v6svc.mesh", "v6svc.mesh:80", "[fd00::7]", "[fd00::7]:80"}},
	}}
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: inline}}
	snap := &xdsclient.Snapshot{
		Routes: map[string]*routev3.RouteConfiguration{"9080": {Name: "9080", VirtualHosts: []*routev3.VirtualHost{
			{Name: "reviews.default.svc.cluster.local:9080", Domains: []string{"reviews.default.svc.cluster.local",
				"reviews.default.svc.cluster.local:9080", "Reviews.Default", "reviews", "reviews:9080", "10.0.0.13", "10.0.0.13:9080"}},
			{Name: "dual.mesh:9080", Domains: []string{"dual.mesh", "dual.mesh:9080", "10.0.0.14", "[fd00::14]:9080"}},
			{Name: "novip.example.com:9080", Domains: []string{"novip.example.com", "novip.example.com:9080"}},
			{Name: "wild", Domains: []string{"*.wild.example.com", "10.0.0.99"}},
			{Name: "allow_any", Domains: []string{"*"}},
			{Name: "unspecified", Domains: []string{"zero.mesh", "0.0.0.0"}},
		}}},
		Listeners: map[string]*listenerv3.Listener{
			"0.0.0.0_3306": {Name: "0.0.0.0_3306", FilterChains: []*listenerv3.FilterChain{
				// A TCP route on mysql-a's VIP, and one on destination subnets
				// (routed to mysql-b: not mysql-b's VIPs).
				tcpChain(t, "VirtualService/default/mysql|tcp[0]", "outbound|3306||mysql-b.default.svc.cluster.local", nil,
					cidr("10.0.9.0", 24), cidr("10.0.8.1", 32)),
				tcpChain(t, "VirtualService/default/mysql|tcp[1]", "", []string{"outbound|3306|v1|mysql-a.default.svc.cluster.local",
					"outbound|3306|v2|mysql-a.default.svc.cluster.local"}, cidr("10.0.1.1", 32)),
				tcpChain(t, "outbound|3306||mysql-b.default.svc.cluster.local", "outbound|3306||mysql-b.default.svc.cluster.local", nil,
					cidr("10.0.1.2", 32)),
				// Split between two hosts: nobody's VIP.
				tcpChain(t, "VirtualService/default/split|tcp[0]", "", []string{"outbound|3306||x.mesh", "outbound|3306||y.mesh"},
					cidr("10.0.1.9", 32)),
				tcpChain(t, "outbound|3306||legacy-db.example.com", "outbound|3306||legacy-db.example.com", nil),
			}},
			"0.0.0.0_8080": {Name: "0.0.0.0_8080", FilterChains: []*listenerv3.FilterChain{
				tcpChain(t, "outbound|8080||cache.mesh#2", "outbound|8080||cache.mesh", nil,
					cidr("10.0.1.4", 32), cidr("10.0.2.0", 24), cidr("fd00::4", 128)),
				{Name: "http", Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
					ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}},
			}},
			"virtualInbound": {Name: "virtualInbound", FilterChains: []*listenerv3.FilterChain{
				tcpChain(t, "virtualInbound-passthrough", "InboundPassthroughCluster", nil, cidr("10.1.0.1", 32)),
			}},
		},
	}
	got := dump(FromSnapshot(snap))
	want := map[string]string{
		"reviews.default.svc.cluster.local": "10.0.0.13",
		"reviews.default":                   "10.0.0.13",
		"reviews":                           "10.0.0.13",
		"dual.mesh":                         "10.0.0.14,fd00::14",
		"v6svc.mesh":                        "fd00::7",
		"mysql-a.default.svc.cluster.local": "10.0.1.1",
		"mysql-b.default.svc.cluster.local": "10.0.1.2",
		"cache.mesh":                        "10.0.1.4,fd00::4",
	}
	if d := cmp.Diff(got, want); d != "" {
		t.Fatalf("table (-got +want):\n%s", d)
	}
	if _, _, ok := FromSnapshot(snap).Lookup("REVIEWS.default.svc.cluster.local."); !ok {
		t.Fatal("lookup is not case-insensitive or does not accept the trailing dot")
	}
	if FromSnapshot(nil).Len() != 0 {
		t.Fatal("nil snapshot: non-empty table")
	}
}

func TestStripPort(t *testing.T) {
	for in, want := range map[string]string{
		"reviews": "reviews", "reviews:9080": "reviews", "10.0.0.1:80": "10.0.0.1", "[fd00::1]:80": "fd00::1",
		"[fd00::1]": "fd00::1", "fd00::1": "fd00::1", "host:notaport": "host:notaport",
	} {
		if got := stripPort(in); got != want {
			t.Errorf("stripPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewTable(t *testing.T) {
	tb := NewTable(map[string][]netip.Addr{
		"A.Mesh.":    {netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.3")},
		"*.wild":     {netip.MustParseAddr("10.0.0.9")},
		"empty.mesh": nil,
		"10.0.0.5":   {netip.MustParseAddr("10.0.0.5")},
		"bad..name":  {netip.MustParseAddr("10.0.0.6")},
	})
	if d := cmp.Diff(dump(tb), map[string]string{"a.mesh": "10.0.0.1,10.0.0.2,10.0.0.3"}); d != "" {
		t.Fatalf("(-got +want):\n%s", d)
	}
}

// goldenSnapshot decodes the listeners and routes of one golden file.
func goldenSnapshot(t testing.TB, file string) *xdsclient.Snapshot {
	t.Helper()
	listeners, routes := ldsgolden.Load(t, file)
	s := &xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{}}
	for _, rc := range routes {
		s.Routes[rc.GetName()] = rc
	}
	for _, lis := range listeners {
		s.Listeners[lis.GetName()] = lis
	}
	return s
}

func TestFromSnapshotGolden(t *testing.T) {
	bookinfo := map[string]string{}
	for svc, vip := range map[string]string{"details": "10.0.0.10", "productpage": "10.0.0.11", "ratings": "10.0.0.12", "reviews": "10.0.0.13"} {
		for _, n := range []string{svc, svc + ".default", svc + ".default.svc", svc + ".default.svc.cluster.local"} {
			bookinfo[n] = vip
		}
	}
	for file, want := range map[string]map[string]string{
		"bookinfo-default.json": bookinfo,
		"tcp-tls.json": {
			"web": "10.0.0.30", "web.default": "10.0.0.30", "web.default.svc": "10.0.0.30", "web.default.svc.cluster.local": "10.0.0.30",
			// mysql-a's own chain lost its VIP to a TCP route of its
			// VirtualService; the route's chain still names only mysql-a.
			"mysql-a.default.svc.cluster.local": "10.0.1.1",
			"mysql-b.default.svc.cluster.local": "10.0.1.2",
			"redis.default.svc.cluster.local":   "10.0.1.3",
			"cache.default.svc.cluster.local":   "10.0.1.4",
			"vault.default.svc.cluster.local":   "10.0.1.5",
		},
		// Hosts without VIPs are not in the table (forwarded).
		"proxyless.json": {},
	} {
		t.Run(file, func(t *testing.T) {
			got := dump(FromSnapshot(goldenSnapshot(t, filepath.Join(ldsgolden.Dir, file))))
			if d := cmp.Diff(got, want); d != "" {
				t.Fatalf("table (-got +want):\n%s", d)
			}
		})
	}
	// Every golden file decodes and builds; no name is a wildcard and
	// every name has an address.
	files, _ := filepath.Glob(filepath.Join(ldsgolden.Dir, "*.json"))
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, f := range files {
		tb := FromSnapshot(goldenSnapshot(t, f))
		for _, n := range tb.Names() {
			v4, v6, _ := tb.Lookup(n)
			if strings.Contains(n, "*") || len(v4)+len(v6) == 0 {
				t.Errorf("%s: bad entry %q %v %v", filepath.Base(f), n, v4, v6)
			}
		}
	}
}
