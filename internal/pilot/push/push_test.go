package push

import (
	"testing"

	"github.com/weftmesh/weft/internal/pilot/model"
)

// TestClassKey: proxies share a translation only when nothing their
// resources depend on differs: a node locality (which orders their
// endpoints' priorities) or an IP that is an endpoint sets them apart;
// an IP that is no endpoint does not.
func TestClassKey(t *testing.T) {
	addrs := map[string]bool{"10.0.0.1": true}
	proxy := func(locality string, ips ...string) *model.Proxy {
		return &model.Proxy{Type: model.Sidecar, Namespace: "default", Labels: map[string]string{"app": "a"}, IPs: ips, Locality: locality}
	}
	base := classKey(proxy("us-east/a/", "10.9.0.1"), addrs)
	if classKey(proxy("us-east/a/", "10.9.0.2"), addrs) != base {
		t.Error("IPs that are no endpoint split the class")
	}
	if classKey(proxy("eu-west/x/", "10.9.0.1"), addrs) == base {
		t.Error("proxies in different localities share a class")
	}
	if classKey(proxy("us-east/a/", "10.0.0.1"), addrs) == base {
		t.Error("a proxy whose IP is an endpoint shares a class with one whose IP is not")
	}
	verified := proxy("us-east/a/", "10.9.0.1")
	verified.Verified = true
	if classKey(verified, addrs) == base {
		t.Error("a proxy whose credential proved its namespace shares a class with one over the plaintext port (gateways get private keys only in the first)")
	}
}
