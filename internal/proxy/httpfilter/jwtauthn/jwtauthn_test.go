package jwtauthn

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
)

// inlineFilter is a filter with one provider using the inline test JWKS,
// audiences ["weft"], forward_payload_header x-jwt-payload and a few
// claim headers, on clock clk.
func inlineFilter(t *testing.T, clk *clock, mod func(*jwtv3.JwtProvider)) httpfilter.Filter {
	t.Helper()
	p := &jwtv3.JwtProvider{
		Issuer: "https://issuer.example", Audiences: []string{"weft"},
		JwksSourceSpecifier:  localJWKS(testJWKS(t)),
		ForwardPayloadHeader: "x-jwt-payload", PayloadInMetadata: "https://issuer.example",
		ClaimToHeaders: []*jwtv3.JwtClaimToHeader{
			{HeaderName: "x-sub", ClaimName: "sub"}, {HeaderName: "x-groups", ClaimName: "groups"},
			{HeaderName: "x-team", ClaimName: "nested.team"}, {HeaderName: "x-none", ClaimName: "absent"},
		},
	}
	if mod != nil {
		mod(p)
	}
	return build(t, NewBuilder(Options{Now: clk.Now}), istioConfig(map[string]*jwtv3.JwtProvider{"origins-0": p}))
}

// TestRejectionMatrix: every kind of bad token is refused with Envoy's
// status and message; a request without a token passes.
func TestRejectionMatrix(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	f := inlineFilter(t, clk, nil)
	rsaHdr := map[string]any{"alg": "RS256", "kid": "rsa", "typ": "JWT"}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	valid := sign(t, rsaHdr, claims(nil), rsaKey)
	parts := strings.Split(valid, ".")
	cases := []struct {
		name  string
		token string
		code  int
		body  status
	}{
		{"alg none", sign(t, map[string]any{"alg": "none", "kid": "rsa"}, claims(nil), nil), 401, statusHeaderAlgNotImpl},
		{"alg none, valid signature kept", parts[0][:0] + b64.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "." + parts[2], 401, statusHeaderAlgNotImpl},
		{"RS256→HS256, PEM public key as secret", sign(t, map[string]any{"alg": "HS256", "kid": "rsa"}, claims(nil), pubPEM), 401, statusKidAlgMismatch},
		{"RS256→HS256, DER public key as secret", sign(t, map[string]any{"alg": "HS256"}, claims(nil), pubDER), 401, statusKidAlgMismatch},
		{"bad signature (other key)", sign(t, rsaHdr, claims(nil), rsaKey2), 401, statusVerificationFail},
		{"tampered payload", parts[0] + "." + b64.EncodeToString([]byte(`{"iss":"https://issuer.example","sub":"root","aud":"weft"}`)) + "." + parts[2], 401, statusVerificationFail},
		{"expired beyond skew", sign(t, rsaHdr, claims(map[string]any{"exp": testEpoch.Add(-61 * time.Second).Unix()}), rsaKey), 401, statusExpired},
		{"nbf in the future beyond skew", sign(t, rsaHdr, claims(map[string]any{"nbf": testEpoch.Add(61 * time.Second).Unix()}), rsaKey), 401, statusNotYetValid},
		{"wrong issuer", sign(t, rsaHdr, claims(map[string]any{"iss": "https://evil.example"}), rsaKey), 401, statusUnknownIssuer},
		{"no issuer", sign(t, rsaHdr, claims(map[string]any{"iss": nil}), rsaKey), 401, statusUnknownIssuer},
		{"audience not listed", sign(t, rsaHdr, claims(map[string]any{"aud": "someone-else"}), rsaKey), 403, statusAudienceNotAllowed},
		{"no audience", sign(t, rsaHdr, claims(map[string]any{"aud": nil}), rsaKey), 403, statusAudienceNotAllowed},
		{"unknown kid", sign(t, map[string]any{"alg": "RS256", "kid": "nope"}, claims(nil), rsaKey), 401, statusKidAlgMismatch},
		{"kid of a key of another type", sign(t, map[string]any{"alg": "RS256", "kid": "ec"}, claims(nil), rsaKey), 401, statusKidAlgMismatch},
		{"ES256 signed by RSA kid", sign(t, map[string]any{"alg": "ES256", "kid": "rsa"}, claims(nil), ecKey), 401, statusKidAlgMismatch},
		{"garbage", "garbage", 401, statusBadFormat},
		{"four segments", valid + ".x", 401, statusBadFormat},
		{"header not JSON", "bm90anNvbg." + parts[1] + "." + parts[2], 401, statusHeaderParse},
		{"exp not a number", sign(t, rsaHdr, claims(map[string]any{"exp": "tomorrow"}), rsaKey), 401, "Jwt payload [exp] field is not a positive 64 bit integer"},
		{"iss not a string", sign(t, rsaHdr, claims(map[string]any{"iss": 7}), rsaKey), 401, "Jwt payload [iss] field is not a string"},
		{"kid not a string", sign(t, map[string]any{"alg": "RS256", "kid": 1}, claims(nil), rsaKey), 401, statusHeaderBadKid},
		{"signature not base64url", parts[0] + "." + parts[1] + ".A", 401, statusSignatureParse},
		{"crit header", sign(t, map[string]any{"alg": "RS256", "kid": "rsa", "crit": []string{"x"}}, claims(nil), rsaKey), 401, statusHeaderParse},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			call, rep := call(f, "/api", c.token)
			if rep == nil {
				t.Fatalf("token accepted; metadata %v", call.Metadata)
			}
			if rep.Status != c.code || rep.Body != string(c.body) {
				t.Fatalf("reply %d %q, want %d %q", rep.Status, rep.Body, c.code, c.body)
			}
			if !strings.HasPrefix(rep.Header.Get("WWW-Authenticate"), `Bearer realm="http://svc.example/api"`) {
				t.Errorf("WWW-Authenticate = %q", rep.Header.Get("WWW-Authenticate"))
			}
			if call.Metadata != nil {
				t.Errorf("metadata written on failure: %v", call.Metadata)
			}
		})
	}
	t.Run("no token passes, spoofed output headers removed", func(t *testing.T) {
		r := httptest.NewRequest("GET", "http://svc.example/api", nil)
		r.Header.Set("X-Jwt-Payload", "eyJzdWIiOiJhZG1pbiJ9")
		r.Header.Set("X-Sub", "admin")
		c := &httpfilter.Call{Request: r}
		if rep := f.Decode(c); rep != nil || c.Metadata != nil {
			t.Fatalf("reply %v metadata %v", rep, c.Metadata)
		}
		if r.Header.Get("X-Jwt-Payload") != "" || r.Header.Get("X-Sub") != "" {
			t.Errorf("client-set output headers reached the app: %v", r.Header)
		}
	})
	t.Run("skew tolerated", func(t *testing.T) {
		for _, c := range []map[string]any{
			{"exp": testEpoch.Add(-59 * time.Second).Unix()},
			{"nbf": testEpoch.Add(59 * time.Second).Unix()},
		} {
			if _, rep := call(f, "/", sign(t, rsaHdr, claims(c), rsaKey)); rep != nil {
				t.Errorf("%v: %d %s", c, rep.Status, rep.Body)
			}
		}
	})
}

