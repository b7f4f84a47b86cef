package capture

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMeshJWT: RequestAuthentication enforced by the server-side sidecar
// of a STRICT-mTLS mesh. Host A's app calls reviews on host B through
// both sidecars with tokens; B's sidecar verifies them (jwt_authn):
//  1. inline jwks: every kind of bad token is refused with 401 (403 for
//     an audience not listed), a valid token reaches the app without its
//     Authorization header but with the payload header, no token passes
//     (and a payload header the client made up is removed);
//  2. jwksUri served by a JWKS server on the control-plane host, with
//     forwardOriginalToken: a valid token passes with its header, an
//     unknown kid is refused;
//  3. jwksUri of a JWKS server stopped before the sidecar ever fetched
//     from it (an outage, no keys cached): a valid token is refused, a
//     request without one passes; once the server is back, it passes.
func TestMeshJWT(t *testing.T) {
	m := newJWTMesh(t, "")
	hosts, weft, call, claims, key, other := m.hosts, m.weft, m.call, m.claims, m.key, m.other
	const issuer = jwtIssuer
	requestAuthn := jwtRequestAuthn
	now := m.now
	rs256 := map[string]any{"alg": "RS256", "kid": "k1", "typ": "JWT"}
	valid := e2eSign(t, rs256, claims(nil), key)
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	// Phase 1: inline jwks. Wait until B's sidecar enforces it.
	eventually(t, "RequestAuthentication applied on B", func() error {
		if code, body := call("garbage"); code != http.StatusUnauthorized {
			return fmt.Errorf("garbage token: %d %s", code, body)
		}
		return nil
	})
	// The admin API shows the filter (config_dump renders every Any).
	if dump, err := in(m.ns["b"], appBin, "call", "-url", "http://127.0.0.1:15000/config_dump"); err != nil ||
		!strings.HasPrefix(dump, "200\n") || !strings.Contains(dump, "envoy.filters.http.jwt_authn") {
		t.Errorf("B's config_dump: %v %.300s", err, dump)
	}
	matrix := []struct {
		name  string
		token string
		code  int
		body  string
	}{
		{"alg none", e2eSign(t, map[string]any{"alg": "none", "kid": "k1"}, claims(nil), nil), 401, "Jwt header [alg] is not supported"},
		{"RS256→HS256 with the public key as secret", e2eSign(t, map[string]any{"alg": "HS256", "kid": "k1"}, claims(nil), pubPEM), 401, "Jwks doesn't have key to match kid or alg from Jwt"},
		{"signed by another key", e2eSign(t, rs256, claims(nil), other), 401, "Jwt verification fails"},
		{"expired", e2eSign(t, rs256, claims(map[string]any{"exp": now.Add(-2 * time.Minute).Unix()}), key), 401, "Jwt is expired"},
		{"nbf in the future", e2eSign(t, rs256, claims(map[string]any{"nbf": now.Add(5 * time.Minute).Unix()}), key), 401, "Jwt not yet valid"},
		{"wrong issuer", e2eSign(t, rs256, claims(map[string]any{"iss": "https://evil.test"}), key), 401, "Jwt issuer is not configured"},
		{"wrong audience", e2eSign(t, rs256, claims(map[string]any{"aud": "ratings"}), key), 401, "Audiences in Jwt are not allowed"},
		{"unknown kid", e2eSign(t, map[string]any{"alg": "RS256", "kid": "k9"}, claims(nil), key), 401, "Jwks doesn't have key to match kid or alg from Jwt"},
		{"garbage", "garbage", 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"},
	}
	for _, m := range matrix {
		code, body := call(m.token)
		if code != m.code || body != m.body {
			t.Errorf("%s: %d %q, want %d %q", m.name, code, body, m.code, m.body)
		} else {
			t.Logf("%-45s → %d %s", m.name, code, body)
		}
	}
	code, body := call(valid)
	hdrs := backendHeaders(t, code, body)
	if hdrs.Get("Authorization") != "" {
		t.Errorf("valid token: the app saw the Authorization header (forwardOriginalToken is false)")
	}
	if want := strings.Split(valid, ".")[1]; hdrs.Get("X-Jwt-Payload") != want {
		t.Errorf("valid token: x-jwt-payload = %q, want %q", hdrs.Get("X-Jwt-Payload"), want)
	}
	t.Logf("%-45s → %d, app saw x-jwt-payload and no Authorization", "valid RS256 token", code)
	code, body = call("", "X-Jwt-Payload: eyJzdWIiOiJhZG1pbiJ9")
	if code != http.StatusOK {
		t.Errorf("no token: %d %s", code, body)
	} else if backendHeaders(t, code, body).Get("X-Jwt-Payload") != "" {
		t.Errorf("no token: a client-set x-jwt-payload reached the app")
	}
	t.Logf("%-45s → 200, client-set x-jwt-payload removed", "no token")

	// Phase 2: jwksUri on the control-plane host, forwardOriginalToken.
	if _, err := weft(requestAuthn(`{issuer: "`+issuer+`", audiences: [reviews], forwardOriginalToken: true, jwksUri: "http://`+hosts["cp"]+`:8081/jwks.json"}`),
		"apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "jwksUri config: valid token forwarded", func() error {
		code, body := call(valid)
		if code != http.StatusOK || backendHeaders(t, code, body).Get("Authorization") != "Bearer "+valid {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	t.Logf("%-45s → 200, Authorization forwarded", "jwksUri: valid token")
	if code, body := call(e2eSign(t, map[string]any{"alg": "RS256", "kid": "k9"}, claims(nil), key)); code != 401 ||
		body != "Jwks doesn't have key to match kid or alg from Jwt" {
		t.Errorf("jwksUri: unknown kid: %d %q", code, body)
	}
	t.Logf("%-45s → 401", "jwksUri: unknown kid")

	// Phase 3: a second JWKS server that answered once, then stopped
	// before any sidecar fetched from it.
	second := exec.Command("ip", "netns", "exec", m.ns["cp"], appBin, "file", "-addr", "0.0.0.0:8082", "-file", m.jwksFile)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second JWKS server up", func() error {
		_, err := in(m.ns["cp"], appBin, "fetch", "-url", "http://127.0.0.1:8082/jwks.json")
		return err
	})
	_ = second.Process.Kill()
	_ = second.Wait()
	if out, err := in(m.ns["cp"], appBin, "fetch", "-url", "http://127.0.0.1:8082/jwks.json"); err == nil {
		t.Fatalf("the second JWKS server still answers: %s", out)
	}
	const issuer2 = "https://down.weft.test"
	if _, err := weft(requestAuthn(`{issuer: "`+issuer2+`", jwksUri: "http://`+hosts["cp"]+`:8082/jwks.json"}`), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	valid2 := e2eSign(t, rs256, claims(map[string]any{"iss": issuer2}), key)
	eventually(t, "JWKS outage rejects valid tokens", func() error {
		if code, body := call(valid2); code != 401 || body != "Jwks remote fetch is failed" {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	t.Logf("%-45s → 401 Jwks remote fetch is failed", "JWKS outage: valid token")
	if code, body := call(""); code != http.StatusOK {
		t.Errorf("JWKS outage, no token: %d %s", code, body)
	}
	// The JWKS server comes back: after the fetch backoff, tokens pass.
	bg(t, "jwks-server-2", m.ns["cp"], appBin, "file", "-addr", "0.0.0.0:8082", "-file", m.jwksFile)
	eventually(t, "JWKS back: valid token accepted", func() error {
		if code, body := call(valid2); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	t.Logf("%-45s → 200", "JWKS back: valid token")
}

// jwtIssuer is the issuer of the JWT tests' tokens.
const jwtIssuer = "https://issuer.weft.test"

// jwtRequestAuthn is the RequestAuthentication reviews-jwt for app=reviews
// with one jwtRule (a YAML flow mapping).
func jwtRequestAuthn(rule string) string {
	return `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: reviews-jwt}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules:
  - ` + rule + "\n"
}

// jwtMesh is the JWT tests' mesh: a control plane, host A (productpage)
// calling reviews on host B (an app echoing request headers) through both
// sidecars with STRICT mTLS, a JWKS server for key k1 on the control-plane
// host (:8081/jwks.json), and reviews-jwt with the inline JWKS, audience
// reviews and outputPayloadToHeader x-jwt-payload.
type jwtMesh struct {
	hosts, ns  map[string]string
	jwksFile   string // the JWKS of key k1
	weft       func(string, ...string) (string, error)
	key, other *rsa.PrivateKey
	now        time.Time
	// call sends one request from A's app with an optional bearer token
	// and extra "Name: value" headers; it returns the status and body the
	// app saw.
	call func(token string, extra ...string) (int, string)
}

// claims are valid claims for jwtIssuer, audience reviews, subject
// alice; extra overrides.
func (m *jwtMesh) claims(extra map[string]any) map[string]any {
	c := map[string]any{"iss": jwtIssuer, "sub": "alice", "aud": "reviews", "exp": m.now.Add(time.Hour).Unix(), "iat": m.now.Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// newJWTMesh starts the mesh; extra is more config applied with it.
func newJWTMesh(t *testing.T, extra string) *jwtMesh {
	t.Helper()
	requireNetns(t)
	buildMesh(t)
	m := &jwtMesh{hosts: map[string]string{"cp": "10.82.0.1", "a": "10.82.0.2", "b": "10.82.0.3"}, now: time.Now()}
	m.ns = bridgeNet(t, "weft-jwt", m.hosts)
	var data string
	data, m.weft = controlPlane(t, m.ns["cp"], "--tls-san", m.hosts["cp"], "--xds-listen", "0.0.0.0:15012", "--xds-plaintext-listen", "")
	var err error
	if m.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if m.other, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	jwks := e2eJWKS(map[string]*rsa.PublicKey{"k1": &m.key.PublicKey})
	m.jwksFile = filepath.Join(worldDir(t), "jwks.json")
	if err := os.WriteFile(m.jwksFile, []byte(jwks), 0o644); err != nil {
		t.Fatal(err)
	}
	bg(t, "jwks-server", m.ns["cp"], appBin, "file", "-addr", "0.0.0.0:8081", "-file", m.jwksFile)
	jwksJSON, _ := json.Marshal(jwks)
	if _, err := m.weft(fmt.Sprintf(secConfig, m.hosts["b"])+`---
`+jwtRequestAuthn(`{issuer: "`+jwtIssuer+`", audiences: [reviews], outputPayloadToHeader: x-jwt-payload, jwks: `+string(jwksJSON)+`}`)+
		"---\n"+extra, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	bg(t, "app-b", m.ns["b"], appBin, "headers", "-addr", "0.0.0.0:9080")
	startMTLSSidecars(t, m.ns, m.hosts, data, m.weft, productpageReviews)
	m.call = func(token string, extra ...string) (int, string) {
		t.Helper()
		args := []string{"setpriv", "--reuid=" + appUID, "--regid=" + appUID, "--clear-groups",
			appBin, "call", "-url", "http://240.240.0.10:9080/headers"}
		if token != "" {
			args = append(args, "-H", "Authorization: Bearer "+token)
		}
		for _, h := range extra {
			args = append(args, "-H", h)
		}
		out, err := in(m.ns["a"], args...)
		if err != nil {
			return 0, fmt.Sprintf("%v: %s", err, out)
		}
		code, body, _ := strings.Cut(out, "\n")
		n, _ := strconv.Atoi(strings.TrimSpace(code))
		return n, body
	}
	return m
}

// backendHeaders decodes the app's /headers answer.
func backendHeaders(t *testing.T, code int, body string) http.Header {
	t.Helper()
	var h http.Header
	if code != http.StatusOK || json.Unmarshal([]byte(body), &h) != nil {
		t.Fatalf("request with a valid token: %d %s", code, body)
	}
	return h
}

var e2eB64 = base64.RawURLEncoding

// e2eJWKS renders RSA public keys as a JWKS.
func e2eJWKS(keys map[string]*rsa.PublicKey) string {
	type jwk struct {
		Kty string `json:"kty"`
		Kid string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
		N   string `json:"n"`
		E   string `json:"e"`
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	for kid, k := range keys {
		set.Keys = append(set.Keys, jwk{Kty: "RSA", Kid: kid, Alg: "RS256", Use: "sig",
			N: e2eB64.EncodeToString(k.N.Bytes()), E: e2eB64.EncodeToString(big.NewInt(int64(k.E)).Bytes())})
	}
	b, _ := json.Marshal(set)
	return string(b)
}

// e2eSign makes a compact JWS: RS256 with an RSA key, HS256 with a []byte
// secret, no signature with a nil key.
func e2eSign(t *testing.T, header, claims map[string]any, key any) string {
	t.Helper()
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	input := e2eB64.EncodeToString(hb) + "." + e2eB64.EncodeToString(cb)
	var sig []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		d := sha256.Sum256([]byte(input))
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:]); err != nil {
			t.Fatal(err)
		}
	case []byte:
		m := hmac.New(sha256.New, k)
		m.Write([]byte(input))
		sig = m.Sum(nil)
	}
	return input + "." + e2eB64.EncodeToString(sig)
}
