package capture

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func saveAll(t *testing.T, r Runner) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []Family{IPv4, IPv6} {
		out, err := r.Save(context.Background(), f, "")
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return b.String()
}

func seeded() *fakeRunner {
	r := newFakeRunner()
	r.seed(IPv4)
	r.seed(IPv6)
	return r
}

func TestApplyIsIdempotentAndCleanupRestores(t *testing.T) {
	ctx := context.Background()
	r := seeded()
	before := saveAll(t, r)
	cfg := DefaultConfig("node-a")
	cfg.IPv6, cfg.CaptureDNS = true, true
	if err := Apply(ctx, r, cfg); err != nil {
		t.Fatal(err)
	}
	first := saveAll(t, r)
	for _, want := range []string{":WEFT_OUTPUT -", "-A OUTPUT -p tcp -m comment --comment \"weft-owner=node-a\" -j WEFT_OUTPUT",
		"-A WEFT_DNS -p udp -j REDIRECT --to-ports 15053", "-A WEFT_OUTPUT -s ::6/128 -o lo -j RETURN",
		"-A OUTPUT -d 192.0.2.1/32 -j RETURN", "-A PREROUTING -j OTHER"} {
		if !strings.Contains(first, want) {
			t.Errorf("after Apply, rules lack %q:\n%s", want, first)
		}
	}
	if err := Apply(ctx, r, cfg); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if d := cmp.Diff(saveAll(t, r), first); d != "" {
		t.Errorf("second Apply changed the rules (-got +want):\n%s", d)
	}
	if err := Cleanup(ctx, r, "node-a"); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(saveAll(t, r), before); d != "" {
		t.Errorf("Cleanup did not restore the ruleset (-got +want):\n%s", d)
	}
	n := r.restores
	if err := Cleanup(ctx, r, "node-a"); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	if r.restores != n {
		t.Error("Cleanup with nothing installed ran iptables-restore")
	}
}

func TestApplyRefusesAnotherOwner(t *testing.T) {
	ctx := context.Background()
	r := seeded()
	if err := Apply(ctx, r, DefaultConfig("proxy-a")); err != nil {
		t.Fatal(err)
	}
	installed := saveAll(t, r)
	err := Apply(ctx, r, DefaultConfig("proxy-b"))
	var oe *OwnerError
	if !errors.As(err, &oe) || oe.Found != "proxy-a" {
		t.Fatalf("Apply over another owner: err = %v, want *OwnerError for proxy-a", err)
	}
	want := "capture rules owned by proxy \"proxy-a\" are installed on this host/namespace; " +
		"remove them with `weft-proxy iptables --cleanup --owner proxy-a` first"
	if err.Error() != want {
		t.Errorf("message:\n got %s\nwant %s", err, want)
	}
	if err := Cleanup(ctx, r, "proxy-b"); !errors.As(err, &oe) || !strings.Contains(err.Error(), "--cleanup --owner proxy-a") {
		t.Errorf("Cleanup by another owner: err = %v", err)
	}
	if d := cmp.Diff(saveAll(t, r), installed); d != "" {
		t.Errorf("refused operations changed the rules (-got +want):\n%s", d)
	}
	owners, err := Owners(ctx, r)
	if err != nil || len(owners) != 1 || owners[0] != "proxy-a" {
		t.Errorf("Owners = %v, %v", owners, err)
	}
}

func TestApplyReconfiguresAndRemovesTProxyRouting(t *testing.T) {
	ctx := context.Background()
	r := seeded()
	before := saveAll(t, r)
	cfg := DefaultConfig("node-a")
	cfg.InboundMode, cfg.IPv6, cfg.CaptureDNS, cfg.TProxyTable = ModeTProxy, true, true, 140
	if err := Apply(ctx, r, cfg); err != nil {
		t.Fatal(err)
	}
	route := PolicyRoute{Mark: 1337, Table: 140}
	if !r.routes[IPv4][route] || !r.routes[IPv6][route] {
		t.Fatalf("TPROXY routing not installed: %v", r.routes)
	}
	// Back to REDIRECT without DNS: mangle chains, DNS chain and routing go.
	plain := DefaultConfig("node-a")
	if err := Apply(ctx, r, plain); err != nil {
		t.Fatal(err)
	}
	got := saveAll(t, r)
	for _, gone := range []string{"WEFT_TPROXY", "WEFT_DNS", "WEFT_DIVERT"} {
		if strings.Contains(got, gone) {
			t.Errorf("%s left after switching to REDIRECT:\n%s", gone, got)
		}
	}
	if len(r.routes[IPv4])+len(r.routes[IPv6]) != 0 {
		t.Errorf("TPROXY routing left: %v", r.routes)
	}
	v4, _, _ := Rules(plain)
	fresh := seeded()
	if err := fresh.Restore(ctx, IPv4, v4, true); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(got, saveAll(t, fresh)); d != "" {
		t.Errorf("reconfigured rules differ from a fresh install (-got +want):\n%s", d)
	}
	if err := Cleanup(ctx, r, "node-a"); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(saveAll(t, r), before); d != "" {
		t.Errorf("Cleanup did not restore the ruleset (-got +want):\n%s", d)
	}
}

