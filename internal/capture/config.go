// Package capture is weft's istio-iptables: it turns a capture Config into
// iptables-restore input that redirects a host's or a network namespace's
// TCP traffic through its sidecar (outbound to 15001, inbound to 15006,
// optionally DNS to 15053), applies it idempotently and removes exactly
// what it added.
//
// Rule generation (Rules, Build) is pure and golden-tested. Everything that
// touches the kernel goes through the Runner seam: ExecRunner runs the
// iptables-save / iptables-restore / ip binaries (optionally inside a named
// network namespace), and tests use a fake at that seam. Capture itself is
// proven in network namespaces by test/e2e/capture.
//
// Every rule weft installs lives in weft's own chains (prefix WEFT_); the
// only rules added to built-in chains are jumps to them, and each jump
// carries the comment "weft-owner=<Owner>" identifying the proxy instance
// that installed it. Apply refuses to install over another owner's rules.
package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Inbound interception modes.
const (
	// ModeRedirect rewrites the destination with nat REDIRECT; the proxy
	// reads the original destination with SO_ORIGINAL_DST.
	ModeRedirect = "REDIRECT"
	// ModeTProxy delivers inbound connections unchanged (mangle TPROXY) to
	// a transparent listener, which keeps destination and source addresses.
	ModeTProxy = "TPROXY"
)

// Ports the proxy itself serves that are never captured inbound (Istio's
// defaults: Prometheus merge 15020, readiness 15021, Envoy stats 15090).
var alwaysExcludedInbound = []int{15020, 15021, 15090}

// sshPort is left alone when every inbound port is captured, so capture
// never locks an operator out of a VM (as istio-iptables does).
const sshPort = 22

// Config says what to capture. The zero value of a port or mark field
// takes its default; lists are taken literally, so use DefaultConfig for
// Istio's defaults ("*" for the include lists).
type Config struct {
	// Owner identifies the proxy instance that owns the rules (its node
	// or workload name). Required; letters, digits, '.', '_' and '-'.
	Owner string
	// ProxyUIDs and ProxyGIDs are the users and groups the proxy runs as;
	// their traffic is never captured. Numbers, ranges (1000-1010) or
	// names. At least one UID or GID is required.
	ProxyUIDs []string
	ProxyGIDs []string
	// OutboundPort is the proxy's outbound capture listener. Default 15001.
	OutboundPort int
	// InboundPort is the proxy's inbound capture listener. Default 15006.
	InboundPort int
	// InboundMode is ModeRedirect (default) or ModeTProxy.
	InboundMode string
	// IncludeOutboundCIDRs are the destinations whose TCP traffic is
	// captured: "*" for all, CIDRs or addresses, empty for none.
	IncludeOutboundCIDRs []string
	// ExcludeOutboundCIDRs are destinations never captured.
	ExcludeOutboundCIDRs []string
	// ExcludeOutboundPorts are destination ports never captured.
	ExcludeOutboundPorts []int
	// IncludeInboundPorts are the local ports whose inbound TCP traffic is
	// captured: "*" for all (except SSH, 22), port numbers, empty for none.
	IncludeInboundPorts []string
	// ExcludeInboundPorts are never captured inbound, in addition to the
	// proxy's own 15020, 15021 and 15090.
	ExcludeInboundPorts []int
	// CaptureDNS redirects DNS (UDP and TCP port 53) to DNSPort.
	CaptureDNS bool
	// DNSPort is the proxy's DNS listener. Default 15053.
	DNSPort int
	// IPv6 also installs the rules with ip6tables.
	IPv6 bool
	// TProxyMark marks inbound packets in TPROXY mode. Default 1337.
	TProxyMark int
	// TProxyTable is the routing table that delivers marked packets
	// locally in TPROXY mode. Default 133.
	TProxyTable int
}

// DefaultConfig returns Istio's defaults: capture every outbound
// destination and every inbound port, REDIRECT mode, proxy UID 1337.
func DefaultConfig(owner string) Config {
	return Config{
		Owner:                owner,
		ProxyUIDs:            []string{"1337"},
		IncludeOutboundCIDRs: []string{"*"},
		IncludeInboundPorts:  []string{"*"},
	}
}

var (
	// ownerRE is bounded by the length check beside it: a {1,200}
	// repetition would compile into 200 copies (220 KB of heap in every
	// binary that links this package, the sidecar's included).
	ownerRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	idRE    = regexp.MustCompile(`^([0-9]+(-[0-9]+)?|[a-z_][a-z0-9_.-]*\$?)$`)
)

// normalized is a validated Config with defaults filled in and lists
// parsed; the rule builder works only from it.
type normalized struct {
	Config
	includeAll      bool
	include         []netip.Prefix
	exclude         []netip.Prefix
	inboundAll      bool
	inboundPorts    []int
	excludedInbound []int
}

