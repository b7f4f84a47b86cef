// Package xds serves pilot's resources to proxies over ADS (gRPC,
// state-of-the-world and delta) with go-control-plane, keeps per-proxy sync
// status (versions sent, acknowledged and rejected, with NACK reasons) and
// exposes the /debug/syncz and /debug/config_dump endpoints.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/pilot/push"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// TypeStatus is the sync state of one resource type for one proxy.
type TypeStatus struct {
	Sent      string `json:"sent,omitempty"`
	Acked     string `json:"acked,omitempty"`
	Nacked    string `json:"nacked,omitempty"`
	NackError string `json:"nack_error,omitempty"`
	// nonces maps a response nonce to the version it carried (delta acks
	// name the nonce only).
	nonces map[string]string
}

// proxyStatus is the xDS server's record of one node ID.
type proxyStatus struct {
	proxy       *model.Proxy
	connectedAt time.Time
	streams     int
	types       map[string]*TypeStatus
}

// Hooks hear about proxies coming and going (auto-registration).
type Hooks interface {
	ProxyConnected(p *model.Proxy)
	ProxyDisconnected(p *model.Proxy)
}

// Server is the ADS server.
type Server struct {
	// Hooks, if set before serving, are called when a node ID gets its
	// first stream and loses its last one.
	Hooks Hooks

	cache  *Cache
	pusher *push.Pusher
	log    *slog.Logger
	clock  func() time.Time
	grpc   serverv3.Server

	mu      sync.Mutex
	streams map[int64]string // stream ID -> node ID
	status  map[string]*proxyStatus
	callers map[int64]Caller // stream ID -> authenticated caller
}

// Caller is the mesh identity a stream's credential proved (workload
// certificate or bootstrap token). A proxy may only claim to be a node of
// that namespace and service account.
type Caller struct {
	Namespace, ServiceAccount string
}

type callerKey struct{}

// WithCaller marks a stream's context with the identity its credential
// proved; the server then binds the stream's node to it.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

func (s *Server) opened(ctx context.Context, streamID int64) {
	if c, ok := ctx.Value(callerKey{}).(Caller); ok {
		s.mu.Lock()
		s.callers[streamID] = c
		s.mu.Unlock()
	}
}

// bind checks a node against the identity its stream authenticated as:
// a workload of namespace A cannot ask for (and so learn or disturb) the
// config of a proxy in namespace B.
func (s *Server) bind(streamID int64, p *model.Proxy) error {
	s.mu.Lock()
	c, ok := s.callers[streamID]
	s.mu.Unlock()
	if !ok {
		return nil // plaintext port: trusted by network placement
	}
	if p.Namespace != c.Namespace {
		return status.Errorf(codes.PermissionDenied, "weft xds: node %s claims namespace %q but its credential is for namespace %q (service account %q)",
			p.ID, p.Namespace, c.Namespace, c.ServiceAccount)
	}
	if p.ServiceAccount != "" && p.ServiceAccount != c.ServiceAccount {
		return status.Errorf(codes.PermissionDenied, "weft xds: node %s claims service account %q but its credential is for %q in namespace %q",
			p.ID, p.ServiceAccount, c.ServiceAccount, c.Namespace)
	}
	p.ServiceAccount = c.ServiceAccount
	p.Verified = true
	return nil
}

// New builds the ADS server over cache, registering proxies with pusher.
func New(ctx context.Context, cache *Cache, pusher *push.Pusher, log *slog.Logger) *Server {
	s := &Server{cache: cache, pusher: pusher, log: log, clock: time.Now,
		streams: map[int64]string{}, status: map[string]*proxyStatus{}, callers: map[int64]Caller{}}
	s.grpc = serverv3.NewServer(ctx, cache, s)
	return s
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, s.grpc)
}

// NewGRPCServer returns a gRPC server with the limits an xDS server needs.
func NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	base := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(1 << 16),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	return grpc.NewServer(append(base, opts...)...)
}

