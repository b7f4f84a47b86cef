// Package etcd is a store.Store backed by an etcd v3 cluster.
//
// Keys are stored verbatim under Config.Prefix (default "/weft"): weft key k
// is etcd key Prefix+k. The prefix is not separated from the key, so two
// stores sharing a cluster need prefixes of which neither is a prefix of the
// other (for example "/weft/a/" and "/weft/b/").
//
// Revisions are etcd's own, cluster-global revisions. Each of this store's
// writes advances the revision by exactly one, as the store contract
// requires, but anything else writing to the same cluster (another prefix,
// etcdctl, other tools) advances it too. The contract is still met — the
// revision only grows and watches/progress remain exact — but callers must
// not assume consecutive revisions belong to them. The conformance suite's
// "+1 per write" assertions hold because its cluster has no other writers.
//
// Writes are single etcd transactions comparing CreateRevision (Create) or
// ModRevision (Update/Delete); on failure the Else branch reads the key so
// ErrNotFound and ErrConflict are told apart in one round trip. A write is
// acknowledged by etcd only after it is committed by a quorum and fsynced.
//
// Compact(rev) compacts etcd at rev-1. That keeps every event with a revision
// >= rev (including a deletion at exactly rev, whose tombstone an etcd
// compaction at rev would drop) and makes Watch(fromRev) fail with
// ErrCompacted exactly when fromRev+1 < rev. Compaction is cluster-wide: it
// affects every prefix in the cluster.
//
// Watches use one etcd watch per call (all on one shared gRPC stream) with
// WithPrevKV so that deletions carry the last value. Progress comes from
// RequestProgress, issued once per Options.ProgressInterval for all watches.
// etcd servers before v3.5.8 (and the v3.4 series before the backport of
// etcd-io/etcd#15220's fix) may deliver such a progress notification ahead
// of events it covers, mostly while a watch replays history; this package
// therefore ignores progress on a watch until it has caught up with the
// revision current at its creation (or one interval has passed). Use a fixed
// etcd server where strict progress ordering matters.
//
// Like the bolt backend, each watch has a buffer of Options.WatchBuffer
// events; a consumer that lets it fill up is closed (without EventError) and
// counted by DroppedWatchers.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftmesh/weft/internal/store"
)

// Config configures Open.
type Config struct {
	// Endpoints are the client URLs of the cluster (http:// or https://).
	Endpoints []string
	// Prefix is prepended to every key. Default "/weft".
	Prefix string
	// DialTimeout bounds how long Open waits for the cluster. Default 5s.
	DialTimeout time.Duration
	// CAFile, CertFile and KeyFile configure TLS; all are optional. CAFile
	// alone verifies the server; CertFile and KeyFile add a client
	// certificate.
	CAFile, CertFile, KeyFile string
	// Options are the common store knobs.
	Options store.Options
}

// Store is an etcd-backed store.Store. It is safe for concurrent use.
type Store struct {
	cli    *clientv3.Client
	kv     clientv3.KV
	w      clientv3.Watcher
	prefix string
	opts   store.Options
	logger *slog.Logger

	ctx    context.Context // cancelled by Close; parent of every watch
	cancel context.CancelFunc

	mu      sync.RWMutex // guards closed against wg.Add in Watch
	closed  bool
	wg      sync.WaitGroup
	watches atomic.Int64
	dropped atomic.Int64

	// progressTrusted is false for etcd servers that may send a progress
	// notification before events it covers (etcd-io/etcd#15220, fixed in
	// 3.4.25 and 3.5.8). On those, progress is reported only up to the
	// last event actually delivered, which is always true.
	progressTrusted bool
}

var _ store.Store = (*Store)(nil)

