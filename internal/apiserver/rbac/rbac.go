// Package rbac authorizes requests to weft's Kubernetes-compatible API
// server with Kubernetes RBAC semantics, using the rbac.authorization.k8s.io/v1
// objects (ClusterRole, ClusterRoleBinding, Role, RoleBinding) kept in the
// store.
//
// The evaluation follows Kubernetes' RBAC authorizer:
//
//   - ClusterRoleBindings grant their ClusterRole's rules everywhere.
//     RoleBindings grant the rules of a Role in the same namespace, or of a
//     ClusterRole, within the binding's namespace only.
//   - Subjects are Users, Groups and ServiceAccounts; a ServiceAccount
//     subject matches the user "system:serviceaccount:<namespace>:<name>",
//     its namespace defaulting to the RoleBinding's.
//   - A rule allows a resource request when its verbs, apiGroups, resources
//     and resourceNames all match. "*" is a wildcard in verbs, apiGroups and
//     resources; "" is the core group. A resource entry matches "resource",
//     "resource/subresource", or "*/subresource" for any resource. As in
//     Kubernetes, "resource/*" is NOT a wildcard: it only matches the literal
//     subresource "*". resourceNames restrict a rule only when non-empty and
//     then never match a request without a name (create, list, watch,
//     deletecollection).
//   - nonResourceURLs (exact, or a prefix when ending in "*") apply only to
//     non-resource requests, and only through ClusterRoleBindings.
//   - A binding whose role does not exist is skipped.
//   - There are no deny rules: a request is allowed if any rule allows it.
//
// Differences from Kubernetes: aggregationRule is ignored (an aggregated
// ClusterRole grants only the rules stored in it; the bootstrap roles are
// written out in full), and privilege-escalation checks on writes of roles
// and bindings (the "escalate" and "bind" verbs) are not done here; they
// belong in the handlers that store those objects.
//
// The store is read on every call: the cluster-wide bindings and the
// bindings of the request's namespace are listed, and only the roles those
// bindings reference for the requesting user are fetched.
package rbac

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/weftmesh/weft/internal/store"
)

// Store key prefixes of the RBAC objects. Objects are stored as the JSON of
// the full object: ClusterRoles and ClusterRoleBindings at prefix + name,
// Roles and RoleBindings at prefix + namespace + "/" + name.
const (
	registryPrefix            = "/registry/rbac.authorization.k8s.io/"
	ClusterRolesPrefix        = registryPrefix + "clusterroles/"
	ClusterRoleBindingsPrefix = registryPrefix + "clusterrolebindings/"
	RolesPrefix               = registryPrefix + "roles/"
	RoleBindingsPrefix        = registryPrefix + "rolebindings/"
)

// ClusterRoleKey is the store key of the ClusterRole name.
func ClusterRoleKey(name string) string { return ClusterRolesPrefix + name }

// ClusterRoleBindingKey is the store key of the ClusterRoleBinding name.
func ClusterRoleBindingKey(name string) string { return ClusterRoleBindingsPrefix + name }

// RoleKey is the store key of the Role namespace/name.
func RoleKey(namespace, name string) string { return RolesPrefix + namespace + "/" + name }

// RoleBindingKey is the store key of the RoleBinding namespace/name.
func RoleBindingKey(namespace, name string) string {
	return RoleBindingsPrefix + namespace + "/" + name
}

// serviceAccountPrefix starts the user name of every service account.
const serviceAccountPrefix = "system:serviceaccount:"