// TestValidTokens: each supported algorithm verifies, and success writes
// the metadata and headers RBAC and the upstream rely on.
func TestValidTokens(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	f := inlineFilter(t, clk, nil)
	for _, tc := range []struct {
		alg, kid string
		key      any
	}{
		{"RS256", "rsa", rsaKey}, {"RS384", "rsa", rsaKey}, {"RS512", "rsa", rsaKey},
		{"PS256", "rsa", rsaKey}, {"PS384", "rsa", rsaKey}, {"PS512", "rsa", rsaKey},
		{"ES256", "ec", ecKey}, {"EdDSA", "ed", edPriv}, {"RS256", "", rsaKey}, {"ES256", "", ecKey},
	} {
		t.Run(tc.alg+"/"+tc.kid, func(t *testing.T) {
			h := map[string]any{"alg": tc.alg}
			if tc.kid != "" {
				h["kid"] = tc.kid
			}
			tok := sign(t, h, claims(nil), tc.key)
			c, rep := call(f, "/x", tok)
			if rep != nil {
				t.Fatalf("rejected: %d %s", rep.Status, rep.Body)
			}
			hd := c.Request.Header
			if hd.Get("Authorization") != "" {
				t.Error("the token header was forwarded")
			}
			if want := strings.Split(tok, ".")[1]; hd.Get("X-Jwt-Payload") != want {
				t.Errorf("x-jwt-payload = %q, want %q", hd.Get("X-Jwt-Payload"), want)
			}
			for k, want := range map[string]string{"X-Sub": "alice", "X-Groups": "admin,dev", "X-Team": "core", "X-None": ""} {
				if got := hd.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestMetadata pins the dynamic metadata the RBAC filter reads.
func TestMetadata(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	f := inlineFilter(t, clk, nil)
	c, rep := call(f, "/", sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey))
	if rep != nil {
		t.Fatalf("rejected: %s", rep.Body)
	}
	get := func(ns, key string) any {
		v, ok := c.GetMetadata(ns, key)
		if !ok {
			t.Errorf("metadata %s/%s missing", ns, key)
		}
		return v
	}
	if p := get(MetadataNamespace, "request.auth.principal"); p != "https://issuer.example/alice" {
		t.Errorf("principal = %#v", p)
	}
	if a := get(MetadataNamespace, "request.auth.audiences"); !reflect.DeepEqual(a, []string{"weft", "other"}) {
		t.Errorf("audiences = %#v", a)
	}
	if p := get(MetadataNamespace, "request.auth.presenter"); p != "web-ui" {
		t.Errorf("presenter = %#v", p)
	}
	cl, _ := get(MetadataNamespace, "request.auth.claims").(map[string]any)
	if cl["sub"] != "alice" || !reflect.DeepEqual(cl["groups"], []any{"admin", "dev"}) || cl["email"] != "alice@example.com" {
		t.Errorf("claims = %#v", cl)
	}
	payload, _ := get("envoy.filters.http.jwt_authn", "https://issuer.example").(map[string]any)
	if payload["iss"] != "https://issuer.example" {
		t.Errorf("payload metadata = %#v", payload)
	}
	// normalize_payload_in_metadata splits space-delimited claims.
	f = inlineFilter(t, clk, func(p *jwtv3.JwtProvider) {
		p.NormalizePayloadInMetadata = &jwtv3.JwtProvider_NormalizePayload{SpaceDelimitedClaims: []string{"scope", "permission"}}
	})
	c, rep = call(f, "/", sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(map[string]any{"scope": "read  write"}), rsaKey))
	if rep != nil {
		t.Fatal(rep.Body)
	}
	cl, _ = get(MetadataNamespace, KeyClaims).(map[string]any)
	if !reflect.DeepEqual(cl["scope"], []any{"read", "write"}) {
		t.Errorf("scope = %#v, want split", cl["scope"])
	}
	// Without sub there is no principal (requestPrincipals cannot match).
	c, rep = call(f, "/", sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(map[string]any{"sub": nil}), rsaKey))
	if rep != nil {
		t.Fatal(rep.Body)
	}
	if _, ok := c.GetMetadata(MetadataNamespace, KeyPrincipal); ok {
		t.Error("principal set for a token without sub")
	}
}

// TestLocations: from_headers with prefix, from_params, forward.
func TestLocations(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	f := inlineFilter(t, clk, func(p *jwtv3.JwtProvider) {
		p.FromHeaders = []*jwtv3.JwtHeader{{Name: "x-jwt", ValuePrefix: "Token "}}
		p.FromParams = []string{"tok"}
		p.Forward = true
	})
	tok := sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)
	r, _ := http.NewRequest("GET", "http://svc/p", nil)
	r.Header.Set("X-Jwt", "Token "+tok)
	c := &httpfilter.Call{Request: r}
	if rep := f.Decode(c); rep != nil {
		t.Fatalf("header with prefix: %s", rep.Body)
	}
	if r.Header.Get("X-Jwt") == "" {
		t.Error("forward: true, but the token header was removed")
	}
	r, _ = http.NewRequest("GET", "http://svc/p?tok="+tok, nil)
	if rep := f.Decode(&httpfilter.Call{Request: r}); rep != nil {
		t.Fatalf("param: %s", rep.Body)
	}
	// Authorization is not one of this provider's locations: ignored.
	r, _ = http.NewRequest("GET", "http://svc/p", nil)
	r.Header.Set("Authorization", "Bearer garbage")
	if rep := f.Decode(&httpfilter.Call{Request: r}); rep != nil {
		t.Fatalf("a token outside the provider's locations was checked: %s", rep.Body)
	}
	r.Header.Set("X-Jwt", "Token garbage")
	if rep := f.Decode(&httpfilter.Call{Request: r}); rep == nil || rep.Status != 401 {
		t.Fatal("garbage in the provider's header passed")
	}
}

// TestMultipleProviders: each token is checked by the provider of its
// issuer; a token of neither fails.
func TestMultipleProviders(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	cfg := istioConfig(map[string]*jwtv3.JwtProvider{
		"origins-0": {Issuer: "https://issuer.example", JwksSourceSpecifier: localJWKS(jwksOf(t, map[string]any{"a": &rsaKey.PublicKey}))},
		"origins-1": {Issuer: "https://second.example", JwksSourceSpecifier: localJWKS(jwksOf(t, map[string]any{"b": &rsaKey2.PublicKey})),
			PayloadInMetadata: "second"},
	})
	f := build(t, NewBuilder(Options{Now: clk.Now}), cfg)
	first := sign(t, map[string]any{"alg": "RS256", "kid": "a"}, claims(nil), rsaKey)
	second := sign(t, map[string]any{"alg": "RS256", "kid": "b"}, claims(map[string]any{"iss": "https://second.example", "sub": "bob"}), rsaKey2)
	if _, rep := call(f, "/", first); rep != nil {
		t.Fatalf("first issuer: %s", rep.Body)
	}
	c, rep := call(f, "/", second)
	if rep != nil {
		t.Fatalf("second issuer: %s", rep.Body)
	}
	if p, _ := c.GetMetadata(MetadataNamespace, KeyPrincipal); p != "https://second.example/bob" {
		t.Errorf("principal %v", p)
	}
	if _, ok := c.GetMetadata(PayloadNamespace, "second"); !ok {
		t.Error("no payload metadata for the second provider")
	}
	// The second issuer's token signed with the first issuer's key.
	forged := sign(t, map[string]any{"alg": "RS256", "kid": "b"}, claims(map[string]any{"iss": "https://second.example"}), rsaKey)
	if _, rep := call(f, "/", forged); rep == nil || rep.Body != string(statusVerificationFail) {
		t.Fatalf("forged: %v", rep)
	}
	other := sign(t, map[string]any{"alg": "RS256", "kid": "a"}, claims(map[string]any{"iss": "https://third.example"}), rsaKey)
	if _, rep := call(f, "/", other); rep == nil || rep.Body != string(statusUnknownIssuer) {
		t.Fatalf("unknown issuer: %v", rep)
	}
}

// TestHMACOnlyWithOctKey: HS256 verifies only against a JWKS "oct" key.
func TestHMACOnlyWithOctKey(t *testing.T) {
	clk := &clock{t: testEpoch}
	secret := []byte("0123456789abcdef0123456789abcdef")
	cfg := istioConfig(map[string]*jwtv3.JwtProvider{"p": {Issuer: "https://issuer.example",
		JwksSourceSpecifier: localJWKS(jwksOf(t, map[string]any{"h": secret}))}})
	f := build(t, NewBuilder(Options{Now: clk.Now}), cfg)
	if _, rep := call(f, "/", sign(t, map[string]any{"alg": "HS256", "kid": "h"}, claims(nil), secret)); rep != nil {
		t.Fatalf("HS256 with oct key: %s", rep.Body)
	}
	if _, rep := call(f, "/", sign(t, map[string]any{"alg": "HS256", "kid": "h"}, claims(nil), []byte("wrong"))); rep == nil {
		t.Fatal("HS256 with a wrong secret passed")
	}
}

// TestBadInlineJWKS: an inline JWKS without usable keys rejects tokens
// (and still lets requests without one through).
func TestBadInlineJWKS(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	cfg := istioConfig(map[string]*jwtv3.JwtProvider{"p": {Issuer: "https://issuer.example", JwksSourceSpecifier: localJWKS(`{"keys":[{"kty":"XX"}]}`)}})
	f := build(t, NewBuilder(Options{Now: clk.Now}), cfg)
	if _, rep := call(f, "/", sign(t, map[string]any{"alg": "RS256"}, claims(nil), rsaKey)); rep == nil || rep.Status != 401 {
		t.Fatalf("token accepted with a JWKS without keys: %v", rep)
	}
	if _, rep := call(f, "/", ""); rep != nil {
		t.Fatal("request without token rejected")
	}
}

// TestRequirements: provider_name alone requires a token;
// allow_missing_or_failed lets everything through; rules match by path.
func TestRequirements(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	cfg := istioConfig(map[string]*jwtv3.JwtProvider{"p": {Issuer: "https://issuer.example", JwksSourceSpecifier: localJWKS(testJWKS(t))}})
	cfg.Rules = append([]*jwtv3.RequirementRule{
		{Match: prefixMatch("/strict"), RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
			RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "p"}}}},
		{Match: prefixMatch("/lax"), RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
			RequiresType: &jwtv3.JwtRequirement_AllowMissingOrFailed{AllowMissingOrFailed: emptyPB()}}}},
		{Match: prefixMatch("/open")},
	}, cfg.Rules...)
	f := build(t, NewBuilder(Options{Now: clk.Now}), cfg)
	good := sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)
	for _, tc := range []struct {
		path, tok string
		want      int // 0: passes
	}{
		{"/strict", "", 401}, {"/strict", good, 0}, {"/lax", "garbage", 0}, {"/open", "garbage", 0},
		{"/other", "garbage", 401}, {"/other", "", 0},
	} {
		_, rep := call(f, tc.path, tc.tok)
		got := 0
		if rep != nil {
			got = rep.Status
		}
		if got != tc.want {
			t.Errorf("%s token=%q: %d, want %d", tc.path, tc.tok, got, tc.want)
		}
	}
	// An unknown provider is refused at build time.
	bad := istioConfig(map[string]*jwtv3.JwtProvider{})
	bad.Rules[0].GetRequires().GetRequiresAny().Requirements[0] = &jwtv3.JwtRequirement{
		RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "ghost"}}
	if _, err := NewBuilder(Options{}).compile(bad); err == nil || !strings.Contains(err.Error(), "ghost") {
		t.Fatalf("unknown provider: %v", err)
	}
}

