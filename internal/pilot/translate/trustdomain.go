package translate

import (
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
)

// Trust domains, as istiod treats them. A mesh's identities are
// "<trust domain>/ns/<namespace>/sa/<service account>"; its trust domain
// aliases (meshConfig.trustDomainAliases, for a migration from one trust
// domain to another) name the same workloads. In an AuthorizationPolicy,
// "cluster.local" stands for the mesh's own trust domain whatever it is.

// defaultTrustDomain is the trust domain a policy may name for the
// mesh's own.
const defaultTrustDomain = "cluster.local"

// trustDomains is the mesh's trust domain followed by its aliases.
func (g *netBuilder) trustDomains() []string {
	return append([]string{g.s.Mesh.TrustDomain}, g.s.Mesh.TrustDomainAliases...)
}

// principalsInTrustDomains rewrites authorization principals for the
// trust domains tds (the mesh's first): a principal of one of them, or
// of "cluster.local", becomes one principal per trust domain. Principals
// whose trust domain is "*", a pattern, another mesh's, or that are not
// "<td>/ns/<ns>/sa/<sa>" shaped (a prefix or suffix match) are kept as
// they are. Duplicates are dropped; order is kept.
func principalsInTrustDomains(principals, tds []string) []string {
	var out []string
	add := func(p string) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, p := range principals {
		parts := strings.Split(p, "/")
		td := parts[0]
		if len(parts) != 5 || strings.Contains(td, "*") || td != defaultTrustDomain && !slices.Contains(tds, td) {
			add(p)
			continue
		}
		rest := p[len(td):]
		for _, d := range tds {
			add(d + rest)
		}
	}
	return out
}

// ruleInTrustDomains is rule with its source principals and
// source.principal conditions rewritten for the trust domains tds
// (principalsInTrustDomains); rule itself when nothing changes.
func ruleInTrustDomains(rule *security.Rule, tds []string) *security.Rule {
	expand := func(ps []string) ([]string, bool) {
		out := principalsInTrustDomains(ps, tds)
		return out, !slices.Equal(out, ps)
	}
	var clone *security.Rule
	edit := func() *security.Rule {
		if clone == nil {
			clone = proto.Clone(rule).(*security.Rule)
		}
		return clone
	}
	for i, f := range rule.GetFrom() {
		if ps, ok := expand(f.GetSource().GetPrincipals()); ok {
			edit().From[i].Source.Principals = ps
		}
		if ps, ok := expand(f.GetSource().GetNotPrincipals()); ok {
			edit().From[i].Source.NotPrincipals = ps
		}
	}
	for i, w := range rule.GetWhen() {
		if w.GetKey() != "source.principal" {
			continue
		}
		if vs, ok := expand(w.GetValues()); ok {
			edit().When[i].Values = vs
		}
		if vs, ok := expand(w.GetNotValues()); ok {
			edit().When[i].NotValues = vs
		}
	}
	if clone == nil {
		return rule
	}
	return clone
}

// spiffeInTrustDomains adds to SPIFFE IDs (spiffe://<td>/ns/<ns>/sa/<sa>)
// their counterparts in each alias, as istiod expands the identities a
// client accepts from a server; other names are kept. Sorted, without
// duplicates.
func spiffeInTrustDomains(ids, aliases []string) []string {
	out := slices.Clone(ids)
	if len(aliases) > 0 {
		for _, id := range ids {
			rest, ok := strings.CutPrefix(id, "spiffe://")
			if !ok {
				continue
			}
			td, path, ok := strings.Cut(rest, "/")
			if !ok || td == "" || len(strings.Split(path, "/")) != 4 {
				continue
			}
			for _, a := range aliases {
				out = append(out, "spiffe://"+a+"/"+path)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
