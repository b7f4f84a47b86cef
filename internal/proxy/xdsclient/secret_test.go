package xdsclient

import (
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestSecretPolicy: private keys are accepted over xDS only by a gateway,
// and only as credentials (kubernetes://<credentialName>); trust bundles
// by anyone.
func TestSecretPolicy(t *testing.T) {
	cert := func(name string) *anypb.Any {
		a, _ := anypb.New(&tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{}}})
		return a
	}
	bundle, _ := anypb.New(&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}})
	for _, tc := range []struct {
		name        string
		a           *anypb.Any
		credentials bool
		err         string
	}{
		{"trust bundle, sidecar", bundle, false, ""},
		{"trust bundle, gateway", bundle, true, ""},
		{"credential, sidecar", cert("kubernetes://cred"), false, "never certificates or keys"},
		{"credential, gateway", cert("kubernetes://cred"), true, ""},
		{"workload key, gateway", cert("default"), true, "certificates named kubernetes://<credentialName>"},
	} {
		d, err := decode(SecretType, tc.a, tc.credentials)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		case tc.err == "" && d.msg == nil:
			t.Errorf("%s: nothing decoded", tc.name)
		}
	}
}
