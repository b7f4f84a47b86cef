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
	"github.com/weftmesh/weft/internal/proxy/admin"
	"github.com/weftmesh/weft/internal/proxy/bootstrap"
	"github.com/weftmesh/weft/internal/proxy/sidecar"
)

// proxyKind is what distinguishes the proxy commands, which share their
// flags and their run.
type proxyKind struct {
	use, short string
	// nodeType, when set, is the proxy's type whatever WEFT_NODE_TYPE or
	// the bootstrap file say; empty takes theirs (default sidecar).
	nodeType string
	// dnsPort is --dns-port's default.
	dnsPort int
}

var (
	// sidecarKind is `weft-proxy sidecar`, beside one workload.
	sidecarKind = proxyKind{use: "sidecar", short: "Run the sidecar proxy for one workload", dnsPort: 15053}
	// routerKind is `weft-proxy router`, a gateway (Istio's `pilot-agent
	// proxy router`): no traffic capture, listeners on the ports its
	// Gateway resources name, DNS proxy off unless asked for.
	routerKind = proxyKind{use: "router", short: "Run an ingress or egress gateway (node type router)", nodeType: "router"}
)

// routerHidden are the sidecar flags a router has no use for; they stay
// accepted (and refused by the bootstrap's validation when set).
var routerHidden = []string{"explicit", "inbound-capture-mode", "inbound-ports"}

// runFunc runs the configured proxy until ctx ends.
type runFunc func(ctx context.Context, cfg sidecar.Config, log *slog.Logger) error

// runProxy is the real run: re-executed for the runtime's monitor thread
// first (sidecar.ReexecForSysmon), then sidecar.Run.
func runProxy(ctx context.Context, cfg sidecar.Config, log *slog.Logger) error {
	if err := sidecar.ReexecForSysmon(os.Getenv); err != nil {
		fmt.Fprintf(os.Stderr, "weft-proxy: not re-executed with GODEBUG=schedtrace (idle CPU cost stays higher): %v\n", err)
	}
	return sidecar.Run(ctx, cfg, log)
}

// proxyCmd is the command of one proxy kind: flags, WEFT_* variables and
// the bootstrap file → sidecar.Config → run.
func proxyCmd(kind proxyKind, run runFunc) *cobra.Command {
	var cfg sidecar.Config
	var bootFile, labels, logFormat, logLevel, tokenFile string
	var adminPort, statsPort, readyPort, dnsPort int
	var trimGrowthMiB int64
	cmd := &cobra.Command{
		Use:   kind.use,
		Short: kind.short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := cfg.Bootstrap
			if kind.nodeType != "" {
				b.Type = kind.nodeType
			}
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
			if b.Type == "router" && !cmd.Flags().Changed("dns-port") {
				cfg.DNSPort = 0 // a gateway's DNS is not captured
			}
			if trimGrowthMiB < 0 {
				return fmt.Errorf("invalid --trim-memory-growth %d: a size in MiB, 0 or more", trimGrowthMiB)
			}
			cfg.TrimGrowthKB = trimGrowthMiB << 10
			if err := appMetricsURL(&cfg.AppMetrics, os.Getenv); err != nil {
				return err
			}
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
			return run(ctx, cfg, log)
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
	f.StringVar(&cfg.Bootstrap.ClusterID, "cluster-id", "", "the cluster the workload runs in, for the source_cluster and destination_cluster metric labels (WEFT_CLUSTER_ID; default Kubernetes)")
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
	f.StringVar(&cfg.AppMetrics, "app-metrics", os.Getenv("WEFT_APP_METRICS"),
		"the application's Prometheus metrics, e.g. http://127.0.0.1:9090/metrics, served after the proxy's on /stats/prometheus (WEFT_APP_METRICS; else Istio's ISTIO_PROMETHEUS_ANNOTATIONS)")
	f.StringVar(&cfg.CredentialDir, "credential-dir", os.Getenv("WEFT_CREDENTIAL_DIR"),
		"directory of gateway credentials: <dir>/<credentialName>/tls.crt and tls.key (and ca.crt), as a Kubernetes TLS secret mounted as a volume (WEFT_CREDENTIAL_DIR)")
	f.IntVar(&adminPort, "admin-port", 15000, "admin API port (127.0.0.1)")
	f.IntVar(&statsPort, "stats-port", 15020, "Prometheus stats port")
	f.IntVar(&readyPort, "ready-port", 15021, "readiness port")
	f.IntVar(&dnsPort, "dns-port", kind.dnsPort, "DNS proxy port on 127.0.0.1 (0 disables; off in explicit mode, and for routers unless set)")
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
	if kind.nodeType == "router" {
		for _, name := range routerHidden {
			_ = f.MarkHidden(name)
		}
	}
	return cmd
}

// appMetricsURL checks --app-metrics (WEFT_APP_METRICS), or reads Istio's
// ISTIO_PROMETHEUS_ANNOTATIONS when neither is set.
func appMetricsURL(v *string, getenv func(string) string) error {
	if *v == "" {
		if a := getenv("ISTIO_PROMETHEUS_ANNOTATIONS"); a != "" {
			u, err := admin.AppMetricsFromAnnotations(a)
			*v = u
			return err
		}
		return nil
	}
	u, err := admin.ParseAppMetricsURL(*v)
	if err != nil {
		return fmt.Errorf("--app-metrics: %w", err)
	}
	*v = u
	return nil
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
	set(&b.ClusterID, file.ClusterID)
	set(&b.InboundPorts, file.InboundPorts)
	set(&b.InboundCaptureMode, file.InboundCaptureMode)
	if len(b.Labels) == 0 {
		b.Labels = file.Labels
	}
	b.Explicit = b.Explicit || file.Explicit
}
