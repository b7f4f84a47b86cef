// Package rbac is weft-proxy's HTTP RBAC filter
// (envoy.extensions.filters.http.rbac.v3.RBAC): it evaluates the filter's
// rules (internal/proxy/rbac) on every request and answers 403 "RBAC:
// access denied" (response flag RBAC) when they refuse it. LOG rules and
// shadow rules never refuse: they leave their verdict as dynamic metadata
// under "envoy.filters.http.rbac" (shadow keys after
// shadow_rules_stat_prefix), as Envoy does. The unified matcher
// API (matcher, shadow_matcher) is refused.
package rbac

import (
	"fmt"
	"net/http"

	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"github.com/weftmesh/weft/internal/proxy/rbac"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the filter's xDS type URL.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"

// MetadataNamespace is where the filter records LOG and shadow results.
const MetadataNamespace = "envoy.filters.http.rbac"

func init() { httpfilter.Register(TypeURL, New) }

// New builds the filter from its typed_config.
func New(cfg *anypb.Any) (httpfilter.Filter, error) {
	c := &rbacfilterv3.RBAC{}
	if err := cfg.UnmarshalTo(c); err != nil {
		return nil, fmt.Errorf("rbac: %w", err)
	}
	if c.GetMatcher() != nil || c.GetShadowMatcher() != nil {
		return nil, fmt.Errorf("rbac: matcher and shadow_matcher are not supported (use rules)")
	}
	f := &filter{}
	if c.GetRules() != nil {
		e, err := rbac.Compile(c.GetRules())
		if err != nil {
			return nil, fmt.Errorf("rbac rules: %w", err)
		}
		f.rules = e
	}
	if c.GetShadowRules() != nil {
		e, err := rbac.Compile(c.GetShadowRules())
		if err != nil {
			return nil, fmt.Errorf("rbac shadow_rules: %w", err)
		}
		f.shadow, f.shadowPrefix = e, c.GetShadowRulesStatPrefix()
	}
	return f, nil
}

type filter struct {
	rules, shadow *rbac.Engine
	// shadowPrefix is shadow_rules_stat_prefix, which Envoy puts before
	// the shadow results' metadata keys (istiod's dry-run policies:
	// "istio_dry_run_allow_", "istio_dry_run_deny_").
	shadowPrefix string
}

// Decode evaluates the rules; see the package comment.
func (f *filter) Decode(c *httpfilter.Call) *httpfilter.Reply {
	in := &rbac.Input{Conn: c.Conn, Request: c.Request, Metadata: c.Metadata}
	if f.shadow != nil {
		for k, v := range f.shadow.ShadowMetadata(in, f.shadowPrefix) {
			c.SetMetadata(MetadataNamespace, k, v)
		}
	}
	if f.rules == nil {
		return nil
	}
	ok, pol := f.rules.Allowed(in)
	if f.rules.Action() == rbac.Log {
		c.SetMetadata(MetadataNamespace, "access_log_hint", pol != "")
		if pol != "" {
			c.SetMetadata(MetadataNamespace, "enforced_effective_policy_id", pol)
		}
		return nil
	}
	if c.Count != nil { // Envoy's rbac.allowed and rbac.denied
		if ok {
			c.Count("rbac.allowed")
		} else {
			c.Count("rbac.denied")
		}
	}
	if ok {
		return nil
	}
	return &httpfilter.Reply{Status: http.StatusForbidden, Body: "RBAC: access denied",
		Header: http.Header{"Content-Type": {"text/plain"}}, Flags: "RBAC"}
}
