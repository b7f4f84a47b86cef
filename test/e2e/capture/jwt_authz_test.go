package capture

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestMeshJWTRequired: requiring a token is authorization's job, as in
// Istio. With an ALLOW AuthorizationPolicy on reviews for request
// principals of the test issuer whose groups claim holds "admins", B's
// sidecar answers a request without a token 403 (RBAC), an invalid token
// 401 (jwt_authn, before RBAC), a valid token without the group 403, and
// a valid admin token reaches the app.
func TestMeshJWTRequired(t *testing.T) {
	m := newJWTMesh(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["`+jwtIssuer+`/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [admins]}]
`)
	hdr := map[string]any{"alg": "RS256", "kid": "k1"}
	eventually(t, "policies applied on B", func() error {
		if code, body := m.call(""); code != http.StatusForbidden {
			return fmt.Errorf("no token: %d %s", code, body)
		}
		return nil
	})
	if dump, err := in(m.ns["b"], appBin, "call", "-url", "http://127.0.0.1:15000/config_dump"); err != nil ||
		!strings.HasPrefix(dump, "200\n") || !strings.Contains(dump, "envoy.filters.http.jwt_authn") || !strings.Contains(dump, "RBAC") {
		t.Errorf("B's config_dump: %v %.300s", err, dump)
	}
	for _, c := range []struct {
		name, token string
		code        int
		body        string
	}{
		{"no token", "", 403, "RBAC: access denied"},
		{"garbage token", "garbage", 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"},
		{"signed by another key", e2eSign(t, hdr, m.claims(map[string]any{"groups": []string{"admins"}}), m.other), 401, "Jwt verification fails"},
		{"valid, not in admins", e2eSign(t, hdr, m.claims(map[string]any{"groups": []string{"dev"}}), m.key), 403, "RBAC: access denied"},
		{"valid admin", e2eSign(t, hdr, m.claims(map[string]any{"groups": []string{"dev", "admins"}}), m.key), 200, ""},
	} {
		code, body := m.call(c.token)
		if code != c.code || (c.body != "" && body != c.body) {
			t.Errorf("%s: %d %q, want %d %q", c.name, code, body, c.code, c.body)
		} else {
			t.Logf("%-25s → %d %s", c.name, code, c.body)
		}
	}
}
