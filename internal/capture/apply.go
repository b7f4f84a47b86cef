package capture

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// managedTables are the tables weft ever writes to, in the order it
// writes them.
var managedTables = []string{"nat", "mangle"}

// OwnerError reports capture rules installed by a different proxy. Apply
// and Cleanup return it before changing anything.
type OwnerError struct {
	// Found is the owner recorded in the installed rules; Want is the
	// caller's.
	Found, Want string
	// Cleanup is true when the error comes from Cleanup.
	Cleanup bool
}

func (e *OwnerError) Error() string {
	if e.Cleanup {
		return fmt.Sprintf("capture rules on this host/namespace are owned by proxy %q, not %q; "+
			"remove them with `weft-proxy iptables --cleanup --owner %s`", e.Found, e.Want, e.Found)
	}
	return fmt.Sprintf("capture rules owned by proxy %q are installed on this host/namespace; "+
		"remove them with `weft-proxy iptables --cleanup --owner %s` first", e.Found, e.Found)
}

// installed is what a family's iptables-save shows of weft.
type installed struct {
	family Family
	tables map[string]*tableState
	owners []string     // distinct, from the jump comments
	route  *PolicyRoute // TPROXY routing the rules say was added
}

type tableState struct {
	chains []string // WEFT_* chains
	jumps  []Rule   // rules in other chains that jump to WEFT_* chains
	rules  []Rule   // the rules in WEFT_* chains
}

// previous is the installed weft rules as a Ruleset, to roll back to.
func (st *installed) previous() Ruleset {
	rs := Ruleset{Family: st.family}
	for _, name := range managedTables {
		if t := st.tables[name]; t != nil && len(t.chains)+len(t.jumps) > 0 {
			rs.Tables = append(rs.Tables, Table{Name: name, Chains: t.chains,
				Rules: append(slices.Clone(t.rules), t.jumps...)})
		}
	}
	return rs
}

var (
	ownerCommentRE = regexp.MustCompile(`weft-owner=([A-Za-z0-9._-]*)`)
	routeTableRE   = regexp.MustCompile(`weft-route-table=([0-9]+)`)
	markRE         = regexp.MustCompile(`--set-x?mark (0x[0-9a-fA-F]+|[0-9]+)`)
)

// parseSave reads iptables-save output into weft's view of it.
func parseSave(out string) *installed {
	st := &installed{tables: map[string]*tableState{}}
	var cur *tableState
	var divert []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			cur = &tableState{}
			st.tables[name] = cur
		case cur == nil:
		case strings.HasPrefix(line, ":"):
			if f := strings.Fields(line[1:]); len(f) > 0 && strings.HasPrefix(f[0], ChainPrefix) {
				cur.chains = append(cur.chains, f[0])
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			if chain == "WEFT_DIVERT" {
				divert = append(divert, spec)
			}
			if strings.HasPrefix(chain, ChainPrefix) {
				cur.rules = append(cur.rules, Rule{Chain: chain, Spec: spec})
				continue
			}
			if !jumpsToWeft(spec) {
				continue
			}
			cur.jumps = append(cur.jumps, Rule{Chain: chain, Spec: spec})
			if m := ownerCommentRE.FindStringSubmatch(spec); m != nil && !slices.Contains(st.owners, m[1]) {
				st.owners = append(st.owners, m[1])
			}
		}
	}
	for _, spec := range divert {
		t := routeTableRE.FindStringSubmatch(spec)
		m := markRE.FindStringSubmatch(spec)
		if t == nil || m == nil {
			continue
		}
		mark, err1 := strconv.ParseInt(m[1], 0, 64)
		table, err2 := strconv.Atoi(t[1])
		if err1 == nil && err2 == nil {
			st.route = &PolicyRoute{Mark: int(mark), Table: table}
		}
	}
	return st
}

func jumpsToWeft(spec string) bool {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if (f[i] == "-j" || f[i] == "-g") && strings.HasPrefix(f[i+1], ChainPrefix) {
			return true
		}
	}
	return false
}

