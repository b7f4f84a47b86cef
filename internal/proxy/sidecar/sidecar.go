// Package sidecar assembles weft-proxy: the xDS client, the data-plane
// engine, and the admin, stats and readiness servers. A gateway
// (Bootstrap.Type "router") is assembled the same way: what it listens on
// comes from discovery, it captures nothing, and `weft-proxy router` leaves
// its DNS proxy off.
package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/weftmesh/weft/internal/proxy/certs"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/admin"
	"github.com/weftmesh/weft/internal/proxy/bootstrap"
	"github.com/weftmesh/weft/internal/proxy/dns"
	"github.com/weftmesh/weft/internal/proxy/engine"
	"github.com/weftmesh/weft/internal/proxy/memtrim"

	// The HTTP filters the engine builds from xDS register in init.
	_ "github.com/weftmesh/weft/internal/proxy/httpfilter/all"
	"github.com/weftmesh/weft/internal/proxy/httpfilter/jwtauthn"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
)

// Config is the proxy's configuration, a sidecar's or a router's
// (Bootstrap.Type).
type Config struct {
	Bootstrap bootstrap.Config
	// AdminAddr serves the admin API. Default "127.0.0.1:15000".
	AdminAddr string
	// StatsAddr serves /stats/prometheus. Default ":15020".
	StatsAddr string
	// ReadyAddr serves /healthz/ready. Default ":15021".
	ReadyAddr string
	// DrainDuration is how long a stopping proxy lets connections finish.
	// Default 5s.
	DrainDuration time.Duration
	// Delta selects incremental xDS.
	Delta bool
	// LogLevel is changed at run time through /logging.
	LogLevel *slog.LevelVar
	// Identity, when BootstrapToken or CertDir is set, makes the proxy get
	// a workload certificate from the CA and talk xDS over mutual TLS
	// (Discovery must then be the TLS port, e.g. :15012).
	Identity Identity
	// AccessLog is the HTTP access log's path ("/dev/stdout" and
	// "/dev/stderr" name the proxy's own); empty disables it.
	AccessLog string
	// AccessLogFormat is "text" (Envoy's default format, the default) or
	// "json".
	AccessLogFormat string
	// Concurrency is how many CPUs run the proxy's Go code at once
	// (GOMAXPROCS); 0 keeps the runtime's choice. See DefaultConcurrency.
	Concurrency int
	// DNSPort serves the DNS proxy on 127.0.0.1 (and ::1 when it can) at
	// this port; 0 disables it, and so does explicit mode (nothing
	// captures DNS there). weft-proxy router sets 0 unless asked.
	DNSPort int
	// TrimAfter, when positive, is how long after the first configuration
	// is applied the proxy drops the resident pages of its binary that
	// start-up touched (see package memtrim); 0 never trims.
	TrimAfter time.Duration
	// TrimGrowthKB, when positive, trims again whenever the binary's
	// resident pages grow this many kB over the data path's working set
	// (memtrim.Keeper); 0 trims only once.
	TrimGrowthKB int64
	// CredentialDir holds the gateway credentials (Istio's credentialName)
	// that TLS filter chains name as kubernetes://<name>:
	// <dir>/<name>/tls.crt and tls.key, and ca.crt, as Kubernetes TLS
	// secrets mounted as volumes. They are read at each handshake, so
	// replaced files are served without a restart. Empty: none (chains
	// that name one refuse their connections).
	CredentialDir string
	// AppMetrics is the application's metrics URL, merged into
	// /stats/prometheus (Istio's metrics merging); empty: none.
	AppMetrics string
}

// Identity configures the workload certificate.
type Identity struct {
	// CAAddress is the CA's host:port; default the discovery address.
	CAAddress string
	// RootFile holds the PEM CA that signs the control plane's serving
	// certificate (the API server's ca.crt).
	RootFile string
	// BootstrapToken proves the workload's identity for its first
	// certificate (weft workload token create).
	BootstrapToken string
	// CertDir keeps the key and certificate across restarts (renewal then
	// needs no token).
	CertDir string
	// TTL is the certificate lifetime asked of the CA (Istio's
	// SECRET_TTL); 0 takes the CA's default (24h unless configured). The
	// CA clamps it to its maximum.
	TTL time.Duration
}

func (i Identity) enabled() bool { return i.BootstrapToken != "" || i.CertDir != "" }

