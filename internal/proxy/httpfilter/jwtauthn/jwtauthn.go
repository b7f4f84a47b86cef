// Package jwtauthn is weft-proxy's JWT authentication HTTP filter, the
// counterpart of Envoy's envoy.filters.http.jwt_authn
// (extensions.filters.http.jwt_authn.v3.JwtAuthentication), which discovery
// generates from Istio RequestAuthentication.
//
// Tokens are taken from each provider's locations (from_headers,
// from_params, from_cookies; by default "Authorization: Bearer" and the
// access_token query parameter), verified against the provider's JWKS
// (inline local_jwks, or remote_jwks fetched by the proxy itself, cached
// for cache_duration and refetched on an unknown kid at most every 30 s),
// and checked: issuer, audiences, exp and nbf with clock_skew_seconds
// (default 60). Only asymmetric algorithms verify against RSA, EC and OKP
// keys (RS*, PS*, ES*, EdDSA); "none" is never accepted and HS* only with
// an "oct" key in the JWKS. A JWKS that cannot be fetched makes tokens
// fail, never pass.
//
// The rules' requirements decide, as in Envoy: with Istio's
// requires_any [providers…, allow_missing] a request without a token
// passes and one with an invalid token gets 401 with Envoy's message as
// body (403 for a disallowed audience). On success the filter removes the
// token header (unless forward), adds forward_payload_header and
// claim_to_headers (both removed from every incoming request first), and
// records dynamic metadata: the payload under
// "envoy.filters.http.jwt_authn"/<payload_in_metadata>, and Istio's
// authentication attributes under "istio_authn" (see MetadataNamespace)
// for the RBAC filter.
package jwtauthn

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the xDS type URL the filter registers under.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"

// Dynamic metadata the filter writes on success.
const (
	// MetadataNamespace is Istio's authentication namespace, read by RBAC.
	MetadataNamespace = "istio_authn"
	// KeyPrincipal is "<iss>/<sub>" (string), what requestPrincipals match.
	KeyPrincipal = "request.auth.principal"
	// KeyAudiences is the token's audiences ([]string).
	KeyAudiences = "request.auth.audiences"
	// KeyPresenter is the azp claim (string).
	KeyPresenter = "request.auth.presenter"
	// KeyClaims is the whole payload (map[string]any, as encoding/json
	// decodes it: strings, []any, float64, bool, nested maps), with
	// normalize_payload_in_metadata's space-delimited claims split into
	// []any of strings.
	KeyClaims = "request.auth.claims"
	// PayloadNamespace holds each verified provider's payload under its
	// payload_in_metadata name (Envoy's filter name).
	PayloadNamespace = "envoy.filters.http.jwt_authn"
)

// Options configure a Builder. Zero values take the defaults.
type Options struct {
	// Now is the clock for exp/nbf and JWKS cache expiry (time.Now).
	Now func() time.Time
	// Client fetches remote JWKS (a client that follows at most 3
	// redirects; each fetch is bounded by http_uri.timeout, default 5 s).
	Client *http.Client
	// Logger reports JWKS fetch failures (discarded when nil).
	Logger *slog.Logger
}

// Builder builds jwt_authn filters; the filters it builds share its remote
// JWKS cache, so keys survive config updates.
type Builder struct {
	now   func() time.Time
	cache *jwksCache
}

// NewBuilder returns a Builder with its own JWKS cache.
func NewBuilder(o Options) *Builder {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Client == nil {
		o.Client = &http.Client{CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return http.ErrUseLastResponse
			}
			return nil
		}}
	}
	b := &Builder{now: o.Now, cache: &jwksCache{client: o.Client, now: o.Now, entries: map[string]*remoteJWKS{}}}
	b.SetLogger(o.Logger)
	return b
}

// SetLogger replaces the logger reporting JWKS fetches (nil discards).
func (b *Builder) SetLogger(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	b.cache.log.Store(l.With("component", "proxy.jwt_authn"))
}

// SetLogger gives the filters built through the httpfilter registry
// their logger; weft-proxy's wiring calls it once at start.
func SetLogger(l *slog.Logger) { defaultBuilder.SetLogger(l) }

// defaultBuilder serves the registry: weft-proxy's filters share one JWKS
// cache for the life of the process.
var defaultBuilder = NewBuilder(Options{})

func init() {
	httpfilter.Register(TypeURL, defaultBuilder.Build)
}