// Open connects to the cluster and checks that it answers a linearizable
// read within cfg.DialTimeout.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "store/etcd")
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: open: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/weft"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: open: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Logger:               zap.New(newSlogCore(logger)),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: open %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, cfg.Prefix, clientv3.WithLimit(1), clientv3.WithCountOnly()); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("etcd: cluster %s unreachable within %s: %w", strings.Join(cfg.Endpoints, ","), cfg.DialTimeout, err)
	}
	s := &Store{
		cli:    cli,
		kv:     clientv3.NewKV(cli),
		w:      clientv3.NewWatcher(cli),
		prefix: cfg.Prefix,
		opts:   cfg.Options.WithDefaults(),
		logger: logger,
	}
	s.progressTrusted = serverProgressTrusted(ctx, cli, cfg.Endpoints, cfg.DialTimeout)
	if !s.progressTrusted {
		logger.Info("etcd server predates the progress-notification fix (3.4.25/3.5.8): watch progress follows delivered events only")
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.progressLoop()
	logger.Debug("connected", "endpoints", cfg.Endpoints, "prefix", cfg.Prefix)
	return s, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("CertFile and KeyFile must be set together")
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// DroppedWatchers returns how many watchers were closed for being too slow.
func (s *Store) DroppedWatchers() int64 { return s.dropped.Load() }

// Close closes every watch and the client.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd: close: %w", err)
	}
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}

// wrap adds context to err and maps etcd errors onto the store sentinels.
func (s *Store) wrap(op, key string, err error) error {
	switch {
	case s.isClosed():
		err = store.ErrClosed
	case errors.Is(err, rpctypes.ErrCompacted):
		err = fmt.Errorf("%w (%v)", store.ErrCompacted, err)
	case errors.Is(err, rpctypes.ErrFutureRev):
		err = fmt.Errorf("%w (%v)", store.ErrFutureRevision, err)
	}
	if key == "" {
		return fmt.Errorf("etcd: %s: %w", op, err)
	}
	return fmt.Errorf("etcd: %s %q: %w", op, key, err)
}

func (s *Store) begin(ctx context.Context, op, key string) error {
	if s.isClosed() {
		return s.wrap(op, key, store.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return s.wrap(op, key, err)
	}
	return nil
}

func (s *Store) toKV(kv *mvccpb.KeyValue) store.KV {
	return store.KV{
		Key:            strings.TrimPrefix(string(kv.Key), s.prefix),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
	}
}

// Revision returns the cluster's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if err := s.begin(ctx, "revision", ""); err != nil {
		return 0, err
	}
	resp, err := s.kv.Get(ctx, s.prefix, clientv3.WithLimit(1), clientv3.WithCountOnly())
	if err != nil {
		return 0, s.wrap("revision", "", err)
	}
	return resp.Header.Revision, nil
}

// Get returns the current value of key.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.begin(ctx, "get", key); err != nil {
		return store.KV{}, err
	}
	resp, err := s.kv.Get(ctx, s.prefix+key)
	if err != nil {
		return store.KV{}, s.wrap("get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, s.wrap("get", key, store.ErrNotFound)
	}
	return s.toKV(resp.Kvs[0]), nil
}

// List returns every key with the given prefix in byte order, read at one
// revision, and that revision.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	if err := s.begin(ctx, "list", prefix); err != nil {
		return nil, 0, err
	}
	resp, err := s.kv.Get(ctx, s.prefix+prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, s.wrap("list", prefix, err)
	}
	out := make([]store.KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, s.toKV(kv))
	}
	return out, resp.Header.Revision, nil
}

// Create stores key only if it does not exist.
func (s *Store) Create(ctx context.Context, key string, value []byte) (store.KV, error) {
	if err := s.begin(ctx, "create", key); err != nil {
		return store.KV{}, err
	}
	if key == "" {
		return store.KV{}, errors.New("etcd: create: empty key")
	}
	full := s.prefix + key
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(full), "=", 0)).
		Then(clientv3.OpPut(full, string(value))).
		Commit()
	if err != nil {
		return store.KV{}, s.wrap("create", key, err)
	}
	if !resp.Succeeded {
		return store.KV{}, s.wrap("create", key, store.ErrExists)
	}
	rev := resp.Header.Revision
	return store.KV{Key: key, Value: clone(value), CreateRevision: rev, ModRevision: rev}, nil
}

// precondition is the comparison shared by Update and Delete.
func precondition(full string, expectedRev int64) clientv3.Cmp {
	if expectedRev == 0 {
		return clientv3.Compare(clientv3.CreateRevision(full), ">", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(full), "=", expectedRev)
}

// failed maps the Else branch (a Get of the key) of a failed Update/Delete.
func (s *Store) failed(op, key string, expectedRev int64, resp *clientv3.TxnResponse) error {
	if len(resp.Responses) == 1 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			return s.wrap(op, key, fmt.Errorf("%w: have %d, expected %d", store.ErrConflict, r.Kvs[0].ModRevision, expectedRev))
		}
	}
	return s.wrap(op, key, store.ErrNotFound)
}

