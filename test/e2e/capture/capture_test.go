// Package capture proves traffic capture in real network namespaces: the
// rules that `weft-proxy iptables` (and capture.Apply) install redirect an
// app's outbound TCP to 15001, inbound TCP to 15006 (REDIRECT and TPROXY)
// and DNS to 15053, with the original destination intact, leave the
// proxy's own traffic and the exclusions alone, refuse another owner, and
// --cleanup restores the namespace's ruleset exactly.
//
// It needs root, ip(8), iptables-restore and setpriv; without them it
// skips, unless CI=true, when it fails.
package capture

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	ipt "github.com/weftmesh/weft/internal/capture"
)

var helperBin, proxyBin, missing string

// appUID is the unprivileged user the app side runs as; the proxy runs as
// root (UID 0), the exempt proxy UID in these tests.
const appUID = "65534"

func TestMain(m *testing.M) {
	for _, tool := range []string{"ip", "iptables-restore", "iptables-save", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = tool + " not installed"
		}
	}
	if os.Geteuid() != 0 {
		missing = "not root"
	}
	if missing != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "weft-capture-e2e")
	if err == nil {
		err = os.Chmod(dir, 0o755) // the app side runs as nobody
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helperBin, proxyBin = filepath.Join(dir, "helper"), filepath.Join(dir, "weft-proxy")
	for bin, pkg := range map[string]string{helperBin: "test/e2e/capture/helper", proxyBin: "cmd/weft-proxy"} {
		cmd := exec.Command("go", "build", "-o", bin, "github.com/weftmesh/weft/"+pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireNetns(t *testing.T) {
	t.Helper()
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("capture e2e cannot run (%s) and CI=true", missing)
	}
	t.Skipf("capture e2e needs root, ip, iptables and setpriv: %s", missing)
}

func hasIPv6() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	if err != nil {
		return false
	}
	_, err = exec.LookPath("ip6tables-restore")
	return err == nil
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// topology is an app namespace (where capture is installed) joined by a
// veth pair to a peer namespace: app 10.77.0.2 / fd77::2, peer 10.77.0.1
// and 10.77.0.3 / fd77::1.
type topology struct {
	app, peer string
	v6        bool
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	tp := &topology{app: "weft-cap-" + id + "-a", peer: "weft-cap-" + id + "-p", v6: hasIPv6()}
	for _, ns := range []string{tp.app, tp.peer} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	va, vp := "wc"+id+"a", "wc"+id+"p"
	run(t, "ip", "link", "add", va, "netns", tp.app, "type", "veth", "peer", "name", vp, "netns", tp.peer)
	run(t, "ip", "-n", tp.app, "addr", "add", "10.77.0.2/24", "dev", va)
	run(t, "ip", "-n", tp.peer, "addr", "add", "10.77.0.1/24", "dev", vp)
	run(t, "ip", "-n", tp.peer, "addr", "add", "10.77.0.3/24", "dev", vp)
	if tp.v6 {
		run(t, "ip", "-n", tp.app, "-6", "addr", "add", "fd77::2/64", "dev", va, "nodad")
		run(t, "ip", "-n", tp.peer, "-6", "addr", "add", "fd77::1/64", "dev", vp, "nodad")
	}
	run(t, "ip", "-n", tp.app, "link", "set", va, "up")
	run(t, "ip", "-n", tp.peer, "link", "set", vp, "up")
	return tp
}

// start runs the helper as root inside ns until the test ends and waits
// (bounded) for it to be listening.
func start(t *testing.T, ns string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, helperBin, "listen"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("helper %v: %v: %s", args, err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("helper %v not ready within 15s: %s", args, stderr.String())
	}
}

// dial connects from ns, as uid ("" for root), and returns the answer.
func dial(ns, uid, network, addr string) (string, error) {
	args := []string{"netns", "exec", ns}
	if uid != "" {
		args = append(args, "setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups")
	}
	args = append(args, helperBin, "dial", "-net", network, "-addr", addr, "-timeout", "3s")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// expect dials and checks the answer starts with want.
func expect(t *testing.T, what, ns, uid, network, addr, want string) {
	t.Helper()
	got, err := dial(ns, uid, network, addr)
	if err != nil {
		t.Errorf("%s: dial %s %s from %s: %v", what, network, addr, ns, err)
		return
	}
	if !strings.HasPrefix(got, want) {
		t.Errorf("%s: dial %s %s answered %q, want prefix %q", what, network, addr, got, want)
	}
}

// seed installs another tool's rules in ns, which capture must not touch.
func seed(t *testing.T, r ipt.Runner, f ipt.Family) {
	t.Helper()
	doc := "192.0.2.1/32"
	if f == ipt.IPv6 {
		doc = "2001:db8::1/128"
	}
	in := `*nat
:OTHER - [0:0]
-A OUTPUT -d ` + doc + ` -j RETURN
-A OTHER -p tcp -j RETURN
-A PREROUTING -j OTHER
COMMIT
*mangle
-A PREROUTING -p udp -m udp --dport 9 -j MARK --set-xmark 0x7/0xffffffff
COMMIT
*filter
-A INPUT -p tcp -m tcp --dport 9 -j DROP
COMMIT
`
	if err := r.Restore(context.Background(), f, in, true); err != nil {
		t.Fatal(err)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saved returns the namespace's rules, both families, normalised: no
// comment lines (timestamps), zero counters, and no table that holds only
// empty built-in chains with ACCEPT policies (nf_tables keeps a table
// once it has been used; that is not a rule).
func saved(t *testing.T, r ipt.Runner, v6 bool) string {
	t.Helper()
	fams := []ipt.Family{ipt.IPv4}
	if v6 {
		fams = append(fams, ipt.IPv6)
	}
	var b strings.Builder
	for _, f := range fams {
		out, err := r.Save(context.Background(), f, "")
		if err != nil {
			t.Fatal(err)
		}
		var table []string
		trivial := true
		for _, line := range strings.Split(out, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			line = counters.ReplaceAllString(line, "[0:0]")
			table = append(table, line)
			switch {
			case strings.HasPrefix(line, ":") && !strings.Contains(line, " ACCEPT "):
				trivial = false
			case strings.HasPrefix(line, "-"):
				trivial = false
			case line == "COMMIT":
				if !trivial {
					fmt.Fprintf(&b, "%s\n%s\n", f, strings.Join(table, "\n"))
				}
				table, trivial = nil, true
			}
		}
	}
	return b.String()
}

func TestRedirectCaptureWithCLI(t *testing.T) {
	requireNetns(t)
	tp := newTopology(t)
	r := &ipt.ExecRunner{NetNS: tp.app}
	seed(t, r, ipt.IPv4)
	if tp.v6 {
		seed(t, r, ipt.IPv6)
	}
	before := saved(t, r, tp.v6)

	start(t, tp.app, "-name", "proxy", "-tcp", ":15001,:15006,:15053", "-udp", "127.0.0.1:15053", "-ipv6="+fmt.Sprint(tp.v6))
	start(t, tp.app, "-name", "app", "-tcp", ":8080,:15021", "-ipv6="+fmt.Sprint(tp.v6))
	start(t, tp.peer, "-name", "peer", "-tcp", ":8080,:9090", "-ipv6="+fmt.Sprint(tp.v6))

	install := []string{"iptables", "--netns", tp.app, "--owner", "node-a", "-u", "0",
		"-o", "9090", "-x", "10.77.0.3/32", "--capture-dns"}
	if tp.v6 {
		install = append(install, "--ipv6")
	}
	run(t, proxyBin, install...)
	installed := saved(t, r, tp.v6)
	run(t, proxyBin, install...)
	if d := cmp.Diff(saved(t, r, tp.v6), installed); d != "" {
		t.Errorf("a second install changed the rules (-got +want):\n%s", d)
	}
	for _, want := range []string{"-A OUTPUT -d 192.0.2.1/32 -j RETURN", "-A PREROUTING -j OTHER", `--comment "weft-owner=node-a" -j WEFT_OUTPUT`} {
		if !strings.Contains(installed, want) {
			t.Errorf("installed rules lack %q:\n%s", want, installed)
		}
	}

	expect(t, "app outbound", tp.app, appUID, "tcp", "10.77.0.1:8080", "proxy listener=15001 orig=10.77.0.1:8080")
	expect(t, "proxy's own outbound", tp.app, "", "tcp", "10.77.0.1:8080", "peer listener=8080")
	expect(t, "excluded outbound port", tp.app, appUID, "tcp", "10.77.0.1:9090", "peer listener=9090")
	expect(t, "excluded outbound CIDR", tp.app, appUID, "tcp", "10.77.0.3:8080", "peer listener=8080")
	expect(t, "app to localhost", tp.app, appUID, "tcp", "127.0.0.1:8080", "app listener=8080")
	expect(t, "inbound", tp.peer, "", "tcp", "10.77.0.2:8080", "proxy listener=15006 orig=10.77.0.2:8080 src=10.77.0.1:")
	expect(t, "inbound to an always-excluded port", tp.peer, "", "tcp", "10.77.0.2:15021", "app listener=15021")
	expect(t, "DNS over UDP", tp.app, appUID, "udp", "10.77.0.1:53", "proxy listener=15053")
	expect(t, "DNS over TCP", tp.app, appUID, "tcp", "10.77.0.1:53", "proxy listener=15053 orig=10.77.0.1:53")
	if tp.v6 {
		expect(t, "app outbound IPv6", tp.app, appUID, "tcp", "[fd77::1]:8080", "proxy listener=15001 orig=[fd77::1]:8080")
		expect(t, "proxy's own outbound IPv6", tp.app, "", "tcp", "[fd77::1]:8080", "peer listener=8080")
		expect(t, "inbound IPv6", tp.peer, "", "tcp", "[fd77::2]:8080", "proxy listener=15006 orig=[fd77::2]:8080 src=[fd77::1]:")
	}

	// Another proxy's install is refused with the remedy, and changes nothing.
	other := exec.Command(proxyBin, "iptables", "--netns", tp.app, "--owner", "node-b", "-u", "0")
	out, err := other.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "capture rules owned by proxy \"node-a\" are installed on this host/namespace; "+
		"remove them with `weft-proxy iptables --cleanup --owner node-a` first") {
		t.Errorf("install by node-b: err %v, output:\n%s", err, out)
	}
	if d := cmp.Diff(saved(t, r, tp.v6), installed); d != "" {
		t.Errorf("the refused install changed the rules (-got +want):\n%s", d)
	}

	run(t, proxyBin, "iptables", "--netns", tp.app, "--cleanup", "--owner", "node-a")
	if d := cmp.Diff(saved(t, r, tp.v6), before); d != "" {
		t.Errorf("--cleanup did not restore the ruleset (-got +want):\n%s", d)
	}
	expect(t, "app outbound after cleanup", tp.app, appUID, "tcp", "10.77.0.1:8080", "peer listener=8080")
	expect(t, "inbound after cleanup", tp.peer, "", "tcp", "10.77.0.2:8080", "app listener=8080")
}

func TestTProxyInboundCapture(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()
	tp := newTopology(t)
	r := &ipt.ExecRunner{NetNS: tp.app}
	seed(t, r, ipt.IPv4)
	if tp.v6 {
		seed(t, r, ipt.IPv6)
	}
	before := saved(t, r, tp.v6)
	rulesBefore := run(t, "ip", "-n", tp.app, "rule", "show")

	v6 := "-ipv6=" + fmt.Sprint(tp.v6)
	start(t, tp.app, "-name", "proxy", "-tcp", ":15001,:15006", "-transparent", ":15006", v6)
	start(t, tp.app, "-name", "app", "-tcp", ":8080", v6)
	start(t, tp.peer, "-name", "peer", "-tcp", ":8080", v6)

	cfg := ipt.DefaultConfig("node-a")
	cfg.ProxyUIDs, cfg.InboundMode, cfg.IPv6 = []string{"0"}, ipt.ModeTProxy, tp.v6
	if err := ipt.Apply(ctx, r, cfg); err != nil {
		t.Fatal(err)
	}
	if err := ipt.Apply(ctx, r, cfg); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if got := run(t, "ip", "-n", tp.app, "rule", "show"); strings.Count(got, "fwmark 0x539 lookup 133") != 1 {
		t.Errorf("want one TPROXY policy rule, got:\n%s", got)
	}

	expect(t, "inbound (TPROXY keeps the destination)", tp.peer, "", "tcp", "10.77.0.2:8080",
		"proxy listener=15006 orig=10.77.0.2:8080 src=10.77.0.1:")
	expect(t, "app outbound", tp.app, appUID, "tcp", "10.77.0.1:8080", "proxy listener=15001 orig=10.77.0.1:8080")
	expect(t, "proxy's own outbound", tp.app, "", "tcp", "10.77.0.1:8080", "peer listener=8080")
	if tp.v6 {
		expect(t, "inbound IPv6 (TPROXY)", tp.peer, "", "tcp", "[fd77::2]:8080",
			"proxy listener=15006 orig=[fd77::2]:8080 src=[fd77::1]:")
	}

	installed := saved(t, r, tp.v6)
	other := cfg
	other.Owner = "node-b"
	var oe *ipt.OwnerError
	if err := ipt.Apply(ctx, r, other); !errors.As(err, &oe) || oe.Found != "node-a" {
		t.Errorf("Apply by node-b: %v", err)
	}
	if d := cmp.Diff(saved(t, r, tp.v6), installed); d != "" {
		t.Errorf("the refused Apply changed the rules (-got +want):\n%s", d)
	}

	if err := ipt.Cleanup(ctx, r, "node-a"); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(saved(t, r, tp.v6), before); d != "" {
		t.Errorf("Cleanup did not restore the ruleset (-got +want):\n%s", d)
	}
	if got := run(t, "ip", "-n", tp.app, "rule", "show"); got != rulesBefore {
		t.Errorf("policy rules after Cleanup:\n%s\nwant:\n%s", got, rulesBefore)
	}
	if out, err := exec.Command("ip", "-n", tp.app, "route", "show", "table", "133").CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("route table 133 left after Cleanup:\n%s", out)
	}
	expect(t, "inbound after cleanup", tp.peer, "", "tcp", "10.77.0.2:8080", "app listener=8080")
}