// DefaultConcurrency is the proxy's concurrency unless configured: the
// GOMAXPROCS variable's when set (0, the runtime's choice), else
// WEFT_CONCURRENCY's, else 1. One CPU is what a sidecar needs for the
// traffic of one workload, and it is also the cheapest: with a single P
// the Go scheduler does not wake and spin extra threads for each request
// (BenchmarkSidecarProcesses at 1,000 rps: about 25–30 % less CPU per
// request than with 2, and more throughput on a 2-CPU host shared with
// the app); linkerd2-proxy makes the same choice. Busy gateways and
// sidecars raise it with --concurrency.
func DefaultConcurrency(getenv func(string) string) int {
	if getenv("GOMAXPROCS") != "" {
		return 0
	}
	if n, err := strconv.Atoi(getenv("WEFT_CONCURRENCY")); err == nil && n >= 0 {
		return n
	}
	return 1
}

// DefaultGCPercent is the sidecar's GOGC unless the GOGC variable is set.
// Its live heap is small (about 4 MiB with a few services), so GC cycles
// are cheap, and at 50 instead of 100 the heap peaks ~2 MiB lower: VmRSS
// 32.9 instead of 35.1 MiB after 1,000 rps, with no measurable CPU
// difference there (0.128 vs 0.133 vCPU). Flat out it costs ~10 % more
// CPU per request (BenchmarkSidecarProcesses: 52–54 vs 46–50 µs); a
// sidecar that must maximise throughput sets GOGC=100.
const DefaultGCPercent = 50

