package ca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/weftmesh/weft/internal/secrettoken"

	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// Bootstrap tokens read "wbt_<id>.<secret>": id is 16 lowercase hex
// characters naming the store record at BootstrapKeyPrefix+id, secret is 32
// random bytes as unpadded base64url. The store keeps only the secret's
// SHA-256, like the config API's bearer tokens.
const (
	// BootstrapTokenPrefix starts every bootstrap token.
	BootstrapTokenPrefix = "wbt_"

	// defaultServiceAccount is a WorkloadGroup's service account when its
	// template names none (as Istio).
	defaultServiceAccount = "default"
)

// Errors of AuthenticateBootstrap.
var (
	// ErrInvalidToken: malformed, unknown, revoked or wrong secret.
	ErrInvalidToken = errors.New("invalid or revoked bootstrap token")
	// ErrExpiredToken: genuine but past its expiry.
	ErrExpiredToken = errors.New("bootstrap token expired")
	// ErrGroupNotFound: the WorkloadGroup a token is for does not exist.
	ErrGroupNotFound = errors.New("workload group not found")
)

// BootstrapRecord is the JSON record of a bootstrap token in the store. It
// never holds the secret, only its hash.
type BootstrapRecord struct {
	// ID is the token's public identifier (16 lowercase hex characters).
	ID string `json:"id"`
	// Namespace and Group name the WorkloadGroup the token onboards into.
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	// ServiceAccount is the identity's service account: the group's
	// spec.template.serviceAccount when the token was issued.
	ServiceAccount string `json:"serviceAccount"`
	// SHA256 is the lowercase hex SHA-256 of the raw secret.
	SHA256  string    `json:"sha256,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// Identity returns the identity the token authenticates as.
func (r BootstrapRecord) Identity() Identity {
	return Identity{Namespace: r.Namespace, ServiceAccount: r.ServiceAccount}
}

// groupServiceAccount reads WorkloadGroup ns/name from the store and
// returns its spec.template.serviceAccount ("default" if unset).
func (a *Authority) groupServiceAccount(ctx context.Context, ns, name string) (string, error) {
	k, err := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	if err != nil {
		return "", fmt.Errorf("ca: %w", err)
	}
	kv, err := a.st.Get(ctx, k.Key(ns, name))
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("%w: WorkloadGroup %s/%s does not exist: create it first", ErrGroupNotFound, ns, name)
	}
	if err != nil {
		return "", fmt.Errorf("ca: reading WorkloadGroup %s/%s: %w", ns, name, err)
	}
	var wg struct {
		Spec struct {
			Template struct {
				ServiceAccount string `json:"serviceAccount"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(kv.Value, &wg); err != nil {
		return "", fmt.Errorf("ca: decoding WorkloadGroup %s/%s: %w", ns, name, err)
	}
	if sa := wg.Spec.Template.ServiceAccount; sa != "" {
		return sa, nil
	}
	return defaultServiceAccount, nil
}

// IssueBootstrapToken creates a token that authenticates CSRs as the
// identity of WorkloadGroup namespace/group, which must exist.
// serviceAccount may be empty (the group's service account is used); if
// given it must equal the group's. ttl must be positive and is clamped to
// Options.MaxBootstrapTTL. A token may be used by any number of workloads
// until it expires or is revoked; the returned string is the only copy of
// its secret.
func (a *Authority) IssueBootstrapToken(ctx context.Context, namespace, group, serviceAccount string, ttl time.Duration) (string, BootstrapRecord, error) {
	if !dnsLabel(namespace) {
		return "", BootstrapRecord{}, fmt.Errorf("%w: namespace %q is not a DNS label", ErrInvalidIdentity, namespace)
	}
	if !dnsSubdomain(group) {
		return "", BootstrapRecord{}, fmt.Errorf("%w: group name %q is not a DNS subdomain", ErrInvalidIdentity, group)
	}
	if ttl <= 0 {
		return "", BootstrapRecord{}, fmt.Errorf("%w: a bootstrap token needs a positive lifetime, got %v", ErrInvalidTTL, ttl)
	}
	ttl = min(ttl, a.opts.MaxBootstrapTTL)
	sa, err := a.groupServiceAccount(ctx, namespace, group)
	if err != nil {
		return "", BootstrapRecord{}, err
	}
	if serviceAccount != "" && serviceAccount != sa {
		return "", BootstrapRecord{}, fmt.Errorf("%w: WorkloadGroup %s/%s runs as service account %q, not %q", ErrInvalidIdentity, namespace, group, sa, serviceAccount)
	}
	if err := (Identity{Namespace: namespace, ServiceAccount: sa}).Validate(); err != nil {
		return "", BootstrapRecord{}, fmt.Errorf("WorkloadGroup %s/%s: %w", namespace, group, err)
	}
	secret, sum := secrettoken.NewSecret()
	now := a.opts.Clock().UTC()
	rec := BootstrapRecord{
		Namespace: namespace, Group: group, ServiceAccount: sa,
		SHA256: sum, Created: now, Expires: now.Add(ttl),
	}
	id, err := secrettoken.CreateUnique(ctx, a.st, BootstrapKeyPrefix, func(id string) ([]byte, error) {
		rec.ID = id
		return json.Marshal(rec)
	})
	if err != nil {
		return "", BootstrapRecord{}, fmt.Errorf("ca: bootstrap token: %w", err)
	}
	rec.ID = id
	a.log.Info("issued bootstrap token", "id", rec.ID, "namespace", namespace, "group", group,
		"service_account", sa, "expires", rec.Expires)
	return bootstrapFormat.Token(id, secret), rec, nil
}

