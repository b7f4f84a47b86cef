package translate

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
)

// Resources are the xDS resources for one proxy, each list sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	// Secrets are SDS secrets: the trust bundle (ROOTCA), and for a
	// verified gateway the certificates, private keys included, of the
	// credentialNames its servers use (credentials.go).
	Secrets []*tlsv3.Secret
	// Warnings report config conflicts and references that resolve to
	// nothing (e.g. "VirtualService default/a: host reviews already routed
	// by default/b (older); ignored"), in a stable order.
	Warnings []string
}

// builder carries what every part of one Build shares.
type builder struct {
	s *model.Snapshot
	p *model.Proxy
	// services are the services p may reach (VisibleServices).
	services []registry.Service
	warnings []string
	// credentials are the SDS names of the credentialName certificates
	// and CAs a gateway's servers use (kubernetes://…), set by LDS.
	credentials map[string]bool
}

func (b *builder) warn(format string, args ...any) {
	b.warnings = append(b.warnings, fmt.Sprintf(format, args...))
}

// Build computes p's resources from s. It never fails: config it cannot
// use is skipped and reported in Warnings.
func Build(s *model.Snapshot, p *model.Proxy) *Resources {
	b := &builder{s: s, p: p, services: VisibleServices(s, p)}
	r := &Resources{}
	r.Clusters, r.Endpoints = b.clusters()
	r.Listeners, r.Routes = b.listeners()
	if sec := trustBundleSecret(s, p); sec != nil {
		r.Secrets = []*tlsv3.Secret{sec}
	}
	r.Secrets = append(r.Secrets, b.credentialSecrets()...)
	r.Warnings = b.warnings
	return r
}
