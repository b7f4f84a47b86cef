package jwtauthn

import (
	"errors"
	"fmt"
	"sort"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
)

// requirement is a compiled JwtRequirement.
type requirement interface {
	eval(v *verification) status
}

// reqProvider: the provider's token must verify (audiences nil: the
// provider's own).
type reqProvider struct {
	name      string
	audiences []string
}

func (r reqProvider) eval(v *verification) status { return v.provider(r.name, r.audiences) }

// reqAny: one of the requirements must be met. With allowMissing (an
// allow_missing entry in the list) a request without any token for them
// passes. The failure reported is Envoy's: an error other than a missing
// token or an issuer of another provider wins over those.
type reqAny struct {
	reqs         []requirement
	allowMissing bool
}

func (r reqAny) eval(v *verification) status {
	final := statusMissing
	for _, q := range r.reqs {
		st := q.eval(v)
		if st == statusOK {
			return statusOK
		}
		if (st != statusMissing && st != statusUnknownIssuer) || final == statusMissing {
			final = st
		}
	}
	if r.allowMissing && final == statusMissing {
		return statusOK
	}
	return final
}

// reqAll: every requirement must be met.
type reqAll []requirement

func (r reqAll) eval(v *verification) status {
	for _, q := range r {
		if st := q.eval(v); st != statusOK {
			return st
		}
	}
	return statusOK
}

// reqAllowFailed: allow_missing_or_failed; tokens are still verified so
// the valid ones yield metadata and headers.
type reqAllowFailed struct{ all requirement }

func (r reqAllowFailed) eval(v *verification) status {
	r.all.eval(v)
	return statusOK
}

// maxRequirementDepth bounds nesting of requires_any/requires_all.
const maxRequirementDepth = 16

// compileRequirement compiles one JwtRequirement.
func (f *filter) compileRequirement(r *jwtv3.JwtRequirement, depth int) (requirement, error) {
	if depth > maxRequirementDepth {
		return nil, errors.New("requirements nested too deeply")
	}
	// anyProvider verifies with every provider (allow_missing and
	// allow_missing_or_failed outside of a list).
	anyProvider := func(allowMissing bool) requirement {
		names := make([]string, 0, len(f.providers))
		for n := range f.providers {
			names = append(names, n)
		}
		sort.Strings(names)
		a := reqAny{allowMissing: allowMissing}
		for _, n := range names {
			a.reqs = append(a.reqs, reqProvider{name: n})
		}
		return a
	}
	switch t := r.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		if f.providers[t.ProviderName] == nil {
			return nil, fmt.Errorf("unknown provider %q", t.ProviderName)
		}
		return reqProvider{name: t.ProviderName}, nil
	case *jwtv3.JwtRequirement_ProviderAndAudiences:
		name := t.ProviderAndAudiences.GetProviderName()
		if f.providers[name] == nil {
			return nil, fmt.Errorf("unknown provider %q", name)
		}
		return reqProvider{name: name, audiences: append([]string{}, t.ProviderAndAudiences.GetAudiences()...)}, nil
	case *jwtv3.JwtRequirement_RequiresAny:
		var a reqAny
		for _, c := range t.RequiresAny.GetRequirements() {
			if c.GetAllowMissing() != nil {
				a.allowMissing = true
				continue
			}
			q, err := f.compileRequirement(c, depth+1)
			if err != nil {
				return nil, err
			}
			a.reqs = append(a.reqs, q)
		}
		return a, nil
	case *jwtv3.JwtRequirement_RequiresAll:
		var a reqAll
		for _, c := range t.RequiresAll.GetRequirements() {
			q, err := f.compileRequirement(c, depth+1)
			if err != nil {
				return nil, err
			}
			a = append(a, q)
		}
		return a, nil
	case *jwtv3.JwtRequirement_AllowMissing:
		return anyProvider(true), nil
	case *jwtv3.JwtRequirement_AllowMissingOrFailed:
		return reqAllowFailed{all: anyProvider(false)}, nil
	case nil:
		return reqAll{}, nil
	}
	return nil, fmt.Errorf("requirement %T is not supported", r.GetRequiresType())
}
