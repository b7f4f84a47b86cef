package apiserver

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/apiserver/authn"
	"github.com/weftmesh/weft/internal/apiserver/rbac"
)

// roleBinding binds ClusterRole role to user.
func roleBinding(name, role, user string) map[string]any {
	return map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"name": name},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
		"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}},
	}
}

func TestAuthentication(t *testing.T) {
	h := newHarness(t, Options{})
	// The secret's last two characters replaced: with "AA", unless the
	// token already ends so (once in 1,024 tokens), as the CA's bootstrap
	// token test does.
	tampered := h.admin[:len(h.admin)-2] + "AA"
	if tampered == h.admin {
		tampered = h.admin[:len(h.admin)-2] + "BA"
	}
	tests := []struct {
		name   string
		header string
	}{
		{"no credentials", ""},
		{"unknown token", "Bearer weft_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		{"garbage token", "Bearer nonsense"},
		{"basic auth", "Basic YWRtaW46YWRtaW4="},
		{"tampered secret", "Bearer " + tampered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			defer cancel()
			r, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.ts.URL+vsPath("default", ""), nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			resp, err := h.ts.Client().Do(r)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var st map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusUnauthorized || st["kind"] != "Status" || st["reason"] != "Unauthorized" || st["code"] != float64(401) {
				t.Fatalf("got %d %v", resp.StatusCode, st)
			}
			// The reply does not say which check failed.
			if st["message"] != "Unauthorized" {
				t.Fatalf("message %q reveals details", st["message"])
			}
		})
	}
	// Discovery too needs authentication.
	expectStatus(t, h.do(t, req{method: http.MethodGet, path: "/apis"}), http.StatusUnauthorized, "Unauthorized")
}

func TestExpiredTokenIsRejected(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	h := newHarness(t, Options{})
	tokens := authn.NewTokens(h.st, func() time.Time { return now })
	tok, _, err := tokens.Issue(context.Background(), "admin", []string{rbac.GroupMasters}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// h.tokens uses the real clock and shares the store: the token minted for
	// 2030 is valid now ...
	if resp := h.do(t, req{method: http.MethodGet, path: vsPath("default", ""), token: tok}); resp.code != http.StatusOK {
		t.Fatalf("fresh token: %d %s", resp.code, resp.body)
	}
	// ... and a server whose clock is past the expiry rejects it.
	late := New(h.st, authn.NewAuthenticator(authn.NewTokens(h.st, func() time.Time { return now.Add(2 * time.Hour) })), rbac.New(h.st), nil, quietLogger(), Options{})
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, vsPath("default", ""), nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	late.ServeHTTP(rec, r)
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("expired token: %d %s", rec.Code, rec.Body.String())
	}
}

