package jwtauthn

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzParseToken: the token parser never panics, and whatever it accepts
// has three segments and a decoded payload; verification of arbitrary
// tokens against the test JWKS never succeeds without a real signature.
func FuzzParseToken(f *testing.F) {
	testKeys(f)
	valid := sign(f, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)
	for _, s := range []string{valid, "", ".", "..", "a.b.c", "e30.e30.", "eyJhbGciOiJub25lIn0.e30.",
		valid + ".", strings.Repeat("A", 100) + "..", "eyJhbGciOiJSUzI1NiIsImNyaXQiOm51bGx9.eyJleHAiOjFlMzAwfQ.AA"} {
		f.Add(s)
	}
	ks, err := parseJWKS([]byte(testJWKS(f)))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tok, st := parseToken(raw)
		if st != statusOK {
			if tok != nil {
				t.Fatal("a token returned with an error")
			}
			return
		}
		if strings.Count(raw, ".") != 2 || tok.claims == nil {
			t.Fatalf("accepted %q", raw)
		}
		_ = tok.checkTime(testEpoch, time.Minute, false)
		_ = tok.audienceAllowed([]string{"weft"})
		if tok.verify(ks) == statusOK && raw != valid {
			// Only re-encodings of the valid token could verify.
			if tok.signingInput != valid[:strings.LastIndex(valid, ".")] {
				t.Fatalf("forged token verified: %q", raw)
			}
		}
	})
}

// FuzzParseJWKS: the JWKS parser never panics and keeps only usable keys.
func FuzzParseJWKS(f *testing.F) {
	testKeys(f)
	f.Add(testJWKS(f))
	f.Add(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)
	f.Add(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`)
	f.Add(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"}]}`)
	f.Add(`{"keys":null}`)
	f.Fuzz(func(t *testing.T, doc string) {
		ks, err := parseJWKS([]byte(doc))
		if err != nil {
			return
		}
		if len(ks.keys) == 0 {
			t.Fatal("a key set without keys was accepted")
		}
		for _, k := range ks.keys {
			if k.key == nil {
				t.Fatal("nil key")
			}
		}
	})
}

// BenchmarkDecodeValidToken is the per-request cost of a valid RS256
// token with an inline JWKS.
func BenchmarkDecodeValidToken(b *testing.B) {
	testKeys(b)
	clk := &clock{t: testEpoch}
	f := build(b, NewBuilder(Options{Now: clk.Now}), istioConfig(map[string]*jwtv3.JwtProvider{"p": {
		Issuer: "https://issuer.example", JwksSourceSpecifier: localJWKS(testJWKS(b))}}))
	tok := sign(b, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)
	b.ReportAllocs()
	for b.Loop() {
		if _, rep := call(f, "/", tok); rep != nil {
			b.Fatal(rep.Body)
		}
	}
}

// FuzzBuild: any typed_config bytes either compile or are refused with an
// error, never a panic; a compiled filter survives a request.
func FuzzBuild(f *testing.F) {
	testKeys(f)
	for _, cfg := range []*jwtv3.JwtAuthentication{
		istioConfig(map[string]*jwtv3.JwtProvider{"p": {Issuer: "https://issuer.example", JwksSourceSpecifier: localJWKS(testJWKS(f)),
			FromHeaders: []*jwtv3.JwtHeader{{Name: "x-jwt", ValuePrefix: "T "}}, ClaimToHeaders: []*jwtv3.JwtClaimToHeader{{HeaderName: "x-s", ClaimName: "sub"}}}}),
		istioConfig(map[string]*jwtv3.JwtProvider{"r": {Issuer: "i", JwksSourceSpecifier: remoteSource("http://127.0.0.1:1/jwks", time.Minute)}}),
	} {
		b, err := proto.Marshal(cfg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	tok := sign(f, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		flt, err := NewBuilder(Options{Now: func() time.Time { return testEpoch }}).Build(&anypb.Any{TypeUrl: TypeURL, Value: b})
		if err != nil {
			return
		}
		r := httptest.NewRequest("GET", "http://svc/x?access_token=garbage", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		ctx, cancel := context.WithCancel(r.Context())
		cancel() // never wait for a remote JWKS
		_ = flt.Decode(&httpfilter.Call{Request: r.WithContext(ctx)})
	})
}