// TestCORSPreflightBypass: preflights carry no token and are not checked.
func TestCORSPreflightBypass(t *testing.T) {
	clk := &clock{t: testEpoch}
	f := inlineFilter(t, clk, nil)
	r, _ := http.NewRequest("OPTIONS", "http://svc/", nil)
	r.Header.Set("Origin", "http://ui")
	r.Header.Set("Access-Control-Request-Method", "POST")
	r.Header.Set("Authorization", "Bearer garbage")
	if rep := f.Decode(&httpfilter.Call{Request: r}); rep != nil {
		t.Fatalf("preflight rejected: %s", rep.Body)
	}
}

// requirePrincipal stands in for the RBAC filter of an AuthorizationPolicy
// with requestPrincipals ["https://issuer.example/*"]: it reads what the
// JWT filter left in the metadata.
type requirePrincipal struct{}

func (requirePrincipal) Decode(c *httpfilter.Call) *httpfilter.Reply {
	p, _ := c.GetMetadata("istio_authn", "request.auth.principal")
	if s, ok := p.(string); ok && strings.HasPrefix(s, "https://issuer.example/") {
		return nil
	}
	return &httpfilter.Reply{Status: http.StatusForbidden, Body: "RBAC: access denied", Flags: "RBAC"}
}

// TestRequireTokenDownstream: RequestAuthentication with an authorization
// filter after it, run as the engine runs a chain (one Call through the
// filters in order): no token is denied by authorization (403), an invalid
// token by authentication (401), a valid one passes both.
func TestRequireTokenDownstream(t *testing.T) {
	testKeys(t)
	clk := &clock{t: testEpoch}
	chain := []httpfilter.Filter{inlineFilter(t, clk, nil), requirePrincipal{}}
	run := func(tok string) (*httpfilter.Call, *httpfilter.Reply) {
		r := httptest.NewRequest("GET", "http://svc/", nil)
		if tok != "" {
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		c := &httpfilter.Call{Request: r}
		for _, f := range chain {
			if rep := f.Decode(c); rep != nil {
				return c, rep
			}
		}
		return c, nil
	}
	if _, rep := run(""); rep == nil || rep.Status != 403 {
		t.Fatalf("no token: %v, want 403 from authorization", rep)
	}
	if _, rep := run("garbage"); rep == nil || rep.Status != 401 {
		t.Fatalf("bad token: %v, want 401 from authentication", rep)
	}
	if c, rep := run(sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)); rep != nil {
		t.Fatalf("valid token: %d %s (metadata %v)", rep.Status, rep.Body, c.Metadata)
	}
}