func TestAuthorizationForbidden(t *testing.T) {
	h := newHarness(t, Options{})
	bob := h.token("bob")
	tests := []struct {
		name, method, path, msg string
	}{
		{"list", http.MethodGet, vsPath("default", ""), `virtualservices.networking.istio.io is forbidden: User "bob" cannot list resource "virtualservices" in API group "networking.istio.io" in the namespace "default"`},
		{"get", http.MethodGet, vsPath("default", "x"), `virtualservices.networking.istio.io "x" is forbidden: User "bob" cannot get resource "virtualservices" in API group "networking.istio.io" in the namespace "default"`},
		{"watch all namespaces", http.MethodGet, vsAPI + "/virtualservices?watch=true", `User "bob" cannot watch resource "virtualservices" in API group "networking.istio.io" at the cluster scope`},
		{"delete namespace", http.MethodDelete, "/api/v1/namespaces/default", `namespaces "default" is forbidden: User "bob" cannot delete resource "namespaces" in API group "" in the namespace "default"`},
		{"deletecollection", http.MethodDelete, "/api/v1/namespaces/default/secrets", `cannot deletecollection resource "secrets"`},
		{"token api", http.MethodGet, "/weft/v1/tokens", `User "bob" cannot get path "/weft/v1/tokens"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := expectStatus(t, h.do(t, req{method: tc.method, path: tc.path, token: bob}), http.StatusForbidden, "Forbidden")
			if msg, _ := st["message"].(string); !strings.Contains(msg, tc.msg) {
				t.Fatalf("message %q\nlacks %q", msg, tc.msg)
			}
		})
	}
	// Discovery is open to every authenticated user.
	for _, p := range []string{"/api", "/api/v1", "/apis", "/apis/networking.istio.io/v1", "/version", "/openapi/v3"} {
		if resp := h.do(t, req{method: http.MethodGet, path: p, token: bob}); resp.code != http.StatusOK {
			t.Errorf("GET %s as bob: %d %s", p, resp.code, resp.body)
		}
	}
}

func TestRoleBindings(t *testing.T) {
	h := newHarness(t, Options{})
	h.createNamespace(t, "a")
	h.createNamespace(t, "b")
	h.createVS(t, "a", "in-a", nil)
	h.createVS(t, "b", "in-b", nil)
	h.adminDo(t, http.MethodPost, "/api/v1/namespaces/a/secrets", map[string]any{"metadata": map[string]any{"name": "s"}, "stringData": map[string]any{"k": "v"}}, http.StatusCreated)
	h.adminDo(t, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings", roleBinding("viewer", rbac.View, "vera"), http.StatusCreated)
	h.adminDo(t, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings", roleBinding("editor", rbac.Edit, "eddie"), http.StatusCreated)
	vera, eddie := h.token("vera"), h.token("eddie")

	tests := []struct {
		name  string
		token string
		rq    req
		want  int
	}{
		{"view lists in a", vera, req{method: http.MethodGet, path: vsPath("a", "")}, 200},
		{"view gets in a", vera, req{method: http.MethodGet, path: vsPath("a", "in-a")}, 200},
		{"view watches in a", vera, req{method: http.MethodGet, path: vsPath("a", "") + "?watch=true&timeoutSeconds=1"}, 200},
		{"view gets namespace a", vera, req{method: http.MethodGet, path: "/api/v1/namespaces/a"}, 200},
		{"view cannot list in b", vera, req{method: http.MethodGet, path: vsPath("b", "")}, 403},
		{"view cannot list everywhere", vera, req{method: http.MethodGet, path: vsAPI + "/virtualservices"}, 403},
		{"view cannot get namespace b", vera, req{method: http.MethodGet, path: "/api/v1/namespaces/b"}, 403},
		{"view cannot get secrets", vera, req{method: http.MethodGet, path: "/api/v1/namespaces/a/secrets/s"}, 403},
		{"view cannot list secrets", vera, req{method: http.MethodGet, path: "/api/v1/namespaces/a/secrets"}, 403},
		{"view cannot create", vera, req{method: http.MethodPost, path: vsPath("a", ""), body: virtualService("v", nil, "v.example.com")}, 403},
		{"view cannot delete", vera, req{method: http.MethodDelete, path: vsPath("a", "in-a")}, 403},
		{"edit creates in a", eddie, req{method: http.MethodPost, path: vsPath("a", ""), body: virtualService("by-eddie", nil, "e.example.com")}, 201},
		{"edit patches in a", eddie, req{method: http.MethodPatch, path: vsPath("a", "by-eddie"), ctype: "application/merge-patch+json", body: `{"metadata":{"labels":{"x":"y"}}}`}, 200},
		{"edit reads secrets in a", eddie, req{method: http.MethodGet, path: "/api/v1/namespaces/a/secrets/s"}, 200},
		{"edit cannot create in b", eddie, req{method: http.MethodPost, path: vsPath("b", ""), body: virtualService("by-eddie", nil, "e.example.com")}, 403},
		{"edit cannot bind roles", eddie, req{method: http.MethodPost, path: "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings", body: roleBinding("escalate", rbac.Admin, "eddie")}, 403},
		{"edit deletes in a", eddie, req{method: http.MethodDelete, path: vsPath("a", "by-eddie")}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rq := tc.rq
			rq.token = tc.token
			resp := h.do(t, rq)
			if resp.code != tc.want {
				t.Fatalf("%s %s: %d, want %d: %s", rq.method, rq.path, resp.code, tc.want, resp.body)
			}
		})
	}
	// Removing the binding takes effect at once.
	h.adminDo(t, http.MethodDelete, "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings/viewer", nil, http.StatusOK)
	expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("a", ""), token: vera}), http.StatusForbidden, "Forbidden")
}

func TestTokenAPI(t *testing.T) {
	h := newHarness(t, Options{})
	h.createNamespace(t, "a")
	h.adminDo(t, http.MethodPost, "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings", roleBinding("viewer", rbac.View, "vera"), http.StatusCreated)

	resp := h.do(t, req{method: http.MethodPost, path: "/weft/v1/tokens", token: h.admin, body: TokenRequest{User: "vera", Groups: []string{"team-a"}, TTL: "1h"}})
	if resp.code != http.StatusCreated {
		t.Fatalf("issue: %d %s", resp.code, resp.body)
	}
	var issued TokenResponse
	if err := json.Unmarshal(resp.body, &issued); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(issued.Token, authn.TokenPrefix) || issued.Record.User != "vera" || issued.Record.ID == "" || issued.Record.Expires.IsZero() {
		t.Fatalf("issued %+v", issued)
	}
	if issued.Record.SHA256 != "" {
		t.Fatalf("issue reply contains the hash %q", issued.Record.SHA256)
	}
	secret := issued.Token[strings.Index(issued.Token, ".")+1:]

	// The new token works, with vera's permissions.
	if resp := h.do(t, req{method: http.MethodGet, path: vsPath("a", ""), token: issued.Token}); resp.code != http.StatusOK {
		t.Fatalf("issued token: %d %s", resp.code, resp.body)
	}
	// A view user cannot use the token API.
	for _, rq := range []req{
		{method: http.MethodGet, path: "/weft/v1/tokens"},
		{method: http.MethodPost, path: "/weft/v1/tokens", body: TokenRequest{User: "vera", Groups: []string{rbac.GroupMasters}}},
		{method: http.MethodDelete, path: "/weft/v1/tokens/" + issued.Record.ID},
	} {
		rq.token = issued.Token
		expectStatus(t, h.do(t, rq), http.StatusForbidden, "Forbidden")
	}

	// GET lists records without hashes or secrets.
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	stored, err := h.tokens.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp = h.do(t, req{method: http.MethodGet, path: "/weft/v1/tokens", token: h.admin})
	if resp.code != http.StatusOK {
		t.Fatalf("list: %d %s", resp.code, resp.body)
	}
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(resp.body, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(stored) || len(stored) != 2 {
		t.Fatalf("listed %d tokens, store has %d (want 2: admin and vera)", len(list.Items), len(stored))
	}
	for _, rec := range stored {
		if rec.SHA256 == "" {
			t.Fatalf("stored record %s has no hash", rec.ID)
		}
		if strings.Contains(string(resp.body), rec.SHA256) {
			t.Fatalf("token list leaks the hash of %s", rec.ID)
		}
	}
	if strings.Contains(string(resp.body), secret) || strings.Contains(string(resp.body), authn.TokenPrefix) {
		t.Fatalf("token list leaks a secret: %s", resp.body)
	}
	for _, it := range list.Items {
		if v, ok := it["sha256"]; ok && v != "" {
			t.Fatalf("item carries sha256 %v", v)
		}
	}

	// Bad requests.
	for _, body := range []string{`{"user":"x","ttl":"soon"}`, `{"user":"x","ttl":"-1h"}`, `{"user":""}`, `{"user":"x","extra":1}`, `nope`} {
		expectStatus(t, h.do(t, req{method: http.MethodPost, path: "/weft/v1/tokens", token: h.admin, body: body}), http.StatusBadRequest, "BadRequest")
	}
	expectStatus(t, h.do(t, req{method: http.MethodDelete, path: "/weft/v1/tokens/ffffffffffffffff", token: h.admin}), http.StatusNotFound, "NotFound")
	expectStatus(t, h.do(t, req{method: http.MethodPut, path: "/weft/v1/tokens", token: h.admin, body: `{}`}), http.StatusMethodNotAllowed, "MethodNotAllowed")

	// Revoking makes the token fail at once.
	resp = h.do(t, req{method: http.MethodDelete, path: "/weft/v1/tokens/" + issued.Record.ID, token: h.admin})
	if resp.code != http.StatusOK || resp.obj(t)["status"] != "Success" {
		t.Fatalf("revoke: %d %s", resp.code, resp.body)
	}
	expectStatus(t, h.do(t, req{method: http.MethodGet, path: vsPath("a", ""), token: issued.Token}), http.StatusUnauthorized, "Unauthorized")
	expectStatus(t, h.do(t, req{method: http.MethodDelete, path: "/weft/v1/tokens/" + issued.Record.ID, token: h.admin}), http.StatusNotFound, "NotFound")
}

func TestTokenAPIDisabled(t *testing.T) {
	h := newHarness(t, Options{})
	srv := New(h.st, authn.NewAuthenticator(h.tokens), rbac.New(h.st), nil, quietLogger(), Options{})
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/weft/v1/tokens", nil)
	r.Header.Set("Authorization", "Bearer "+h.admin)
	srv.ServeHTTP(rec, r)
	if rec.Code != http.StatusNotFound {
		t.Fatalf("token API without a TokenIssuer: %d %s", rec.Code, rec.Body.String())
	}
}
