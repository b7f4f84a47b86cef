package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/weftmesh/weft/internal/secrettoken"

	"github.com/weftmesh/weft/internal/store"
)

const (
	// TokenPrefix starts every weft bearer token.
	TokenPrefix = "weft_"
	// TokenKeyPrefix is the store prefix under which token records live, at
	// TokenKeyPrefix + <id>.
	TokenKeyPrefix = "/weft/tokens/"
)

// TokenRecord is what the store holds for an issued token, as JSON at
// TokenKeyPrefix + ID. It never contains the secret, only its hash.
type TokenRecord struct {
	// ID is the token's public identifier (16 lowercase hex characters).
	ID string `json:"id"`
	// User is the user name the token authenticates as.
	User string `json:"user"`
	// Groups are the user's groups (GroupAuthenticated is added at
	// authentication time and need not be listed).
	Groups []string `json:"groups,omitempty"`
	// SHA256 is the lowercase hex SHA-256 of the 32 raw secret bytes (the
	// base64url-decoded part after the ".").
	SHA256 string `json:"sha256"`
	// Created is when the token was issued.
	Created time.Time `json:"created"`
	// Expires is when the token stops being valid; zero means never.
	Expires time.Time `json:"expires,omitzero"`
}

// Tokens issues, authenticates, lists and revokes bearer tokens kept in a
// store. A token reads "weft_<id>.<secret>": id is 16 lowercase hex
// characters naming the store record, secret is 32 random bytes encoded as
// unpadded base64url. Tokens is safe for concurrent use.
type Tokens struct {
	s interface {
		store.Reader
		store.Writer
	}
	clock func() time.Time
}

// NewTokens returns a Tokens backed by s. clock supplies the current time
// for issuing and expiry checks; nil means time.Now.
func NewTokens(s interface {
	store.Reader
	store.Writer
}, clock func() time.Time) *Tokens {
	if clock == nil {
		clock = time.Now
	}
	return &Tokens{s: s, clock: clock}
}

// Issue creates a token for user with the given groups. ttl is the token's
// lifetime; 0 means it never expires, negative is an error. The returned
// token is the only copy of the secret: it cannot be recovered later.
func (t *Tokens) Issue(ctx context.Context, user string, groups []string, ttl time.Duration) (string, TokenRecord, error) {
	if err := validName(user); err != nil {
		return "", TokenRecord{}, fmt.Errorf("authn: invalid user name %q: %w", user, err)
	}
	for _, g := range groups {
		if err := validName(g); err != nil {
			return "", TokenRecord{}, fmt.Errorf("authn: invalid group name %q: %w", g, err)
		}
	}
	if ttl < 0 {
		return "", TokenRecord{}, fmt.Errorf("authn: negative token ttl %v", ttl)
	}
	secret, sum := secrettoken.NewSecret()
	now := t.clock().UTC()
	rec := TokenRecord{
		User:    user,
		Groups:  append([]string(nil), groups...),
		SHA256:  sum,
		Created: now,
	}
	if ttl > 0 {
		rec.Expires = now.Add(ttl)
	}
	id, err := secrettoken.CreateUnique(ctx, t.s, TokenKeyPrefix, func(id string) ([]byte, error) {
		rec.ID = id
		return json.Marshal(rec)
	})
	if err != nil {
		return "", TokenRecord{}, fmt.Errorf("authn: %w", err)
	}
	rec.ID = id
	return tokenFormat.Token(id, secret), rec, nil
}

// tokenFormat is the shape of API bearer tokens.
var tokenFormat = secrettoken.Format{Prefix: TokenPrefix}

// parseToken splits token into its id and raw secret, or returns
// ErrInvalidToken.
func parseToken(token string) (id string, secret []byte, err error) {
	id, secret, ok := tokenFormat.Parse(token)
	if !ok {
		return "", nil, ErrInvalidToken
	}
	return id, secret, nil
}

// Authenticate checks token and returns the user it was issued for. It
// returns ErrInvalidToken if the token is malformed, unknown (or revoked) or
// its secret does not match, and ErrExpiredToken if it is genuine but
// expired. Other errors come from the store.
func (t *Tokens) Authenticate(ctx context.Context, token string) (User, error) {
	id, secret, err := parseToken(token)
	if err != nil {
		return User{}, err
	}
	kv, err := t.s.Get(ctx, TokenKeyPrefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return User{}, ErrInvalidToken
	}
	if err != nil {
		return User{}, fmt.Errorf("authn: reading token: %w", err)
	}
	var rec TokenRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return User{}, fmt.Errorf("authn: decoding token record %s: %w", id, err)
	}
	match, err := secrettoken.Matches(secret, rec.SHA256, rec.ID, id)
	if err != nil {
		return User{}, fmt.Errorf("authn: %w", err)
	}
	if !match {
		return User{}, ErrInvalidToken
	}
	// Expiry is only checked once the secret is proven, so ErrExpiredToken
	// tells nothing to someone who does not hold the token.
	if !rec.Expires.IsZero() && !t.clock().Before(rec.Expires) {
		return User{}, ErrExpiredToken
	}
	if validName(rec.User) != nil {
		return User{}, fmt.Errorf("authn: corrupt token record %s: bad user name", id)
	}
	return withAuthenticated(rec.User, rec.Groups), nil
}

// List returns every stored token record (never secrets), in id order,
// including expired ones.
func (t *Tokens) List(ctx context.Context) ([]TokenRecord, error) {
	kvs, _, err := t.s.List(ctx, TokenKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("authn: listing tokens: %w", err)
	}
	recs := make([]TokenRecord, 0, len(kvs))
	for _, kv := range kvs {
		var rec TokenRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("authn: decoding token record %s: %w", kv.Key, err)
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// Revoke deletes the token with the given id; it stops authenticating
// immediately. Revoking an unknown id returns an error wrapping
// store.ErrNotFound.
func (t *Tokens) Revoke(ctx context.Context, id string) error {
	if !secrettoken.ValidID(id) {
		return fmt.Errorf("authn: invalid token id %q: %w", id, store.ErrNotFound)
	}
	if _, err := t.s.Delete(ctx, TokenKeyPrefix+id, 0); err != nil {
		return fmt.Errorf("authn: revoking token %s: %w", id, err)
	}
	return nil
}