// ProxyFromNode reads an Envoy/gRPC node into a model.Proxy. The node ID
// is Istio's "<type>~<ip>~<name>.<namespace>~<domain>"; metadata may add
// NAMESPACE, LABELS, SERVICE_ACCOUNT, WORKLOAD_NAME, WORKLOAD_GROUP,
// INSTANCE_IPS, INTERCEPTION_MODE (NONE: explicit mode; TPROXY: source
// addresses preserved inbound) and GENERATOR
// ("grpc": a proxyless gRPC client). The proxy's locality is the node's,
// or its istio-locality label's ("region.zone.subzone").
func ProxyFromNode(n *core.Node) (*model.Proxy, error) {
	if n == nil || n.GetId() == "" {
		return nil, fmt.Errorf("the first request must carry a node with an id")
	}
	typ, ip, name, ns, err := model.ParseNodeID(n.GetId())
	if err != nil {
		return nil, err
	}
	p := &model.Proxy{ID: n.GetId(), Type: typ, Namespace: ns, WorkloadName: name, Labels: map[string]string{}, Metadata: map[string]string{}}
	if ip != "" {
		p.IPs = []string{ip}
	}
	for k, v := range n.GetMetadata().GetFields() {
		switch k {
		case "LABELS":
			for lk, lv := range v.GetStructValue().GetFields() {
				p.Labels[lk] = lv.GetStringValue()
			}
		default:
			p.Metadata[k] = metaString(v)
		}
	}
	md := p.Metadata
	if md["NAMESPACE"] != "" {
		p.Namespace = md["NAMESPACE"]
	}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	p.ServiceAccount = md["SERVICE_ACCOUNT"]
	if md["WORKLOAD_NAME"] != "" {
		p.WorkloadName = md["WORKLOAD_NAME"]
	}
	p.WorkloadGroup = md["WORKLOAD_GROUP"]
	if ips := md["INSTANCE_IPS"]; ips != "" {
		p.IPs = nil
		for _, x := range strings.Split(ips, ",") {
			if x = strings.TrimSpace(x); x != "" {
				p.IPs = append(p.IPs, x)
			}
		}
	}
	if l := n.GetLocality(); l.GetRegion() != "" {
		p.Locality = l.GetRegion() + "/" + l.GetZone() + "/" + l.GetSubZone()
	}
	if l := p.Labels["istio-locality"]; l != "" {
		// Kubernetes label values cannot hold "/": Istio's label uses ".".
		p.Locality = strings.ReplaceAll(l, ".", "/")
	}
	p.Explicit = strings.EqualFold(md["INTERCEPTION_MODE"], "NONE")
	p.TProxy = strings.EqualFold(md["INTERCEPTION_MODE"], "TPROXY")
	if strings.EqualFold(md["GENERATOR"], "grpc") {
		p.Type = model.Proxyless
	}
	return p, nil
}

func metaString(v *structpb.Value) string {
	switch x := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return x.StringValue
	case *structpb.Value_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *structpb.Value_NumberValue:
		return fmt.Sprint(x.NumberValue)
	}
	return ""
}

// register handles the first request of a stream.
func (s *Server) register(streamID int64, node *core.Node) error {
	s.mu.Lock()
	if _, ok := s.streams[streamID]; ok {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	p, err := ProxyFromNode(node)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "weft xds: %v", err)
	}
	if err := s.bind(streamID, p); err != nil {
		s.log.Warn("refused a node its credential does not cover", "error", err)
		return err
	}
	s.mu.Lock()
	s.streams[streamID] = p.ID
	ps, ok := s.status[p.ID]
	if !ok {
		ps = &proxyStatus{proxy: p, connectedAt: s.clock(), types: map[string]*TypeStatus{}}
		s.status[p.ID] = ps
	}
	ps.streams++
	first := ps.streams == 1
	s.mu.Unlock()
	s.log.Info("proxy connected", "proxy", p.ID, "type", p.Type, "namespace", p.Namespace)
	s.pusher.AddProxy(context.Background(), p)
	if first && s.Hooks != nil {
		s.Hooks.ProxyConnected(p)
	}
	return nil
}

func (s *Server) typeStatus(streamID int64, typ string) (string, *TypeStatus) {
	id, ok := s.streams[streamID]
	if !ok {
		return "", nil
	}
	ps := s.status[id]
	ts, ok := ps.types[typ]
	if !ok {
		ts = &TypeStatus{nonces: map[string]string{}}
		ps.types[typ] = ts
	}
	return id, ts
}

