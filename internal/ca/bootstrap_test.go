package ca

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/secrettoken"

	"github.com/weftmesh/weft/internal/resource"
)

func TestBootstrapTokens(t *testing.T) {
	clk := newClock()
	a, st, _ := newAuthority(t, Options{Clock: clk.Now})
	ctx := context.Background()
	if _, _, err := a.IssueBootstrapToken(ctx, "bookinfo", "ratings", "", time.Hour); !errors.Is(err, ErrGroupNotFound) {
		t.Fatalf("token for a missing group: err = %v, want ErrGroupNotFound", err)
	}
	putWorkloadGroup(t, st, "bookinfo", "ratings", "ratings-sa")
	putWorkloadGroup(t, st, "bookinfo", "plain", "")

	tok, rec, err := a.IssueBootstrapToken(ctx, "bookinfo", "ratings", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, BootstrapTokenPrefix+rec.ID+".") || len(tok) != len(BootstrapTokenPrefix)+secrettoken.IDLen+1+43 {
		t.Fatalf("token %q does not read wbt_<id>.<secret>", tok)
	}
	kv, err := st.Get(ctx, BootstrapKeyPrefix+rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	secret := tok[strings.IndexByte(tok, '.')+1:]
	if bytes.Contains(kv.Value, []byte(secret)) || !bytes.Contains(kv.Value, []byte(`"sha256":"`)) {
		t.Fatalf("stored record holds the secret or no hash: %s", kv.Value)
	}
	id, err := a.AuthenticateBootstrap(ctx, tok)
	if err != nil || id != (Identity{"bookinfo", "ratings-sa"}) {
		t.Fatalf("AuthenticateBootstrap = %+v, %v", id, err)
	}

	// The group's service account defaults to "default"; a mismatching
	// explicit one is refused.
	tok2, _, err := a.IssueBootstrapToken(ctx, "bookinfo", "plain", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := a.AuthenticateBootstrap(ctx, tok2); err != nil || id.ServiceAccount != "default" {
		t.Fatalf("default service account: %+v, %v", id, err)
	}
	if _, _, err := a.IssueBootstrapToken(ctx, "bookinfo", "ratings", "admin", time.Hour); !errors.Is(err, ErrInvalidIdentity) {
		t.Fatalf("service account not the group's: err = %v", err)
	}
	for _, ttl := range []time.Duration{0, -time.Hour} {
		if _, _, err := a.IssueBootstrapToken(ctx, "bookinfo", "ratings", "", ttl); !errors.Is(err, ErrInvalidTTL) {
			t.Fatalf("ttl %v: err = %v", ttl, err)
		}
	}
	if _, rec, err := a.IssueBootstrapToken(ctx, "bookinfo", "ratings", "", 10*365*24*time.Hour); err != nil || rec.Expires.Sub(rec.Created) != DefaultMaxBootstrapTTL {
		t.Fatalf("long ttl not clamped: %v, %v", rec.Expires.Sub(rec.Created), err)
	}

	// Forged and malformed tokens.
	wrong := tok[:len(tok)-2] + "AA"
	if wrong == tok {
		wrong = tok[:len(tok)-2] + "BA"
	}
	for name, bad := range map[string]string{
		"empty": "", "garbage": "wbt_nope", "wrong secret": wrong, "unknown id": BootstrapTokenPrefix + "0123456789abcdef" + tok[len(BootstrapTokenPrefix)+secrettoken.IDLen:],
		"api token": "weft_" + tok[len(BootstrapTokenPrefix):],
	} {
		if _, err := a.AuthenticateBootstrap(ctx, bad); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: err = %v, want ErrInvalidToken", name, err)
		}
	}

	// The group changing its service account invalidates the token.
	k, _ := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	gkv, _ := st.Get(ctx, k.Key("bookinfo", "plain"))
	var obj map[string]any
	_ = json.Unmarshal(gkv.Value, &obj)
	obj["spec"].(map[string]any)["template"].(map[string]any)["serviceAccount"] = "root"
	raw, _ := json.Marshal(obj)
	if _, err := st.Update(ctx, gkv.Key, raw, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthenticateBootstrap(ctx, tok2); !errors.Is(err, ErrInvalidIdentity) {
		t.Fatalf("after the group's service account changed: err = %v", err)
	}
	// Deleting the group invalidates its tokens.
	if _, err := st.Delete(ctx, gkv.Key, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthenticateBootstrap(ctx, tok2); !errors.Is(err, ErrGroupNotFound) {
		t.Fatalf("after the group was deleted: err = %v", err)
	}

	// Expiry.
	clk.Add(time.Hour)
	if _, err := a.AuthenticateBootstrap(ctx, tok); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("expired: err = %v", err)
	}

	// Revocation.
	tok3, rec3, err := a.IssueBootstrapToken(ctx, "bookinfo", "ratings", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeBootstrapToken(ctx, rec3.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthenticateBootstrap(ctx, tok3); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("revoked: err = %v", err)
	}
	recs, err := a.ListBootstrapTokens(ctx)
	if err != nil || len(recs) != 3 {
		t.Fatalf("ListBootstrapTokens = %d, %v; want 3", len(recs), err)
	}
	for _, r := range recs {
		if r.SHA256 != "" {
			t.Fatal("listed record carries its hash")
		}
	}
}

func TestTokenHandler(t *testing.T) {
	a, st, _ := newAuthority(t, Options{})
	putWorkloadGroup(t, st, "default", "vm", "vm-sa")
	srv := httptest.NewServer(a.TokenHandler())
	defer srv.Close()
	post := func(body string) (*http.Response, map[string]any) {
		t.Helper()
		resp, err := http.Post(srv.URL+TokenPath, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp, out
	}
	resp, out := post(`{"group":"vm","ttl":"2h"}`)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST = %d %v", resp.StatusCode, out)
	}
	tok, _ := out["token"].(string)
	if id, err := a.AuthenticateBootstrap(context.Background(), tok); err != nil || id != (Identity{"default", "vm-sa"}) {
		t.Fatalf("issued token authenticates as %+v, %v", id, err)
	}
	if out["identity"] != "spiffe://cluster.local/ns/default/sa/vm-sa" || out["expires"] == nil || out["id"] == nil {
		t.Fatalf("response %v", out)
	}
	for body, want := range map[string]int{
		`{"namespace":"default","group":"nope","ttl":"1h"}`: http.StatusNotFound,
		`{"group":"vm","ttl":"soon"}`:                       http.StatusBadRequest,
		`{"group":"vm"}`:                                    http.StatusBadRequest,
		`{"ttl":"1h"}`:                                      http.StatusBadRequest,
		`{"group":"vm","ttl":"1h","user":"x"}`:              http.StatusBadRequest,
		`{"namespace":"Bad_NS","group":"vm","ttl":"1h"}`:    http.StatusBadRequest,
	} {
		resp, out := post(body)
		if resp.StatusCode != want || out["kind"] != "Status" || out["message"] == "" {
			t.Errorf("POST %s = %d %v, want %d with a Status", body, resp.StatusCode, out, want)
		}
	}
	resp, err := http.Get(srv.URL + TokenPath)
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Items []BootstrapRecord }
	_ = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Items) != 1 || list.Items[0].SHA256 != "" {
		t.Fatalf("GET = %+v", list)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+TokenPath+"/"+list.Items[0].ID, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE = %v %v", resp, err)
	}
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("second DELETE = %v %v", resp, err)
	}
}
