package push

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// TestDecodeSecret: pilot keeps a Secret's credential entries, decoded,
// and nothing else of it.
func TestDecodeSecret(t *testing.T) {
	k, err := resource.ByKind("v1", "Secret")
	if err != nil {
		t.Fatal(err)
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	raw := fmt.Sprintf(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"cred","namespace":"istio-system","creationTimestamp":"2026-01-02T03:04:05Z"},
"type":"kubernetes.io/tls","data":{"tls.crt":%q,"tls.key":%q,"ca.crt":%q,"token":%q}}`, b64("CERT"), b64("KEY"), b64("CA"), b64("unrelated"))
	c, err := DecodeConfig(k, store.KV{Key: k.KeyPrefix("istio-system") + "cred", Value: []byte(raw), ModRevision: 7})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind != model.SecretKind || c.Key() != "Secret/istio-system/cred" || c.ResourceVersion != "7" || c.CreationTime.Year() != 2026 {
		t.Errorf("decoded %+v", c)
	}
	st, ok := c.Spec.(interface {
		AsMap() map[string]any
	})
	if !ok {
		t.Fatalf("spec %T", c.Spec)
	}
	got := st.AsMap()
	if len(got) != 3 || got["tls.crt"] != "CERT" || got["tls.key"] != "KEY" || got["ca.crt"] != "CA" {
		t.Errorf("credential entries %v, want tls.crt, tls.key and ca.crt only", got)
	}
	if _, err := DecodeConfig(k, store.KV{Key: "x", Value: []byte(`{"data":{"tls.crt":"not base64!"}}`)}); err == nil {
		t.Errorf("a Secret whose data is not base64 decoded")
	}
}
