// Package server assembles `weft server`: it opens the store, loads or
// creates the API server's CA and serving certificate, bootstraps the
// default namespaces and RBAC roles, writes the admin kubeconfig on first
// start, and serves the config API (HTTPS, :15443) and the monitoring
// endpoints (/metrics, /ready; 127.0.0.1:15014) until its context ends.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/weftmesh/weft/internal/apiserver"
	"github.com/weftmesh/weft/internal/apiserver/authn"
	"github.com/weftmesh/weft/internal/apiserver/rbac"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/pki"
	"github.com/weftmesh/weft/internal/store"
)

// Config is everything `weft server` takes from its flags.
type Config struct {
	// DataDir holds the CA, the serving certificate, the kubeconfig and, with
	// the bolt store, the database. Default ~/.weft.
	DataDir string
	// Listen is the config API address. Default ":15443".
	Listen string
	// MonitorListen serves /metrics and /ready. Default "127.0.0.1:15014";
	// "" disables it.
	MonitorListen string
	// Store selects and configures the store backend.
	Store store.Config
	// TLSSANs are extra names and addresses for the serving certificate.
	TLSSANs []string
	// CompactionInterval is how often store history older than one interval
	// is compacted. Default 5m; negative disables compaction.
	CompactionInterval time.Duration
	// ShutdownTimeout bounds a graceful stop. Default 10s.
	ShutdownTimeout time.Duration
	// Components to run: "api", "discovery". Default both.
	Components []string
	// Discovery configures Pilot.
	Discovery DiscoveryConfig
	// CA configures the mesh CA (Citadel). CACertsDir defaults to
	// <data-dir>/cacerts (Istio's plugged-in cacerts file names).
	CA ca.Options
	// Version is reported by /version.
	Version string
	// Clock is injectable for tests; default time.Now.
	Clock func() time.Time
}

// File names inside the data directory.
const (
	KubeconfigFile = "kubeconfig"
	ServingCert    = "serving.crt"
	ServingKey     = "serving.key"
)

// Server is a running `weft server`.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store store.Store
	ca    *pki.CA
	api   *apiserver.Server
	reg   *prometheus.Registry
	disc  *discovery
	mesh  *ca.Authority

	// Addr is the bound config API address, known once Run has started
	// listening (useful with Listen ":0").
	addr chan string
}

// New validates cfg and opens the store; Run serves.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.DataDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("server: no --data-dir and no home directory: %w", err)
		}
		cfg.DataDir = filepath.Join(home, ".weft")
	}
	if cfg.Listen == "" {
		cfg.Listen = ":15443"
	}
	if cfg.CompactionInterval == 0 {
		cfg.CompactionInterval = 5 * time.Minute
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: creating data dir: %w", err)
	}
	apiCA, created, err := pki.LoadOrCreateCA(cfg.DataDir, "weft-apiserver-ca", cfg.Clock())
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created API server CA", "cert", filepath.Join(cfg.DataDir, pki.CACertFile))
	}
	cfg.Store.DataDir = cfg.DataDir
	st, err := store.Open(ctx, cfg.Store, log.With("component", "store"))
	if err != nil {
		return nil, err
	}
	comps, err := parseComponents(cfg.Components)
	if err != nil {
		st.Close()
		return nil, err
	}
	tokens := authn.NewTokens(st, cfg.Clock)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{cfg: cfg, log: log, store: st, ca: apiCA, reg: reg, addr: make(chan string, 1)}
	co := cfg.CA
	if co.CACertsDir == "" {
		co.CACertsDir = filepath.Join(cfg.DataDir, "cacerts")
	}
	co.KEKFile = filepath.Join(cfg.DataDir, ca.KEKFileName)
	co.Clock = cfg.Clock
	if s.mesh, err = ca.New(ctx, st, co, log.With("component", "ca")); err != nil {
		st.Close()
		return nil, err
	}
	var debug http.Handler
	if comps["discovery"] {
		if s.disc, err = newDiscovery(ctx, cfg.Discovery, st, s.mesh, reg, log); err != nil {
			st.Close()
			return nil, err
		}
		debug = s.disc.debugHandler()
	}
	s.api = apiserver.New(st, authn.NewAuthenticator(tokens), rbac.New(st), tokens,
		log.With("component", "apiserver"), apiserver.Options{Clock: cfg.Clock, Version: cfg.Version, Debug: debug,
			Extra: map[string]http.Handler{ca.TokenPath: s.mesh.TokenHandler(), ca.RootsPath: s.mesh.RootsHandler()}})
	if err := s.api.Bootstrap(ctx); err != nil {
		st.Close()
		return nil, err
	}
	if err := s.ensureKubeconfig(ctx, tokens); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// Store returns the opened store (for tests and the benchmark).
func (s *Server) Store() store.Store { return s.store }