func TestCleanupRemovesTProxyRouting(t *testing.T) {
	ctx := context.Background()
	r := seeded()
	cfg := DefaultConfig("node-a")
	cfg.InboundMode = ModeTProxy
	if err := Apply(ctx, r, cfg); err != nil {
		t.Fatal(err)
	}
	if len(r.routes[IPv4]) != 1 || len(r.routes[IPv6]) != 0 {
		t.Fatalf("routes = %v", r.routes)
	}
	if err := Cleanup(ctx, r, "node-a"); err != nil {
		t.Fatal(err)
	}
	if len(r.routes[IPv4]) != 0 {
		t.Errorf("routes left: %v", r.routes)
	}
}

func TestApplyKeepsJumpPosition(t *testing.T) {
	ctx := context.Background()
	r := seeded()
	cfg := DefaultConfig("node-a")
	if err := Apply(ctx, r, cfg); err != nil {
		t.Fatal(err)
	}
	if err := r.Restore(ctx, IPv4, "*nat\n-A OUTPUT -p tcp -j RETURN\nCOMMIT\n", true); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, r, cfg); err != nil {
		t.Fatal(err)
	}
	got := saveAll(t, r)
	if strings.Index(got, "-j WEFT_OUTPUT") > strings.Index(got, "-A OUTPUT -p tcp -j RETURN") {
		t.Errorf("re-Apply moved weft's jump behind a later rule:\n%s", got)
	}
}

func TestApplyIPv6WithoutIP6Tables(t *testing.T) {
	r := seeded()
	r.noV6 = true
	before := saveAll(t, r)
	cfg := DefaultConfig("node-a")
	cfg.IPv6 = true
	err := Apply(context.Background(), r, cfg)
	if !errors.Is(err, ErrToolMissing) || !strings.Contains(err.Error(), "ip6tables") {
		t.Fatalf("err = %v", err)
	}
	if saveAll(t, r) != before || r.restores != 2 {
		t.Error("a failed Apply changed the rules")
	}
}

func TestApplyRejectsBadConfigBeforeReading(t *testing.T) {
	r := seeded()
	n := r.restores
	if err := Apply(context.Background(), r, Config{}); err == nil || r.restores != n {
		t.Fatalf("err = %v, restores %d", err, r.restores-n)
	}
}

func TestParseSaveUnquotedComment(t *testing.T) {
	st := parseSave("*nat\n:WEFT_OUTPUT - [0:0]\n-A OUTPUT -p tcp -m comment --comment weft-owner=x.y -j WEFT_OUTPUT\nCOMMIT\n")
	if len(st.owners) != 1 || st.owners[0] != "x.y" || len(st.tables["nat"].jumps) != 1 {
		t.Fatalf("parsed %+v", st)
	}
}

func TestApplyRollsBackOnFailure(t *testing.T) {
	ctx := context.Background()
	r := seeded()
	old := DefaultConfig("node-a")
	old.InboundMode, old.CaptureDNS = ModeTProxy, true
	if err := Apply(ctx, r, old); err != nil {
		t.Fatal(err)
	}
	before := saveAll(t, r)
	next := DefaultConfig("node-a")
	next.IPv6, next.ExcludeOutboundPorts = true, []int{5432}
	// The IPv6 restore fails after IPv4 was rewritten and the old TPROXY
	// routing removed: both come back.
	r.failRestore = map[Family]bool{IPv6: true}
	if err := Apply(ctx, r, next); err == nil || !strings.Contains(err.Error(), "installing ipv6 rules") {
		t.Fatalf("err = %v", err)
	}
	if d := cmp.Diff(saveAll(t, r), before); d != "" {
		t.Errorf("failed Apply was not rolled back (-got +want):\n%s", d)
	}
	if !r.routes[IPv4][PolicyRoute{Mark: 1337, Table: 133}] {
		t.Errorf("old TPROXY routing not restored: %v", r.routes)
	}
	// A failing route install rolls back the rules too.
	r.failRoute = true
	tp := DefaultConfig("node-a")
	tp.InboundMode, tp.TProxyTable = ModeTProxy, 150
	if err := Apply(ctx, r, tp); err == nil {
		t.Fatal("Apply with a failing route succeeded")
	}
	r.failRoute = false
	if d := cmp.Diff(saveAll(t, r), before); d != "" {
		t.Errorf("failed Apply was not rolled back (-got +want):\n%s", d)
	}
}
