package jwtauthn

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
)

// jwksServer serves a JWKS that tests change, counting fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	doc     string
	code    int
	fetches int
	fetched chan struct{}
}

func newJWKSServer(t *testing.T, doc string) *jwksServer {
	s := &jwksServer{doc: doc, code: 200, fetched: make(chan struct{}, 100)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.fetches++
		doc, code := s.doc, s.code
		s.mu.Unlock()
		w.WriteHeader(code)
		_, _ = w.Write([]byte(doc))
		s.fetched <- struct{}{}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(doc string, code int) {
	s.mu.Lock()
	s.doc, s.code = doc, code
	s.mu.Unlock()
}

func (s *jwksServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

// remoteFilter is a filter whose single provider fetches uri.
func remoteFilter(t *testing.T, b *Builder, uri string) httpfilter.Filter {
	return build(t, b, istioConfig(map[string]*jwtv3.JwtProvider{"p": {
		Issuer: "https://issuer.example", JwksSourceSpecifier: remoteSource(uri, 10*time.Minute)}}))
}

func expect(t *testing.T, f httpfilter.Filter, tok string, want status) {
	t.Helper()
	_, rep := call(f, "/", tok)
	got := statusOK
	if rep != nil {
		got = status(rep.Body)
	}
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestRemoteJWKSCacheAndUnknownKid: keys are fetched once and cached
// (also across config updates); an unknown kid refetches at most every
// 30 s, which picks up rotated keys.
func TestRemoteJWKSCacheAndUnknownKid(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, jwksOf(t, map[string]any{"k1": &rsaKey.PublicKey}))
	clk := &clock{t: testEpoch}
	b := NewBuilder(Options{Now: clk.Now})
	f := remoteFilter(t, b, srv.URL)
	k1 := sign(t, map[string]any{"alg": "RS256", "kid": "k1"}, claims(nil), rsaKey)
	k2 := sign(t, map[string]any{"alg": "RS256", "kid": "k2"}, claims(nil), rsaKey2)
	expect(t, f, k1, statusOK)
	expect(t, f, k1, statusOK)
	expect(t, remoteFilter(t, b, srv.URL), k1, statusOK) // a config update keeps the keys
	if n := srv.count(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	// Unknown kid: one refetch (still unknown), then none for 30 s.
	expect(t, f, k2, statusKidAlgMismatch)
	expect(t, f, k2, statusKidAlgMismatch)
	if n := srv.count(); n != 2 {
		t.Fatalf("%d fetches after unknown kids, want 2", n)
	}
	// Rotation: the issuer publishes k2; within 30 s it is not seen yet.
	srv.set(jwksOf(t, map[string]any{"k1": &rsaKey.PublicKey, "k2": &rsaKey2.PublicKey}), 200)
	clk.Add(29 * time.Second)
	expect(t, f, k2, statusKidAlgMismatch)
	clk.Add(2 * time.Second)
	expect(t, f, k2, statusOK)
	if n := srv.count(); n != 3 {
		t.Fatalf("%d fetches after rotation, want 3", n)
	}
}

// TestRemoteJWKSOutageBeforeFirstFetch: no keys ever fetched means every
// token fails; requests without a token still pass.
func TestRemoteJWKSOutageBeforeFirstFetch(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, testJWKS(t))
	uri := srv.URL
	srv.Close()
	clk := &clock{t: testEpoch}
	f := remoteFilter(t, NewBuilder(Options{Now: clk.Now}), uri)
	tok := sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(nil), rsaKey)
	expect(t, f, tok, statusJwksFetchFail)
	expect(t, f, tok, statusJwksFetchFail) // within the backoff: no new attempt, still failing
	expect(t, f, "", statusOK)
	// A server answering errors or junk is an outage too.
	for _, tc := range []struct {
		doc  string
		code int
	}{{"oops", 500}, {"not json", 200}, {`{"keys":[]}`, 200}, {strings.Repeat(" ", maxJWKSSize+10) + "{}", 200}} {
		s := newJWKSServer(t, tc.doc)
		s.set(tc.doc, tc.code)
		expect(t, remoteFilter(t, NewBuilder(Options{Now: clk.Now}), s.URL), tok, statusJwksFetchFail)
	}
}

// TestRemoteJWKSFailureKeepsKeysUntilExpiry: when refetching fails the
// cached keys keep working until their cache duration ends, then tokens
// fail until a fetch succeeds again.
func TestRemoteJWKSFailureKeepsKeysUntilExpiry(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, testJWKS(t))
	clk := &clock{t: testEpoch}
	f := remoteFilter(t, NewBuilder(Options{Now: clk.Now}), srv.URL)
	tok := sign(t, map[string]any{"alg": "RS256", "kid": "rsa"}, claims(map[string]any{"exp": testEpoch.Add(24 * time.Hour).Unix()}), rsaKey)
	expect(t, f, tok, statusOK)
	<-srv.fetched
	srv.set("down", 503)
	// Past 80% of the 10 min cache: a background refetch, which fails.
	clk.Add(9 * time.Minute)
	expect(t, f, tok, statusOK)
	<-srv.fetched
	expect(t, f, tok, statusOK)
	clk.Add(61 * time.Second) // the keys expired; the refetch fails
	expect(t, f, tok, statusJwksFetchFail)
	srv.set(testJWKS(t), 200)
	clk.Add(maxFailureBackoff)
	expect(t, f, tok, statusOK)
}

// TestRemoteJWKSURI: only absolute http(s) URIs are accepted.
func TestRemoteJWKSURI(t *testing.T) {
	for _, u := range []string{"", "file:///etc/passwd", "/jwks", "http://"} {
		cfg := istioConfig(map[string]*jwtv3.JwtProvider{"p": {Issuer: "i", JwksSourceSpecifier: remoteSource(u, time.Minute)}})
		if _, err := NewBuilder(Options{}).compile(cfg); err == nil {
			t.Errorf("uri %q accepted", u)
		}
	}
}
