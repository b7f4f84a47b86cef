// Package secrettoken holds the mechanics shared by weft's bearer tokens
// (API tokens "weft_…", CA bootstrap tokens "wbt_…"): a token reads
// "<prefix><id>.<secret>", where id is 16 lowercase hex characters naming a
// record in the store and secret is 32 random bytes in unpadded base64url;
// the store keeps only the secret's SHA-256.
package secrettoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/weftmesh/weft/internal/store"
)

const (
	idBytes     = 8  // 16 hex characters
	secretBytes = 32 // 43 base64url characters
	// IDLen is the length of a token id.
	IDLen     = 2 * idBytes
	secretLen = (secretBytes*8 + 5) / 6
)

// encoding is strict: exactly one string decodes to a given secret.
var encoding = base64.RawURLEncoding.Strict()

// Format is one kind of token, told apart by its prefix.
type Format struct{ Prefix string }

// NewSecret returns a fresh secret and the hex SHA-256 to store.
func NewSecret() (secret []byte, sumHex string) {
	secret = make([]byte, secretBytes)
	_, _ = rand.Read(secret)
	sum := sha256.Sum256(secret)
	return secret, hex.EncodeToString(sum[:])
}

// Token renders the token for id and secret.
func (f Format) Token(id string, secret []byte) string {
	return f.Prefix + id + "." + encoding.EncodeToString(secret)
}

// Parse splits a token into its id and secret; ok is false for anything
// that is not exactly a token of this format.
func (f Format) Parse(token string) (id string, secret []byte, ok bool) {
	if len(token) != len(f.Prefix)+IDLen+1+secretLen || !strings.HasPrefix(token, f.Prefix) {
		return "", nil, false
	}
	rest := token[len(f.Prefix):]
	id, enc := rest[:IDLen], rest[IDLen:]
	if !ValidID(id) || enc[0] != '.' {
		return "", nil, false
	}
	secret, err := encoding.DecodeString(enc[1:])
	if err != nil || len(secret) != secretBytes {
		return "", nil, false
	}
	return id, secret, true
}

// ValidID reports whether id is 16 lowercase hex characters.
func ValidID(id string) bool {
	if len(id) != IDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ErrCorrupt reports a stored record that cannot be checked.
var ErrCorrupt = errors.New("corrupt token record")

// Matches compares secret with a stored record's hash in constant time.
// recordID must equal id (the key the record was read from).
func Matches(secret []byte, sumHex, recordID, id string) (bool, error) {
	want, err := hex.DecodeString(sumHex)
	if err != nil || len(want) != sha256.Size || recordID != id {
		return false, fmt.Errorf("%w %s", ErrCorrupt, id)
	}
	got := sha256.Sum256(secret)
	return subtle.ConstantTimeCompare(got[:], want) == 1, nil
}

// Creator is the store method CreateUnique needs.
type Creator interface {
	Create(ctx context.Context, key string, value []byte) (store.KV, error)
}

// CreateUnique stores a record under keyPrefix+<new random id>, retrying
// on the (unlikely) collision of 64-bit ids rather than overwriting, and
// returns the id. encode renders the record for an id.
func CreateUnique(ctx context.Context, c Creator, keyPrefix string, encode func(id string) ([]byte, error)) (string, error) {
	for range 3 {
		var raw [idBytes]byte
		_, _ = rand.Read(raw[:])
		id := hex.EncodeToString(raw[:])
		val, err := encode(id)
		if err != nil {
			return "", fmt.Errorf("encoding token record: %w", err)
		}
		_, err = c.Create(ctx, keyPrefix+id, val)
		if errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("storing token: %w", err)
		}
		return id, nil
	}
	return "", errors.New("could not allocate a unique token id")
}
