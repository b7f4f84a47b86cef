package translate

// Mesh mutual TLS, as Istio does it:
//
// Client side (CDS), auto mTLS: an outbound cluster whose DestinationRule
// sets no TLS mode gets ISTIO_MUTUAL when every one of its endpoints runs
// a sidecar (label security.istio.io/tlsMode: istio) that accepts mTLS on
// the endpoint's port (its PeerAuthentication is not DISABLE), the service
// is MESH_INTERNAL and the mesh enables it (model.Mesh.EnableAutoMTLS).
// Otherwise the cluster stays plaintext. Istio decides per endpoint with
// transport_socket_matches; weft-proxy does not support those, so weft
// decides per cluster (per subset cluster when subsets split in-mesh and
// out-of-mesh endpoints). A TLS mode set in a DestinationRule always wins.
// Proxyless gRPC clients get no auto mTLS (as in Istio): they need an
// explicit ISTIO_MUTUAL DestinationRule.
//
// Server side (LDS), PeerAuthentication: the proxy's effective mode per
// inbound port decides its inbound filter chains:
//   - STRICT: one chain terminating mesh TLS (DownstreamTlsContext with a
//     required client certificate, SDS "default" and "ROOTCA"), matched by
//     transport_protocol "tls";
//   - PERMISSIVE (the default): that chain plus the plaintext one, matched
//     by transport_protocol "raw_buffer";
//   - DISABLE: the plaintext chain only, unchanged.
//
// The virtualInbound passthrough (ports no service declares) follows the
// workload's mode without port-level overrides, as Istio's passthrough
// chains do; ports listed in the workload policy's portLevelMtls that no
// service declares get passthrough chains of their own. Once any chain
// terminates TLS the listener gets the tls_inspector listener filter. A
// PERMISSIVE passthrough adds a TLS passthrough chain (transport "tls", no
// port) and keeps plaintext on default_filter_chain. When a port or the
// passthrough is STRICT, the passthrough moves from default_filter_chain
// into filter_chains (matched by transport protocol) and the listener has
// no default chain: a connection matching no chain, such as plaintext to a
// STRICT port, is closed, as with Envoy's most-specific-port-first
// matching the default chain would otherwise take it. When everything is
// DISABLE the listeners are exactly the plaintext ones.

import (
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
)

const (
	// TLSModeLabel marks an endpoint whose workload runs a sidecar that
	// accepts Istio mutual TLS (value TLSModeIstio), as Istio's injector
	// labels pods. WorkloadEntries and auto-registered workloads carry it
	// through their labels.
	TLSModeLabel = "security.istio.io/tlsMode"
	// TLSModeIstio is TLSModeLabel's value for mesh workloads.
	TLSModeIstio = "istio"
	// TransportProtocolTLS and TransportProtocolRaw are the filter chain
	// match transport protocols the tls_inspector listener filter detects.
	TransportProtocolTLS = "tls"
	TransportProtocolRaw = "raw_buffer"
	// peerAuthenticationKind is the Istio kind of PeerAuthentication.
	peerAuthenticationKind = "PeerAuthentication"
	// mtlsChainSuffix names a port's TLS-terminating filter chain after its
	// plaintext one ("inbound|9080||" and "inbound|9080||-mtls").
	mtlsChainSuffix = "-mtls"
	// inboundPassthroughChain is virtualInbound's passthrough chain name.
	inboundPassthroughChain = "virtualInbound-passthrough"
)

// InboundALPN is offered by inbound mesh TLS chains: HTTP for the
// application protocol, and Istio's markers that ISTIO_MUTUAL clients send
// (istioALPN).
var InboundALPN = []string{"h2", "http/1.1", "istio-peer-exchange", "istio"}

// mtlsMode is an effective PeerAuthentication mode.
type mtlsMode int

const (
	mtlsUnset mtlsMode = iota
	mtlsDisable
	mtlsPermissive
	mtlsStrict
)