// Update replaces key's value if its ModRevision is expectedRev (or
// expectedRev is 0 and the key exists).
func (s *Store) Update(ctx context.Context, key string, value []byte, expectedRev int64) (store.KV, error) {
	if err := s.begin(ctx, "update", key); err != nil {
		return store.KV{}, err
	}
	full := s.prefix + key
	resp, err := s.kv.Txn(ctx).
		If(precondition(full, expectedRev)).
		Then(clientv3.OpPut(full, string(value), clientv3.WithPrevKV())).
		Else(clientv3.OpGet(full, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return store.KV{}, s.wrap("update", key, err)
	}
	if !resp.Succeeded {
		return store.KV{}, s.failed("update", key, expectedRev, resp)
	}
	rev := resp.Header.Revision
	createRev := rev
	if put := resp.Responses[0].GetResponsePut(); put != nil && put.PrevKv != nil {
		createRev = put.PrevKv.CreateRevision
	}
	return store.KV{Key: key, Value: clone(value), CreateRevision: createRev, ModRevision: rev}, nil
}

// Delete removes key under the same precondition as Update and returns its
// last value with ModRevision set to the deletion's revision.
func (s *Store) Delete(ctx context.Context, key string, expectedRev int64) (store.KV, error) {
	if err := s.begin(ctx, "delete", key); err != nil {
		return store.KV{}, err
	}
	full := s.prefix + key
	resp, err := s.kv.Txn(ctx).
		If(precondition(full, expectedRev)).
		Then(clientv3.OpDelete(full, clientv3.WithPrevKV())).
		Else(clientv3.OpGet(full, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return store.KV{}, s.wrap("delete", key, err)
	}
	if !resp.Succeeded {
		return store.KV{}, s.failed("delete", key, expectedRev, resp)
	}
	del := resp.Responses[0].GetResponseDeleteRange()
	if del == nil || len(del.PrevKvs) == 0 {
		return store.KV{}, s.wrap("delete", key, store.ErrNotFound)
	}
	kv := s.toKV(del.PrevKvs[0])
	kv.ModRevision = resp.Header.Revision
	return kv, nil
}

// Compact discards history before rev (see the package doc: etcd is
// compacted at rev-1). Compacting to an already compacted revision is a
// no-op.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if err := s.begin(ctx, "compact", ""); err != nil {
		return err
	}
	cur, err := s.Revision(ctx)
	if err != nil {
		return err
	}
	if rev > cur {
		return fmt.Errorf("etcd: compact %d (current %d): %w", rev, cur, store.ErrFutureRevision)
	}
	if rev <= 1 {
		return nil
	}
	_, err = s.kv.Compact(ctx, rev-1, clientv3.WithCompactPhysical())
	if errors.Is(err, rpctypes.ErrCompacted) {
		return nil
	}
	if err != nil {
		return s.wrap(fmt.Sprintf("compact %d", rev), "", err)
	}
	s.logger.Debug("compacted", "revision", rev, "etcd_revision", rev-1)
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// serverProgressTrusted reports whether every reachable member runs an etcd
// release whose progress notifications never overtake events.
func serverProgressTrusted(ctx context.Context, cli *clientv3.Client, endpoints []string, timeout time.Duration) bool {
	for _, ep := range endpoints {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err != nil {
			continue // an unreachable member is judged when it answers
		}
		if !versionAtLeastFixed(st.Version) {
			return false
		}
	}
	return true
}

// versionAtLeastFixed is true for etcd 3.4.25+, 3.5.8+ and 3.6+.
func versionAtLeastFixed(v string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return false
	}
	switch {
	case major != 3:
		return major > 3
	case minor == 4:
		return patch >= 25
	case minor == 5:
		return patch >= 8
	}
	return minor > 5
}

// ProgressAdvances reports whether EventProgress follows the cluster's
// revision (true) or only the last delivered event (false, on etcd servers
// with the progress-notification bug).
func (s *Store) ProgressAdvances() bool { return s.progressTrusted }
