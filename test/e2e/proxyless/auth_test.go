package proxyless

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestTLSXDSNeedsIdentity: on :15012 an xDS stream without a bootstrap
// token or workload certificate is refused; with a token it is served,
// but only as a node of the token's namespace and service account.
func TestTLSXDSNeedsIdentity(t *testing.T) {
	w := startWeft(t)
	w.Apply(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ratings}
spec:
  metadata: {labels: {app: ratings}}
  template: {serviceAccount: ratings}
`)
	code, body := w.Do("POST", "/weft/v1/workload-tokens", `{"namespace":"default","group":"ratings","ttl":"1h"}`)
	if code != 201 && code != 200 {
		t.Fatalf("creating a bootstrap token: %d %s", code, body)
	}
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tok); err != nil || !strings.HasPrefix(tok.Token, "wbt_") {
		t.Fatalf("token reply %s: %v", body, err)
	}
	conn, err := grpc.NewClient(w.XDSTLS, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: w.CAPool(), ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	first := func(ctx context.Context, node *core.Node) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		stream, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		// A refused stream may already be closed when Send runs (io.EOF);
		// Recv returns its status either way.
		_, err = stream.Recv()
		return err
	}
	node := &core.Node{Id: "sidecar~10.3.3.3~ratings.default~default.svc.cluster.local"}
	if err := first(context.Background(), node); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("xDS without credentials on the TLS port: %v, want Unauthenticated", err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok.Token)
	if err := first(ctx, node); err != nil {
		t.Fatalf("xDS with a bootstrap token: %v", err)
	}
	// The token is for default/ratings: it cannot open a stream as a node
	// of another namespace or service account.
	other := &core.Node{Id: "sidecar~10.3.3.3~ratings.prod~prod.svc.cluster.local"}
	if err := first(ctx, other); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `claims namespace "prod"`) {
		t.Fatalf("xDS as a node of namespace prod with a default token: %v, want PermissionDenied", err)
	}
	sa, _ := structpb.NewStruct(map[string]any{"SERVICE_ACCOUNT": "admin"})
	if err := first(ctx, &core.Node{Id: node.Id, Metadata: sa}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("xDS as service account admin with a ratings token: %v, want PermissionDenied", err)
	}
	bad := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer wbt_0000000000000000.AAAA")
	if err := first(bad, node); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("xDS with a forged token: %v, want Unauthenticated", err)
	}
}