// Attributes describe one request to authorize.
type Attributes struct {
	// User is the authenticated user name.
	User string
	// Groups are the user's groups (including "system:authenticated").
	Groups []string
	// Verb is the Kubernetes verb: get, list, watch, create, update, patch,
	// delete, deletecollection, ... For non-resource requests it is the
	// lower-case HTTP method ("get", "post", ...).
	Verb string
	// APIGroup is the resource's API group; "" is the core group.
	APIGroup string
	// Resource is the plural resource name, for example "virtualservices".
	Resource string
	// Subresource is the subresource, for example "status", or "".
	Subresource string
	// Namespace is the request's namespace; "" for cluster-scoped requests
	// (including lists across all namespaces).
	Namespace string
	// Name is the object's name; "" for create, list, watch and
	// deletecollection.
	Name string
	// Path is the URL path of a non-resource request, for example "/api",
	// "/apis", "/version" or "/openapi/v3".
	Path string
	// ResourceRequest is true for requests on API resources and false for
	// non-resource requests (which use Verb and Path only).
	ResourceRequest bool
}

// Decision is the outcome of Authorize.
type Decision struct {
	// Allowed says whether the request may proceed.
	Allowed bool
	// Reason explains the decision. For a denial it is a Kubernetes-style
	// message suitable for a 403 response, for example `User "alice" cannot
	// list resource "virtualservices" in API group "networking.istio.io" in
	// the namespace "default"`.
	Reason string
}

// Authorizer decides requests with the RBAC objects in a store. It is safe
// for concurrent use.
type Authorizer struct {
	r store.Reader
}

// New returns an Authorizer reading RBAC objects from r.
func New(r store.Reader) *Authorizer {
	return &Authorizer{r: r}
}

// evaluation holds the state of one Authorize call.
type evaluation struct {
	ctx   context.Context
	r     store.Reader
	attrs Attributes
	// roles memoizes the rules of the roles fetched so far, by store key (nil
	// for missing roles).
	roles map[string][]rbacv1.PolicyRule
	// notes are problems that did not stop the evaluation (missing roles,
	// undecodable objects); they are appended to a denial's reason.
	notes []string
}

// Authorize decides whether a may proceed. An error is returned only when
// the store could not be read and no rule allowed the request; the
// decision is then a denial and the caller should answer with an internal
// error rather than 403.
func (a *Authorizer) Authorize(ctx context.Context, attrs Attributes) (Decision, error) {
	ev := &evaluation{ctx: ctx, r: a.r, attrs: attrs, roles: map[string][]rbacv1.PolicyRule{}}
	var errs []error

	allowed, reason, err := ev.clusterRoleBindings()
	if allowed {
		return Decision{Allowed: true, Reason: reason}, nil
	}
	if err != nil {
		errs = append(errs, err)
	}
	if attrs.ResourceRequest && attrs.Namespace != "" {
		allowed, reason, err := ev.roleBindings(attrs.Namespace)
		if allowed {
			return Decision{Allowed: true, Reason: reason}, nil
		}
		if err != nil {
			errs = append(errs, err)
		}
	}

	reason = forbiddenMessage(attrs)
	if len(ev.notes) > 0 {
		reason += ": RBAC: " + strings.Join(ev.notes, ", ")
	}
	return Decision{Allowed: false, Reason: reason}, errors.Join(errs...)
}

// clusterRoleBindings looks for a ClusterRoleBinding allowing the request.
// It returns the first store error it met, if no binding allowed it.
func (ev *evaluation) clusterRoleBindings() (bool, string, error) {
	kvs, _, err := ev.r.List(ev.ctx, ClusterRoleBindingsPrefix)
	if err != nil {
		return false, "", fmt.Errorf("rbac: listing clusterrolebindings: %w", err)
	}
	var firstErr error
	for _, kv := range kvs {
		var b rbacv1.ClusterRoleBinding
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			ev.notes = append(ev.notes, fmt.Sprintf("cannot decode %s", kv.Key))
			continue
		}
		subject, ok := ev.appliesTo(b.Subjects, "")
		if !ok {
			continue
		}
		if b.RoleRef.Kind != "ClusterRole" {
			ev.notes = append(ev.notes, fmt.Sprintf("clusterrolebinding %q: unsupported role reference kind %q", b.Name, b.RoleRef.Kind))
			continue
		}
		rules, err := ev.rules(ClusterRoleKey(b.RoleRef.Name), "clusterrole", b.RoleRef.Name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if ev.rulesAllow(rules) {
			return true, fmt.Sprintf("RBAC: allowed by ClusterRoleBinding %q of ClusterRole %q to %s",
				b.Name, b.RoleRef.Name, describeSubject(subject, "")), nil
		}
	}
	return false, "", firstErr
}

