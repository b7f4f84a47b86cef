// Package admin serves weft-proxy's admin endpoints on 127.0.0.1:15000, in
// Envoy's shapes so operators' tools and habits work: /config_dump,
// /clusters, /stats, /ready, /logging, /drain_listeners, /quitquitquit —
// plus the readiness (:15021 /healthz/ready) and Prometheus
// (:15020 /stats/prometheus) handlers.
package admin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"regexp"
	"sort"
	"strconv"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Config is the proxy's applied xDS config, as the admin API shows it.
type Config struct {
	// Versions per type URL.
	Versions  map[string]string
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	// Secrets: the workload certificate ("default", key redacted) and
	// the SDS secrets received (the trust bundle, "ROOTCA").
	Secrets []*tlsv3.Secret
}

// EndpointStatus is one upstream endpoint's live state for /clusters.
type EndpointStatus struct {
	Cluster, Address string
	Healthy          bool
	Ejected          bool
	ActiveRequests   int64
	// Region, Zone and SubZone are the endpoint's locality; Priority its
	// locality's priority (0 is the highest).
	Region, Zone, SubZone string
	Priority              uint32
}

// Proxy is what the admin server asks of the running proxy.
type Proxy interface {
	// Config returns the applied config (nil before the first).
	Config() *Config
	// Endpoints returns live upstream state.
	Endpoints() []EndpointStatus
	// Ready reports whether the proxy serves (config applied, not draining).
	Ready() (bool, string)
	// Drain starts draining listeners (GOAWAY, Connection: close).
	Drain()
	// Quit drains and exits.
	Quit()
}

// Server holds the admin handlers.
type Server struct {
	p         Proxy
	reg       *prometheus.Registry
	level     *slog.LevelVar
	bootstrap *bootstrapv3.Bootstrap
}

// SetBootstrap sets what the config dump shows as the proxy's bootstrap
// (before the server serves).
func (s *Server) SetBootstrap(b *bootstrapv3.Bootstrap) { s.bootstrap = b }

// New returns the admin handlers over p; metrics come from reg and the
// log level is changed through level.
func New(p Proxy, reg *prometheus.Registry, level *slog.LevelVar) *Server {
	return &Server{p: p, reg: reg, level: level}
}

// AdminHandler serves the 127.0.0.1:15000 endpoints.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", s.configDump)
	mux.HandleFunc("/clusters", s.clusters)
	mux.Handle("/stats/prometheus", s.Prometheus())
	mux.HandleFunc("/stats", s.stats)
	mux.HandleFunc("/ready", s.ready)
	mux.HandleFunc("/logging", s.logging)
	mux.HandleFunc("/drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		s.p.Drain()
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		fmt.Fprintln(w, "OK")
		go s.p.Quit()
	})
	// Go's profiles (CPU, heap, goroutines, mutex) on the loopback-only
	// admin port: Envoy's /cpuprofiler and /heapprofiler for a Go proxy.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Prometheus serves /stats/prometheus.
func (s *Server) Prometheus() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})
}

// ReadyHandler serves /healthz/ready (port 15021).
func (s *Server) ReadyHandler() http.Handler {
	return http.HandlerFunc(s.ready)
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ok, why := s.p.Ready()
	if !ok {
		http.Error(w, why, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "LIVE")
}

func anyOf(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		return nil
	}
	return a
}

