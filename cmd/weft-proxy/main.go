// Command weft-proxy is weft's data plane: the sidecar (and, later,
// gateway) that runs beside every workload, configured by xDS from
// `weft server`.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/proxy/bootstrap"
	"github.com/weftmesh/weft/internal/proxy/sidecar"
)

// version is set at build time with -ldflags.
var version = "0.1.0-dev"

func main() {
	root := &cobra.Command{Use: "weft-proxy", Short: "weft's sidecar and gateway", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(&cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "weft-proxy", version) }})
	root.AddCommand(sidecarCmd())
	root.AddCommand(iptablesCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func sidecarCmd() *cobra.Command {
	var cfg sidecar.Config
	var bootFile, labels, logFormat, logLevel, tokenFile string
	var adminPort, statsPort, readyPort, dnsPort int
	var trimGrowthMiB int64
	cmd := &cobra.Command{
		Use:   "sidecar",
		Short: "Run the sidecar proxy for one workload",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sidecar.ReexecForSysmon(os.Getenv); err != nil {
				fmt.Fprintf(os.Stderr, "weft-proxy: not re-executed with GODEBUG=schedtrace (idle CPU cost stays higher): %v\n", err)
			}
			b := cfg.Bootstrap
			if labels != "" {
				l, err := bootstrap.ParseLabels(labels)
				if err != nil {
					return fmt.Errorf("--labels: %w", err)
				}
				b.Labels = l
			}
			// Precedence: flags, then WEFT_* variables, then the file.
			if err := b.FromEnv(os.Getenv); err != nil {
				return err
			}
			if bootFile != "" {
				fromFile, err := bootstrap.LoadFile(bootFile)
				if err != nil {
					return err
				}
				mergeUnset(&b, fromFile)
			}
			if cfg.Identity.BootstrapToken == "" {
				if tokenFile == "" {
					tokenFile = os.Getenv("WEFT_BOOTSTRAP_TOKEN_FILE")
				}
				if tokenFile != "" {
					raw, err := os.ReadFile(tokenFile)
					switch {
					case err == nil:
						cfg.Identity.BootstrapToken = strings.TrimSpace(string(raw))
					case errors.Is(err, os.ErrNotExist) && cfg.Identity.CertDir != "":
						// Renewal uses the certificate in --cert-dir; the
						// token was only needed for the first one.
					default:
						return fmt.Errorf("--bootstrap-token-file: %w", err)
					}
				}
			}
			cfg.Bootstrap = b
			cfg.AdminAddr = "127.0.0.1:" + strconv.Itoa(adminPort)
			cfg.StatsAddr = ":" + strconv.Itoa(statsPort)
			cfg.ReadyAddr = ":" + strconv.Itoa(readyPort)
			cfg.DNSPort = dnsPort
			if trimGrowthMiB < 0 {
				return fmt.Errorf("invalid --trim-memory-growth %d: a size in MiB, 0 or more", trimGrowthMiB)
			}
			cfg.TrimGrowthKB = trimGrowthMiB << 10
			cfg.LogLevel = new(slog.LevelVar)
			if err := cfg.LogLevel.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("invalid --log-level %q", logLevel)
			}
			opts := &slog.HandlerOptions{Level: cfg.LogLevel}
			var log *slog.Logger
			switch logFormat {
			case "text":
				log = slog.New(slog.NewTextHandler(os.Stderr, opts))
			case "json":
				log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
			default:
				return fmt.Errorf("invalid --log-format %q: use text or json", logFormat)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return sidecar.Run(ctx, cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&bootFile, "bootstrap", "", "YAML/JSON bootstrap file (flags and WEFT_* variables override it)")
	f.StringVar(&cfg.Bootstrap.Discovery, "discovery-address", "", "xDS server host:port (default 127.0.0.1:15010)")
	f.StringVar(&cfg.Bootstrap.IP, "ip", "", "the workload's IP address")
	f.StringVar(&cfg.Bootstrap.Name, "name", "", "the workload's name")
	f.StringVarP(&cfg.Bootstrap.Namespace, "namespace", "n", "", "the workload's namespace (default \"default\")")
	f.StringVar(&labels, "labels", "", "workload labels, k=v,k2=v2")
	f.StringVar(&cfg.Bootstrap.ServiceAccount, "service-account", "", "the workload's service account")
	f.StringVar(&cfg.Bootstrap.WorkloadGroup, "workload-group", "", "auto-register into this WorkloadGroup")
	f.BoolVar(&cfg.Bootstrap.Explicit, "explicit", false, "explicit mode: no traffic capture; upstreams on 127.0.0.1:<port>")
	f.StringVar(&cfg.Bootstrap.InboundCaptureMode, "inbound-capture-mode", "", "REDIRECT (default) or TPROXY, as weft-proxy iptables --inbound-mode: TPROXY keeps client addresses (needs CAP_NET_ADMIN; WEFT_INTERCEPTION_MODE)")
	f.StringVar(&cfg.Bootstrap.InboundPorts, "inbound-ports", "", "explicit mode: <app port>=<sidecar port>,… e.g. 9080=15080: accept mesh traffic for the app on <ip>:<sidecar port> (WEFT_INBOUND_PORTS)")
	f.BoolVar(&cfg.Delta, "delta", false, "use incremental (delta) xDS")
	f.StringVar(&cfg.Identity.BootstrapToken, "bootstrap-token", os.Getenv("WEFT_BOOTSTRAP_TOKEN"), "bootstrap token for the first workload certificate (WEFT_BOOTSTRAP_TOKEN); enables mTLS xDS")
	f.StringVar(&tokenFile, "bootstrap-token-file", "", "read the bootstrap token from this file (WEFT_BOOTSTRAP_TOKEN_FILE)")
	f.StringVar(&cfg.Identity.CertDir, "cert-dir", "", "keep the workload key and certificate here across restarts")
	f.StringVar(&cfg.Identity.RootFile, "ca-root-file", "", "PEM CA of the control plane's serving certificate (its ca.crt)")
	f.DurationVar(&cfg.Identity.TTL, "cert-ttl", 0, "workload certificate lifetime to ask for (default: the CA's, 24h); renewed at about half of it")
	f.StringVar(&cfg.Identity.CAAddress, "ca-address", "", "CA host:port (default: --discovery-address)")
	f.IntVar(&adminPort, "admin-port", 15000, "admin API port (127.0.0.1)")
	f.IntVar(&statsPort, "stats-port", 15020, "Prometheus stats port")
	f.IntVar(&readyPort, "ready-port", 15021, "readiness port")
	f.IntVar(&dnsPort, "dns-port", 15053, "DNS proxy port on 127.0.0.1 (0 disables; off in explicit mode)")
	f.StringVar(&cfg.AccessLog, "access-log", os.Getenv("WEFT_ACCESS_LOG"), "HTTP access log file, or /dev/stdout (WEFT_ACCESS_LOG; default off)")
	f.StringVar(&cfg.AccessLogFormat, "access-log-format", "text", "access log format: text (Envoy's default) or json")
	f.IntVar(&cfg.Concurrency, "concurrency", sidecar.DefaultConcurrency(os.Getenv),
		"CPUs running the proxy at once (GOMAXPROCS; 0: all); default 1, or from GOMAXPROCS / WEFT_CONCURRENCY")
	f.DurationVar(&cfg.TrimAfter, "trim-memory-after", sidecar.DefaultTrimAfter,
		"after the first configuration, wait this long, then drop the binary's pages only start-up used from RSS (0: never)")
	f.Int64Var(&trimGrowthMiB, "trim-memory-growth", sidecar.DefaultTrimGrowthKB>>10,
		"after that, drop them again whenever the binary's resident pages grow this many MiB over the data path's working set, as serving a metrics scrape makes them (0: never)")
	f.DurationVar(&cfg.DrainDuration, "drain-duration", 5*time.Second, "how long connections may finish on SIGTERM")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}

// mergeUnset fills fields of b that flags left empty from the file.
func mergeUnset(b *bootstrap.Config, file bootstrap.Config) {
	set := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	set(&b.Discovery, file.Discovery)
	set(&b.Type, file.Type)
	set(&b.IP, file.IP)
	set(&b.Name, file.Name)
	set(&b.Namespace, file.Namespace)
	set(&b.ServiceAccount, file.ServiceAccount)
	set(&b.WorkloadGroup, file.WorkloadGroup)
	set(&b.TrustDomain, file.TrustDomain)
	set(&b.InboundPorts, file.InboundPorts)
	set(&b.InboundCaptureMode, file.InboundCaptureMode)
	if len(b.Labels) == 0 {
		b.Labels = file.Labels
	}
	b.Explicit = b.Explicit || file.Explicit
}
