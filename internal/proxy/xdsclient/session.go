package xdsclient

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// typeState is one resource type's protocol state on a stream.
type typeState struct {
	requested bool     // a request for the type went out on this stream
	names     []string // subscribed names, sorted; nil for wildcard (LDS, CDS)
	nonce     string   // the latest response's nonce
	version   string   // SotW: version_info for requests that answer nothing new
	pending   *pendingResp
}

// pendingResp is a response whose content is in the candidate but not yet
// applied: unanswered while the candidate warms, or NACKed (nacked) with a
// rejected candidate — it is ACKed should a later candidate that still
// holds it be applied.
type pendingResp struct {
	version, nonce string
	nacked         bool
}

// response is a SotW or delta response, flattened.
type response struct {
	typeURL, version, nonce string
	sotw                    []*anypb.Any
	delta                   []*discovery.Resource
	removed                 []string
}

// session is one ADS stream. Everything but recv runs on one goroutine.
type session struct {
	c        *Client
	log      *slog.Logger
	sotw     discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	delta    discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	nodeSent bool
	cand     *candidate
	types    map[string]*typeState
	since    map[string]time.Time // missing resource key -> first seen missing

	responses int // responses received
}

// openSession opens the stream and sends the initial subscriptions,
// starting from the applied snapshot.
func (c *Client) openSession(ctx context.Context, conn *grpc.ClientConn) (*session, error) {
	cur := c.Current()
	s := &session{c: c, log: c.log, cand: newCandidate(cur, c.cfg.GatewayCredentials), types: map[string]*typeState{}, since: map[string]time.Time{}}
	for _, t := range allTypes {
		s.types[t] = &typeState{}
		if cur != nil {
			s.types[t].version = cur.Versions[t]
		}
	}
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	var err error
	if c.cfg.Delta {
		s.delta, err = ads.DeltaAggregatedResources(ctx)
	} else {
		s.sotw, err = ads.StreamAggregatedResources(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("xdsclient: open stream: %w", err)
	}
	for _, t := range []string{ClusterType, ListenerType} {
		if err := s.subscribe(t, nil); err != nil {
			return nil, err
		}
	}
	if len(c.cfg.Secrets) > 0 {
		if err := s.subscribe(SecretType, slices.Sorted(slices.Values(c.cfg.Secrets))); err != nil {
			return nil, err
		}
	}
	if err := s.syncSubscriptions(); err != nil {
		return nil, err
	}
	return s, nil
}

// run serves the stream until it fails or ctx ends.
func (s *session) run(ctx context.Context) error {
	resps := make(chan *response)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := s.recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var warm <-chan time.Time
		if d, ok := s.nextDeadline(); ok {
			warm = s.c.clock.After(d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return fmt.Errorf("xdsclient: stream: %w", err)
		case r := <-resps:
			if err := s.handle(r); err != nil {
				return err
			}
		case <-warm:
			if err := s.expire(); err != nil {
				return err
			}
		}
	}
}

func (s *session) recv() (*response, error) {
	if s.delta != nil {
		r, err := s.delta.Recv()
		if err != nil {
			return nil, err
		}
		removed := r.GetRemovedResources()
		for _, n := range r.GetRemovedResourceNames() {
			removed = append(removed, n.GetName())
		}
		return &response{typeURL: r.GetTypeUrl(), version: r.GetSystemVersionInfo(), nonce: r.GetNonce(),
			delta: r.GetResources(), removed: removed}, nil
	}
	r, err := s.sotw.Recv()
	if err != nil {
		return nil, err
	}
	return &response{typeURL: r.GetTypeUrl(), version: r.GetVersionInfo(), nonce: r.GetNonce(), sotw: r.GetResources()}, nil
}

// handle merges a response into the candidate and settles it.
func (s *session) handle(r *response) error {
	s.responses++
	ts := s.types[r.typeURL]
	if ts == nil || !ts.requested {
		s.log.Warn("ignoring xDS response of a type not subscribed to", "type", r.typeURL)
		return nil
	}
	ts.nonce = r.nonce
	var changed bool
	var err error
	if s.delta != nil {
		changed, err = s.cand.applyDelta(r.typeURL, r.version, r.delta, r.removed)
	} else {
		changed, err = s.cand.applySotw(r.typeURL, r.version, r.sotw)
	}
	if err != nil {
		ts.pending = nil
		s.log.Warn("rejecting xDS response", "type", r.typeURL, "version", r.version, "error", err)
		return s.nack(r.typeURL, r.version, r.nonce, err)
	}
	s.log.Debug("xDS response", "type", r.typeURL, "version", r.version, "resources", len(r.sotw)+len(r.delta), "removed", len(r.removed))
	ts.pending = &pendingResp{version: r.version, nonce: r.nonce}
	changed = s.cand.prune() || changed // also drops what the server sent unasked
	if r.typeURL == ListenerType || r.typeURL == ClusterType {
		if err := s.syncSubscriptions(); err != nil {
			return err
		}
	}
	if changed {
		s.cand.dirty, s.cand.rejected = true, nil
	}
	return s.settle()
}

// settle answers what can be answered: it applies (or rejects) the
// candidate once nothing is missing.
func (s *session) settle() error {
	missing := s.cand.missing()
	s.track(missing)
	for _, t := range []string{EndpointType, RouteType} {
		if p := s.types[t].pending; p != nil && !p.nacked && slices.ContainsFunc(missing, func(k string) bool { return strings.HasPrefix(k, t+" ") }) {
			// The type itself still lacks subscribed names: answer so
			// the server may send them (see the package doc).
			if err := s.ack(t); err != nil {
				return err
			}
		}
	}
	if len(missing) > 0 {
		return nil
	}
	if !s.cand.dirty {
		return s.ackAll()
	}
	if s.cand.rejected != nil {
		return s.nackAll(s.cand.rejected)
	}
	snap := s.cand.build()
	if err := s.runValidator(snap); err != nil {
		s.cand.rejected = err
		s.log.Warn("rejecting xDS config", "versions", snap.Versions, "error", err)
		return s.nackAll(err)
	}
	s.c.publish(snap)
	s.cand.dirty = false
	s.log.Debug("applied xDS config", "versions", snap.Versions, "listeners", len(snap.Listeners),
		"routes", len(snap.Routes), "clusters", len(snap.Clusters), "endpoints", len(snap.Endpoints))
	return s.ackAll()
}

func (s *session) runValidator(snap *Snapshot) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("validator panicked: %v", p)
		}
	}()
	return s.c.validate(snap)
}

