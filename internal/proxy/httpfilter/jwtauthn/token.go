package jwtauthn

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	_ "crypto/sha256" // SHA-256 for RS256, PS256, ES256, HS256
	_ "crypto/sha512" // SHA-384 and SHA-512
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strings"
	"time"
)

// status is the outcome of verifying one token, worded as Envoy's
// jwt_authn words it: the text is the body of the 401 (or 403) reply.
type status string

// The statuses Envoy's jwt_authn filter reports (jwt_verify_lib's
// status.cc), those weft can produce.
const (
	statusOK                 = status("")
	statusMissing            = status("Jwt is missing")
	statusBadFormat          = status("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
	statusHeaderBase64       = status("Jwt header is an invalid Base64url encoded")
	statusHeaderParse        = status("Jwt header is an invalid JSON")
	statusHeaderBadKid       = status("Jwt header [kid] field is not a string")
	statusHeaderBadAlg       = status("Jwt header [alg] field is required and must be a string")
	statusHeaderAlgNotImpl   = status("Jwt header [alg] is not supported")
	statusPayloadBase64      = status("Jwt payload is an invalid Base64url encoded")
	statusPayloadParse       = status("Jwt payload is an invalid JSON")
	statusSignatureParse     = status("Jwt signature is an invalid Base64url encoded")
	statusBadAud             = status("Jwt payload [aud] field is not a string or string list")
	statusExpired            = status("Jwt is expired")
	statusNotYetValid        = status("Jwt not yet valid")
	statusNoExpiration       = status("Jwt doesn't have an expiration")
	statusUnknownIssuer      = status("Jwt issuer is not configured")
	statusAudienceNotAllowed = status("Audiences in Jwt are not allowed")
	statusKidAlgMismatch     = status("Jwks doesn't have key to match kid or alg from Jwt")
	statusVerificationFail   = status("Jwt verification fails")
	statusJwksFetchFail      = status("Jwks remote fetch is failed")
	statusJwksNoValidKeys    = status("Jwks doesn't have any valid public key")
)

// maxTokenSize bounds what the parser looks at; tokens in headers are
// bounded by the 60 KiB header limit anyway.
const maxTokenSize = 64 << 10

// token is a parsed, not yet verified, compact JWS.
type token struct {
	alg, kid string
	// signingInput is "header.payload", sig the decoded signature.
	signingInput string
	sig          []byte
	// payloadSeg is the payload as it appears in the token (base64url).
	payloadSeg string
	// claims is the decoded payload.
	claims map[string]any
	iss    string
	sub    string
	azp    string
	aud    []string
	exp    *int64
	nbf    *int64
}

var b64 = base64.RawURLEncoding

// decodeSeg decodes one base64url segment; Envoy tolerates padding.
func decodeSeg(s string) ([]byte, error) {
	return b64.DecodeString(strings.TrimRight(s, "="))
}

// parseToken parses a compact JWS without verifying it. It never panics on
// any input (see FuzzParseToken).
func parseToken(raw string) (*token, status) {
	if len(raw) > maxTokenSize {
		return nil, statusBadFormat
	}
	h, rest, ok := strings.Cut(raw, ".")
	if !ok {
		return nil, statusBadFormat
	}
	p, s, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(s, ".") {
		return nil, statusBadFormat
	}
	hb, err := decodeSeg(h)
	if err != nil {
		return nil, statusHeaderBase64
	}
	var hdr map[string]any
	if err := strictJSON(hb, &hdr); err != nil {
		return nil, statusHeaderParse
	}
	t := &token{signingInput: h + "." + p, payloadSeg: p}
	alg, ok := hdr["alg"].(string)
	if !ok {
		return nil, statusHeaderBadAlg
	}
	t.alg = alg
	if k, present := hdr["kid"]; present {
		if t.kid, ok = k.(string); !ok {
			return nil, statusHeaderBadKid
		}
	}
	if crit, present := hdr["crit"]; present && crit != nil {
		// No critical extension is understood: RFC 7515 4.1.11 says reject.
		return nil, statusHeaderParse
	}
	pb, err := decodeSeg(p)
	if err != nil {
		return nil, statusPayloadBase64
	}
	if err := strictJSON(pb, &t.claims); err != nil || t.claims == nil {
		return nil, statusPayloadParse
	}
	if t.sig, err = decodeSeg(s); err != nil {
		return nil, statusSignatureParse
	}
	if st := t.readClaims(); st != statusOK {
		return nil, st
	}
	return t, statusOK
}

// strictJSON decodes one JSON object with nothing after it.
func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}

// readClaims extracts the registered claims weft checks; a registered
// claim of the wrong type makes the token invalid.
func (t *token) readClaims() status {
	for _, c := range []struct {
		name string
		dst  *string
	}{{"iss", &t.iss}, {"sub", &t.sub}, {"azp", &t.azp}} {
		if v, ok := t.claims[c.name]; ok {
			s, ok := v.(string)
			if !ok {
				return status("Jwt payload [" + c.name + "] field is not a string")
			}
			*c.dst = s
		}
	}
	switch a := t.claims["aud"].(type) {
	case nil:
	case string:
		t.aud = []string{a}
	case []any:
		for _, e := range a {
			s, ok := e.(string)
			if !ok {
				return statusBadAud
			}
			t.aud = append(t.aud, s)
		}
	default:
		return statusBadAud
	}
	for _, c := range []struct {
		name string
		dst  **int64
	}{{"exp", &t.exp}, {"nbf", &t.nbf}} {
		v, ok := t.claims[c.name]
		if !ok {
			continue
		}
		f, ok := v.(float64)
		if !ok || math.IsNaN(f) || f < 0 || f > math.MaxInt64/2 {
			return status("Jwt payload [" + c.name + "] field is not a positive 64 bit integer")
		}
		n := int64(f)
		*c.dst = &n
	}
	return statusOK
}