// Addr waits for and returns the bound config API address.
func (s *Server) Addr(ctx context.Context) (string, error) {
	select {
	case a := <-s.addr:
		s.addr <- a
		return a, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// servingCert loads the serving certificate from the data dir, or issues a
// new one when it is missing, expires within 30 days or lacks a SAN.
func (s *Server) servingCert() (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(s.cfg.DataDir, ServingCert), filepath.Join(s.cfg.DataDir, ServingKey)
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, s.cfg.TLSSANs...)
	if hn, err := os.Hostname(); err == nil {
		hosts = append(hosts, hn)
	}
	if pair, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && pair.Leaf != nil {
		ok := pair.Leaf.NotAfter.After(s.cfg.Clock().Add(30*24*time.Hour)) && pair.Leaf.CheckSignatureFrom(s.ca.Cert) == nil
		for _, h := range hosts {
			if pair.Leaf.VerifyHostname(h) != nil {
				ok = false
			}
		}
		if ok {
			return pair, nil
		}
	}
	pair, err := s.ca.Issue("weft-apiserver", nil, hosts, 365*24*time.Hour, s.cfg.Clock())
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM, keyPEM, err := pki.EncodePEM(pair)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := pki.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := pki.WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	s.log.Info("issued serving certificate", "hosts", strings.Join(hosts, ","), "expires", pair.Leaf.NotAfter)
	return pair, nil
}

// ensureKubeconfig writes <data-dir>/kubeconfig with a fresh admin token if
// the file is not there yet.
func (s *Server) ensureKubeconfig(ctx context.Context, tokens *authn.Tokens) error {
	path := filepath.Join(s.cfg.DataDir, KubeconfigFile)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tok, _, err := tokens.Issue(ctx, "admin", []string{"system:masters"}, 0)
	if err != nil {
		return fmt.Errorf("server: issuing admin token: %w", err)
	}
	kc := kubeconfig.New("https://"+clientAddr(s.cfg.Listen), s.ca.CertPEM, "admin", kubeconfig.User{Token: tok})
	if err := kc.Write(path); err != nil {
		return err
	}
	s.log.Info("wrote admin kubeconfig", "path", path)
	return nil
}

// clientAddr turns a listen address into one a local client can dial.
func clientAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Run serves until ctx ends, then shuts down gracefully and closes the store.
func (s *Server) Run(ctx context.Context) error {
	defer s.store.Close()
	cert, err := s.servingCert()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("server: config API: %w", err)
	}
	var monLn net.Listener
	if s.cfg.MonitorListen != "" {
		if monLn, err = net.Listen("tcp", s.cfg.MonitorListen); err != nil {
			ln.Close()
			return fmt.Errorf("server: monitoring: %w", err)
		}
	}
	s.addr <- ln.Addr().String()
	errc := make(chan error, 3)
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    s.ca.Pool(),
		NextProtos:   []string{"h2", "http/1.1"},
	}
	if s.disc != nil {
		go func() {
			if err := s.disc.run(ctx, s.store, cert); err != nil {
				s.log.Error("discovery stopped", "error", err)
				errc <- err
			}
		}()
	}
	metrics := newHTTPMetrics(s.reg)
	api := &http.Server{
		Handler:           metrics.wrap(s.api),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	go func() { errc <- api.Serve(tls.NewListener(ln, tlsCfg)) }()
	var mon *http.Server
	if monLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
		if s.disc != nil {
			mux.Handle("/debug/", s.disc.debugHandler())
		}
		mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
			if _, err := s.store.Revision(r.Context()); err != nil {
				http.Error(w, "store unavailable: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		mon = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- mon.Serve(monLn) }()
	}
	s.log.Info("weft server ready", "api", "https://"+clientAddr(ln.Addr().String()), "store", s.cfg.Store.Backend,
		"kubeconfig", filepath.Join(s.cfg.DataDir, KubeconfigFile))
	go s.compactLoop(ctx)
	go s.mesh.Run(ctx)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("server: %w", err)
		}
	}
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if mon != nil {
		_ = mon.Shutdown(sctx)
	}
	// Watches are long requests: stop accepting, give in-flight writes
	// time to finish, then close what is left.
	if err := api.Shutdown(sctx); err != nil {
		_ = api.Close()
	}
	return nil
}

// compactLoop compacts the history older than one interval, as the
// Kubernetes API server does, so watches can resume across short breaks.
func (s *Server) compactLoop(ctx context.Context) {
	if s.cfg.CompactionInterval < 0 {
		return
	}
	t := time.NewTicker(s.cfg.CompactionInterval)
	defer t.Stop()
	var prev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rev, err := s.store.Revision(ctx)
		if err != nil {
			s.log.Warn("compaction: reading revision", "error", err)
			continue
		}
		if prev > 0 {
			if err := s.store.Compact(ctx, prev); err != nil && !errors.Is(err, store.ErrCompacted) {
				s.log.Warn("compaction failed", "revision", prev, "error", err)
			}
		}
		prev = rev
	}
}

// XDSAddrs waits for and returns the bound xDS addresses (TLS, plaintext;
// plaintext is "" when disabled). It fails if discovery is not running.
func (s *Server) XDSAddrs(ctx context.Context) (tlsAddr, plainAddr string, err error) {
	if s.disc == nil {
		return "", "", fmt.Errorf("server: the discovery component is not enabled")
	}
	select {
	case a := <-s.disc.addrs:
		s.disc.addrs <- a
		return a[0], a[1], nil
	case <-ctx.Done():
		return "", "", ctx.Err()
	}
}

// parseComponents validates --components (default: every component).
func parseComponents(list []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(list) == 0 {
		list = []string{"api", "discovery"}
	}
	for _, c := range list {
		switch c {
		case "api", "discovery":
			out[c] = true
		default:
			return nil, fmt.Errorf("unknown component %q: use api and/or discovery", c)
		}
	}
	if !out["api"] {
		return nil, fmt.Errorf("the api component is required for now (it also serves the admin kubeconfig and proxy-status)")
	}
	return out, nil
}