// Build compiles a JwtAuthentication typed_config into a filter.
func (b *Builder) Build(cfg *anypb.Any) (httpfilter.Filter, error) {
	msg := &jwtv3.JwtAuthentication{}
	if err := cfg.UnmarshalTo(msg); err != nil {
		return nil, fmt.Errorf("jwt_authn: %w", err)
	}
	return b.compile(msg)
}

// filter is one compiled JwtAuthentication. Immutable.
type filter struct {
	now        func() time.Time
	providers  map[string]*provider
	rules      []*rule
	bypassCORS bool
	// outputHeaders are every provider's payload and claim headers,
	// removed from incoming requests.
	outputHeaders []string
}

// Decode verifies the request's tokens against the first matching rule.
func (f *filter) Decode(c *httpfilter.Call) *httpfilter.Reply {
	r := c.Request
	if f.bypassCORS && r.Method == http.MethodOptions && r.Header.Get("Origin") != "" &&
		r.Header.Get("Access-Control-Request-Method") != "" {
		return nil
	}
	// The headers the filter writes are never the client's.
	for _, h := range f.outputHeaders {
		r.Header.Del(h)
	}
	var req requirement
	for _, ru := range f.rules {
		if ru.match(r) {
			req = ru.req
			break
		}
	}
	if req == nil {
		return nil
	}
	v := &verification{f: f, call: c, ctx: r.Context(), done: map[string]*result{}}
	st := req.eval(v)
	if st != statusOK {
		return reject(r, st)
	}
	v.apply()
	return nil
}

// reject is Envoy's local reply for a failed verification.
func reject(r *http.Request, st status) *httpfilter.Reply {
	code := http.StatusUnauthorized
	if st == statusAudienceNotAllowed {
		code = http.StatusForbidden
	}
	realm := "http://" + r.Host + r.URL.Path
	return &httpfilter.Reply{Status: code, Body: string(st), Flags: "UAEX",
		Header: http.Header{"Www-Authenticate": {`Bearer realm="` + realm + `", error="invalid_token"`}}}
}

// result is one provider's outcome for this request.
type result struct {
	st  status
	tok *token
	loc *location
}

// verification is the state of one request's evaluation: each provider
// is verified at most once, whatever the requirement tree.
type verification struct {
	f    *filter
	call *httpfilter.Call
	ctx  context.Context
	done map[string]*result
	// ok lists the providers that verified, in evaluation order.
	ok []string
}

// provider verifies the request against one provider (memoised); the
// audiences, when not nil, override the provider's.
func (v *verification) provider(name string, audiences []string) status {
	key := name
	if audiences != nil {
		key = fmt.Sprintf("%s\x00%q", name, audiences)
	}
	if r, ok := v.done[key]; ok {
		return r.st
	}
	p := v.f.providers[name]
	r := p.verifyRequest(v.ctx, v.call.Request, v.f.now(), audiences)
	v.done[key] = r
	if r.st == statusOK {
		v.ok = append(v.ok, key)
	}
	return r.st
}

// apply performs the success side effects of every verified provider:
// metadata, payload and claim headers, token header removal. Istio's
// attributes come from the first verified token.
func (v *verification) apply() {
	for i, key := range v.ok {
		r := v.done[key]
		p := r.loc.p
		claims := p.metadataClaims(r.tok.claims)
		if i == 0 {
			setIstioMetadata(v.call, r.tok, claims)
		}
		if p.payloadInMetadata != "" {
			v.call.SetMetadata(PayloadNamespace, p.payloadInMetadata, claims)
		}
		h := v.call.Request.Header
		if !p.forward && r.loc.header != "" {
			h.Del(r.loc.header)
		}
		if p.payloadHeader != "" {
			seg := r.tok.payloadSeg
			if p.padPayload {
				for len(seg)%4 != 0 {
					seg += "="
				}
			}
			h.Set(p.payloadHeader, seg)
		}
		for _, ch := range p.claimHeaders {
			if val, ok := claimHeaderValue(r.tok.claims, ch.path); ok {
				h.Set(ch.header, val)
			} else {
				h.Del(ch.header)
			}
		}
	}
}

// setIstioMetadata records Istio's request.auth.* attributes.
func setIstioMetadata(c *httpfilter.Call, t *token, claims map[string]any) {
	if t.iss != "" && t.sub != "" {
		c.SetMetadata(MetadataNamespace, KeyPrincipal, t.iss+"/"+t.sub)
	}
	c.SetMetadata(MetadataNamespace, KeyAudiences, append([]string{}, t.aud...))
	if t.azp != "" {
		c.SetMetadata(MetadataNamespace, KeyPresenter, t.azp)
	}
	c.SetMetadata(MetadataNamespace, KeyClaims, claims)
}