// roleBindings looks for a RoleBinding in namespace ns allowing the request.
func (ev *evaluation) roleBindings(ns string) (bool, string, error) {
	kvs, _, err := ev.r.List(ev.ctx, RoleBindingsPrefix+ns+"/")
	if err != nil {
		return false, "", fmt.Errorf("rbac: listing rolebindings in %q: %w", ns, err)
	}
	var firstErr error
	for _, kv := range kvs {
		var b rbacv1.RoleBinding
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			ev.notes = append(ev.notes, fmt.Sprintf("cannot decode %s", kv.Key))
			continue
		}
		// The store key is authoritative for the binding's namespace.
		subject, ok := ev.appliesTo(b.Subjects, ns)
		if !ok {
			continue
		}
		var key, kind string
		switch b.RoleRef.Kind {
		case "Role":
			key, kind = RoleKey(ns, b.RoleRef.Name), "role"
		case "ClusterRole":
			key, kind = ClusterRoleKey(b.RoleRef.Name), "clusterrole"
		default:
			ev.notes = append(ev.notes, fmt.Sprintf("rolebinding %q: unsupported role reference kind %q", ns+"/"+b.Name, b.RoleRef.Kind))
			continue
		}
		rules, err := ev.rules(key, kind, b.RoleRef.Name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if ev.rulesAllow(rules) {
			return true, fmt.Sprintf("RBAC: allowed by RoleBinding %q of %s %q to %s",
				ns+"/"+b.Name, b.RoleRef.Kind, b.RoleRef.Name, describeSubject(subject, ns)), nil
		}
	}
	return false, "", firstErr
}

// rules returns the rules of the Role or ClusterRole stored at key (kind is
// "role" or "clusterrole", for messages). A missing or undecodable role has
// no rules; only store failures are errors.
func (ev *evaluation) rules(key, kind, name string) ([]rbacv1.PolicyRule, error) {
	if rules, ok := ev.roles[key]; ok {
		return rules, nil
	}
	kv, err := ev.r.Get(ev.ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		ev.roles[key] = nil
		ev.notes = append(ev.notes, fmt.Sprintf("%s.rbac.authorization.k8s.io %q not found", kind, name))
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rbac: reading %s: %w", key, err)
	}
	// Role and ClusterRole share the rules field; aggregationRule is ignored.
	var role struct {
		Rules []rbacv1.PolicyRule `json:"rules"`
	}
	if err := json.Unmarshal(kv.Value, &role); err != nil {
		ev.roles[key] = nil
		ev.notes = append(ev.notes, fmt.Sprintf("cannot decode %s", key))
		return nil, nil
	}
	ev.roles[key] = role.Rules
	return role.Rules, nil
}

// appliesTo returns the first subject matching the requesting user. ns is
// the binding's namespace ("" for ClusterRoleBindings), the default
// namespace of ServiceAccount subjects.
func (ev *evaluation) appliesTo(subjects []rbacv1.Subject, ns string) (rbacv1.Subject, bool) {
	for _, s := range subjects {
		if appliesToUser(ev.attrs.User, ev.attrs.Groups, s, ns) {
			return s, true
		}
	}
	return rbacv1.Subject{}, false
}

// appliesToUser reports whether subject s names the user.
func appliesToUser(user string, groups []string, s rbacv1.Subject, ns string) bool {
	switch s.Kind {
	case rbacv1.UserKind:
		return user == s.Name
	case rbacv1.GroupKind:
		return slices.Contains(groups, s.Name)
	case rbacv1.ServiceAccountKind:
		saNS := ns
		if s.Namespace != "" {
			saNS = s.Namespace
		}
		if saNS == "" || s.Name == "" {
			return false
		}
		return user == serviceAccountPrefix+saNS+":"+s.Name
	}
	return false
}

