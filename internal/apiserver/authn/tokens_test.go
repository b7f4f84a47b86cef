package authn

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/storetest"
)

// fakeClock is a settable clock safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestTokens(t testing.TB) (*Tokens, *storetest.MemStore, *fakeClock) {
	t.Helper()
	s := storetest.NewMemStore()
	c := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	return NewTokens(s, c.Now), s, c
}

func TestIssueAndAuthenticate(t *testing.T) {
	ctx := context.Background()
	toks, _, clock := newTestTokens(t)
	tok, rec, err := toks.Issue(ctx, "alice", []string{"dev", "ops"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "weft_"+rec.ID+".") || len(rec.ID) != 16 {
		t.Fatalf("token %q does not carry id %q", tok, rec.ID)
	}
	if rec.User != "alice" || !rec.Created.Equal(clock.Now()) || !rec.Expires.IsZero() {
		t.Fatalf("unexpected record %+v", rec)
	}
	u, err := toks.Authenticate(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	want := User{Name: "alice", Groups: []string{"dev", "ops", GroupAuthenticated}}
	if u.Name != want.Name || !slices.Equal(u.Groups, want.Groups) {
		t.Fatalf("got %+v, want %+v", u, want)
	}
	// A token that never expires keeps working.
	clock.Advance(100 * 365 * 24 * time.Hour)
	if _, err := toks.Authenticate(ctx, tok); err != nil {
		t.Fatalf("non-expiring token: %v", err)
	}
	// Groups already containing system:authenticated are not duplicated.
	tok2, _, err := toks.Issue(ctx, "bob", []string{GroupAuthenticated}, 0)
	if err != nil {
		t.Fatal(err)
	}
	u, err = toks.Authenticate(ctx, tok2)
	if err != nil || !slices.Equal(u.Groups, []string{GroupAuthenticated}) {
		t.Fatalf("bob: %+v, %v", u, err)
	}
}

func TestIssueValidation(t *testing.T) {
	ctx := context.Background()
	toks, s, _ := newTestTokens(t)
	cases := []struct {
		name   string
		user   string
		groups []string
		ttl    time.Duration
	}{
		{"empty user", "", nil, 0},
		{"space", "ali ce", nil, 0},
		{"tab", "alice\t", nil, 0},
		{"newline", "alice\n", nil, 0},
		{"control", "al\x00ice", nil, 0},
		{"nbsp", "al\u00a0ice", nil, 0},
		{"invalid utf8", "al\xffice", nil, 0},
		{"negative ttl", "alice", nil, -time.Second},
		{"empty group", "alice", []string{""}, 0},
		{"group with space", "alice", []string{"a b"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := toks.Issue(ctx, tc.user, tc.groups, tc.ttl); err == nil {
				t.Fatal("Issue succeeded")
			}
		})
	}
	if kvs, _, _ := s.List(ctx, TokenKeyPrefix); len(kvs) != 0 {
		t.Fatalf("rejected Issue calls stored %d records", len(kvs))
	}
	if _, _, err := toks.Issue(ctx, "system:serviceaccount:ns:sa", nil, time.Hour); err != nil {
		t.Fatalf("valid user rejected: %v", err)
	}
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	toks, _, clock := newTestTokens(t)
	tok, rec, err := toks.Issue(ctx, "alice", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Hour); !rec.Expires.Equal(want) {
		t.Fatalf("expires %v, want %v", rec.Expires, want)
	}
	clock.Advance(time.Hour - time.Nanosecond)
	if _, err := toks.Authenticate(ctx, tok); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	clock.Advance(time.Nanosecond)
	if _, err := toks.Authenticate(ctx, tok); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("at expiry: got %v, want ErrExpiredToken", err)
	}
	// An expired token with a wrong secret is invalid, not expired.
	if _, err := toks.Authenticate(ctx, tamper(tok)); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("tampered expired token: got %v, want ErrInvalidToken", err)
	}
}

// tamper flips one bit of the secret, keeping the token well-formed.
func tamper(tok string) string {
	dot := strings.IndexByte(tok, '.')
	secret, err := base64.RawURLEncoding.Strict().DecodeString(tok[dot+1:])
	if err != nil {
		panic(err)
	}
	secret[0] ^= 1
	return tok[:dot+1] + base64.RawURLEncoding.EncodeToString(secret)
}