func (s *Server) request(streamID int64, node *core.Node, typ, version, nonce string, errDetail *status.Status) error {
	if err := s.register(streamID, node); err != nil {
		return err
	}
	s.mu.Lock()
	id, ts := s.typeStatus(streamID, typ)
	if ts == nil {
		s.mu.Unlock()
		return status.Errorf(codes.InvalidArgument, "weft xds: stream has no node")
	}
	if nonce == "" {
		s.mu.Unlock()
		return nil // initial request
	}
	// The nonce names the response being answered: for a NACK that is the
	// rejected version (Envoy puts its last good one in version_info).
	sentWithNonce, known := ts.nonces[nonce]
	if version == "" || (errDetail != nil && known) {
		version = sentWithNonce
	}
	delete(ts.nonces, nonce)
	if errDetail != nil {
		ts.Nacked, ts.NackError = version, errDetail.Message()
		s.mu.Unlock()
		s.log.Warn("proxy rejected config", "proxy", id, "type", typ, "version", version, "error", errDetail.Message())
		s.pusher.Rejected(typ)
		return nil
	}
	ts.Acked = version
	if ts.Nacked != "" {
		// A version was accepted after the rejection: it is history.
		ts.Nacked, ts.NackError = "", ""
	}
	s.mu.Unlock()
	s.pusher.Acked(id, typ, version)
	return nil
}

func (s *Server) sent(streamID int64, typ, version, nonce string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ts := s.typeStatus(streamID, typ); ts != nil {
		ts.Sent = version
		ts.nonces[nonce] = version
		if len(ts.nonces) > 16 { // bound: clients ack or nack each nonce
			for n := range ts.nonces {
				if n != nonce {
					delete(ts.nonces, n)
				}
			}
		}
	}
}

func (s *Server) closed(streamID int64) {
	s.mu.Lock()
	id, ok := s.streams[streamID]
	delete(s.streams, streamID)
	delete(s.callers, streamID)
	var gone *model.Proxy
	if ok {
		if ps := s.status[id]; ps != nil {
			if ps.streams--; ps.streams <= 0 {
				delete(s.status, id)
				gone = ps.proxy
			}
		}
	}
	s.mu.Unlock()
	if ok {
		s.log.Info("proxy stream closed", "proxy", id)
		s.pusher.RemoveProxy(id)
	}
	if gone != nil && s.Hooks != nil {
		s.Hooks.ProxyDisconnected(gone)
	}
}

// go-control-plane callbacks.

// OnStreamOpen implements serverv3.Callbacks.
func (s *Server) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	s.opened(ctx, id)
	return nil
}

// OnStreamClosed implements serverv3.Callbacks.
func (s *Server) OnStreamClosed(id int64, _ *core.Node) { s.closed(id) }

// OnStreamRequest implements serverv3.Callbacks: registration, ACK, NACK.
func (s *Server) OnStreamRequest(id int64, r *discoverygrpc.DiscoveryRequest) error {
	return s.request(id, r.GetNode(), r.GetTypeUrl(), r.GetVersionInfo(), r.GetResponseNonce(), nackOf(r.GetErrorDetail()))
}

// OnStreamResponse implements serverv3.Callbacks.
func (s *Server) OnStreamResponse(_ context.Context, id int64, _ *discoverygrpc.DiscoveryRequest, r *discoverygrpc.DiscoveryResponse) {
	s.sent(id, r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce())
}

// OnDeltaStreamOpen implements serverv3.Callbacks.
func (s *Server) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	s.opened(ctx, -id)
	return nil
}

// OnDeltaStreamClosed implements serverv3.Callbacks.
func (s *Server) OnDeltaStreamClosed(id int64, _ *core.Node) { s.closed(-id) }

// OnStreamDeltaRequest implements serverv3.Callbacks.
func (s *Server) OnStreamDeltaRequest(id int64, r *discoverygrpc.DeltaDiscoveryRequest) error {
	// go-control-plane numbers SotW and delta streams separately: delta
	// streams are kept under negative IDs so the two never collide.
	return s.request(-id, r.GetNode(), r.GetTypeUrl(), "", r.GetResponseNonce(), nackOf(r.GetErrorDetail()))
}

