package cli

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/store"

	// Link every store backend.
	_ "github.com/weftmesh/weft/internal/store/all"
)

func newServerCmd(g *globalFlags) *cobra.Command {
	var cfg server.Config
	var endpoints, meshConfig string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the weft control plane (config API server on :15443)",
		Long: `Run the weft control plane. On first start it creates a CA and serving
certificate in --data-dir and writes <data-dir>/kubeconfig (mode 0600) with an
admin token: point weft or kubectl at that file.

The default store is an embedded bolt file in the data dir. With
--store=etcd --etcd-endpoints=... several replicas share one etcd cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), g.logLevel, g.logFormat)
			if err != nil {
				return err
			}
			switch cfg.Store.Backend {
			case "bolt":
				if endpoints != "" {
					return fmt.Errorf("--etcd-endpoints is set but --store is bolt: add --store=etcd")
				}
			case "etcd":
				for _, e := range strings.Split(endpoints, ",") {
					if e = strings.TrimSpace(e); e != "" {
						cfg.Store.Endpoints = append(cfg.Store.Endpoints, e)
					}
				}
				if len(cfg.Store.Endpoints) == 0 {
					return fmt.Errorf("--store=etcd needs --etcd-endpoints, e.g. --etcd-endpoints=http://127.0.0.1:2379")
				}
			default:
				return fmt.Errorf("invalid --store %q: use bolt or etcd (available: %s)", cfg.Store.Backend, strings.Join(store.Backends(), ", "))
			}
			if err := checkCertTTLs(cfg.CA.WorkloadTTL, cfg.CA.MaxWorkloadTTL); err != nil {
				return err
			}
			if meshConfig != "" {
				m, err := loadMeshConfig(meshConfig, log)
				if err != nil {
					return err
				}
				cfg.Discovery.Mesh = &m
				// The CA issues identities in the mesh's trust domain,
				// and still takes certificates from its aliases.
				cfg.CA.TrustDomain, cfg.CA.TrustDomainAliases = m.TrustDomain, m.TrustDomainAliases
			}
			cfg.Version = Version
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			srv, err := server.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			return srv.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the CA, certificates, kubeconfig and bolt store (default ~/.weft)")
	f.StringVar(&cfg.Listen, "listen", ":15443", "config API listen address (HTTPS)")
	f.StringVar(&cfg.MonitorListen, "monitoring-listen", "127.0.0.1:15014", "address for /metrics and /ready (empty disables)")
	f.StringVar(&cfg.Store.Backend, "store", "bolt", "store backend: bolt (embedded file) or etcd")
	f.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (with --store=etcd)")
	f.StringVar(&cfg.Store.Prefix, "etcd-prefix", "/weft", "key prefix in etcd")
	f.StringVar(&cfg.Store.CAFile, "etcd-cafile", "", "CA bundle to verify etcd's certificate")
	f.StringVar(&cfg.Store.CertFile, "etcd-certfile", "", "client certificate for etcd")
	f.StringVar(&cfg.Store.KeyFile, "etcd-keyfile", "", "client key for etcd")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra DNS names or IPs for the serving certificate")
	f.DurationVar(&cfg.CompactionInterval, "compaction-interval", 5*time.Minute, "compact store history older than this (negative disables)")
	f.StringSliceVar(&cfg.Components, "components", []string{"api", "discovery"}, "components to run: api, discovery")
	f.StringVar(&cfg.Discovery.Listen, "xds-listen", ":15012", "xDS (ADS) address over TLS")
	f.StringVar(&cfg.Discovery.PlaintextListen, "xds-plaintext-listen", "127.0.0.1:15010", "plaintext xDS address (empty disables)")
	f.DurationVar(&cfg.Discovery.Debounce, "debounce", 100*time.Millisecond, "quiet time after a config or registry change before pushing")
	f.StringArrayVar(&cfg.Discovery.Registries, "registry", nil, "extra service registry, repeatable: consul=ADDR[,token=T][,domain=D][,ns=N] or nomad=ADDR[,token=T][,region=R]")
	f.DurationVar(&cfg.CA.WorkloadTTL, "workload-cert-ttl", ca.DefaultWorkloadTTL, "lifetime of workload certificates when the proxy asks for none")
	f.DurationVar(&cfg.CA.MaxWorkloadTTL, "max-workload-cert-ttl", ca.DefaultMaxWorkloadTTL, "longest workload certificate lifetime a proxy may ask for")
	f.StringVar(&meshConfig, "mesh-config", "", "Istio MeshConfig YAML file (fields used: rootNamespace, trustDomain, trustDomainAliases, outboundTrafficPolicy, connectTimeout, enableAutoMtls, pathNormalization, accessLogFile, accessLogEncoding, accessLogFormat, enableTracing, defaultConfig.tracing (sampling, zipkin.address), defaultConfig.proxyHeaders, extensionProviders (envoyFileAccessLog, zipkin), defaultProviders.accessLogging and .tracing)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful stop may take")
	return cmd
}

// minWorkloadTTL is the shortest workload certificate lifetime the server
// accepts: proxies renew at about half of it.
const minWorkloadTTL = time.Minute

func checkCertTTLs(ttl, maxTTL time.Duration) error {
	switch {
	case ttl < minWorkloadTTL:
		return fmt.Errorf("invalid --workload-cert-ttl %v: use at least %v", ttl, minWorkloadTTL)
	case maxTTL < minWorkloadTTL:
		return fmt.Errorf("invalid --max-workload-cert-ttl %v: use at least %v", maxTTL, minWorkloadTTL)
	case ttl > maxTTL:
		return fmt.Errorf("--workload-cert-ttl %v exceeds --max-workload-cert-ttl %v: raise the maximum or lower the default", ttl, maxTTL)
	}
	return nil
}

// loadMeshConfig reads --mesh-config over Istio's defaults, logging the
// fields weft ignores.
func loadMeshConfig(path string, log *slog.Logger) (model.Mesh, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return model.Mesh{}, fmt.Errorf("--mesh-config: %w", err)
	}
	m, warnings, err := model.ParseMeshConfig(data, model.DefaultMesh())
	for _, w := range warnings {
		log.Warn(w, "file", path)
	}
	if err != nil {
		return model.Mesh{}, fmt.Errorf("--mesh-config %s: %w", path, err)
	}
	return m, nil
}