// configDump renders Envoy's admin.v3.ConfigDump, its sections in
// Envoy's order (bootstrap, clusters, endpoints, listeners, routes,
// secrets). As Envoy's, it takes:
//   - include_eds: the endpoints, left out otherwise;
//   - name_regex: only the resources whose names (a cluster's, a
//     listener's, a route configuration's, an assignment's cluster, a
//     secret's) match it whole (RE2);
//   - resource: only the elements of that repeated field of the sections
//     (dynamic_active_clusters, dynamic_listeners, …), one config each.
func (s *Server) configDump(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Has("mask") {
		http.Error(w, "the mask parameter is not supported: use resource= (a repeated field such as dynamic_active_clusters) and name_regex=", http.StatusBadRequest)
		return
	}
	match := func(string) bool { return true }
	if re := q.Get("name_regex"); re != "" {
		rx, err := regexp.Compile(`^(?:` + re + `)$`)
		if err != nil {
			http.Error(w, fmt.Sprintf("invalid name_regex %q: %v", re, err), http.StatusBadRequest)
			return
		}
		match = rx.MatchString
	}
	var sections []proto.Message
	if s.bootstrap != nil && !q.Has("name_regex") {
		sections = append(sections, &adminv3.BootstrapConfigDump{Bootstrap: s.bootstrap})
	}
	if cfg := s.p.Config(); cfg != nil {
		sections = append(sections, configSections(cfg, match, q.Has("include_eds"))...)
	}
	dump := &adminv3.ConfigDump{}
	if res := q.Get("resource"); res != "" {
		found := false
		for _, m := range sections {
			fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(res))
			if fd == nil || !fd.IsList() || fd.Kind() != protoreflect.MessageKind {
				continue
			}
			found = true
			l := m.ProtoReflect().Get(fd).List()
			for i := range l.Len() {
				dump.Configs = append(dump.Configs, anyOf(l.Get(i).Message().Interface()))
			}
		}
		if !found {
			http.Error(w, fmt.Sprintf("no resource %q in the config dump: name a repeated field of its sections, such as dynamic_active_clusters, dynamic_listeners, dynamic_route_configs, dynamic_endpoint_configs (with include_eds) or dynamic_active_secrets", res), http.StatusNotFound)
			return
		}
		writeProtoJSON(w, dump)
		return
	}
	for _, m := range sections {
		dump.Configs = append(dump.Configs, anyOf(m))
	}
	writeProtoJSON(w, dump)
}

// configSections are cfg's clusters, endpoints (with eds), listeners,
// routes and secrets sections, holding the resources whose names match.
func configSections(cfg *Config, match func(string) bool, eds bool) []proto.Message {
	v := func(typ string) string { return cfg.Versions["type.googleapis.com/"+typ] }
	ld := &adminv3.ListenersConfigDump{VersionInfo: v("envoy.config.listener.v3.Listener")}
	for _, l := range cfg.Listeners {
		if match(l.GetName()) {
			ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: l.GetName(),
				ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: ld.VersionInfo, Listener: anyOf(l),
				},
			})
		}
	}
	cd := &adminv3.ClustersConfigDump{VersionInfo: v("envoy.config.cluster.v3.Cluster")}
	for _, c := range cfg.Clusters {
		if match(c.GetName()) {
			cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: cd.VersionInfo, Cluster: anyOf(c),
			})
		}
	}
	rd := &adminv3.RoutesConfigDump{}
	for _, rc := range cfg.Routes {
		if match(rc.GetName()) {
			rd.DynamicRouteConfigs = append(rd.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: v("envoy.config.route.v3.RouteConfiguration"), RouteConfig: anyOf(rc),
			})
		}
	}
	sd := &adminv3.SecretsConfigDump{}
	for _, sec := range cfg.Secrets {
		if match(sec.GetName()) {
			sd.DynamicActiveSecrets = append(sd.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
				Name: sec.GetName(), VersionInfo: v("envoy.extensions.transport_sockets.tls.v3.Secret"), Secret: anyOf(sec),
			})
		}
	}
	if !eds {
		return []proto.Message{cd, ld, rd, sd}
	}
	ed := &adminv3.EndpointsConfigDump{}
	for _, e := range cfg.Endpoints {
		if match(e.GetClusterName()) {
			ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: v("envoy.config.endpoint.v3.ClusterLoadAssignment"), EndpointConfig: anyOf(e),
			})
		}
	}
	return []proto.Message{cd, ed, ld, rd, sd}
}

