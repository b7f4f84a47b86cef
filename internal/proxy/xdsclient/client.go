// Package xdsclient is weft-proxy's ADS client. It subscribes to listeners
// and clusters (wildcard) and to the route configurations and load
// assignments they name, over one aggregated stream (state of the world,
// or incremental when Config.Delta is set), warms a candidate until every
// referenced resource has arrived, has the data plane validate it, and then
// applies it atomically as one immutable Snapshot — or rejects it as a
// whole (NACK) and keeps serving the last good one.
//
// # Protocol
//
// ACK and NACK: a response is answered once the candidate it belongs to is
// settled. When the candidate is complete and validates, every type's
// latest pending response is ACKed and the snapshot is published; when the
// validator fails, every pending response is NACKed with error_detail
// (google.rpc.Status code 3, INVALID_ARGUMENT, and the validator's message)
// and nothing of the candidate is applied. Two exceptions keep the stream
// live: a response that cannot be decoded is NACKed at once (it never
// joins the candidate), and a route-configuration or load-assignment
// response after which that same type still lacks a subscribed name is
// ACKed at once — go-control-plane based servers, weft's included, send
// nothing more of a type until its last response is answered, so holding
// it would starve the warming of exactly what it waits for.
//
// State-of-the-world NACKs carry the rejected response's version_info, not
// the last accepted one: go-control-plane based servers re-send the current
// version immediately whenever a request names an older one, which would
// loop forever on a NACK. Servers detect NACKs by error_detail, as the xDS
// spec asks.
//
// Responses of different types arrive one by one, and every candidate that
// is complete is validated and applied: a server push that changes
// clusters and listeners may thus be applied in two steps, each
// consistent (every referenced route configuration and load assignment
// present). The snapshot the validator accepted is the very one published.
//
// The rejected candidate is kept as the client's picture of the server's
// state: a later response that changes it is validated again as a whole
// (so a fix to one type lets the rest through), while one that changes
// nothing is NACKed again with the same message without re-validating.
// When a later candidate that still holds a NACKed response is applied,
// that response is ACKed then, so the server's view matches what runs.
//
// # Warming
//
// Listeners and clusters must both have arrived once. After that, a
// route configuration or load assignment that is referenced but has not
// arrived within WarmingTimeout (5 s, measured from when it was first
// missing on the current stream) is replaced by an empty one — no routes,
// no endpoints — as Envoy does after its initial fetch timeout; the real
// one replaces it when it comes. In delta mode, removing a resource that
// is still referenced has the same effect at once.
//
// # Reconnecting
//
// Run reconnects with exponential backoff and full jitter. Current keeps
// the last applied snapshot while disconnected. A new stream starts from
// it: state-of-the-world requests carry its versions and resource names,
// delta requests its per-resource versions (initial_resource_versions), so
// the server can skip what has not changed.
package xdsclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
)

// WarmingTimeout is how long a referenced route configuration or load
// assignment may be missing before an empty one stands in for it.
const WarmingTimeout = 5 * time.Second

// maxRecvMsgSize bounds one xDS response (grpc's default, 4 MiB, is too
// small for a large mesh's route tables).
const maxRecvMsgSize = 128 << 20

// Config configures a Client.
type Config struct {
	// Server is the xDS server's address, host:port (or any gRPC target).
	// Required.
	Server string
	// TLS, if set, secures the connection; nil means plaintext.
	TLS *tls.Config
	// Node identifies the proxy (see NewNode). Required; sent on the first
	// request of every stream. UserAgentName defaults to "weft-proxy".
	Node *core.Node
	// Delta selects incremental xDS (DeltaAggregatedResources) instead of
	// state of the world.
	Delta bool
	// Secrets names SDS secrets to subscribe to on the ADS stream (e.g.
	// "ROOTCA", the mesh trust bundle). They are optional: config is
	// applied without waiting for them, and they join the snapshot when
	// they arrive. Only validation contexts are accepted — private keys
	// never travel over xDS to a sidecar.
	Secrets []string
	// GatewayCredentials (gateways only) also accepts the certificates and
	// private keys of the gateway's credentialNames, SDS secrets named
	// CredentialPrefix+<name>, which discovery sends only over a stream
	// authenticated as a workload of the gateway's namespace.
	GatewayCredentials bool
	// Backoff paces reconnection attempts.
	Backoff Backoff
	// Clock is the time source for backoff and warming; nil means the
	// system clock.
	Clock Clock
}

// CredentialPrefix starts the SDS names of gateway credentials (Istio's
// credentialName).
const CredentialPrefix = "kubernetes://"

