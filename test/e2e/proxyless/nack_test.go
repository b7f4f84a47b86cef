package proxyless

import (
	"bytes"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/weftmesh/weft/internal/cli"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// TestNACKShowsInProxyStatus connects a raw ADS client that rejects every
// listener update and checks that proxy-status names the rejection.
func TestNACKShowsInProxyStatus(t *testing.T) {
	w, ads, ctx := startEchoADS(t)
	stream, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "sidecar~10.9.9.9~picky.default~default.svc.cluster.local"}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTypeUrl() != resourcev3.ListenerType || len(resp.GetResources()) == 0 {
		t.Fatalf("first response: type %s with %d resources", resp.GetTypeUrl(), len(resp.GetResources()))
	}
	if err := stream.Send(&discovery.DiscoveryRequest{
		TypeUrl: resourcev3.ListenerType, VersionInfo: "", ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "listener 0.0.0.0_7070: unsupported filter"},
	}); err != nil {
		t.Fatal(err)
	}

	path := w.Kubeconfig()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out, errb bytes.Buffer
		root := cli.NewRoot(strings.NewReader(""), &out, &errb)
		root.SetArgs([]string{"--kubeconfig", path, "proxy-status"})
		if err := root.Execute(); err != nil {
			t.Fatalf("proxy-status: %v %s", err, errb.String())
		}
		s := out.String()
		if strings.Contains(s, "NACKED") && strings.Contains(s, "listener 0.0.0.0_7070: unsupported filter") &&
			strings.Contains(s, "sidecar~10.9.9.9~picky.default~default.svc.cluster.local") {
			t.Logf("proxy-status:\n%s", s)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy-status never showed the NACK:\n%s", s)
		}
		time.Sleep(50 * time.Millisecond) // polling the server's view of another goroutine's stream
	}
}
