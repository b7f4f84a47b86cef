package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/capture"
)

// iptablesCmd is weft's istio-iptables: flags → capture.Config → Apply,
// Cleanup, or a dry-run print of the rules.
func iptablesCmd() *cobra.Command {
	var (
		uids, gids, include, exclude, excludeOut, includeIn, excludeIn, mode, netns string
		dryRun, cleanup                                                             bool
	)
	host, _ := os.Hostname()
	cfg := capture.Config{Owner: host}
	cmd := &cobra.Command{
		Use:   "iptables",
		Short: "Install (or --cleanup) the iptables rules that capture traffic into the sidecar",
		Long: `Redirects outbound TCP to the sidecar's outbound listener (15001) and inbound TCP
to its inbound listener (15006), leaving the proxy's own user and group alone.
Rules live in weft's own WEFT_* chains and are marked with --owner; installing
over another owner's rules is refused. Applying twice is the same as once;
--cleanup removes exactly what was added.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dryRun && cleanup {
				return fmt.Errorf("--dry-run and --cleanup cannot be combined")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			runner := &capture.ExecRunner{NetNS: netns}
			if cleanup {
				if err := capture.Cleanup(ctx, runner, cfg.Owner); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed weft capture rules (owner %q)\n", cfg.Owner)
				return nil
			}
			var err error
			cfg.ProxyUIDs, cfg.ProxyGIDs = splitList(uids), splitList(gids)
			cfg.IncludeOutboundCIDRs, cfg.ExcludeOutboundCIDRs = splitList(include), splitList(exclude)
			cfg.IncludeInboundPorts = splitList(includeIn)
			if cfg.ExcludeOutboundPorts, err = ports("--exclude-outbound-ports", excludeOut); err != nil {
				return err
			}
			if cfg.ExcludeInboundPorts, err = ports("--exclude-inbound-ports", excludeIn); err != nil {
				return err
			}
			cfg.InboundMode = strings.ToUpper(mode)
			plan, err := capture.Build(cfg)
			if err != nil {
				return err
			}
			if dryRun {
				fmt.Fprint(cmd.OutOrStdout(), plan.Script())
				return nil
			}
			if err := capture.Apply(ctx, runner, cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed weft capture rules (owner %q)\n", cfg.Owner)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVarP(&cfg.OutboundPort, "outbound-port", "p", 15001, "the proxy's outbound capture port")
	f.IntVarP(&cfg.InboundPort, "inbound-port", "z", 15006, "the proxy's inbound capture port")
	f.StringVarP(&uids, "proxy-uid", "u", "1337", "comma-separated UIDs (or names) the proxy runs as; never captured")
	f.StringVarP(&gids, "proxy-gid", "g", "", "comma-separated GIDs (or names) the proxy runs as; never captured")
	f.StringVarP(&include, "include-outbound-cidrs", "i", "*", `outbound destinations to capture: "*" or CIDRs; "" for none`)
	f.StringVarP(&exclude, "exclude-outbound-cidrs", "x", "", "outbound destinations never captured (CIDRs)")
	f.StringVarP(&excludeOut, "exclude-outbound-ports", "o", "", "outbound destination ports never captured")
	f.StringVarP(&includeIn, "include-inbound-ports", "b", "*", `inbound ports to capture: "*" (all but 22) or ports; "" for none`)
	f.StringVarP(&excludeIn, "exclude-inbound-ports", "d", "", "inbound ports never captured (15020, 15021, 15090 always are)")
	f.StringVarP(&mode, "inbound-mode", "m", capture.ModeRedirect, "inbound interception: REDIRECT or TPROXY (keeps source addresses)")
	f.BoolVar(&cfg.CaptureDNS, "capture-dns", false, "also redirect DNS (UDP and TCP 53) to --dns-port")
	f.IntVar(&cfg.DNSPort, "dns-port", 15053, "the proxy's DNS port")
	f.BoolVar(&cfg.IPv6, "ipv6", false, "also install the rules with ip6tables")
	f.StringVar(&cfg.Owner, "owner", host, "name of the proxy instance that owns the rules (default: the host name)")
	f.StringVar(&netns, "netns", "", "apply inside this named network namespace (ip netns)")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules as a shell script; change nothing")
	f.BoolVar(&cleanup, "cleanup", false, "remove the rules --owner installed")
	return cmd
}

// splitList splits a comma-separated flag, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func ports(flag, s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%s: %q is not a port (1-65535)", flag, p)
		}
		out = append(out, n)
	}
	return out, nil
}