// checkTime applies exp and nbf with skew of tolerance, as Envoy does.
func (t *token) checkTime(now time.Time, skew time.Duration, requireExp bool) status {
	sec := now.Unix()
	sk := int64(skew / time.Second)
	if t.exp == nil && requireExp {
		return statusNoExpiration
	}
	if t.exp != nil && *t.exp != 0 && sec > *t.exp+sk {
		return statusExpired
	}
	if t.nbf != nil && sec+sk < *t.nbf {
		return statusNotYetValid
	}
	return statusOK
}

// normAud strips an audience's scheme and trailing slash, as Envoy does
// before comparing ("https://api.example.com/" equals "api.example.com").
func normAud(a string) string {
	a = strings.TrimPrefix(strings.TrimPrefix(a, "http://"), "https://")
	return strings.TrimSuffix(a, "/")
}

// audienceAllowed reports whether one of the token's audiences is
// allowed; an empty allow list allows any.
func (t *token) audienceAllowed(allowed []string) bool {
	if len(allowed) == 0 {
		return true
	}
	for _, a := range t.aud {
		for _, b := range allowed {
			if normAud(a) == normAud(b) {
				return true
			}
		}
	}
	return false
}

// algSpec is what an algorithm needs of a key.
type algSpec struct {
	hash crypto.Hash
	kind string // "RSA", "PSS", "EC", "OKP", "oct"
	// curveBits is the EC curve size for ES* (the signature is two
	// integers of this size).
	curveBits int
}

// algs are the supported JWS algorithms. "none" is absent on purpose.
var algs = map[string]algSpec{
	"RS256": {crypto.SHA256, "RSA", 0}, "RS384": {crypto.SHA384, "RSA", 0}, "RS512": {crypto.SHA512, "RSA", 0},
	"PS256": {crypto.SHA256, "PSS", 0}, "PS384": {crypto.SHA384, "PSS", 0}, "PS512": {crypto.SHA512, "PSS", 0},
	"ES256": {crypto.SHA256, "EC", 256}, "ES384": {crypto.SHA384, "EC", 384}, "ES512": {crypto.SHA512, "EC", 521},
	"EdDSA": {0, "OKP", 0},
	"HS256": {crypto.SHA256, "oct", 0}, "HS384": {crypto.SHA384, "oct", 0}, "HS512": {crypto.SHA512, "oct", 0},
}

// verifyWith checks the token's signature with one key. The key's type
// must be the one the algorithm names: an RSA public key is never used as
// an HMAC secret (the RS256→HS256 confusion), and HS* only ever verifies
// with a JWKS "oct" key.
func (t *token) verifyWith(k *jwk) bool {
	spec, ok := algs[t.alg]
	if !ok {
		return false
	}
	msg := []byte(t.signingInput)
	digest := func() []byte {
		h := spec.hash.New()
		h.Write(msg)
		return h.Sum(nil)
	}
	switch spec.kind {
	case "RSA", "PSS":
		pub, ok := k.key.(*rsa.PublicKey)
		if !ok {
			return false
		}
		if spec.kind == "RSA" {
			return rsa.VerifyPKCS1v15(pub, spec.hash, digest(), t.sig) == nil
		}
		return rsa.VerifyPSS(pub, spec.hash, digest(), t.sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case "EC":
		pub, ok := k.key.(*ecdsa.PublicKey)
		if !ok || pub.Curve.Params().BitSize != spec.curveBits {
			return false
		}
		size := (spec.curveBits + 7) / 8
		if len(t.sig) != 2*size {
			return false
		}
		r := new(big.Int).SetBytes(t.sig[:size])
		s := new(big.Int).SetBytes(t.sig[size:])
		return ecdsa.Verify(pub, digest(), r, s)
	case "OKP":
		pub, ok := k.key.(ed25519.PublicKey)
		if !ok || len(pub) != ed25519.PublicKeySize {
			return false
		}
		return ed25519.Verify(pub, msg, t.sig)
	case "oct":
		secret, ok := k.key.([]byte)
		if !ok || len(secret) == 0 {
			return false
		}
		m := hmac.New(spec.hash.New, secret)
		m.Write(msg)
		return hmac.Equal(m.Sum(nil), t.sig)
	}
	return false
}

// verify checks the signature against a key set: the keys whose kid (when
// both have one) and alg (when the key names one) match. It returns
// statusKidAlgMismatch when no key qualifies, statusVerificationFail when
// none verifies.
func (t *token) verify(ks *keySet) status {
	if _, ok := algs[t.alg]; !ok {
		return statusHeaderAlgNotImpl
	}
	tried := false
	for _, k := range ks.keys {
		if t.kid != "" && k.kid != "" && k.kid != t.kid {
			continue
		}
		if k.alg != "" && k.alg != t.alg {
			continue
		}
		if !k.fits(t.alg) {
			continue
		}
		tried = true
		if t.verifyWith(k) {
			return statusOK
		}
	}
	if !tried {
		return statusKidAlgMismatch
	}
	return statusVerificationFail
}
