package jwtauthn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// jwk is one usable key of a JWKS.
type jwk struct {
	kid, alg string
	// key is *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey or, for
	// kty "oct", []byte.
	key any
}

// fits reports whether the key's type is the one alg needs.
func (k *jwk) fits(alg string) bool {
	switch algs[alg].kind {
	case "RSA", "PSS":
		_, ok := k.key.(*rsa.PublicKey)
		return ok
	case "EC":
		_, ok := k.key.(*ecdsa.PublicKey)
		return ok
	case "OKP":
		_, ok := k.key.(ed25519.PublicKey)
		return ok
	case "oct":
		_, ok := k.key.([]byte)
		return ok
	}
	return false
}

// keySet is a parsed JWKS. Immutable.
type keySet struct {
	keys []*jwk
}

// hasKid reports whether some key could match kid (a key without a kid
// matches any).
func (ks *keySet) hasKid(kid string) bool {
	for _, k := range ks.keys {
		if kid == "" || k.kid == "" || k.kid == kid {
			return true
		}
	}
	return false
}

// maxJWKSSize bounds a JWKS document, inline or fetched.
const maxJWKSSize = 1 << 20

// parseJWKS parses a JWKS document ({"keys": [...]}). Keys weft cannot use
// (an unknown kty or curve, "use" other than "sig", malformed members) are
// skipped; a document without any usable key is an error, as in Envoy.
// Private keys are reduced to their public half.
func parseJWKS(doc []byte) (*keySet, error) {
	if len(doc) > maxJWKSSize {
		return nil, fmt.Errorf("jwks: larger than %d bytes", maxJWKSSize)
	}
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	ks := &keySet{}
	for _, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var key any
		switch v := k.Key.(type) {
		case *rsa.PublicKey:
			key = v
		case *rsa.PrivateKey:
			key = &v.PublicKey
		case *ecdsa.PublicKey:
			key = v
		case *ecdsa.PrivateKey:
			key = &v.PublicKey
		case ed25519.PublicKey:
			key = v
		case ed25519.PrivateKey:
			key = v.Public().(ed25519.PublicKey)
		case []byte:
			key = v
		default:
			continue
		}
		ks.keys = append(ks.keys, &jwk{kid: k.KeyID, alg: k.Algorithm, key: key})
	}
	if len(ks.keys) == 0 {
		return nil, errors.New("jwks: no usable key")
	}
	return ks, nil
}

// Timing of remote JWKS.
const (
	// DefaultCacheDuration is how long fetched keys are used when the
	// provider sets no cache_duration (Envoy's default).
	DefaultCacheDuration = 5 * time.Minute
	// DefaultFetchTimeout bounds one fetch when http_uri sets no timeout.
	DefaultFetchTimeout = 5 * time.Second
	// UnknownKidRefetchInterval is the least time between two refetches
	// caused by tokens naming a kid the cached keys lack.
	UnknownKidRefetchInterval = 30 * time.Second
	// minFailureBackoff and maxFailureBackoff bound the wait before the
	// next fetch after a failed one (doubling in between).
	minFailureBackoff = time.Second
	maxFailureBackoff = 30 * time.Second
	// refreshAhead: past this fraction of the cache duration a request
	// triggers a background refetch, so keys rarely expire under traffic.
	refreshAhead = 0.8
)

// errFetch wraps every failure to get remote keys.
var errFetch = errors.New("jwks fetch failed")

// remoteJWKS is the key cache of one jwks URI. Safe for concurrent use; it
// outlives the filters using it (shared by URI across config updates).
type remoteJWKS struct {
	uri      string
	cacheDur time.Duration
	timeout  time.Duration
	client   *http.Client
	now      func() time.Time
	log      *atomic.Pointer[slog.Logger]

	mu        sync.Mutex
	keys      *keySet
	expires   time.Time // keys are unusable after
	fetchedAt time.Time
	// inflight is closed when the running fetch ends (nil: none runs).
	inflight chan struct{}
	// nextTry is the earliest next fetch after a failure; backoff its
	// current length.
	nextTry time.Time
	backoff time.Duration
	// lastKidFetch is when an unknown kid last caused a refetch.
	lastKidFetch time.Time
	lastUsed     time.Time
	lastErr      error
}

// get returns usable keys, fetching them when none are cached or the
// cached ones expired (waiting for the fetch, at most until ctx ends).
// Past refreshAhead of the cache duration it refetches in the background.
func (r *remoteJWKS) get(ctx context.Context) (*keySet, error) {
	r.mu.Lock()
	now := r.now()
	r.lastUsed = now
	if r.keys != nil && now.Before(r.expires) {
		ks := r.keys
		if now.After(r.fetchedAt.Add(time.Duration(float64(r.cacheDur) * refreshAhead))) {
			r.startLocked(now)
		}
		r.mu.Unlock()
		return ks, nil
	}
	done := r.startLocked(now)
	r.mu.Unlock()
	return r.wait(ctx, done)
}

