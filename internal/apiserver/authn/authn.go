// Package authn authenticates requests to weft's Kubernetes-compatible API
// server.
//
// Two credentials are understood:
//
//   - Bearer tokens of the form "weft_<id>.<secret>", issued and checked by
//     Tokens. Only a SHA-256 hash of the secret is stored; see Tokens.
//   - TLS client certificates already verified by the TLS layer against the
//     server's client CA: the leaf's Common Name is the user name and its
//     Organizations are the groups, as in Kubernetes.
//
// Authenticator combines both for an *http.Request. Every authenticated
// user is a member of the group "system:authenticated".
//
// The sentinel errors are distinct so that they can be logged precisely; an
// HTTP handler must not reveal to the client which of them occurred (answer
// 401 Unauthorized for all of them).
package authn

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// GroupAuthenticated is added to the groups of every authenticated user.
const GroupAuthenticated = "system:authenticated"

// Sentinel errors. Test with errors.Is.
var (
	// ErrUnauthenticated: the request carries no credentials at all (no
	// Authorization header and no verified client certificate), or a
	// certificate that does not name a user.
	ErrUnauthenticated = errors.New("authn: no credentials")
	// ErrMalformedHeader: the Authorization header is present but is not a
	// single well-formed "Bearer <token>" header.
	ErrMalformedHeader = errors.New("authn: malformed Authorization header")
	// ErrInvalidToken: the bearer token is malformed, unknown, revoked or
	// its secret does not match.
	ErrInvalidToken = errors.New("authn: invalid token")
	// ErrExpiredToken: the bearer token is genuine but past its expiry.
	ErrExpiredToken = errors.New("authn: token expired")
)

// User is an authenticated identity.
type User struct {
	// Name is the user name (for service accounts
	// "system:serviceaccount:<namespace>:<name>").
	Name string
	// Groups always contains GroupAuthenticated.
	Groups []string
}

// withAuthenticated returns a User whose groups are a copy of groups with
// GroupAuthenticated appended unless already present.
func withAuthenticated(name string, groups []string) User {
	g := make([]string, 0, len(groups)+1)
	g = append(g, groups...)
	if !slices.Contains(g, GroupAuthenticated) {
		g = append(g, GroupAuthenticated)
	}
	return User{Name: name, Groups: g}
}

// validName reports whether s is usable as a user or group name: non-empty
// valid UTF-8 without whitespace or control characters.
func validName(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if !utf8.ValidString(s) {
		return errors.New("must be valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("must not contain whitespace or control characters (found %U)", r)
		}
	}
	return nil
}

// FromCertificate maps a verified client certificate chain to a User: the
// leaf certificate's Subject Common Name is the user name and its Subject
// Organizations are the groups. The chains must already have been verified
// (crypto/tls does that and fills tls.ConnectionState.VerifiedChains). It
// returns false when there is no chain or the Common Name is not a valid
// user name. Organizations that are not valid group names are dropped.
func FromCertificate(chains [][]*x509.Certificate) (User, bool) {
	if len(chains) == 0 || len(chains[0]) == 0 || chains[0][0] == nil {
		return User{}, false
	}
	leaf := chains[0][0]
	name := leaf.Subject.CommonName
	if validName(name) != nil {
		return User{}, false
	}
	groups := make([]string, 0, len(leaf.Subject.Organization))
	for _, o := range leaf.Subject.Organization {
		if validName(o) == nil && !slices.Contains(groups, o) {
			groups = append(groups, o)
		}
	}
	return withAuthenticated(name, groups), true
}

// Authenticator authenticates HTTP requests with a bearer token or, failing
// that, a verified client certificate.
type Authenticator struct {
	tokens *Tokens
}

// NewAuthenticator returns an Authenticator that checks bearer tokens with
// tokens. If tokens is nil every bearer token is rejected and only client
// certificates are accepted.
func NewAuthenticator(tokens *Tokens) *Authenticator {
	return &Authenticator{tokens: tokens}
}

// AuthenticateRequest identifies the caller of r.
//
// If r has an Authorization header it must be exactly one header of the form
// "Bearer <token>" (scheme case-insensitive) and the token must be valid;
// otherwise the request is rejected with ErrMalformedHeader, ErrInvalidToken
// or ErrExpiredToken even if it also presents a client certificate. Other
// schemes (for example Basic) are rejected, not ignored. Without an
// Authorization header, the first verified client certificate chain in
// r.TLS.VerifiedChains is used. With neither, ErrUnauthenticated.
//
// Errors from the token store are returned wrapped and are none of the
// sentinels; they should be treated as an internal error.
func (a *Authenticator) AuthenticateRequest(r *http.Request) (User, error) {
	if vals, ok := r.Header[http.CanonicalHeaderKey("Authorization")]; ok {
		token, err := bearerToken(vals)
		if err != nil {
			return User{}, err
		}
		if a == nil || a.tokens == nil {
			return User{}, ErrInvalidToken
		}
		return a.tokens.Authenticate(r.Context(), token)
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		if u, ok := FromCertificate(r.TLS.VerifiedChains); ok {
			return u, nil
		}
		return User{}, fmt.Errorf("%w: client certificate has no valid common name", ErrUnauthenticated)
	}
	return User{}, ErrUnauthenticated
}

// bearerToken extracts the token from the values of the Authorization header.
func bearerToken(vals []string) (string, error) {
	if len(vals) != 1 {
		return "", ErrMalformedHeader
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ErrMalformedHeader
	}
	// Tolerate surrounding blanks (RFC 7235 allows several spaces after the
	// scheme) but nothing inside the token.
	token = strings.Trim(token, " \t")
	if token == "" || strings.ContainsAny(token, " \t") {
		return "", ErrMalformedHeader
	}
	return token, nil
}