func (m mtlsMode) String() string {
	return [...]string{"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}[m]
}

// modeOf converts an API mode (nil settings are UNSET).
func modeOf(m *security.PeerAuthentication_MutualTLS) mtlsMode {
	switch m.GetMode() {
	case security.PeerAuthentication_MutualTLS_DISABLE:
		return mtlsDisable
	case security.PeerAuthentication_MutualTLS_PERMISSIVE:
		return mtlsPermissive
	case security.PeerAuthentication_MutualTLS_STRICT:
		return mtlsStrict
	}
	return mtlsUnset
}

// peerAuthn is the PeerAuthentication in effect for one workload.
type peerAuthn struct {
	// mode is the workload's mode without port-level overrides.
	mode mtlsMode
	// ports are the workload-level policy's portLevelMtls, resolved.
	ports map[uint32]mtlsMode
}

// forPort is the mode of one workload (endpoint) port.
func (a peerAuthn) forPort(port uint32) mtlsMode {
	if m, ok := a.ports[port]; ok {
		return m
	}
	return a.mode
}

// tlsSomewhere reports whether any port (or the passthrough) accepts TLS.
func (a peerAuthn) tlsSomewhere() bool {
	if a.mode != mtlsDisable {
		return true
	}
	for _, m := range a.ports {
		if m != mtlsDisable {
			return true
		}
	}
	return false
}

// paIndex holds a snapshot's PeerAuthentications by namespace, oldest
// first within each list.
type paIndex struct {
	root string
	// nsWide: the selector-less policies of a namespace (the root
	// namespace's are mesh-wide).
	nsWide map[string][]*model.Config
	// selecting: policies with a workload selector, by namespace.
	selecting map[string][]*model.Config
	// cache of lookups by namespace and labels.
	cache map[string]peerAuthn
}

func newPAIndex(s *model.Snapshot) *paIndex {
	x := &paIndex{root: s.Mesh.RootNamespace, nsWide: map[string][]*model.Config{},
		selecting: map[string][]*model.Config{}, cache: map[string]peerAuthn{}}
	for _, c := range s.Configs(peerAuthenticationKind) {
		pa, ok := c.Spec.(*security.PeerAuthentication)
		if !ok {
			continue
		}
		if len(pa.GetSelector().GetMatchLabels()) == 0 {
			x.nsWide[c.Namespace] = append(x.nsWide[c.Namespace], c)
		} else {
			x.selecting[c.Namespace] = append(x.selecting[c.Namespace], c)
		}
	}
	return x
}

// lookup resolves the policy of a workload in namespace ns with labels:
// workload-level (the oldest policy of ns whose selector matches) over
// namespace-level (the oldest selector-less one of ns) over mesh-level
// (the oldest selector-less one of the root namespace), each UNSET mode
// inheriting; PERMISSIVE when nothing sets a mode. The workload-level
// policy's portLevelMtls override per port (UNSET: the workload's mode).
func (x *paIndex) lookup(ns string, labels map[string]string) peerAuthn {
	key := ns + "\x00" + labelKey(labels)
	if a, ok := x.cache[key]; ok {
		return a
	}
	var wl *security.PeerAuthentication
	for _, c := range x.selecting[ns] {
		pa := c.Spec.(*security.PeerAuthentication)
		if registry.LabelsMatch(pa.GetSelector().GetMatchLabels(), labels) {
			wl = pa
			break
		}
	}
	a := peerAuthn{mode: mtlsPermissive}
	levels := []*security.PeerAuthentication{first(x.nsWide[x.root]), first(x.nsWide[ns]), wl}
	for _, pa := range levels {
		if m := modeOf(pa.GetMtls()); m != mtlsUnset {
			a.mode = m
		}
	}
	for port, pm := range wl.GetPortLevelMtls() {
		if a.ports == nil {
			a.ports = map[uint32]mtlsMode{}
		}
		m := modeOf(pm)
		if m == mtlsUnset {
			m = a.mode
		}
		a.ports[port] = m
	}
	x.cache[key] = a
	return a
}

// first is the oldest policy of a list, nil when empty.
func first(list []*model.Config) *security.PeerAuthentication {
	if len(list) == 0 {
		return nil
	}
	return list[0].Spec.(*security.PeerAuthentication)
}

// labelKey is a canonical string of a label set.
func labelKey(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + labels[k] + "\x00")
	}
	return b.String()
}

// peerAuthn returns the run's PeerAuthentication index, built on first use.
func (r *cdsRun) peerAuthn() *paIndex {
	if r.pa == nil {
		r.pa = newPAIndex(r.s)
	}
	return r.pa
}

// clusterTLS is the TLS settings of one cluster: the DestinationRule's
// (policy, already merged for the subset and port) when it sets any, else
// ISTIO_MUTUAL by auto mTLS when the cluster's endpoints eps all accept
// it, else none.
func (r *cdsRun) clusterTLS(policy *networking.TrafficPolicy, svc *registry.Service, port registry.Port,
	eps []registry.Endpoint) *networking.ClientTLSSettings {
	if tls := policy.GetTls(); tls != nil {
		return tls
	}
	if r.autoMTLS(svc, port, eps) {
		return &networking.ClientTLSSettings{Mode: networking.ClientTLSSettings_ISTIO_MUTUAL}
	}
	return nil
}

// autoMTLS reports whether a cluster without DestinationRule TLS settings
// gets ISTIO_MUTUAL: auto mTLS is on, the client is a proxy, the service
// is MESH_INTERNAL, and it has endpoints that all are in the mesh (label
// security.istio.io/tlsMode: istio) and accept mTLS on their port.
func (r *cdsRun) autoMTLS(svc *registry.Service, port registry.Port, eps []registry.Endpoint) bool {
	if !r.s.Mesh.EnableAutoMTLS || r.p.Type == model.Proxyless || svc.Location != registry.MeshInternal || len(eps) == 0 {
		return false
	}
	for i := range eps {
		ep := &eps[i]
		if ep.Labels[TLSModeLabel] != TLSModeIstio {
			return false
		}
		if r.peerAuthn().lookup(ep.Namespace, ep.Labels).forPort(ep.PortFor(port)) == mtlsDisable {
			return false
		}
	}
	return true
}

