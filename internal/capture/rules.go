package capture

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Family is an IP family: iptables (IPv4) or ip6tables (IPv6).
type Family int

// The two families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns "ipv4" or "ipv6".
func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// ChainPrefix starts the name of every chain weft creates.
const ChainPrefix = "WEFT_"

// ownerComment is the comment every jump from a built-in chain carries.
const ownerComment = "weft-owner="

// Rule is one iptables rule: "-A <Chain> <Spec>".
type Rule struct {
	Chain string
	Spec  string
}

// Table is weft's part of one iptables table: the chains it creates and
// its rules, in order (rules in built-in chains are appended to them).
type Table struct {
	Name   string
	Chains []string
	Rules  []Rule
}

// Ruleset is everything weft installs for one IP family.
type Ruleset struct {
	Family Family
	Tables []Table
}

// PolicyRoute is the routing that TPROXY mode needs: packets carrying Mark
// are looked up in Table, which delivers everything locally through lo
// (`ip rule add fwmark <Mark> lookup <Table>`,
// `ip route add local 0.0.0.0/0 dev lo table <Table>`).
type PolicyRoute struct {
	Mark  int
	Table int
}

// Commands returns the ip(8) commands that install the route for family.
func (r PolicyRoute) Commands(f Family) []string {
	v6, all := "", "0.0.0.0/0"
	if f == IPv6 {
		v6, all = "-6 ", "::/0"
	}
	return []string{
		fmt.Sprintf("ip %srule add fwmark %d lookup %d", v6, r.Mark, r.Table),
		fmt.Sprintf("ip %sroute add local %s dev lo table %d", v6, all, r.Table),
	}
}

// Plan is the full result of rule generation.
type Plan struct {
	// Owner is the normalized owner the jumps are marked with.
	Owner string
	// Families holds the IPv4 ruleset and, when Config.IPv6, the IPv6 one.
	Families []Ruleset
	// Route is set in TPROXY mode when inbound traffic is captured.
	Route *PolicyRoute
}

// Rules renders cfg as iptables-restore input for a host or namespace
// without weft rules: v4 for iptables-restore, v6 for ip6tables-restore
// (empty unless cfg.IPv6). It is pure: it reads nothing from the system.
func Rules(cfg Config) (v4, v6 string, err error) {
	p, err := Build(cfg)
	if err != nil {
		return "", "", err
	}
	for _, rs := range p.Families {
		if rs.Family == IPv6 {
			v6 = rs.Render()
		} else {
			v4 = rs.Render()
		}
	}
	return v4, v6, nil
}

// Build validates cfg and generates the rules for each family. Pure.
func Build(cfg Config) (*Plan, error) {
	n, err := normalize(cfg)
	if err != nil {
		return nil, err
	}
	p := &Plan{Owner: n.Owner}
	p.Families = append(p.Families, n.ruleset(IPv4))
	if n.IPv6 {
		p.Families = append(p.Families, n.ruleset(IPv6))
	}
	if n.InboundMode == ModeTProxy && n.capturesInbound() {
		p.Route = &PolicyRoute{Mark: n.TProxyMark, Table: n.TProxyTable}
	}
	return p, nil
}