func TestTamperedAndGarbage(t *testing.T) {
	ctx := context.Background()
	toks, _, _ := newTestTokens(t)
	tok, rec, err := toks.Issue(ctx, "alice", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := toks.Issue(ctx, "bob", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	dot := strings.IndexByte(tok, '.')
	lastFlipped := tok[:len(tok)-1] + string(rune(tok[len(tok)-1]^1))
	bad := []string{
		"",
		"weft_",
		"weft_.",
		tamper(tok),
		lastFlipped,
		tok + "A",
		tok[:len(tok)-1],
		strings.ToUpper(tok[:dot]) + tok[dot:],
		"WEFT_" + tok[5:],
		"kube_" + tok[5:],
		"weft_" + rec.ID + "_" + tok[dot+1:],
		tok[:dot+1] + other[strings.IndexByte(other, '.')+1:], // bob's secret with alice's id
		"weft_0000000000000000." + tok[dot+1:],                // unknown id
		"weft_" + strings.Repeat("g", 16) + tok[dot:],         // non-hex id
		tok[:dot+1] + strings.Repeat("=", 43),
		tok[:dot+1] + base64.StdEncoding.EncodeToString(make([]byte, 32))[:43],
		strings.Repeat("x", 10000),
		"Bearer " + tok,
	}
	for _, b := range bad {
		if u, err := toks.Authenticate(ctx, b); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Authenticate(%q) = %+v, %v; want ErrInvalidToken", b, u, err)
		}
	}
	if _, err := toks.Authenticate(ctx, tok); err != nil {
		t.Fatalf("original token: %v", err)
	}
}

func TestRevokeAndList(t *testing.T) {
	ctx := context.Background()
	toks, _, _ := newTestTokens(t)
	tokA, recA, err := toks.Issue(ctx, "alice", []string{"dev"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tokB, recB, err := toks.Issue(ctx, "bob", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := toks.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("List returned %d records", len(recs))
	}
	for _, r := range recs {
		want := recA
		if r.ID == recB.ID {
			want = recB
		}
		if r.ID != want.ID || r.User != want.User || r.SHA256 != want.SHA256 ||
			!r.Created.Equal(want.Created) || !r.Expires.Equal(want.Expires) || !slices.Equal(r.Groups, want.Groups) {
			t.Errorf("listed %+v, issued %+v", r, want)
		}
	}
	if err := toks.Revoke(ctx, recA.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := toks.Authenticate(ctx, tokA); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("revoked token: got %v, want ErrInvalidToken", err)
	}
	if _, err := toks.Authenticate(ctx, tokB); err != nil {
		t.Fatalf("other token after revoke: %v", err)
	}
	if err := toks.Revoke(ctx, recA.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second revoke: got %v, want ErrNotFound", err)
	}
	if err := toks.Revoke(ctx, "../../registry"); err == nil {
		t.Fatal("revoke of a malformed id succeeded")
	}
	if recs, _ := toks.List(ctx); len(recs) != 1 || recs[0].ID != recB.ID {
		t.Fatalf("after revoke List = %+v", recs)
	}
}

func TestStoredRecordHasNoSecret(t *testing.T) {
	ctx := context.Background()
	toks, s, _ := newTestTokens(t)
	tok, rec, err := toks.Issue(ctx, "alice", []string{"dev"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.Get(ctx, TokenKeyPrefix+rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	encSecret := tok[strings.IndexByte(tok, '.')+1:]
	raw, err := base64.RawURLEncoding.Strict().DecodeString(encSecret)
	if err != nil {
		t.Fatal(err)
	}
	for _, form := range []string{
		tok, encSecret, hex.EncodeToString(raw), base64.StdEncoding.EncodeToString(raw),
		base64.RawStdEncoding.EncodeToString(raw), string(raw),
	} {
		if bytes.Contains(kv.Value, []byte(form)) {
			t.Fatalf("stored record %s contains the secret (%q)", kv.Value, form)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "user", "groups", "sha256", "created", "expires"} {
		if _, ok := m[k]; !ok {
			t.Errorf("stored record %s lacks %q", kv.Value, k)
		}
	}
	if len(m) != 6 {
		t.Errorf("stored record %s has unexpected fields", kv.Value)
	}
	sum := sha256.Sum256(raw)
	if m["sha256"] != hex.EncodeToString(sum[:]) {
		t.Errorf("sha256 field %v is not the hash of the secret", m["sha256"])
	}
	if _, err := time.Parse(time.RFC3339, m["expires"].(string)); err != nil {
		t.Errorf("expires is not RFC3339: %v", err)
	}
	// A token without expiry omits the field.
	_, rec2, err := toks.Issue(ctx, "bob", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	kv2, _ := s.Get(ctx, TokenKeyPrefix+rec2.ID)
	if bytes.Contains(kv2.Value, []byte("expires")) {
		t.Errorf("non-expiring record %s has an expires field", kv2.Value)
	}
}

func TestCorruptRecord(t *testing.T) {
	ctx := context.Background()
	toks, s, _ := newTestTokens(t)
	tok, rec, err := toks.Issue(ctx, "alice", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, TokenKeyPrefix+rec.ID, []byte(`{"id":"`+rec.ID+`","user":"alice","sha256":"zz"}`), 0); err != nil {
		t.Fatal(err)
	}
	_, err = toks.Authenticate(ctx, tok)
	if err == nil || errors.Is(err, ErrInvalidToken) || errors.Is(err, ErrExpiredToken) {
		t.Fatalf("corrupt record: got %v, want an internal error", err)
	}
}

// FuzzAuthenticate checks that token parsing never panics and that exactly
// the issued token string authenticates.
func FuzzAuthenticate(f *testing.F) {
	ctx := context.Background()
	toks, _, _ := newTestTokens(f)
	tok, _, err := toks.Issue(ctx, "alice", []string{"dev"}, 0)
	if err != nil {
		f.Fatal(err)
	}
	dot := strings.IndexByte(tok, '.')
	for _, seed := range []string{
		tok, tamper(tok), tok + "=", tok[:dot], tok[dot:], "", "weft_", "weft_0123456789abcdef.",
		"weft_0123456789abcdef." + strings.Repeat("A", 43), "weft_\x00\xff.", strings.ToUpper(tok),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := toks.Authenticate(ctx, s)
		if s == tok {
			if err != nil || u.Name != "alice" {
				t.Fatalf("issued token rejected: %+v, %v", u, err)
			}
			return
		}
		if !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("Authenticate(%q) = %+v, %v; want ErrInvalidToken", s, u, err)
		}
	})
}