// Run serves until ctx ends, then drains and returns. Every port is bound
// before anything is served, so a clash fails start-up cleanly.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:15000"
	}
	if cfg.StatsAddr == "" {
		cfg.StatsAddr = ":15020"
	}
	if cfg.ReadyAddr == "" {
		cfg.ReadyAddr = ":15021"
	}
	if cfg.LogLevel == nil {
		cfg.LogLevel = new(slog.LevelVar)
	}
	if err := cfg.Bootstrap.Validate(); err != nil {
		return err
	}
	if d := cfg.CredentialDir; d != "" {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			return fmt.Errorf("weft-proxy: --credential-dir %s is not a directory (mount the gateway's TLS secrets under it)", d)
		}
	}
	if cfg.Concurrency > 0 {
		runtime.GOMAXPROCS(cfg.Concurrency)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
	node, err := cfg.Bootstrap.Node()
	if err != nil {
		return err
	}
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}
	for _, a := range []string{cfg.AdminAddr, cfg.StatsAddr, cfg.ReadyAddr} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			closeAll()
			return fmt.Errorf("weft-proxy: %w (every port is a flag: --admin-port, --stats-port, --ready-port)", err)
		}
		lns = append(lns, l)
	}
	reg := prometheus.NewRegistry()
	// The process's own runtime metrics carry the names Istio's agent
	// gives its (istio_agent_go_*, istio_agent_process_*, which Istio's
	// dashboards read), leaving go_* and process_* to the application's
	// merged metrics.
	prometheus.WrapRegistererWithPrefix("istio_agent_", reg).MustRegister(collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b := cfg.Bootstrap
	xcfg := xdsclient.Config{Server: b.Discovery, Node: node, Delta: cfg.Delta}
	var certMgr *certs.Manager
	var meshCerts engine.Certs
	if cfg.Identity.enabled() {
		if certMgr, xcfg.TLS, err = identity(cfg.Identity, b.Discovery, log); err != nil {
			closeAll()
			return err
		}
		meshCerts = certMgr
		// The mesh trust bundle (every root peers may chain to, old and
		// new while the CA rotates) arrives over SDS.
		xcfg.Secrets = []string{"ROOTCA"}
		if b.Type == "router" {
			// And a gateway's credentialName certificates, whatever
			// their names: every secret discovery has for it.
			xcfg.Secrets = append(xcfg.Secrets, "*")
			xcfg.GatewayCredentials = true
		}
	}
	jwtauthn.SetLogger(log)
	accessLog, err := openAccessLog(cfg.AccessLog, cfg.AccessLogFormat)
	if err != nil {
		closeAll()
		return err
	}
	defer func() {
		if err := accessLog.Close(); err != nil {
			log.Error("access log", "error", err)
		}
	}()
	eng := engine.New(log.With("component", "engine"), engine.Options{
		Workload:      ownPeer(b),
		DrainDuration: cfg.DrainDuration, Registerer: reg, Certs: meshCerts, AccessLog: accessLog, NodeID: node.GetId(),
		CredentialDir: cfg.CredentialDir,
	})
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "weft_access_log_dropped_total",
		Help: "Access log entries dropped because the write queue was full (--access-log and xDS access logs)."},
		func() float64 { return float64(accessLog.Dropped() + eng.AccessLogDropped()) }))
	client := xdsclient.New(xcfg, eng.Validate, log.With("component", "xds"))
	updates := client.Updates()
	var dnsSrv *dns.Server
	if cfg.DNSPort > 0 && !b.Explicit {
		if dnsSrv, err = newDNS(cfg, reg, log); err != nil {
			closeAll()
			return err
		}
		defer dnsSrv.Close()
	}
	adm := admin.New(eng, reg, cfg.LogLevel)
	adm.SetBootstrap(envoyBootstrap(node, b.Discovery, cfg.AdminAddr, cfg.Delta))
	// Admin and stats requests run code the data path does not: once one
	// is served, the sidecar looks at once whether its binary pages need
	// trimming again (keepTrimmed). Readiness probes come every few
	// seconds and run little: what they touch belongs to the working set.
	served := make(chan struct{}, 1)
	servers := []*http.Server{
		{Handler: notify(adm.AdminHandler(), served), ReadHeaderTimeout: 10 * time.Second},
		{Handler: notify(statsMux(adm, cfg.AppMetrics, log), served), ReadHeaderTimeout: 10 * time.Second},
		{Handler: readyMux(adm), ReadHeaderTimeout: 10 * time.Second},
	}
	for i, s := range servers {
		go func(s *http.Server, l net.Listener) { _ = s.Serve(l) }(s, lns[i])
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if certMgr != nil {
		certErr := make(chan error, 1)
		go func() { certErr <- certMgr.Run(ctx) }()
		select {
		case <-certMgr.Ready():
			log.Info("workload certificate issued", "identity", certMgr.Identity())
		case err := <-certErr:
			for _, s := range servers {
				_ = s.Close()
			}
			return fmt.Errorf("weft-proxy: workload certificate: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
	if dnsSrv != nil {
		updates = dnsUpdates(ctx, updates, dnsSrv)
		go func() { _ = dnsSrv.Serve(ctx) }()
	}
	xdsDone := make(chan error, 1)
	go func() { xdsDone <- client.Run(ctx) }()
	log.Info("weft-proxy started", "type", b.Type, "node", node.GetId(), "discovery", b.Discovery, "admin", cfg.AdminAddr,
		"concurrency", runtime.GOMAXPROCS(0))
	if cfg.TrimAfter > 0 {
		// Package initialisation (every Envoy proto's descriptors) is
		// over: drop its pages now, so that the peak is not its sum with
		// the first configuration's, and again once that is applied.
		_, _ = memtrim.Trim()
		go keepTrimmed(ctx, eng, cfg.TrimAfter, cfg.TrimGrowthKB, served, log)
	}
	err = eng.Run(ctx, updates)
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	if xerr := <-xdsDone; xerr != nil && !errors.Is(xerr, context.Canceled) {
		log.Warn("xds client stopped", "error", xerr)
	}
	return err
}

// DefaultTrimAfter is when, after its first configuration, the sidecar
// trims the pages of its binary that start-up left resident: late enough
// for listeners, certificates and the first connections to have run their
// one-off code.
const DefaultTrimAfter = 5 * time.Second

// DefaultTrimGrowthKB is how far the binary's resident pages may grow over
// the data path's working set before the sidecar trims them again: a
// third of what serving one metrics scrape pulls in (about 3 MiB).
const DefaultTrimGrowthKB = 1 << 10

// trimCheck is how often the sidecar looks at its resident binary pages
// (one read of /proc/self/status).
const trimCheck = time.Second

// keepTrimmed waits for the engine's first configuration, then after
// delay drops the binary's resident pages that nothing uses any more, and
// then again whenever they grow more than growthKB over the data path's
// working set measured delay after the last trim (growthKB 0: never). It
// looks every trimCheck, and at once when served receives.
func keepTrimmed(ctx context.Context, eng *engine.Engine, delay time.Duration, growthKB int64, served <-chan struct{}, log *slog.Logger) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for ready, _ := eng.Ready(); !ready; ready, _ = eng.Ready() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(delay):
	}
	kb, err := memtrim.Trim()
	if err != nil {
		log.Warn("trimming binary pages", "error", err)
		return
	}
	log.Info("trimmed start-up pages of the binary", "resident_kb_before", kb)
	if growthKB <= 0 {
		return
	}
	k := &memtrim.Keeper{Settle: delay, Growth: growthKB}
	k.Trimmed()
	select {
	case <-served: // a request served before that trim: its pages are gone
	default:
	}
	tick.Reset(trimCheck)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-served:
			k.Served()
		}
		kb, err := k.Check()
		if err != nil {
			log.Warn("trimming binary pages", "error", err)
			return
		}
		if kb > 0 {
			log.Debug("trimmed binary pages again", "resident_kb_before", kb)
		}
	}
}

// notify serves h, then signals done without blocking (a signal already
// pending stands for this one).
func notify(h http.Handler, done chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		select {
		case done <- struct{}{}:
		default:
		}
	})
}