// clusters renders Envoy's /clusters: text, or with ?format=json an
// envoy.admin.v3.Clusters (what istioctl proxy-config endpoint reads).
func (s *Server) clusters(w http.ResponseWriter, r *http.Request) {
	eps := s.p.Endpoints()
	sort.Slice(eps, func(i, j int) bool {
		if eps[i].Cluster != eps[j].Cluster {
			return eps[i].Cluster < eps[j].Cluster
		}
		return eps[i].Address < eps[j].Address
	})
	if r.URL.Query().Get("format") == "json" {
		writeProtoJSON(w, clustersProto(eps))
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	for _, e := range eps {
		health := "healthy"
		switch {
		case e.Ejected:
			health = "/failed_outlier_check"
		case !e.Healthy:
			health = "/failed_eds_health"
		}
		fmt.Fprintf(w, "%s::%s::health_flags::%s\n", e.Cluster, e.Address, health)
		fmt.Fprintf(w, "%s::%s::region::%s\n", e.Cluster, e.Address, e.Region)
		fmt.Fprintf(w, "%s::%s::zone::%s\n", e.Cluster, e.Address, e.Zone)
		fmt.Fprintf(w, "%s::%s::sub_zone::%s\n", e.Cluster, e.Address, e.SubZone)
		fmt.Fprintf(w, "%s::%s::priority::%d\n", e.Cluster, e.Address, e.Priority)
		fmt.Fprintf(w, "%s::%s::rq_active::%d\n", e.Cluster, e.Address, e.ActiveRequests)
	}
}

// clustersProto is the live endpoint state in Envoy's admin.v3.Clusters.
func clustersProto(eps []EndpointStatus) *adminv3.Clusters {
	out := &adminv3.Clusters{}
	var cur *adminv3.ClusterStatus
	for _, e := range eps {
		if cur == nil || cur.Name != e.Cluster {
			cur = &adminv3.ClusterStatus{Name: e.Cluster}
			out.ClusterStatuses = append(out.ClusterStatuses, cur)
		}
		addr := &corev3.Address{}
		if host, port, err := net.SplitHostPort(e.Address); err == nil {
			p, _ := strconv.ParseUint(port, 10, 32)
			addr.Address = &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: host,
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}
		}
		eds := corev3.HealthStatus_HEALTHY
		if !e.Healthy {
			eds = corev3.HealthStatus_UNHEALTHY
		}
		cur.HostStatuses = append(cur.HostStatuses, &adminv3.HostStatus{
			Address:      addr,
			HealthStatus: &adminv3.HostHealthStatus{EdsHealthStatus: eds, FailedOutlierCheck: e.Ejected},
			Locality:     &corev3.Locality{Region: e.Region, Zone: e.Zone, SubZone: e.SubZone},
			Priority:     e.Priority,
			Stats:        []*adminv3.SimpleMetric{{Name: "rq_active", Type: adminv3.SimpleMetric_GAUGE, Value: uint64(max(e.ActiveRequests, 0))}},
		})
	}
	return out
}

func writeProtoJSON(w http.ResponseWriter, m proto.Message) {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	families, err := s.reg.Gather()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	// As Envoy's: filter is an RE2 regular expression over stat names.
	var filter *regexp.Regexp
	if f := r.URL.Query().Get("filter"); f != "" {
		if filter, err = regexp.Compile(f); err != nil {
			http.Error(w, fmt.Sprintf("invalid filter regex %q: %v", f, err), http.StatusBadRequest)
			return
		}
	}
	asJSON := r.URL.Query().Get("format") == "json"
	type stat struct {
		Name  string  `json:"name"`
		Value float64 `json:"value"`
	}
	var stats []stat
	if !asJSON {
		w.Header().Set("Content-Type", "text/plain")
	}
	for _, f := range families {
		if filter != nil && !filter.MatchString(f.GetName()) {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			var val float64
			switch {
			case m.GetCounter() != nil:
				val = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				val = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				val = float64(m.GetHistogram().GetSampleCount())
			}
			name := f.GetName() + "{" + strings.Join(labels, ",") + "}"
			if asJSON {
				stats = append(stats, stat{name, val})
				continue
			}
			fmt.Fprintf(w, "%s: %g\n", name, val)
		}
	}
	if asJSON {
		b, err := json.MarshalIndent(map[string]any{"stats": append([]stat{}, stats...)}, "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(b, '\n'))
	}
}

// logging shows or sets the log level (?level=debug|info|warn|error).
func (s *Server) logging(w http.ResponseWriter, r *http.Request) {
	if lv := r.URL.Query().Get("level"); lv != "" {
		if r.Method != http.MethodPost {
			http.Error(w, "use POST to change the level", http.StatusMethodNotAllowed)
			return
		}
		l, ok := parseLevel(lv)
		if !ok {
			http.Error(w, fmt.Sprintf("invalid level %q: use trace, debug, info, warning, error, critical or off (Envoy's), or warn", lv), http.StatusBadRequest)
			return
		}
		s.level.Set(l)
	}
	fmt.Fprintf(w, "active loggers:\n  weft-proxy: %s\n", levelName(s.level.Level()))
}

// levelOff is above every level weft-proxy logs at.
const levelOff = slog.Level(100)

// parseLevel reads Envoy's log level names (trace and critical map to
// slog's nearest, off silences) and slog's.
func parseLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "trace":
		return slog.LevelDebug, true
	case "warning":
		return slog.LevelWarn, true
	case "critical":
		return slog.LevelError, true
	case "off":
		return levelOff, true
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, false
	}
	return l, true
}

func levelName(l slog.Level) string {
	switch {
	case l >= levelOff:
		return "off"
	case l == slog.LevelWarn:
		return "warning"
	}
	return strings.ToLower(l.String())
}