// inboundTLSContext terminates mesh mTLS: the workload certificate (SDS
// "default"), client certificates required and verified against the mesh
// trust bundle (SDS "ROOTCA"), both over ADS.
func inboundTLSContext() *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  append([]string(nil), InboundALPN...),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SDSDefaultCert, SdsConfig: adsConfigSource()}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
					ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SDSRootCA, SdsConfig: adsConfigSource()},
				}},
		},
	}
}

// withTransport returns a copy of fc matching transport protocol protocol,
// terminating mesh TLS when proto is "tls" (the copy is then named with
// mtlsChainSuffix).
func withTransport(fc *listenerv3.FilterChain, protocol string) *listenerv3.FilterChain {
	out := proto.Clone(fc).(*listenerv3.FilterChain)
	if out.FilterChainMatch == nil {
		out.FilterChainMatch = &listenerv3.FilterChainMatch{}
	}
	out.FilterChainMatch.TransportProtocol = protocol
	if protocol == TransportProtocolTLS {
		tlsApplicationProtocols(out.FilterChainMatch)
		out.Name += mtlsChainSuffix
		out.TransportSocket = &corev3.TransportSocket{Name: tlsTransportSocket,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(inboundTLSContext())}}
	}
	return out
}

// chainsFor turns one plaintext inbound chain into the chains of mode.
func chainsFor(fc *listenerv3.FilterChain, mode mtlsMode) []*listenerv3.FilterChain {
	switch mode {
	case mtlsStrict:
		return []*listenerv3.FilterChain{withTransport(fc, TransportProtocolTLS)}
	case mtlsPermissive:
		return []*listenerv3.FilterChain{withTransport(fc, TransportProtocolTLS), withTransport(fc, TransportProtocolRaw)}
	}
	return []*listenerv3.FilterChain{fc}
}

// proxyPeerAuthn is the PeerAuthentication in effect for the proxy's own
// workload.
func (g *netBuilder) proxyPeerAuthn() peerAuthn {
	return newPAIndex(g.s).lookup(g.p.Namespace, g.p.Labels)
}

// secureInbound applies the proxy's PeerAuthentication to an inbound
// listener built in plaintext: virtualInbound (port 0: each chain's
// destination port decides, the default chain is the passthrough) or an
// explicit-mode inbound_<port> listener (port: the listener's). It leaves
// the listener unchanged when no chain accepts TLS.
func (g *netBuilder) secureInbound(l *listenerv3.Listener, port uint32) {
	a := g.proxyPeerAuthn()
	if !a.tlsSomewhere() {
		return
	}
	var chains []*listenerv3.FilterChain
	declared := map[uint32]bool{}
	tls, strict := false, false
	for _, fc := range l.GetFilterChains() {
		p := port
		if p == 0 {
			p = fc.GetFilterChainMatch().GetDestinationPort().GetValue()
		}
		declared[p] = true
		m := a.forPort(p)
		tls = tls || m != mtlsDisable
		strict = strict || m == mtlsStrict
		chains = append(chains, chainsFor(fc, m)...)
	}
	if port == 0 {
		// Ports with a port-level mode that no service declares: passthrough
		// chains of their own, by destination port.
		extra := make([]uint32, 0, len(a.ports))
		for p := range a.ports {
			if !declared[p] && p != OutboundCapturePort && p != InboundCapturePort {
				extra = append(extra, p)
			}
		}
		sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
		for _, p := range extra {
			fc := &listenerv3.FilterChain{
				Name:             inboundPassthroughChain + "-" + strconv.FormatUint(uint64(p), 10),
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: ldsUint32(p)},
				Filters:          g.inboundTCPFilters(InboundPassthroughCluster),
			}
			tls = tls || a.ports[p] != mtlsDisable
			strict = strict || a.ports[p] == mtlsStrict
			chains = append(chains, chainsFor(fc, a.ports[p])...)
		}
		if dc := l.GetDefaultFilterChain(); dc != nil {
			tls = tls || a.mode != mtlsDisable
			if strict || a.mode == mtlsStrict {
				// A default chain would also catch plaintext to STRICT ports
				// (no chain of their port matches it): passthrough chains in
				// filter_chains leave such connections unmatched, closed.
				chains = append(chains, chainsFor(dc, a.mode)...)
				l.DefaultFilterChain = nil
			} else if a.mode == mtlsPermissive {
				// Plaintext keeps passing through the default chain.
				chains = append(chains, withTransport(dc, TransportProtocolTLS))
			}
		}
	}
	if !tls {
		return
	}
	l.FilterChains = chains
	l.ListenerFilters = append(l.ListenerFilters, listenerFilter(tlsInspectorFilterName, &tlsinspectorv3.TlsInspector{}))
}
