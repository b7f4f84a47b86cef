package engine

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/proxy/admin"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
)

// snapshotConfig lists a snapshot's resources sorted by name for the admin
// API.
func snapshotConfig(s *xdsclient.Snapshot) *admin.Config {
	cfg := &admin.Config{Versions: map[string]string{}}
	for k, v := range s.Versions {
		cfg.Versions[k] = v
	}
	for _, n := range sortedKeys(s.Listeners) {
		cfg.Listeners = append(cfg.Listeners, s.Listeners[n])
	}
	for _, n := range sortedKeys(s.Routes) {
		cfg.Routes = append(cfg.Routes, s.Routes[n])
	}
	for _, n := range sortedKeys(s.Clusters) {
		cfg.Clusters = append(cfg.Clusters, s.Clusters[n])
	}
	for _, n := range sortedKeys(s.Endpoints) {
		cfg.Endpoints = append(cfg.Endpoints, s.Endpoints[n])
	}
	return cfg
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// tcpLabels are the TCP metric labels for a connection to cluster name.
func (e *Engine) tcpLabels(name string) prometheus.Labels {
	svc := ""
	reporter := "source"
	if parts := splitCluster(name); len(parts) == 4 {
		svc = parts[3]
		if parts[0] == "inbound" {
			reporter = "destination"
		}
	}
	l := prometheus.Labels{"reporter": reporter, "response_flags": "-", "connection_security_policy": "none",
		"destination_service": orUnknown(svc), "destination_service_name": orUnknown(svc), "destination_service_namespace": "unknown"}
	src, dst := e.opts.Workload, e.opts.Workload
	if reporter == "source" {
		dst = noPeer
	} else {
		src = noPeer
	}
	for k, v := range map[string]string{
		"source_workload": src.Workload, "source_workload_namespace": src.Namespace, "source_principal": src.Principal,
		"source_app": src.App, "source_version": src.Version,
		"destination_workload": dst.Workload, "destination_workload_namespace": dst.Namespace,
		"destination_principal": dst.Principal, "destination_app": dst.App, "destination_version": dst.Version,
	} {
		l[k] = orUnknown(v)
	}
	return l
}

var noPeer = struct{ Workload, Namespace, Principal, App, Version string }{}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func splitCluster(name string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(name); i++ {
		if name[i] == '|' {
			parts = append(parts, name[start:i])
			start = i + 1
		}
	}
	return append(parts, name[start:])
}