// OnStreamDeltaResponse implements serverv3.Callbacks.
func (s *Server) OnStreamDeltaResponse(id int64, _ *discoverygrpc.DeltaDiscoveryRequest, r *discoverygrpc.DeltaDiscoveryResponse) {
	s.sent(-id, r.GetTypeUrl(), r.GetSystemVersionInfo(), r.GetNonce())
}

// OnFetchRequest implements serverv3.Callbacks (REST fetch is not served).
func (s *Server) OnFetchRequest(context.Context, *discoverygrpc.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "weft serves xDS over ADS only")
}

// OnFetchResponse implements serverv3.Callbacks.
func (s *Server) OnFetchResponse(*discoverygrpc.DiscoveryRequest, *discoverygrpc.DiscoveryResponse) {}

// SyncStatus is one row of /debug/syncz and `weft proxy-status`.
type SyncStatus struct {
	ID          string                `json:"proxy"`
	Type        string                `json:"type"`
	Namespace   string                `json:"namespace"`
	ConnectedAt time.Time             `json:"connected_at"`
	Streams     int                   `json:"streams"`
	Types       map[string]TypeStatus `json:"types"`
	// Current is the version pilot last set per type.
	Current map[string]string `json:"current"`
	// State per type: SYNCED (acked current), STALE (current not yet
	// acked), NACKED (a version was rejected), NOT SENT.
	State    map[string]string `json:"state"`
	Warnings []string          `json:"warnings,omitempty"`
}

// Syncz reports every connected proxy's sync state, sorted by ID.
func (s *Server) Syncz() []SyncStatus {
	infos := map[string]push.ProxyInfo{}
	for _, pi := range s.pusher.Proxies() {
		infos[pi.Proxy.ID] = pi
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SyncStatus, 0, len(s.status))
	for id, ps := range s.status {
		row := SyncStatus{ID: id, Type: string(ps.proxy.Type), Namespace: ps.proxy.Namespace, ConnectedAt: ps.connectedAt,
			Streams: ps.streams, Types: map[string]TypeStatus{}, Current: map[string]string{}, State: map[string]string{}}
		pi := infos[id]
		row.Warnings = pi.Warnings
		for _, typ := range push.XDSTypes {
			short := shortName(typ)
			cur := pi.Versions[typ]
			row.Current[short] = cur
			ts, ok := ps.types[typ]
			switch {
			case !ok || ts.Sent == "":
				row.State[short] = "NOT SENT"
			case ts.Nacked != "":
				row.State[short] = "NACKED"
			case ts.Acked == cur:
				row.State[short] = "SYNCED"
			default:
				row.State[short] = "STALE"
			}
			if ok {
				row.Types[short] = TypeStatus{Sent: ts.Sent, Acked: ts.Acked, Nacked: ts.Nacked, NackError: ts.NackError}
			}
		}
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// nackOf returns a request's error detail, or nil for an ACK.
func nackOf(d *rpcstatus.Status) *status.Status {
	if d == nil || (d.GetCode() == 0 && d.GetMessage() == "") {
		return nil
	}
	return status.FromProto(d)
}

func shortName(typ string) string {
	i := strings.LastIndex(typ, ".")
	switch typ[i+1:] {
	case "Cluster":
		return "cds"
	case "ClusterLoadAssignment":
		return "eds"
	case "Listener":
		return "lds"
	case "RouteConfiguration":
		return "rds"
	case "Secret":
		return "sds"
	}
	return typ
}

// CacheLogger adapts slog to go-control-plane's logger interface.
type CacheLogger struct{ L *slog.Logger }

// Debugf logs at debug level.
func (c CacheLogger) Debugf(format string, args ...any) { c.L.Debug(fmt.Sprintf(format, args...)) }

// Infof logs at debug level (go-control-plane's info is chatty).
func (c CacheLogger) Infof(format string, args ...any) { c.L.Debug(fmt.Sprintf(format, args...)) }

// Warnf logs at warn level.
func (c CacheLogger) Warnf(format string, args ...any) { c.L.Warn(fmt.Sprintf(format, args...)) }

// Errorf logs at error level.
func (c CacheLogger) Errorf(format string, args ...any) { c.L.Error(fmt.Sprintf(format, args...)) }