// Render writes rs as iptables-restore input that creates weft's chains
// and appends its rules (for use with --noflush on a clean ruleset).
func (rs Ruleset) Render() string {
	var b strings.Builder
	for _, t := range rs.Tables {
		fmt.Fprintf(&b, "*%s\n", t.Name)
		for _, c := range t.Chains {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, r := range t.Rules {
			fmt.Fprintf(&b, "-A %s %s\n", r.Chain, r.Spec)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func (n *normalized) capturesInbound() bool { return n.inboundAll || len(n.inboundPorts) > 0 }

// tableBuilder collects one table's chains and rules.
type tableBuilder struct{ t Table }

func (tb *tableBuilder) chain(names ...string) { tb.t.Chains = append(tb.t.Chains, names...) }

func (tb *tableBuilder) add(chain string, parts ...string) {
	tb.t.Rules = append(tb.t.Rules, Rule{Chain: chain, Spec: strings.Join(parts, " ")})
}

// ruleset generates family f's rules. The shape follows istio-iptables:
//
//   - nat OUTPUT jumps (TCP) to WEFT_OUTPUT, which returns for traffic from
//     127.0.0.6 over lo (the proxy's inbound passthrough to the app) and,
//     in TPROXY mode, for TProxyMark over lo (the proxy's source-preserving
//     connections to the app), for
//     excluded ports, for the proxy's own UIDs/GIDs, for anything over lo
//     (an app calling itself or localhost), for excluded CIDRs, and sends
//     the included destinations to WEFT_REDIRECT (REDIRECT to 15001).
//   - The proxy calling its own non-loopback address over lo (an app that
//     reached itself through a service VIP) goes to WEFT_IN_REDIRECT so
//     inbound policy applies, as in Istio.
//   - nat PREROUTING jumps to WEFT_INBOUND (REDIRECT mode) or mangle
//     PREROUTING to WEFT_INBOUND (TPROXY mode); excluded ports return, the
//     rest go to 15006.
//   - With DNS capture, nat OUTPUT sends UDP and TCP port 53 to WEFT_DNS,
//     which REDIRECTs everything but the proxy's own queries to 15053.
func (n *normalized) ruleset(f Family) Ruleset {
	loop, passthrough := "127.0.0.1/32", "127.0.0.6/32"
	if f == IPv6 {
		loop, passthrough = "::1/128", "::6/128"
	}
	jumpTag := fmt.Sprintf(`-m comment --comment "%s%s"`, ownerComment, n.Owner)
	owners := func() []string {
		var out []string
		for _, u := range n.ProxyUIDs {
			out = append(out, "-m owner --uid-owner "+u)
		}
		for _, g := range n.ProxyGIDs {
			out = append(out, "-m owner --gid-owner "+g)
		}
		return out
	}
	inbound := n.capturesInbound()
	tproxy := n.InboundMode == ModeTProxy && inbound

	nat := &tableBuilder{t: Table{Name: "nat"}}
	nat.chain("WEFT_OUTPUT", "WEFT_REDIRECT", "WEFT_IN_REDIRECT")
	if inbound && !tproxy {
		nat.chain("WEFT_INBOUND")
	}
	if n.CaptureDNS {
		nat.chain("WEFT_DNS")
	}
	nat.add("WEFT_REDIRECT", "-p tcp -j REDIRECT --to-ports", strconv.Itoa(n.OutboundPort))
	nat.add("WEFT_IN_REDIRECT", "-p tcp -j REDIRECT --to-ports", strconv.Itoa(n.InboundPort))

	// Inbound, REDIRECT mode.
	if inbound && !tproxy {
		nat.add("PREROUTING", "-p tcp", jumpTag, "-j WEFT_INBOUND")
		n.inboundRules(nat, "-j WEFT_IN_REDIRECT", "")
	}

	// DNS.
	if n.CaptureDNS {
		nat.add("OUTPUT", "-p udp -m udp --dport 53", jumpTag, "-j WEFT_DNS")
		nat.add("OUTPUT", "-p tcp -m tcp --dport 53", jumpTag, "-j WEFT_DNS")
		for _, o := range owners() {
			nat.add("WEFT_DNS", o, "-j RETURN")
		}
		nat.add("WEFT_DNS", "-p udp -j REDIRECT --to-ports", strconv.Itoa(n.DNSPort))
		nat.add("WEFT_DNS", "-p tcp -j REDIRECT --to-ports", strconv.Itoa(n.DNSPort))
	}

	// Outbound.
	nat.add("OUTPUT", "-p tcp", jumpTag, "-j WEFT_OUTPUT")
	nat.add("WEFT_OUTPUT", "-s", passthrough, "-o lo -j RETURN")
	if tproxy {
		// The proxy's connections to the app that keep the client's
		// address (original_src, marked TProxyMark) are inbound traffic
		// already: not back to 15006.
		nat.add("WEFT_OUTPUT", "-o lo -m mark --mark", fmt.Sprintf("0x%x", n.TProxyMark), "-j RETURN")
	}
	for _, p := range n.ExcludeOutboundPorts {
		nat.add("WEFT_OUTPUT", "-p tcp -m tcp --dport", strconv.Itoa(p), "-j RETURN")
	}
	if inbound {
		for _, o := range owners() {
			nat.add("WEFT_OUTPUT", "! -d", loop, "-o lo", o, "-j WEFT_IN_REDIRECT")
		}
	}
	for _, o := range owners() {
		nat.add("WEFT_OUTPUT", o, "-j RETURN")
	}
	nat.add("WEFT_OUTPUT", "-o lo -j RETURN")
	nat.add("WEFT_OUTPUT", "-d", loop, "-j RETURN")
	for _, c := range ofFamily(n.exclude, f) {
		nat.add("WEFT_OUTPUT", "-d", c.String(), "-j RETURN")
	}
	if n.includeAll {
		nat.add("WEFT_OUTPUT", "-j WEFT_REDIRECT")
	}
	for _, c := range ofFamily(n.include, f) {
		nat.add("WEFT_OUTPUT", "-d", c.String(), "-j WEFT_REDIRECT")
	}

	rs := Ruleset{Family: f, Tables: []Table{nat.t}}
	if !tproxy {
		return rs
	}

	// Inbound, TPROXY mode (mangle), with Istio's marks: TProxyMark on
	// diverted packets (and on the proxy's source-preserving connections
	// to the app, restored on the app's replies so they route back
	// through lo), TProxyMark+1 on the proxy's own calls to its address.
	mark := fmt.Sprintf("0x%x", n.TProxyMark)
	outMark := fmt.Sprintf("0x%x", n.TProxyMark+1)
	mangle := &tableBuilder{t: Table{Name: "mangle"}}
	mangle.chain("WEFT_INBOUND", "WEFT_DIVERT", "WEFT_TPROXY", "WEFT_OUT_MARK")
	mangle.add("PREROUTING", "-p tcp", jumpTag, "-j WEFT_INBOUND")
	mangle.add("OUTPUT", "-p tcp", jumpTag, "-j WEFT_OUT_MARK")
	// The comment records the routing table so that Cleanup removes the
	// policy route this install added, whatever the config was.
	mangle.add("WEFT_DIVERT", fmt.Sprintf(`-m comment --comment "weft-route-table=%d"`, n.TProxyTable),
		"-j MARK --set-xmark", mark+"/0xffffffff")
	mangle.add("WEFT_DIVERT", "-j ACCEPT")
	mangle.add("WEFT_TPROXY", "! -d", loop, "-p tcp -j TPROXY --on-port", strconv.Itoa(n.InboundPort),
		"--tproxy-mark", mark+"/0xffffffff")
	mangle.add("WEFT_INBOUND", "-p tcp -m mark --mark", mark, "-j CONNMARK --save-mark")
	mangle.add("WEFT_INBOUND", "-p tcp -m mark --mark", mark, "-j RETURN")
	mangle.add("WEFT_INBOUND", "-s", passthrough, "-i lo -p tcp -j RETURN")
	mangle.add("WEFT_INBOUND", "-i lo -p tcp -m mark ! --mark", outMark, "-j RETURN")
	n.inboundRules(mangle, "-j WEFT_TPROXY", "-m conntrack --ctstate RELATED,ESTABLISHED -j WEFT_DIVERT")
	mangle.add("WEFT_OUT_MARK", "-o lo -p tcp -m mark --mark", mark, "-j RETURN")
	for _, o := range owners() {
		mangle.add("WEFT_OUT_MARK", "! -d", loop, "-o lo -p tcp", o,
			"-j MARK --set-xmark", outMark+"/0xffffffff")
	}
	mangle.add("WEFT_OUT_MARK", "-p tcp -m connmark --mark", mark, "-j CONNMARK --restore-mark")
	rs.Tables = append(rs.Tables, mangle.t)
	return rs
}

// inboundRules fills WEFT_INBOUND: established connections go to divert
// (TPROXY mode only), new ones to target.
func (n *normalized) inboundRules(tb *tableBuilder, target, divert string) {
	capture := func(port string) {
		if divert != "" {
			tb.add("WEFT_INBOUND", "-p tcp"+port, divert)
		}
		tb.add("WEFT_INBOUND", "-p tcp"+port, target)
	}
	if n.inboundAll {
		for _, p := range n.excludedInbound {
			tb.add("WEFT_INBOUND", "-p tcp -m tcp --dport", strconv.Itoa(p), "-j RETURN")
		}
		capture("")
		return
	}
	for _, p := range n.inboundPorts {
		capture(" -m tcp --dport " + strconv.Itoa(p))
	}
}

func ofFamily(ps []netip.Prefix, f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() == (f == IPv4) {
			out = append(out, p)
		}
	}
	return out
}

// Script renders the plan as a shell script that installs it on a host or
// namespace without weft rules (what `weft-proxy iptables --dry-run`
// prints).
func (p *Plan) Script() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# weft capture rules, owner %q\n", p.Owner)
	for _, rs := range p.Families {
		fmt.Fprintf(&b, "%s --noflush <<'EOF'\n%sEOF\n", rs.Family.tool("restore"), rs.Render())
		if p.Route != nil {
			for _, c := range p.Route.Commands(rs.Family) {
				b.WriteString(c + "\n")
			}
		}
	}
	return b.String()
}
