package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// Runner is the seam between capture and the kernel: the iptables-save /
// iptables-restore pair for each family and the policy routing TPROXY
// needs. ExecRunner is the real one; tests use a fake.
type Runner interface {
	// Save returns iptables-save output for one table, or for every
	// table in use when table is empty.
	Save(ctx context.Context, f Family, table string) (string, error)
	// Restore feeds input to iptables-restore; noflush keeps the rules
	// already in the tables it names.
	Restore(ctx context.Context, f Family, input string, noflush bool) error
	// Version reports the iptables version and backend; an error means
	// the family's tools are missing.
	Version(ctx context.Context, f Family) (string, error)
	// PolicyRoute installs r when install is true, else removes it. Both
	// are idempotent.
	PolicyRoute(ctx context.Context, f Family, r PolicyRoute, install bool) error
}

// ExecRunner runs the iptables-save, iptables-restore (ip6tables-* for
// IPv6) and ip binaries found on PATH, in the network namespace NetNS
// (`ip netns exec`) when it is set. Whatever backend the distribution
// selects (Debian's alternatives: nf_tables or legacy) is used.
type ExecRunner struct {
	// NetNS is a named network namespace (ip netns); empty for the
	// caller's own namespace.
	NetNS string
}

var _ Runner = (*ExecRunner)(nil)

// ErrToolMissing reports that a required binary is not installed.
var ErrToolMissing = errors.New("tool not found")

func (f Family) tool(kind string) string {
	if f == IPv6 {
		return "ip6tables-" + kind
	}
	return "iptables-" + kind
}

// lookTool finds the family's save or restore binary: the distribution's
// default name first, then the nft and legacy variants.
func lookTool(f Family, kind string) (string, error) {
	base := strings.TrimSuffix(f.tool(kind), "-"+kind)
	for _, name := range []string{base + "-" + kind, base + "-nft-" + kind, base + "-legacy-" + kind} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w (install the iptables package)", f.tool(kind), ErrToolMissing)
}

func (r *ExecRunner) run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, ErrToolMissing)
	}
	if r.NetNS != "" {
		ip, err := exec.LookPath("ip")
		if err != nil {
			return "", fmt.Errorf("ip (for netns %s): %w (install iproute2)", r.NetNS, ErrToolMissing)
		}
		args = append([]string{"netns", "exec", r.NetNS, path}, args...)
		path = ip
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Save implements Runner.
func (r *ExecRunner) Save(ctx context.Context, f Family, table string) (string, error) {
	bin, err := lookTool(f, "save")
	if err != nil {
		return "", err
	}
	if table == "" {
		return r.run(ctx, "", bin)
	}
	return r.run(ctx, "", bin, "-t", table)
}

// Restore implements Runner. It waits up to 10s for the xtables lock.
func (r *ExecRunner) Restore(ctx context.Context, f Family, input string, noflush bool) error {
	bin, err := lookTool(f, "restore")
	if err != nil {
		return err
	}
	args := []string{"-w", "10"}
	if noflush {
		args = append(args, "--noflush")
	}
	_, err = r.run(ctx, input, bin, args...)
	return err
}

// Version implements Runner.
func (r *ExecRunner) Version(ctx context.Context, f Family) (string, error) {
	for _, kind := range []string{"save", "restore"} {
		if _, err := lookTool(f, kind); err != nil {
			return "", err
		}
	}
	bin, _ := lookTool(f, "restore")
	out, err := r.run(ctx, "", bin, "--version")
	return strings.TrimSpace(out), err
}

// ip runs ip(8) for family f (in NetNS when set, through run).
func (r *ExecRunner) ip(ctx context.Context, f Family, args ...string) (string, error) {
	if f == IPv6 {
		args = append([]string{"-6"}, args...)
	}
	return r.run(ctx, "", "ip", args...)
}

var localDefault = regexp.MustCompile(`(?m)^local (default|0\.0\.0\.0/0|::/0) dev lo\b`)

// PolicyRoute implements Runner with `ip rule` and `ip route`.
func (r *ExecRunner) PolicyRoute(ctx context.Context, f Family, pr PolicyRoute, install bool) error {
	mark, table := strconv.Itoa(pr.Mark), strconv.Itoa(pr.Table)
	hasRule := func() (bool, error) {
		out, err := r.ip(ctx, f, "rule", "show")
		if err != nil {
			return false, err
		}
		want := fmt.Sprintf("fwmark 0x%x lookup %d", pr.Mark, pr.Table)
		for _, l := range strings.Split(out, "\n") {
			if strings.HasSuffix(strings.TrimSpace(l), want) {
				return true, nil
			}
		}
		return false, nil
	}
	hasRoute := func() bool {
		out, err := r.ip(ctx, f, "route", "show", "table", table)
		return err == nil && localDefault.MatchString(out) // a missing table is an error
	}
	all := "0.0.0.0/0"
	if f == IPv6 {
		all = "::/0"
	}
	if install {
		ok, err := hasRule()
		if err != nil {
			return err
		}
		if !ok {
			if _, err := r.ip(ctx, f, "rule", "add", "fwmark", mark, "lookup", table); err != nil {
				return err
			}
		}
		_, err = r.ip(ctx, f, "route", "replace", "local", all, "dev", "lo", "table", table)
		return err
	}
	for range 16 { // duplicates can exist when added by hand
		ok, err := hasRule()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if _, err := r.ip(ctx, f, "rule", "del", "fwmark", mark, "lookup", table); err != nil {
			return err
		}
	}
	if hasRoute() {
		_, err := r.ip(ctx, f, "route", "del", "local", all, "dev", "lo", "table", table)
		return err
	}
	return nil
}
