package authn

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

const (
	// TokenPrefix starts every weft bearer token.
	TokenPrefix = "weft_"
	// TokenKeyPrefix is the store prefix under which token records live, at
	// TokenKeyPrefix + <id>.
	TokenKeyPrefix = "/weft/tokens/"

	idBytes     = 8  // 16 hex characters
	secretBytes = 32 // 43 base64url characters
	idLen       = 2 * idBytes
	secretLen   = (secretBytes*8 + 5) / 6 // unpadded base64
	tokenLen    = len(TokenPrefix) + idLen + 1 + secretLen
)

// secretEncoding encodes token secrets. Strict rejects non-canonical
// encodings, so exactly one string decodes to a given secret.
var secretEncoding = base64.RawURLEncoding.Strict()

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
	var secret [secretBytes]byte
	rand.Read(secret[:]) // never returns an error; crashes the program on failure
	sum := sha256.Sum256(secret[:])
	now := t.clock().UTC()
	rec := TokenRecord{
		User:    user,
		Groups:  append([]string(nil), groups...),
		SHA256:  hex.EncodeToString(sum[:]),
		Created: now,
	}
	if ttl > 0 {
		rec.Expires = now.Add(ttl)
	}
	// A collision of 64-bit random ids is very unlikely; retry a few times
	// rather than overwrite.
	for range 3 {
		var id [idBytes]byte
		rand.Read(id[:])
		rec.ID = hex.EncodeToString(id[:])
		val, err := json.Marshal(rec)
		if err != nil {
			return "", TokenRecord{}, fmt.Errorf("authn: encoding token record: %w", err)
		}
		_, err = t.s.Create(ctx, TokenKeyPrefix+rec.ID, val)
		if errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return "", TokenRecord{}, fmt.Errorf("authn: storing token: %w", err)
		}
		return TokenPrefix + rec.ID + "." + secretEncoding.EncodeToString(secret[:]), rec, nil
	}
	return "", TokenRecord{}, errors.New("authn: could not allocate a unique token id")
}

// parseToken splits token into its id and raw secret, or returns
// ErrInvalidToken.
func parseToken(token string) (id string, secret []byte, err error) {
	if len(token) != tokenLen || !strings.HasPrefix(token, TokenPrefix) {
		return "", nil, ErrInvalidToken
	}
	rest := token[len(TokenPrefix):]
	id, enc := rest[:idLen], rest[idLen:]
	if !validID(id) || enc[0] != '.' {
		return "", nil, ErrInvalidToken
	}
	secret, err = secretEncoding.DecodeString(enc[1:])
	if err != nil || len(secret) != secretBytes {
		return "", nil, ErrInvalidToken
	}
	return id, secret, nil
}

// validID reports whether id is 16 lowercase hex characters.
func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
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
	want, err := hex.DecodeString(rec.SHA256)
	if err != nil || len(want) != sha256.Size || rec.ID != id {
		return User{}, fmt.Errorf("authn: corrupt token record %s", id)
	}
	got := sha256.Sum256(secret)
	if subtle.ConstantTimeCompare(got[:], want) != 1 {
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
	if !validID(id) {
		return fmt.Errorf("authn: invalid token id %q: %w", id, store.ErrNotFound)
	}
	if _, err := t.s.Delete(ctx, TokenKeyPrefix+id, 0); err != nil {
		return fmt.Errorf("authn: revoking token %s: %w", id, err)
	}
	return nil
}
