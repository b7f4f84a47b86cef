package jwtauthn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"math/big"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Test keys, generated once per test binary.
var (
	keysOnce  sync.Once
	rsaKey    *rsa.PrivateKey
	rsaKey2   *rsa.PrivateKey
	ecKey     *ecdsa.PrivateKey
	edPub     ed25519.PublicKey
	edPriv    ed25519.PrivateKey
	testEpoch = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		rsaKey, _ = rsa.GenerateKey(rand.Reader, 2048)
		rsaKey2, _ = rsa.GenerateKey(rand.Reader, 2048)
		ecKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		edPub, edPriv, _ = ed25519.GenerateKey(rand.Reader)
	})
}

// jwksOf renders public keys as a JWKS with the given kids.
func jwksOf(t testing.TB, keys map[string]any) string {
	t.Helper()
	var set jose.JSONWebKeySet
	for kid, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k, KeyID: kid})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testJWKS is the JWKS of rsaKey (kid "rsa"), ecKey ("ec") and the
// ed25519 key ("ed").
func testJWKS(t testing.TB) string {
	testKeys(t)
	return jwksOf(t, map[string]any{"rsa": &rsaKey.PublicKey, "ec": &ecKey.PublicKey, "ed": edPub})
}

// sign makes a compact JWS with header h and claims c. key is an RSA, EC,
// Ed25519 private key or an HMAC secret ([]byte); alg picks the scheme.
func sign(t testing.TB, h map[string]any, c map[string]any, key any) string {
	t.Helper()
	hb, _ := json.Marshal(h)
	cb, _ := json.Marshal(c)
	input := b64.EncodeToString(hb) + "." + b64.EncodeToString(cb)
	alg, _ := h["alg"].(string)
	var sig []byte
	var err error
	spec := algs[alg]
	digest := func() []byte {
		if spec.hash == 0 {
			return nil
		}
		hh := spec.hash.New()
		hh.Write([]byte(input))
		return hh.Sum(nil)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if spec.kind == "PSS" {
			sig, err = rsa.SignPSS(rand.Reader, k, spec.hash, digest(), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			sig, err = rsa.SignPKCS1v15(rand.Reader, k, spec.hash, digest())
		}
	case *ecdsa.PrivateKey:
		var r, s *big.Int
		r, s, err = ecdsa.Sign(rand.Reader, k, digest())
		size := (k.Curve.Params().BitSize + 7) / 8
		sig = append(r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))...)
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	case []byte:
		hf := crypto.SHA256.New
		if spec.hash != 0 {
			hf = spec.hash.New
		}
		m := hmac.New(hf, k)
		m.Write([]byte(input))
		sig = m.Sum(nil)
	case nil:
	}
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64.EncodeToString(sig)
}

// claims are a valid token's claims for issuer "https://issuer.example"
// and audience "weft", valid around testEpoch; extra overrides (nil
// deletes).
func claims(extra map[string]any) map[string]any {
	c := map[string]any{
		"iss": "https://issuer.example", "sub": "alice", "aud": []string{"weft", "other"},
		"azp": "web-ui", "exp": testEpoch.Add(time.Hour).Unix(), "iat": testEpoch.Add(-time.Minute).Unix(),
		"groups": []string{"admin", "dev"}, "email": "alice@example.com",
		"nested": map[string]any{"team": "core"},
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// istioConfig is JwtAuthentication as discovery generates it for the given
// providers: requires_any [each, allow_missing] on prefix "/".
func istioConfig(providers map[string]*jwtv3.JwtProvider) *jwtv3.JwtAuthentication {
	var reqs []*jwtv3.JwtRequirement
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: n}})
	}
	reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}})
	return &jwtv3.JwtAuthentication{
		Providers: providers,
		Rules: []*jwtv3.RequirementRule{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
				RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: reqs}}}},
		}},
		BypassCorsPreflight: true,
	}
}

func localJWKS(doc string) *jwtv3.JwtProvider_LocalJwks {
	return &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: doc}}}
}

func remoteSource(uri string, cache time.Duration) *jwtv3.JwtProvider_RemoteJwks {
	return &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
		HttpUri: &corev3.HttpUri{Uri: uri, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: "outbound|443||jwks.example"},
			Timeout: durationpb.New(2 * time.Second)},
		CacheDuration: durationpb.New(cache),
	}}
}

// build compiles cfg with b.
func build(t testing.TB, b *Builder, cfg *jwtv3.JwtAuthentication) httpfilter.Filter {
	t.Helper()
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := b.Build(a)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// call runs the filter on a GET to path with an optional bearer token.
func call(f httpfilter.Filter, path, bearer string) (*httpfilter.Call, *httpfilter.Reply) {
	r := httptest.NewRequest("GET", "http://svc.example"+path, nil)
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	c := &httpfilter.Call{Request: r, Conn: &httpfilter.Conn{}}
	return c, f.Decode(c)
}

func prefixMatch(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func emptyPB() *emptypb.Empty { return &emptypb.Empty{} }