func defaultInt(v *int, def int) {
	if *v == 0 {
		*v = def
	}
}

// normalize validates cfg; errors name the setting and say what is allowed.
func normalize(cfg Config) (*normalized, error) {
	n := &normalized{Config: cfg}
	defaultInt(&n.OutboundPort, 15001)
	defaultInt(&n.InboundPort, 15006)
	defaultInt(&n.DNSPort, 15053)
	defaultInt(&n.TProxyMark, 1337)
	defaultInt(&n.TProxyTable, 133)
	if n.InboundMode == "" {
		n.InboundMode = ModeRedirect
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(n.Owner) > 200 || !ownerRE.MatchString(n.Owner) {
		bad("owner %q: must be 1-200 letters, digits, '.', '_' or '-'", n.Owner)
	}
	if len(n.ProxyUIDs)+len(n.ProxyGIDs) == 0 {
		bad("at least one proxy UID or GID is required, or the proxy's own traffic would be captured in a loop")
	}
	for _, id := range append(append([]string{}, n.ProxyUIDs...), n.ProxyGIDs...) {
		if !idRE.MatchString(id) {
			bad("proxy UID/GID %q: use a number, a range like 1000-1010, or a name", id)
		}
	}
	for name, p := range map[string]int{"outbound port": n.OutboundPort, "inbound port": n.InboundPort, "DNS port": n.DNSPort} {
		if p < 1 || p > 65535 {
			bad("%s %d: must be 1-65535", name, p)
		}
	}
	if n.TProxyMark < 1 || n.TProxyMark > 0x7fffffff || n.TProxyTable < 1 || n.TProxyTable > 252 {
		bad("TPROXY mark %d / table %d: mark must be positive, table 1-252", n.TProxyMark, n.TProxyTable)
	}
	if n.InboundMode != ModeRedirect && n.InboundMode != ModeTProxy {
		bad("inbound mode %q: use REDIRECT or TPROXY", n.InboundMode)
	}
	var err error
	if n.includeAll, n.include, err = parseCIDRs(n.IncludeOutboundCIDRs, true); err != nil {
		bad("include outbound CIDRs: %w", err)
	}
	if _, n.exclude, err = parseCIDRs(n.ExcludeOutboundCIDRs, false); err != nil {
		bad("exclude outbound CIDRs: %w", err)
	}
	if err := checkPorts(n.ExcludeOutboundPorts); err != nil {
		bad("exclude outbound ports: %w", err)
	}
	if err := checkPorts(n.ExcludeInboundPorts); err != nil {
		bad("exclude inbound ports: %w", err)
	}
	n.excludedInbound = dedupe(append(append([]int{}, alwaysExcludedInbound...), n.ExcludeInboundPorts...))
	for _, p := range n.IncludeInboundPorts {
		if p == "*" {
			if len(n.IncludeInboundPorts) != 1 {
				bad("include inbound ports: \"*\" cannot be combined with ports")
			}
			n.inboundAll = true
			continue
		}
		v, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || v < 1 || v > 65535 {
			bad("include inbound ports: %q is not a port (1-65535) or \"*\"", p)
			continue
		}
		if !contains(n.excludedInbound, v) {
			n.inboundPorts = append(n.inboundPorts, v)
		}
	}
	n.inboundPorts = dedupe(n.inboundPorts)
	if n.inboundAll {
		n.excludedInbound = dedupe(append([]int{sshPort}, n.excludedInbound...))
	}
	if n.CaptureDNS && contains(n.ExcludeOutboundPorts, 53) {
		bad("DNS capture conflicts with excluding outbound port 53")
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("capture config: %w", err)
	}
	return n, nil
}

// parseCIDRs parses addresses and prefixes (masking host bits); "*" is
// allowed only alone and only where star is true.
func parseCIDRs(in []string, star bool) (all bool, out []netip.Prefix, err error) {
	seen := map[netip.Prefix]bool{}
	for _, s := range in {
		s = strings.TrimSpace(s)
		if s == "*" && star {
			if len(in) != 1 {
				return false, nil, fmt.Errorf("\"*\" cannot be combined with CIDRs")
			}
			return true, nil, nil
		}
		var p netip.Prefix
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || p.Addr().Zone() != "" {
			return false, nil, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		p = p.Masked()
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return false, out, nil
}

func checkPorts(ps []int) error {
	for _, p := range ps {
		if p < 1 || p > 65535 {
			return fmt.Errorf("%d is not a port (1-65535)", p)
		}
	}
	return nil
}

func dedupe(ps []int) []int {
	var out []int
	for _, p := range ps {
		if !contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func contains(ps []int, v int) bool {
	for _, p := range ps {
		if p == v {
			return true
		}
	}
	return false
}