// Backoff is exponential backoff with full jitter: attempt n (from 0)
// waits a uniformly random duration in (0, min(Max, Initial·2ⁿ)]. The
// attempt count restarts once a stream has received a response.
type Backoff struct {
	// Initial is the first attempt's ceiling; default 500ms.
	Initial time.Duration
	// Max caps the ceiling; default 30s.
	Max time.Duration
}

// Clock is the client's time source.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Client is an ADS client. Its methods are safe for concurrent use.
type Client struct {
	cfg      Config
	validate Validator
	log      *slog.Logger
	clock    Clock
	node     *core.Node

	running atomic.Bool
	current atomic.Pointer[Snapshot]
	updates chan *Snapshot
}

// New returns a client for cfg. validate may be nil (accept everything);
// log may be nil (discard).
func New(cfg Config, validate Validator, log *slog.Logger) *Client {
	if cfg.Backoff.Initial <= 0 {
		cfg.Backoff.Initial = 500 * time.Millisecond
	}
	if cfg.Backoff.Max <= 0 {
		cfg.Backoff.Max = 30 * time.Second
	}
	if cfg.Backoff.Max < cfg.Backoff.Initial {
		cfg.Backoff.Max = cfg.Backoff.Initial
	}
	clock := cfg.Clock
	if clock == nil {
		clock = systemClock{}
	}
	if validate == nil {
		validate = func(*Snapshot) error { return nil }
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var node *core.Node
	if cfg.Node != nil {
		node = proto.Clone(cfg.Node).(*core.Node)
		if node.GetUserAgentName() == "" {
			node.UserAgentName = "weft-proxy"
		}
	}
	return &Client{cfg: cfg, validate: validate, log: log.With("component", "proxy.xdsclient", "server", cfg.Server),
		clock: clock, node: node, updates: make(chan *Snapshot, 1)}
}

// Updates delivers applied snapshots. It has room for one: a snapshot the
// consumer has not taken yet is replaced by a newer one (latest wins), and
// the client never blocks on it. The channel is never closed.
func (c *Client) Updates() <-chan *Snapshot { return c.updates }

// Current returns the last applied snapshot, nil before the first.
func (c *Client) Current() *Snapshot { return c.current.Load() }

// publish makes s current and offers it on Updates. Only the stream
// goroutine calls it.
func (c *Client) publish(s *Snapshot) {
	c.current.Store(s)
	select {
	case <-c.updates:
	default:
	}
	select {
	case c.updates <- s:
	default:
	}
}

// Run connects to the server and follows its updates until ctx ends,
// reconnecting with backoff whenever the stream fails. It returns nil when
// ctx ends, and an error only for a configuration it can never run with
// (no server, no node id) or when called while already running.
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.Server == "" {
		return errors.New("xdsclient: no server address")
	}
	if c.node.GetId() == "" {
		return errors.New("xdsclient: the node needs an id")
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xdsclient: already running")
	}
	defer c.running.Store(false)
	attempt := 0
	for {
		opened, responded, err := c.connect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if responded {
			attempt = 0
		}
		wait := c.backoff(attempt)
		attempt++
		if opened {
			c.log.Info("disconnected from xDS server", "error", err, "retry_in", wait)
		} else {
			c.log.Info("xDS server unreachable", "error", err, "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.clock.After(wait):
		}
	}
}

// backoff returns the wait before reconnection attempt n.
func (c *Client) backoff(n int) time.Duration {
	ceil := c.cfg.Backoff.Max
	if n < 32 {
		if d := c.cfg.Backoff.Initial << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	return time.Duration(rand.Int64N(int64(ceil))) + 1
}

// connect runs one stream. opened reports whether the stream was
// established, responded whether it got as far as a response (which
// restarts the backoff).
func (c *Client) connect(ctx context.Context) (opened, responded bool, err error) {
	creds := insecure.NewCredentials()
	if c.cfg.TLS != nil {
		creds = credentials.NewTLS(c.cfg.TLS)
	}
	// A connection per stream: Run's backoff is the only one in play, not
	// gRPC's own (which grows to two minutes).
	conn, err := grpc.NewClient(c.cfg.Server,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
	)
	if err != nil {
		return false, false, fmt.Errorf("xdsclient: %w", err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.openSession(sctx, conn)
	if err != nil {
		return false, false, err
	}
	c.log.Info("connected to xDS server", "delta", c.cfg.Delta)
	err = s.run(sctx)
	return true, s.responses > 0, err
}