// parseBootstrapToken splits a token into id and secret.
func parseBootstrapToken(token string) (string, []byte, bool) {
	return bootstrapFormat.Parse(token)
}

// bootstrapFormat is the shape of bootstrap tokens.
var bootstrapFormat = secrettoken.Format{Prefix: BootstrapTokenPrefix}

// AuthenticateBootstrap checks a bootstrap token and returns the identity
// it was issued for. It fails with ErrInvalidToken (malformed, unknown,
// revoked, wrong secret), ErrExpiredToken, or ErrGroupNotFound /
// ErrInvalidIdentity when the WorkloadGroup was deleted or now runs as
// another service account. Other errors come from the store.
func (a *Authority) AuthenticateBootstrap(ctx context.Context, token string) (Identity, error) {
	id, _, err := a.authenticateBootstrap(ctx, token)
	return id, err
}

// authenticateBootstrap is AuthenticateBootstrap, also returning the
// token's record (without hash) once the secret is proven.
func (a *Authority) authenticateBootstrap(ctx context.Context, token string) (Identity, BootstrapRecord, error) {
	id, secret, ok := parseBootstrapToken(token)
	if !ok {
		return Identity{}, BootstrapRecord{}, ErrInvalidToken
	}
	kv, err := a.st.Get(ctx, BootstrapKeyPrefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, BootstrapRecord{}, ErrInvalidToken
	}
	if err != nil {
		return Identity{}, BootstrapRecord{}, fmt.Errorf("ca: reading bootstrap token: %w", err)
	}
	var rec BootstrapRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return Identity{}, BootstrapRecord{}, fmt.Errorf("ca: decoding bootstrap token %s: %w", id, err)
	}
	match, err := secrettoken.Matches(secret, rec.SHA256, rec.ID, id)
	if err != nil {
		return Identity{}, BootstrapRecord{}, fmt.Errorf("ca: bootstrap token: %w", err)
	}
	if !match {
		return Identity{}, BootstrapRecord{}, ErrInvalidToken
	}
	rec.SHA256 = ""
	// Expiry and scope are checked only once the secret is proven, so
	// their errors tell nothing to someone without the token.
	if !a.opts.Clock().Before(rec.Expires) {
		return Identity{}, rec, fmt.Errorf("%w at %s", ErrExpiredToken, rec.Expires.Format(time.RFC3339))
	}
	sa, err := a.groupServiceAccount(ctx, rec.Namespace, rec.Group)
	if err != nil {
		return Identity{}, rec, err
	}
	if sa != rec.ServiceAccount {
		return Identity{}, rec, fmt.Errorf("%w: WorkloadGroup %s/%s now runs as service account %q, the token was issued for %q: issue a new token",
			ErrInvalidIdentity, rec.Namespace, rec.Group, sa, rec.ServiceAccount)
	}
	ident := rec.Identity()
	if err := ident.Validate(); err != nil {
		return Identity{}, rec, err
	}
	return ident, rec, nil
}

// ListBootstrapTokens returns every bootstrap token record (without
// hashes), expired ones included, in id order.
func (a *Authority) ListBootstrapTokens(ctx context.Context) ([]BootstrapRecord, error) {
	kvs, _, err := a.st.List(ctx, BootstrapKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("ca: listing bootstrap tokens: %w", err)
	}
	out := make([]BootstrapRecord, 0, len(kvs))
	for _, kv := range kvs {
		var rec BootstrapRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("ca: decoding bootstrap token %s: %w", kv.Key, err)
		}
		rec.SHA256 = ""
		out = append(out, rec)
	}
	return out, nil
}

// RevokeBootstrapToken deletes a bootstrap token; it stops authenticating
// at once. Certificates already issued with it stay valid until they
// expire. An unknown id returns an error wrapping store.ErrNotFound.
func (a *Authority) RevokeBootstrapToken(ctx context.Context, id string) error {
	if !secrettoken.ValidID(id) {
		return fmt.Errorf("ca: invalid bootstrap token id %q: %w", id, store.ErrNotFound)
	}
	if _, err := a.st.Delete(ctx, BootstrapKeyPrefix+id, 0); err != nil {
		return fmt.Errorf("ca: revoking bootstrap token %s: %w", id, err)
	}
	a.log.Info("revoked bootstrap token", "id", id)
	return nil
}
