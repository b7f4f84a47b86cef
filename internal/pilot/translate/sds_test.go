package translate

import (
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/pilot/model"
)

func TestTrustBundleSecret(t *testing.T) {
	s := model.NewSnapshot("1", model.DefaultMesh(), nil, nil)
	sidecar := &model.Proxy{ID: "sidecar~10.0.0.1~a.default~default.svc.cluster.local", Type: model.Sidecar, Namespace: "default"}
	if r := Build(s, sidecar); len(r.Secrets) != 0 {
		t.Fatalf("no bundle: %d secrets, want none", len(r.Secrets))
	}
	s.TrustBundle = []string{"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----"}
	r := Build(s, sidecar)
	if len(r.Secrets) != 1 || r.Secrets[0].GetName() != RootCASecret {
		t.Fatalf("sidecar secrets = %v, want one %s", r.Secrets, RootCASecret)
	}
	got := string(r.Secrets[0].GetValidationContext().GetTrustedCa().GetInlineBytes())
	if strings.Count(got, "BEGIN CERTIFICATE") != 2 || !strings.Contains(got, "AAAA") || !strings.Contains(got, "BBBB") {
		t.Fatalf("trusted_ca = %q, want both roots", got)
	}
	if r.Secrets[0].GetTlsCertificate() != nil {
		t.Fatal("a certificate (with key) in the bundle secret")
	}
	grpc := &model.Proxy{ID: "grpc~10.0.0.2~b.default~default.svc.cluster.local", Type: model.Proxyless, Namespace: "default"}
	if r := Build(s, grpc); len(r.Secrets) != 0 {
		t.Fatalf("proxyless client got %d secrets, want none", len(r.Secrets))
	}
}
