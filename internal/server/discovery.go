package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/pilot/push"
	"github.com/weftmesh/weft/internal/pilot/xds"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/workload"
	"github.com/weftmesh/weft/internal/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// DiscoveryConfig configures the discovery component (Pilot).
type DiscoveryConfig struct {
	// Listen is the TLS xDS address. Default ":15012".
	Listen string
	// PlaintextListen is the plaintext xDS address. Default
	// "127.0.0.1:15010"; "" disables it.
	PlaintextListen string
	// Debounce is the quiet time before a push. Default 100ms.
	Debounce time.Duration
	// Registries are extra service registries, e.g. "consul=127.0.0.1:8500".
	Registries []string
	// Mesh is the mesh-wide config. Default model.DefaultMesh().
	Mesh *model.Mesh
}

// discovery is the running discovery component.
type discovery struct {
	cfg    DiscoveryConfig
	log    *slog.Logger
	pusher *push.Pusher
	xds    *xds.Server
	agg    *registry.Aggregator
	srcs   []registry.Source
	// authority is the mesh CA; its CSR service shares the TLS port.
	authority *ca.Authority
	reg       prometheus.Registerer
	// registrar auto-registers proxies into WorkloadGroups.
	registrar *workload.Registrar
	// addrs receives the bound TLS and plaintext addresses.
	addrs chan [2]string
}

// newDiscovery builds pilot over the store; sources are parsed up front so a
// bad --registry flag fails start-up before anything listens.
func newDiscovery(ctx context.Context, cfg DiscoveryConfig, st store.Store, authority *ca.Authority, reg prometheus.Registerer, log *slog.Logger) (*discovery, error) {
	if cfg.Listen == "" {
		cfg.Listen = ":15012"
	}
	srcs := []registry.Source{}
	names := map[string]bool{}
	for _, spec := range cfg.Registries {
		src, err := newRegistrySource(spec, log)
		if err != nil {
			return nil, err
		}
		if names[src.Name()] {
			return nil, fmt.Errorf("--registry %q: a %s registry is already configured (one per kind)", spec, src.Name())
		}
		names[src.Name()] = true
		srcs = append(srcs, src)
	}
	base, err := newServiceEntrySource(st, log)
	if err != nil {
		return nil, err
	}
	srcs = append([]registry.Source{base}, srcs...)
	// State-of-the-world responses come from resources marshalled once per
	// push; go-control-plane's ADS-mode rule (answer a named request only
	// when it covers the whole snapshot) is not applied, as it would leave
	// gRPC's proxyless client, which asks for just the clusters its routes
	// name, unanswered. Proxies apply CDS before LDS themselves.
	cache := xds.NewCache(xds.CacheLogger{L: log.With("component", "pilot.cache")})
	pusher := push.New(cache, reg, log.With("component", "pilot.push"), push.Options{Debounce: cfg.Debounce, Mesh: cfg.Mesh})
	d := &discovery{cfg: cfg, log: log, pusher: pusher, authority: authority, reg: reg, agg: registry.NewAggregator(), srcs: srcs, addrs: make(chan [2]string, 1)}
	d.xds = xds.New(ctx, cache, pusher, log.With("component", "pilot.xds"))
	if authority != nil {
		pusher.SetTrustBundle(authority.Roots())
	}
	d.registrar = workload.New(st, log.With("component", "registry.workload"), workload.Options{})
	d.xds.Hooks = &autoRegister{r: d.registrar, log: log}
	return d, nil
}

// followTrustBundle pushes the CA's trust bundle to sidecars (SDS ROOTCA)
// whenever it changes, e.g. while a root rotates.
func (d *discovery) followTrustBundle(ctx context.Context) {
	if d.authority == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.authority.BundleUpdates():
			roots := d.authority.Roots()
			d.log.Info("trust bundle changed; pushing it to sidecars", "roots", len(roots))
			d.pusher.SetTrustBundle(roots)
		}
	}
}

// autoRegister connects xDS proxies that name a WorkloadGroup to the
// auto-registration registrar.
type autoRegister struct {
	r   *workload.Registrar
	log *slog.Logger
}

func workloadOf(p *model.Proxy) (workload.Workload, bool) {
	if p.WorkloadGroup == "" || len(p.IPs) == 0 {
		return workload.Workload{}, false
	}
	return workload.Workload{Group: p.WorkloadGroup, Namespace: p.Namespace, IP: p.IPs[0], Labels: p.Labels,
		InboundPorts: p.Metadata["INBOUND_PORTS"]}, true
}

func (a *autoRegister) ProxyConnected(p *model.Proxy) {
	w, ok := workloadOf(p)
	if !ok {
		if p.WorkloadGroup != "" {
			a.log.Warn("cannot auto-register a proxy without an IP", "proxy", p.ID, "group", p.WorkloadGroup)
		}
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.r.Connected(ctx, w); err != nil {
			a.log.Warn("auto-registration failed", "proxy", p.ID, "error", err)
		}
	}()
}

func (a *autoRegister) ProxyDisconnected(p *model.Proxy) {
	if w, ok := workloadOf(p); ok {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a.r.Disconnected(ctx, w)
		}()
	}
}