// track records when each missing route configuration or load assignment
// was first missed.
func (s *session) track(missing []string) {
	now := s.c.clock.Now()
	next := make(map[string]time.Time, len(missing))
	for _, k := range missing {
		if _, name := splitKey(k); name == "" {
			continue
		}
		if t, ok := s.since[k]; ok {
			next[k] = t
		} else {
			next[k] = now
		}
	}
	s.since = next
}

// nextDeadline returns how long until the first warming timeout.
func (s *session) nextDeadline() (time.Duration, bool) {
	if len(s.since) == 0 {
		return 0, false
	}
	var first time.Time
	for _, t := range s.since {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return max(0, first.Add(WarmingTimeout).Sub(s.c.clock.Now())), true
}

// expire stands empty resources in for those missing too long.
func (s *session) expire() error {
	now := s.c.clock.Now()
	var filled []string
	for k, t := range s.since {
		if now.Sub(t) >= WarmingTimeout && s.cand.fill(k) {
			filled = append(filled, k)
		}
	}
	if len(filled) == 0 {
		return nil
	}
	slices.Sort(filled)
	s.log.Warn("xDS resources did not arrive within the warming timeout; using empty ones", "resources", filled, "timeout", WarmingTimeout)
	s.cand.dirty, s.cand.rejected = true, nil
	return s.settle()
}

// syncSubscriptions subscribes to the load assignments and route
// configurations the candidate needs.
func (s *session) syncSubscriptions() error {
	eds, rds := s.cand.refs()
	for t, set := range map[string]map[string]bool{EndpointType: eds, RouteType: rds} {
		want := names(set)
		ts := s.types[t]
		if !ts.requested && len(want) == 0 {
			continue // an empty first request would be a wildcard
		}
		if ts.requested && slices.Equal(ts.names, want) {
			continue
		}
		if err := s.subscribe(t, want); err != nil {
			return err
		}
	}
	return nil
}

// subscribe sends a request for typeURL's names (nil: wildcard).
func (s *session) subscribe(typeURL string, want []string) error {
	ts := s.types[typeURL]
	defer func() { ts.requested, ts.names = true, want }()
	if s.delta != nil {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: typeURL}
		wanted, had := setOf(want), setOf(ts.names)
		if !ts.requested {
			req.ResourceNamesSubscribe = want
			req.InitialResourceVersions = map[string]string{}
			for name, v := range s.cand.resVersions[typeURL] {
				if v != "" && (want == nil || wanted[name]) {
					req.InitialResourceVersions[name] = v
				}
			}
		} else {
			for _, n := range want {
				if !had[n] {
					req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
				}
			}
			for _, n := range ts.names {
				if !wanted[n] {
					req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
				}
			}
		}
		return s.sendDelta(req)
	}
	return s.sendSotw(&discovery.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: ts.version, ResourceNames: want, ResponseNonce: ts.nonce})
}

func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// ack accepts typeURL's pending response.
func (s *session) ack(typeURL string) error {
	ts := s.types[typeURL]
	p := ts.pending
	if p == nil {
		return nil
	}
	ts.pending = nil
	if s.delta != nil {
		return s.sendDelta(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: p.nonce})
	}
	ts.version = p.version
	return s.sendSotw(&discovery.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: p.version, ResourceNames: ts.names, ResponseNonce: p.nonce})
}

// nack rejects the response (version, nonce) of typeURL with cause.
func (s *session) nack(typeURL, version, nonce string, cause error) error {
	detail := &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: cause.Error()}
	if s.delta != nil {
		return s.sendDelta(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: nonce, ErrorDetail: detail})
	}
	ts := s.types[typeURL]
	// The rejected version, not the last accepted one: see the package doc.
	ts.version = version
	return s.sendSotw(&discovery.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version, ResourceNames: ts.names,
		ResponseNonce: nonce, ErrorDetail: detail})
}

func (s *session) ackAll() error {
	for _, t := range allTypes {
		if err := s.ack(t); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) nackAll(cause error) error {
	for _, t := range allTypes {
		if p := s.types[t].pending; p != nil && !p.nacked {
			p.nacked = true
			if err := s.nack(t, p.version, p.nonce, cause); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *session) sendSotw(req *discovery.DiscoveryRequest) error {
	if !s.nodeSent {
		req.Node, s.nodeSent = s.c.node, true
	}
	if err := s.sotw.Send(req); err != nil {
		return fmt.Errorf("xdsclient: send %s request: %w", shortType(req.GetTypeUrl()), err)
	}
	return nil
}

func (s *session) sendDelta(req *discovery.DeltaDiscoveryRequest) error {
	if !s.nodeSent {
		req.Node, s.nodeSent = s.c.node, true
	}
	if err := s.delta.Send(req); err != nil {
		return fmt.Errorf("xdsclient: send %s request: %w", shortType(req.GetTypeUrl()), err)
	}
	return nil
}
