package translate

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// describeLocalities is a load assignment's localities in a line each:
// "region/zone/subzone p<priority> w<weight>", sorted.
func describeLocalities(t *testing.T, r *cdsResult, cluster string) []string {
	t.Helper()
	var out []string
	for _, lle := range r.cla(t, cluster).GetEndpoints() {
		l := lle.GetLocality()
		out = append(out, fmt.Sprintf("%s/%s/%s p%d w%d", l.GetRegion(), l.GetZone(), l.GetSubZone(), lle.GetPriority(),
			lle.GetLoadBalancingWeight().GetValue()))
	}
	sort.Strings(out)
	return out
}

// TestLocalityLoadBalancing: a proxy's load assignments follow its
// locality as istiod's do: failover priorities by distance when the
// cluster has outlier detection (Istio's default, locality load
// balancing enabled), failover rules between regions, distribute
// weights, and enabled: false in the DestinationRule or the mesh.
func TestLocalityLoadBalancing(t *testing.T) {
	const host = "api.default.svc.cluster.local"
	const cluster = "outbound|80||" + host
	eps := []registry.Endpoint{}
	for i, l := range []string{"us-east/a/1", "us-east/a/2", "us-east/b/1", "eu-west/x/1", "ap-south/y/1", "us-east/b/2"} {
		network := "n1"
		if i >= 3 {
			network = "n2"
		}
		eps = append(eps, registry.Endpoint{Hostname: host, Namespace: "default", Address: fmt.Sprintf("10.1.0.%d", i+1),
			Locality: l, Healthy: true, Weight: 1, Labels: map[string]string{"topology.istio.io/network": network}})
	}
	// The client's own WorkloadEntry, whose locality is the proxy's when
	// the node names none.
	eps = append(eps, registry.Endpoint{Hostname: "client.default.svc.cluster.local", Namespace: "default", Address: "10.0.0.1",
		Locality: "us-east/b/1", Healthy: true})
	const outlier = `"outlierDetection": {"consecutive5xxErrors": 3}`
	failover := []string{"ap-south/y/1 p4 w1", "eu-west/x/1 p3 w1", "us-east/a/1 p0 w1", "us-east/a/2 p1 w1", "us-east/b/1 p2 w1", "us-east/b/2 p2 w1"}
	flat := []string{"ap-south/y/1 p0 w1", "eu-west/x/1 p0 w1", "us-east/a/1 p0 w1", "us-east/a/2 p0 w1", "us-east/b/1 p0 w1", "us-east/b/2 p0 w1"}
	for name, tc := range map[string]struct {
		proxyLocality string // "": from the registry (us-east/b/1)
		policy        string // the DestinationRule's trafficPolicy ("": no rule)
		mesh          *networking.LocalityLoadBalancerSetting
		want          []string
		warning       string
	}{
		// Istio's zone-aware setting needs Envoy's local cluster, which the
		// sidecar does not have: warned about, and failover by locality
		// (on by default) applies as without it.
		"zoneAwareLbSetting": {proxyLocality: "us-east/a/1", policy: `{"loadBalancer": {"zoneAwareLbSetting": {}}, ` + outlier + `}`,
			want:    []string{"ap-south/y/1 p3 w1", "eu-west/x/1 p3 w1", "us-east/a/1 p0 w1", "us-east/a/2 p1 w1", "us-east/b/1 p2 w1", "us-east/b/2 p2 w1"},
			warning: "loadBalancer.zoneAwareLbSetting is not supported; locality load balancing applies instead"},
		"no outlier detection: no failover": {proxyLocality: "us-east/a/1", want: flat},
		"outlier detection: priorities by distance": {proxyLocality: "us-east/a/1", policy: `{` + outlier + `}`,
			want: []string{"ap-south/y/1 p3 w1", "eu-west/x/1 p3 w1", "us-east/a/1 p0 w1", "us-east/a/2 p1 w1", "us-east/b/1 p2 w1", "us-east/b/2 p2 w1"}},
		"the proxy's locality from its WorkloadEntry": {policy: `{` + outlier + `}`,
			want: []string{"ap-south/y/1 p3 w1", "eu-west/x/1 p3 w1", "us-east/a/1 p2 w1", "us-east/a/2 p2 w1", "us-east/b/1 p0 w1", "us-east/b/2 p1 w1"}},
		"failover to a region": {proxyLocality: "us-east/a/1",
			policy: `{"loadBalancer": {"localityLbSetting": {"failover": [{"from": "us-east", "to": "eu-west"}]}}, ` + outlier + `}`,
			want:   failover},
		"failover from the mesh config": {proxyLocality: "us-east/a/1", policy: `{` + outlier + `}`,
			mesh: &networking.LocalityLoadBalancerSetting{Failover: []*networking.LocalityLoadBalancerSetting_Failover{{From: "us-east", To: "eu-west"}}},
			want: failover},
		"off in the destination rule": {proxyLocality: "us-east/a/1",
			policy: `{"loadBalancer": {"localityLbSetting": {"enabled": false}}, ` + outlier + `}`, want: flat},
		"off in the mesh config": {proxyLocality: "us-east/a/1", policy: `{` + outlier + `}`,
			mesh: &networking.LocalityLoadBalancerSetting{Enabled: wrapperspb.Bool(false)}, want: flat},
		// Endpoints 1-3 are in the proxy's network n1, 4-6 in n2; the
		// region label comes from the localities.
		"failoverPriority": {proxyLocality: "us-east/a/1",
			policy: `{"loadBalancer": {"localityLbSetting": {"failoverPriority": ["topology.istio.io/network", "topology.kubernetes.io/region"]}}, ` + outlier + `}`,
			want:   []string{"ap-south/y/1 p1 w1", "eu-west/x/1 p1 w1", "us-east/a/1 p0 w1", "us-east/a/2 p0 w1", "us-east/b/1 p0 w1", "us-east/b/2 p1 w1"}},
		"failoverPriority with a value": {proxyLocality: "us-east/a/1",
			policy: `{"loadBalancer": {"localityLbSetting": {"failoverPriority": ["topology.istio.io/network=n2"]}}, ` + outlier + `}`,
			want:   []string{"ap-south/y/1 p0 w1", "eu-west/x/1 p0 w1", "us-east/a/1 p1 w1", "us-east/a/2 p1 w1", "us-east/b/1 p1 w1", "us-east/b/2 p0 w1"}},
		// Network first, then distance within it (and the failover rule).
		"failoverPriority and failover": {proxyLocality: "us-east/a/1",
			policy: `{"loadBalancer": {"localityLbSetting": {"failoverPriority": ["topology.istio.io/network"],
				"failover": [{"from": "us-east", "to": "eu-west"}]}}, ` + outlier + `}`,
			want: []string{"ap-south/y/1 p5 w1", "eu-west/x/1 p4 w1", "us-east/a/1 p0 w1", "us-east/a/2 p1 w1", "us-east/b/1 p2 w1", "us-east/b/2 p3 w1"}},
		// Zone a's two localities share 80 in proportion to their own
		// weights; the other regions take nothing.
		"distribute": {proxyLocality: "us-east/a/1",
			policy: `{"loadBalancer": {"localityLbSetting": {"distribute": [
				{"from": "eu-west/*", "to": {"eu-west/*": 100}},
				{"from": "us-east/a/*", "to": {"us-east/a/*": 80, "us-east/b/*": 20}}]}}}`,
			want: []string{"us-east/a/1 p0 w40", "us-east/a/2 p0 w40", "us-east/b/1 p0 w10", "us-east/b/2 p0 w10"}},
	} {
		t.Run(name, func(t *testing.T) {
			mesh := model.DefaultMesh()
			mesh.LocalityLB = tc.mesh
			var configs []*model.Config
			if tc.policy != "" {
				dr := &networking.DestinationRule{}
				if err := protojson.Unmarshal([]byte(`{"host": "`+host+`", "trafficPolicy": `+tc.policy+`}`), dr); err != nil {
					t.Fatal(err)
				}
				configs = append(configs, &model.Config{Kind: "DestinationRule", Namespace: "default", Name: "api", Spec: dr,
					CreationTime: time.Unix(1, 0)})
			}
			reg := &registry.Snapshot{Version: 1, Services: []registry.Service{
				{Hostname: host, Namespace: "default", Ports: []registry.Port{{Name: "http", Number: 80, Protocol: "HTTP"}}},
				{Hostname: "client.default.svc.cluster.local", Namespace: "default", Ports: []registry.Port{{Name: "http", Number: 80, Protocol: "HTTP"}}},
			}, Endpoints: map[string][]registry.Endpoint{
				registry.Key("default", host):                               eps[:6],
				registry.Key("default", "client.default.svc.cluster.local"): eps[6:],
			}}
			s := model.NewSnapshot("1", mesh, configs, reg)
			p := &model.Proxy{Type: model.Sidecar, Namespace: "default", IPs: []string{"10.0.0.1"}, Locality: tc.proxyLocality,
				Labels: map[string]string{"app": "client", "topology.istio.io/network": "n1"}}
			r := buildCDS(&cdsInput{snap: s, proxy: p})
			if diff := cmp.Diff(tc.want, describeLocalities(t, r, cluster)); diff != "" {
				t.Errorf("localities (-want +got)\n%s", diff)
			}
			if tc.warning != "" {
				wantWarning(t, r, tc.warning)
				return
			}
			for _, w := range r.warnings {
				if strings.Contains(w, "locality") {
					t.Errorf("warning %q", w)
				}
			}
		})
	}
}