// transition returns iptables-restore input (for --noflush) that turns the
// installed weft rules into want, touching nothing else: it removes weft's
// jumps, flushes weft's chains, deletes the chains want no longer has,
// creates the new ones and appends want's rules. Jumps that already match
// want exactly, in order, are left in place so that repeated applies keep
// weft's position among other tools' rules. An empty result means there is
// nothing to do.
func transition(st *installed, want Ruleset) string {
	var b strings.Builder
	for _, name := range managedTables {
		cur := st.tables[name]
		if cur == nil {
			cur = &tableState{}
		}
		var w Table
		for _, t := range want.Tables {
			if t.Name == name {
				w = t
			}
		}
		if len(cur.chains)+len(cur.jumps)+len(w.Chains)+len(w.Rules) == 0 {
			continue
		}
		keep := sameJumps(cur.jumps, w.Rules)
		fmt.Fprintf(&b, "*%s\n", name)
		for _, j := range cur.jumps {
			if !keep[j.Chain] {
				fmt.Fprintf(&b, "-D %s %s\n", j.Chain, j.Spec)
			}
		}
		for _, c := range cur.chains {
			fmt.Fprintf(&b, "-F %s\n", c)
		}
		for _, c := range cur.chains {
			if !slices.Contains(w.Chains, c) {
				fmt.Fprintf(&b, "-X %s\n", c)
			}
		}
		for _, c := range w.Chains {
			if !slices.Contains(cur.chains, c) {
				fmt.Fprintf(&b, "-N %s\n", c)
			}
		}
		for _, r := range w.Rules {
			if !keep[r.Chain] {
				fmt.Fprintf(&b, "-A %s %s\n", r.Chain, r.Spec)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// sameJumps reports, per built-in chain, whether the installed jumps equal
// the wanted ones exactly and in order.
func sameJumps(cur []Rule, want []Rule) map[string]bool {
	by := func(rs []Rule) map[string][]string {
		m := map[string][]string{}
		for _, r := range rs {
			if !strings.HasPrefix(r.Chain, ChainPrefix) {
				m[r.Chain] = append(m[r.Chain], r.Spec)
			}
		}
		return m
	}
	c, w := by(cur), by(want)
	keep := map[string]bool{}
	for chain, specs := range c {
		keep[chain] = slices.Equal(specs, w[chain])
	}
	return keep
}

// families reads the installed state of every family whose tools exist.
func families(ctx context.Context, r Runner) (map[Family]*installed, error) {
	if _, err := r.Version(ctx, IPv4); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	out := map[Family]*installed{}
	for _, f := range []Family{IPv4, IPv6} {
		if f == IPv6 {
			if _, err := r.Version(ctx, IPv6); err != nil {
				continue
			}
		}
		text, err := r.Save(ctx, f, "")
		if err != nil {
			return nil, fmt.Errorf("capture: reading %s rules: %w", f, err)
		}
		out[f] = parseSave(text)
		out[f].family = f
	}
	return out, nil
}

// Apply installs cfg's capture rules through r. It first reads the rules
// in place: another owner's rules make it fail with an *OwnerError before
// anything changes; its own (or unmarked) weft rules are replaced, so
// applying twice is the same as applying once. Rules of other tools are
// never touched. Each family is changed in one iptables-restore call; if a
// later step fails, the steps already done are rolled back.
func Apply(ctx context.Context, r Runner, cfg Config) (err error) {
	plan, err := Build(cfg)
	if err != nil {
		return err
	}
	states, err := families(ctx, r)
	if err != nil {
		return err
	}
	want := map[Family]Ruleset{}
	for _, rs := range plan.Families {
		if states[rs.Family] == nil {
			return fmt.Errorf("capture: IPv6 capture was asked for but ip6tables is not available: %w", ErrToolMissing)
		}
		want[rs.Family] = rs
	}
	for _, st := range states {
		for _, o := range st.owners {
			if o != plan.Owner {
				return &OwnerError{Found: o, Want: plan.Owner}
			}
		}
	}
	var undo []func() error
	uctx := context.WithoutCancel(ctx) // roll back even when ctx is cancelled
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				err = errors.Join(err, fmt.Errorf("capture: rolling back: %w", uerr))
			}
		}
	}()
	for _, f := range []Family{IPv4, IPv6} {
		st := states[f]
		if st == nil {
			continue
		}
		if script := transition(st, want[f]); script != "" {
			if err := r.Restore(ctx, f, script, true); err != nil {
				return fmt.Errorf("capture: installing %s rules: %w", f, err)
			}
			undo = append(undo, func() error {
				text, err := r.Save(uctx, f, "")
				if err != nil {
					return err
				}
				if script := transition(parseSave(text), st.previous()); script != "" {
					return r.Restore(uctx, f, script, true)
				}
				return nil
			})
		}
		_, inPlan := want[f]
		if plan.Route != nil && inPlan {
			if err := r.PolicyRoute(ctx, f, *plan.Route, true); err != nil {
				return fmt.Errorf("capture: TPROXY routing (%s): %w", f, err)
			}
			if st.route == nil || *st.route != *plan.Route {
				route := *plan.Route
				undo = append(undo, func() error { return r.PolicyRoute(uctx, f, route, false) })
			}
		}
		if st.route != nil && (plan.Route == nil || !inPlan || *st.route != *plan.Route) {
			if err := r.PolicyRoute(ctx, f, *st.route, false); err != nil {
				return fmt.Errorf("capture: removing old TPROXY routing (%s): %w", f, err)
			}
			old := *st.route
			undo = append(undo, func() error { return r.PolicyRoute(uctx, f, old, true) })
		}
	}
	return nil
}

// Cleanup removes exactly what Apply added for owner: weft's jumps and
// chains in every family and, if the rules show TPROXY mode, its policy
// routing. Other owners' rules make it fail with an *OwnerError before
// anything changes. With nothing installed it does nothing.
func Cleanup(ctx context.Context, r Runner, owner string) error {
	states, err := families(ctx, r)
	if err != nil {
		return err
	}
	for _, st := range states {
		for _, o := range st.owners {
			if o != owner {
				return &OwnerError{Found: o, Want: owner, Cleanup: true}
			}
		}
	}
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		st := states[f]
		if st == nil {
			continue
		}
		if script := transition(st, Ruleset{Family: f}); script != "" {
			if err := r.Restore(ctx, f, script, true); err != nil {
				errs = append(errs, fmt.Errorf("capture: removing %s rules: %w", f, err))
				continue
			}
		}
		if st.route != nil {
			if err := r.PolicyRoute(ctx, f, *st.route, false); err != nil {
				errs = append(errs, fmt.Errorf("capture: removing TPROXY routing (%s): %w", f, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Owners returns the owners of the capture rules installed through r
// (empty when there are none).
func Owners(ctx context.Context, r Runner) ([]string, error) {
	states, err := families(ctx, r)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range []Family{IPv4, IPv6} {
		if st := states[f]; st != nil {
			for _, o := range st.owners {
				if !slices.Contains(out, o) {
					out = append(out, o)
				}
			}
		}
	}
	return out, nil
}