// refetchForKid refetches (at most once per UnknownKidRefetchInterval)
// because a token names a kid the cached keys lack, and returns the keys
// then usable. When the refetch is not allowed or fails, the cached keys
// stay in use until they expire.
func (r *remoteJWKS) refetchForKid(ctx context.Context) (*keySet, error) {
	r.mu.Lock()
	now := r.now()
	if !r.lastKidFetch.IsZero() && now.Sub(r.lastKidFetch) < UnknownKidRefetchInterval {
		ks := r.usableLocked(now)
		r.mu.Unlock()
		return ks, nil
	}
	r.lastKidFetch = now
	done := r.startLocked(now)
	r.mu.Unlock()
	return r.wait(ctx, done)
}

// usableLocked returns the cached keys if they have not expired.
func (r *remoteJWKS) usableLocked(now time.Time) *keySet {
	if r.keys != nil && now.Before(r.expires) {
		return r.keys
	}
	return nil
}

// startLocked starts a fetch unless one runs or the failure backoff
// forbids it, and returns a channel closed when the current fetch ends
// (nil when none runs).
func (r *remoteJWKS) startLocked(now time.Time) chan struct{} {
	if r.inflight != nil {
		return r.inflight
	}
	if now.Before(r.nextTry) {
		return nil
	}
	done := make(chan struct{})
	r.inflight = done
	go r.fetch(done)
	return done
}

// wait waits for the fetch done (if any) and returns the usable keys.
func (r *remoteJWKS) wait(ctx context.Context, done chan struct{}) (*keySet, error) {
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ks := r.usableLocked(r.now()); ks != nil {
		return ks, nil
	}
	if r.lastErr != nil {
		return nil, r.lastErr
	}
	return nil, fmt.Errorf("%w: %s: no keys yet", errFetch, r.uri)
}

// fetch downloads and parses the JWKS, then records the outcome.
func (r *remoteJWKS) fetch(done chan struct{}) {
	ks, err := r.download()
	r.mu.Lock()
	now := r.now()
	if err != nil {
		r.lastErr = err
		r.backoff = min(max(2*r.backoff, minFailureBackoff), maxFailureBackoff)
		r.nextTry = now.Add(r.backoff)
		r.log.Load().Warn("jwks fetch failed; keeping cached keys until they expire",
			"uri", r.uri, "error", err, "cached_until", r.expires, "retry_in", r.backoff)
	} else {
		r.keys, r.fetchedAt, r.expires = ks, now, now.Add(r.cacheDur)
		r.lastErr, r.backoff, r.nextTry = nil, 0, time.Time{}
		r.log.Load().Debug("jwks fetched", "uri", r.uri, "keys", len(ks.keys))
	}
	r.inflight = nil
	r.mu.Unlock()
	close(done)
}

// download GETs the URI: bounded in time and size, 200 only.
func (r *remoteJWKS) download() (*keySet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.uri, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errFetch, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errFetch, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s: %s", errFetch, r.uri, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errFetch, r.uri, err)
	}
	ks, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errFetch, r.uri, err)
	}
	return ks, nil
}

// jwksCache shares remote key caches by URI and cache duration, so a
// config update that keeps a provider keeps its keys. Entries unused for
// an hour are dropped when new ones are added.
type jwksCache struct {
	client *http.Client
	now    func() time.Time
	log    atomic.Pointer[slog.Logger]

	mu      sync.Mutex
	entries map[string]*remoteJWKS
}

// idleEntry is how long an unused cache entry survives.
const idleEntry = time.Hour

// remote returns the cache of one URI.
func (c *jwksCache) remote(uri string, cacheDur, timeout time.Duration) *remoteJWKS {
	key := fmt.Sprintf("%s\x00%d\x00%d", uri, cacheDur, timeout)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if r, ok := c.entries[key]; ok {
		r.mu.Lock()
		r.lastUsed = now
		r.mu.Unlock()
		return r
	}
	for k, r := range c.entries {
		r.mu.Lock()
		idle := now.Sub(r.lastUsed) > idleEntry && r.inflight == nil
		r.mu.Unlock()
		if idle {
			delete(c.entries, k)
		}
	}
	r := &remoteJWKS{uri: uri, cacheDur: cacheDur, timeout: timeout, client: c.client, now: c.now,
		log: &c.log, lastUsed: now}
	c.entries[key] = r
	return r
}

// checkURI accepts absolute http and https URIs only.
func checkURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("jwks uri %q: want an absolute http or https URI", s)
	}
	return nil
}