// describeSubject renders s as Kubernetes does in allow reasons.
func describeSubject(s rbacv1.Subject, ns string) string {
	if s.Kind == rbacv1.ServiceAccountKind {
		if s.Namespace != "" {
			ns = s.Namespace
		}
		return fmt.Sprintf("%s %q", s.Kind, ns+"/"+s.Name)
	}
	return fmt.Sprintf("%s %q", s.Kind, s.Name)
}

// rulesAllow reports whether any of rules allows the request.
func (ev *evaluation) rulesAllow(rules []rbacv1.PolicyRule) bool {
	for i := range rules {
		if RuleAllows(ev.attrs, &rules[i]) {
			return true
		}
	}
	return false
}

// RuleAllows reports whether rule allows the request a, with Kubernetes'
// matching rules (see the package documentation).
func RuleAllows(a Attributes, rule *rbacv1.PolicyRule) bool {
	if a.ResourceRequest {
		combined := a.Resource
		if a.Subresource != "" {
			combined += "/" + a.Subresource
		}
		return verbMatches(rule, a.Verb) &&
			apiGroupMatches(rule, a.APIGroup) &&
			resourceMatches(rule, combined, a.Subresource) &&
			resourceNameMatches(rule, a.Name)
	}
	return verbMatches(rule, a.Verb) && nonResourceURLMatches(rule, a.Path)
}

func verbMatches(rule *rbacv1.PolicyRule, verb string) bool {
	for _, v := range rule.Verbs {
		if v == rbacv1.VerbAll || v == verb {
			return true
		}
	}
	return false
}

func apiGroupMatches(rule *rbacv1.PolicyRule, group string) bool {
	for _, g := range rule.APIGroups {
		if g == rbacv1.APIGroupAll || g == group {
			return true
		}
	}
	return false
}

// resourceMatches matches "*", the exact "resource[/subresource]", and
// "*/subresource".
func resourceMatches(rule *rbacv1.PolicyRule, combined, subresource string) bool {
	for _, r := range rule.Resources {
		if r == rbacv1.ResourceAll || r == combined {
			return true
		}
		if subresource != "" && r == "*/"+subresource {
			return true
		}
	}
	return false
}

// resourceNameMatches: an empty resourceNames list matches everything,
// otherwise the request's name must be listed (so a request without a name
// never matches).
func resourceNameMatches(rule *rbacv1.PolicyRule, name string) bool {
	if len(rule.ResourceNames) == 0 {
		return true
	}
	return slices.Contains(rule.ResourceNames, name)
}

// nonResourceURLMatches matches "*", an exact path, or a prefix ending in
// "*".
func nonResourceURLMatches(rule *rbacv1.PolicyRule, path string) bool {
	for _, u := range rule.NonResourceURLs {
		if u == rbacv1.NonResourceAll || u == path {
			return true
		}
		if strings.HasSuffix(u, "*") && strings.HasPrefix(path, strings.TrimRight(u, "*")) {
			return true
		}
	}
	return false
}

// forbiddenMessage is Kubernetes' wording for a denied request.
func forbiddenMessage(a Attributes) string {
	if !a.ResourceRequest {
		return fmt.Sprintf("User %q cannot %s path %q", a.User, a.Verb, a.Path)
	}
	resource := a.Resource
	if a.Subresource != "" {
		resource += "/" + a.Subresource
	}
	if a.Namespace != "" {
		return fmt.Sprintf("User %q cannot %s resource %q in API group %q in the namespace %q",
			a.User, a.Verb, resource, a.APIGroup, a.Namespace)
	}
	return fmt.Sprintf("User %q cannot %s resource %q in API group %q at the cluster scope",
		a.User, a.Verb, resource, a.APIGroup)
}