// openAccessLog starts the access log at path (nil when path is empty).
func openAccessLog(path, format string) (*accesslog.Logger, error) {
	f, err := accesslog.ParseFormat(format)
	if err != nil || path == "" {
		return nil, err
	}
	var w io.Writer
	switch path {
	case "/dev/stdout":
		w = os.Stdout
	case "/dev/stderr":
		w = os.Stderr
	default:
		file, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		w = file // closed at exit
	}
	return accesslog.New(w, f, 0), nil
}

// newDNS binds the DNS proxy (a clash fails start-up like any port).
func newDNS(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*dns.Server, error) {
	port := strconv.Itoa(cfg.DNSPort)
	suffixes := []string{"cluster.local"}
	if td := cfg.Bootstrap.TrustDomain; td != "" && td != "cluster.local" {
		suffixes = append(suffixes, td)
	}
	return dns.New(dns.Config{Addrs: []string{"127.0.0.1:" + port}, OptionalAddrs: []string{"[::1]:" + port},
		Namespace: cfg.Bootstrap.Namespace, DomainSuffixes: suffixes, Registerer: reg}, log.With("component", "dns"))
}

// dnsUpdates passes the client's snapshots on to the engine (latest wins,
// as on the client's channel) and rebuilds the DNS table from each.
func dnsUpdates(ctx context.Context, in <-chan *xdsclient.Snapshot, srv *dns.Server) <-chan *xdsclient.Snapshot {
	out := make(chan *xdsclient.Snapshot, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-in:
				select {
				case <-out:
				default:
				}
				out <- s
				srv.Update(dns.FromSnapshot(s))
			}
		}
	}()
	return out
}

func statsMux(a *admin.Server, appMetrics string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	var app *admin.AppMetrics
	if appMetrics != "" {
		app = &admin.AppMetrics{URL: appMetrics, Log: log.With("component", "stats")}
	}
	mux.Handle("/stats/prometheus", a.MergedPrometheus(app))
	return mux
}

func readyMux(a *admin.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/healthz/ready", a.ReadyHandler())
	return mux
}

// identity builds the certificate manager and the mutual-TLS config for
// the xDS connection.
func identity(id Identity, discovery string, log *slog.Logger) (*certs.Manager, *tls.Config, error) {
	if id.RootFile == "" {
		return nil, nil, fmt.Errorf("weft-proxy: --ca-root-file is required with a bootstrap token or cert dir (the control plane's ca.crt)")
	}
	pem, err := os.ReadFile(id.RootFile)
	if err != nil {
		return nil, nil, fmt.Errorf("weft-proxy: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("weft-proxy: %s holds no PEM certificate", id.RootFile)
	}
	caAddr := id.CAAddress
	if caAddr == "" {
		caAddr = discovery
	}
	m, err := certs.New(certs.Config{CAAddress: caAddr, CARoots: pool, BootstrapToken: strings.TrimSpace(id.BootstrapToken), KeyDir: id.CertDir,
		TTL: id.TTL},
		log.With("component", "certs"))
	if err != nil {
		return nil, nil, err
	}
	host, _, err := net.SplitHostPort(discovery)
	if err != nil {
		return nil, nil, fmt.Errorf("weft-proxy: discovery address %q: %w", discovery, err)
	}
	return m, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: host,
		GetClientCertificate: m.GetClientCertificate}, nil
}

// envoyBootstrap describes the running sidecar as the Envoy bootstrap it
// acts on, for the admin config dump (weft proxy-config bootstrap): its
// node, admin address and the ADS server, as cluster "xds-grpc" the way
// Istio's bootstrap names it.
func envoyBootstrap(node *corev3.Node, discovery, adminAddr string, delta bool) *bootstrapv3.Bootstrap {
	sock := func(hostport string) *corev3.Address {
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return nil
		}
		p, _ := strconv.ParseUint(port, 10, 32)
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}
	}
	api := corev3.ApiConfigSource_GRPC
	if delta {
		api = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	b := &bootstrapv3.Bootstrap{
		Node:  node,
		Admin: &bootstrapv3.Admin{Address: sock(adminAddr)},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{LdsConfig: ads, CdsConfig: ads, AdsConfig: &corev3.ApiConfigSource{
			ApiType: api, TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds-grpc"}}}},
		}},
	}
	if a := sock(discovery); a != nil {
		b.StaticResources = &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{{
			Name: "xds-grpc", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "xds-grpc", Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: a}}}},
			}}},
		}}}
	}
	return b
}

// ownPeer is the workload as the standard metrics label it, and as the
// metadata exchange tells peers.
func ownPeer(b bootstrap.Config) telemetry.Peer {
	svc, rev := telemetry.CanonicalNames(b.Labels, b.Name)
	return telemetry.Peer{Workload: b.Name, Namespace: b.Namespace, App: b.Labels["app"], Version: b.Labels["version"],
		CanonicalService: svc, CanonicalRevision: rev, Cluster: b.ClusterID}
}
