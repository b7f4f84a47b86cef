package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"
)

func certChains(cn string, orgs ...string) [][]*x509.Certificate {
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: orgs}}
	ca := &x509.Certificate{Subject: pkix.Name{CommonName: "weft-ca", Organization: []string{"ca-org"}}}
	return [][]*x509.Certificate{{leaf, ca}}
}

func TestFromCertificate(t *testing.T) {
	u, ok := FromCertificate(certChains("alice", "system:masters", "dev", "dev"))
	if !ok || u.Name != "alice" || !slices.Equal(u.Groups, []string{"system:masters", "dev", GroupAuthenticated}) {
		t.Fatalf("got %+v, %v", u, ok)
	}
	u, ok = FromCertificate(certChains("bob"))
	if !ok || u.Name != "bob" || !slices.Equal(u.Groups, []string{GroupAuthenticated}) {
		t.Fatalf("got %+v, %v", u, ok)
	}
	for name, chains := range map[string][][]*x509.Certificate{
		"nil":        nil,
		"empty":      {{}},
		"nil leaf":   {{nil}},
		"no CN":      certChains("", "dev"),
		"control CN": certChains("ali\nce"),
	} {
		if u, ok := FromCertificate(chains); ok {
			t.Errorf("%s: got %+v, want rejection", name, u)
		}
	}
}

func TestAuthenticateRequest(t *testing.T) {
	ctx := context.Background()
	toks, _, clock := newTestTokens(t)
	tok, _, err := toks.Issue(ctx, "alice", []string{"dev"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expiring, _, err := toks.Issue(ctx, "carol", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	a := NewAuthenticator(toks)
	cert := &tls.ConnectionState{VerifiedChains: certChains("bob", "ops")}
	unverified := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{Subject: pkix.Name{CommonName: "mallory"}}}}

	cases := []struct {
		name    string
		headers []string
		tls     *tls.ConnectionState
		user    string
		err     error
	}{
		{name: "bearer", headers: []string{"Bearer " + tok}, user: "alice"},
		{name: "lowercase scheme", headers: []string{"bearer " + tok}, user: "alice"},
		{name: "extra spaces", headers: []string{"Bearer   " + tok + " "}, user: "alice"},
		{name: "bearer wins over cert", headers: []string{"Bearer " + tok}, tls: cert, user: "alice"},
		{name: "cert", tls: cert, user: "bob"},
		{name: "nothing", err: ErrUnauthenticated},
		{name: "unverified cert", tls: unverified, err: ErrUnauthenticated},
		{name: "cert without CN", tls: &tls.ConnectionState{VerifiedChains: certChains("")}, err: ErrUnauthenticated},
		{name: "invalid token with cert", headers: []string{"Bearer " + tamper(tok)}, tls: cert, err: ErrInvalidToken},
		{name: "garbage token with cert", headers: []string{"Bearer nonsense"}, tls: cert, err: ErrInvalidToken},
		{name: "expired token with cert", headers: []string{"Bearer " + expiring}, tls: cert, err: ErrExpiredToken},
		{name: "empty header with cert", headers: []string{""}, tls: cert, err: ErrMalformedHeader},
		{name: "scheme only", headers: []string{"Bearer"}, err: ErrMalformedHeader},
		{name: "scheme and space", headers: []string{"Bearer "}, err: ErrMalformedHeader},
		{name: "basic", headers: []string{"Basic YWxpY2U6cGFzcw=="}, tls: cert, err: ErrMalformedHeader},
		{name: "token only", headers: []string{tok}, err: ErrMalformedHeader},
		{name: "two tokens", headers: []string{"Bearer " + tok + " " + tok}, err: ErrMalformedHeader},
		{name: "two headers", headers: []string{"Bearer " + tok, "Bearer " + tok}, err: ErrMalformedHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/api", nil)
			for _, h := range tc.headers {
				r.Header.Add("Authorization", h)
			}
			r.TLS = tc.tls
			u, err := a.AuthenticateRequest(r)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %+v, %v; want %v", u, err, tc.err)
				}
				return
			}
			if err != nil || u.Name != tc.user || !slices.Contains(u.Groups, GroupAuthenticated) {
				t.Fatalf("got %+v, %v; want user %q", u, err, tc.user)
			}
		})
	}

	// Without a token store, bearer tokens are rejected but certs work.
	certOnly := NewAuthenticator(nil)
	r := httptest.NewRequest(http.MethodGet, "/api", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	r.TLS = cert
	if _, err := certOnly.AuthenticateRequest(r); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("cert-only authenticator with token: %v", err)
	}
	r.Header.Del("Authorization")
	if u, err := certOnly.AuthenticateRequest(r); err != nil || u.Name != "bob" {
		t.Fatalf("cert-only authenticator with cert: %+v, %v", u, err)
	}
}