// run serves xDS until ctx ends. tlsCert is the serving certificate.
func (d *discovery) run(ctx context.Context, st store.Store, tlsCert tls.Certificate) error {
	tlsLn, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return fmt.Errorf("discovery: xds: %w", err)
	}
	var plainLn net.Listener
	if d.cfg.PlaintextListen != "" {
		if plainLn, err = net.Listen("tcp", d.cfg.PlaintextListen); err != nil {
			tlsLn.Close()
			return fmt.Errorf("discovery: plaintext xds: %w", err)
		}
	}
	addrs := [2]string{tlsLn.Addr().String()}
	if plainLn != nil {
		addrs[1] = plainLn.Addr().String()
	}
	d.addrs <- addrs

	configSynced := make(chan struct{})
	go push.WatchConfig(ctx, st, d.pusher, func() { close(configSynced) }, d.log.With("component", "pilot.config"))
	go d.waitSynced(ctx, configSynced)
	for _, src := range d.srcs {
		go func(src registry.Source) {
			if err := src.Run(ctx, d.agg); err != nil && ctx.Err() == nil {
				d.log.Error("registry source stopped", "source", src.Name(), "error", err)
			}
		}(src)
	}
	go func() {
		sub := d.agg.Subscribe()
		for {
			select {
			case <-ctx.Done():
				return
			case snap := <-sub:
				d.pusher.SetRegistry(snap)
			}
		}
	}()
	go d.pusher.Run(ctx)
	go d.followTrustBundle(ctx)
	go d.registrar.Run(ctx)

	// :15012 asks for (but does not require) a workload certificate from
	// the mesh CA; the CSR service authenticates callers by it or by a
	// bootstrap token, and is not offered on the plaintext port.
	// xDS on this port requires the same proof of identity as the CA.
	tlsCfg := d.authority.ServerTLS(&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{tlsCert}, NextProtos: []string{"h2"}})
	csr := ca.NewService(d.authority, ca.ServiceOptions{Registerer: d.reg}, d.log.With("component", "ca"))
	servers := []*grpc.Server{xds.NewGRPCServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.StreamInterceptor(requireIdentity(csr, d.log)))}
	csr.Register(servers[0])
	lns := []net.Listener{tlsLn}
	if plainLn != nil {
		servers = append(servers, xds.NewGRPCServer())
		lns = append(lns, plainLn)
	}
	errc := make(chan error, len(servers))
	for i, g := range servers {
		d.xds.Register(g)
		go func(g *grpc.Server, ln net.Listener) { errc <- g.Serve(ln) }(g, lns[i])
	}
	d.log.Info("discovery ready", "xds", addrs[0], "xds_plaintext", addrs[1], "registries", len(d.srcs))
	select {
	case <-ctx.Done():
	case err := <-errc:
		for _, g := range servers {
			g.Stop()
		}
		return fmt.Errorf("discovery: %w", err)
	}
	for _, g := range servers {
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			g.Stop()
		}
	}
	return nil
}

// requireIdentity refuses xDS streams on the TLS port from callers that
// prove no mesh identity (workload certificate or bootstrap token).
func requireIdentity(csr *ca.Service, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, "/envoy.service.discovery.v3.") {
			id, err := csr.Authenticate(ss.Context())
			if err != nil {
				log.Debug("xds: refused unauthenticated stream", "method", info.FullMethod, "error", err)
				return err
			}
			log.Debug("xds: authenticated stream", "namespace", id.Namespace, "service_account", id.ServiceAccount)
			ss = callerStream{ServerStream: ss, ctx: xds.WithCaller(ss.Context(), xds.Caller{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount})}
		}
		return handler(srv, ss)
	}
}

// callerStream carries the authenticated caller in the stream's context.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c callerStream) Context() context.Context { return c.ctx }

// registrySyncTimeout bounds how long proxies wait for a registry source
// that never reports (e.g. an unreachable Consul) before they get the
// config of the sources that did.
const registrySyncTimeout = 10 * time.Second

// waitSynced marks the pusher synced once the config is listed and every
// registry source has reported (or registrySyncTimeout passed), so no
// proxy ever gets an empty or partial first config.
func (d *discovery) waitSynced(ctx context.Context, configSynced <-chan struct{}) {
	select {
	case <-ctx.Done():
		return
	case <-configSynced:
	}
	deadline := time.NewTimer(registrySyncTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		missing := []string{}
		for _, src := range d.srcs {
			if !d.agg.HasReported(src.Name()) {
				missing = append(missing, src.Name())
			}
		}
		if len(missing) == 0 {
			d.pusher.SetRegistry(d.agg.Snapshot())
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			d.log.Warn("serving config without registries that have not reported", "sources", missing, "waited", registrySyncTimeout)
			d.pusher.MarkSynced()
			return
		case <-tick.C:
		}
	}
	d.pusher.MarkSynced()
}

// debugHandler serves pilot's /debug endpoints.
func (d *discovery) debugHandler() http.Handler { return d.xds.DebugHandler() }
