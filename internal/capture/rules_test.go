package capture

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if d := cmp.Diff(got, string(want)); d != "" {
		t.Errorf("%s mismatch (-got +want):\n%s", path, d)
	}
}

func TestRulesGolden(t *testing.T) {
	cases := map[string]func(c *Config){
		"default": func(*Config) {},
		"exclusions": func(c *Config) {
			c.ProxyGIDs = []string{"1337"}
			c.IncludeOutboundCIDRs = []string{"10.0.0.0/8", "172.16.0.1/12"}
			c.ExcludeOutboundCIDRs = []string{"10.96.0.1", "10.5.0.0/16"}
			c.ExcludeOutboundPorts = []int{5432, 6379}
			c.ExcludeInboundPorts = []int{8443, 15021}
		},
		"include-inbound-ports": func(c *Config) {
			c.IncludeInboundPorts = []string{"8080", "9090", "15020", "8080"}
		},
		"no-inbound": func(c *Config) {
			c.IncludeInboundPorts = nil
			c.IncludeOutboundCIDRs = []string{"*"}
		},
		"tproxy": func(c *Config) {
			c.InboundMode = ModeTProxy
			c.IPv6 = true
		},
		"dns": func(c *Config) {
			c.CaptureDNS = true
			c.ProxyGIDs = []string{"1337"}
		},
		"ipv6": func(c *Config) {
			c.IPv6 = true
			c.IncludeOutboundCIDRs = []string{"10.0.0.0/8", "fd00::/8"}
			c.ExcludeOutboundCIDRs = []string{"fd00::1", "10.1.0.0/16"}
			c.CaptureDNS = true
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig("node-a")
			mod(&cfg)
			p, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, p.Script())
			v4, v6, err := Rules(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(p.Script(), v4) || (cfg.IPv6 != (v6 != "")) {
				t.Errorf("Rules and Build disagree: v4 %q v6 %q", v4, v6)
			}
		})
	}
}

func TestRulesRejectsBadConfig(t *testing.T) {
	cases := []struct {
		name string
		mod  func(c *Config)
		want string
	}{
		{"no owner", func(c *Config) { c.Owner = "" }, `owner ""`},
		{"owner with space", func(c *Config) { c.Owner = "a b" }, `owner "a b"`},
		{"owner too long", func(c *Config) { c.Owner = strings.Repeat("a", 201) }, "must be 1-200 letters"},
		{"no uid", func(c *Config) { c.ProxyUIDs = nil }, "at least one proxy UID or GID"},
		{"bad uid", func(c *Config) { c.ProxyUIDs = []string{"1337; rm"} }, `proxy UID/GID "1337; rm"`},
		{"bad mode", func(c *Config) { c.InboundMode = "NAT" }, `inbound mode "NAT"`},
		{"bad port", func(c *Config) { c.OutboundPort = 70000 }, "outbound port 70000"},
		{"bad cidr", func(c *Config) { c.ExcludeOutboundCIDRs = []string{"10.0.0.0/33"} }, `"10.0.0.0/33" is not an IP address or CIDR`},
		{"star mixed", func(c *Config) { c.IncludeOutboundCIDRs = []string{"*", "10.0.0.0/8"} }, `"*" cannot be combined`},
		{"star excluded", func(c *Config) { c.ExcludeOutboundCIDRs = []string{"*"} }, `"*" is not an IP address`},
		{"bad inbound", func(c *Config) { c.IncludeInboundPorts = []string{"http"} }, `"http" is not a port`},
		{"bad exclude port", func(c *Config) { c.ExcludeInboundPorts = []int{0} }, "0 is not a port"},
		{"dns vs 53", func(c *Config) { c.CaptureDNS = true; c.ExcludeOutboundPorts = []int{53} }, "DNS capture conflicts"},
	}
	if _, _, err := Rules(DefaultConfig(strings.Repeat("a", 200))); err != nil {
		t.Errorf("an owner of 200 characters: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig("node-a")
			tc.mod(&cfg)
			_, _, err := Rules(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestRulesAreDeterministic guards the golden files against map order.
func TestRulesAreDeterministic(t *testing.T) {
	cfg := DefaultConfig("n")
	cfg.ExcludeInboundPorts = []int{1, 2, 3, 4, 5}
	cfg.IPv6, cfg.CaptureDNS, cfg.InboundMode = true, true, ModeTProxy
	first, _ := Build(cfg)
	for range 20 {
		p, _ := Build(cfg)
		if p.Script() != first.Script() {
			t.Fatal("Build is not deterministic")
		}
	}
}
