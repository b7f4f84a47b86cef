// Package push keeps every connected proxy's xDS snapshot up to date. It
// collects config and registry changes, debounces them, builds one
// immutable model.Snapshot, translates it for each distinct kind of proxy,
// and hands a new go-control-plane snapshot only to the proxies whose
// resources changed. An inconsistent snapshot is never handed out.
package push

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/pilot/translate"
	"github.com/weftmesh/weft/internal/registry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Options configure a Pusher.
type Options struct {
	// Debounce is the quiet time after a change before a push. Default 100ms.
	Debounce time.Duration
	// MaxDebounce bounds how long continuous changes can delay a push.
	// Default 10 × Debounce.
	MaxDebounce time.Duration
	// Mesh is the mesh-wide config. Default model.DefaultMesh().
	Mesh *model.Mesh
	// Clock is injectable for tests; default time.Now.
	Clock func() time.Time
}

// XDSTypes are the resource types weft serves, in warming order.
var XDSTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}

// proxyState is what the pusher knows of one node ID.
type proxyState struct {
	proxy    *model.Proxy
	streams  int
	versions map[string]string // type URL -> version last set
	// pending holds type URLs pushed for the change that started at
	// changeStart and not yet acknowledged.
	pending     map[string]bool
	changeStart time.Time
	warnings    []string
}

// Snapshot is one translation ready to serve: the go-control-plane
// snapshot (delta xDS, config dumps) and the same resources already
// marshalled (state-of-the-world responses share these bytes across every
// stream instead of marshalling per stream). Immutable once built.
type Snapshot struct {
	Snapshot *cachev3.Snapshot
	// Versions per type URL (content hashes).
	Versions map[string]string
	// Marshalled per type URL, sorted by name.
	Marshalled map[string][]*anypb.Any
	// Names per type URL, in the order of Marshalled.
	Names map[string][]string
}

// Cache serves snapshots to proxies (xds.Cache).
type Cache interface {
	Set(ctx context.Context, node string, s *Snapshot) error
	Clear(node string)
	Get(node string) (*Snapshot, bool)
}

// Pusher owns the inputs (config, registry) and the per-proxy snapshots.
type Pusher struct {
	cache Cache
	// setMu serialises pushes and snapshot sets (taken before mu); mu
	// guards state and is never held while snapshots are handed out, so
	// ACK bookkeeping does not wait for a push to reach every proxy.
	setMu   sync.Mutex
	log     *slog.Logger
	opts    Options
	mesh    model.Mesh
	metrics *metrics

	mu       sync.Mutex
	configs  map[string]*model.Config
	registry *registry.Snapshot
	// trustBundle is the CA's roots (SetTrustBundle).
	trustBundle []string
	snap        *model.Snapshot
	seq         uint64
	proxies     map[string]*proxyState
	// firstChange is when the oldest unpushed change arrived (zero: none).
	firstChange time.Time
	lastChange  time.Time
	kick        chan struct{}
	// addrs are the endpoint addresses of snap (see classKey).
	addrs map[string]bool
	// synced is set once every input has been loaded; until then proxies
	// wait rather than get an empty or partial config.
	synced bool
	// pushStart is when the push being delivered started.
	pushStart time.Time
	// classes are the translations of snap so far, by classKey; proxies
	// connecting between pushes reuse them.
	classes map[string]*built
}

// New returns a Pusher that feeds cache. Register its metrics with reg.
func New(cache Cache, reg prometheus.Registerer, log *slog.Logger, opts Options) *Pusher {
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.MaxDebounce <= 0 {
		opts.MaxDebounce = 10 * opts.Debounce
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	mesh := model.DefaultMesh()
	if opts.Mesh != nil {
		mesh = *opts.Mesh
	}
	p := &Pusher{
		cache: cache, log: log, opts: opts, mesh: mesh, metrics: newMetrics(reg),
		configs: map[string]*model.Config{}, proxies: map[string]*proxyState{},
		registry: &registry.Snapshot{Endpoints: map[string][]registry.Endpoint{}},
		kick:     make(chan struct{}, 1),
	}
	p.snap = model.NewSnapshot("0", mesh, nil, p.registry)
	p.addrs = map[string]bool{}
	p.classes = map[string]*built{}
	return p
}

// changed records that an input changed; the caller holds p.mu.
func (p *Pusher) changed() {
	now := p.opts.Clock()
	if p.firstChange.IsZero() {
		p.firstChange = now
	}
	p.lastChange = now
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// UpsertConfig adds or replaces one config object.
func (p *Pusher) UpsertConfig(c *model.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.configs[c.Key()] = c
	p.changed()
}

// DeleteConfig removes one config object by its Key.
func (p *Pusher) DeleteConfig(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.configs[key]; ok {
		delete(p.configs, key)
		p.changed()
	}
}

// ReplaceConfigs sets the complete config of the given kinds (after a
// relist): objects of those kinds not in configs are removed.
func (p *Pusher) ReplaceConfigs(kinds []string, configs []*model.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.configs {
		for _, kind := range kinds {
			if c.Kind == kind {
				delete(p.configs, k)
			}
		}
	}
	for _, c := range configs {
		p.configs[c.Key()] = c
	}
	p.changed()
}

// SetTrustBundle sets the mesh CA's trusted roots (PEM) that sidecars get
// as the SDS secret ROOTCA, and pushes them when they changed.
func (p *Pusher) SetTrustBundle(roots []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Equal(p.trustBundle, roots) {
		return
	}
	p.trustBundle = slices.Clone(roots)
	p.changed()
}

// SetRegistry replaces the registry snapshot.
func (p *Pusher) SetRegistry(r *registry.Snapshot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.registry = r
	p.changed()
}

// Snapshot returns the model snapshot proxies were last pushed.
func (p *Pusher) Snapshot() *model.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snap
}

// Run pushes debounced changes until ctx ends.
func (p *Pusher) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-p.kick:
			timer.Reset(p.opts.Debounce)
			continue
		case <-timer.C:
		}
		p.mu.Lock()
		if p.firstChange.IsZero() {
			p.mu.Unlock()
			continue
		}
		now := p.opts.Clock()
		quiet := now.Sub(p.lastChange)
		wait := quiet < p.opts.Debounce && now.Sub(p.firstChange) < p.opts.MaxDebounce
		p.mu.Unlock()
		if wait {
			timer.Reset(p.opts.Debounce - quiet)
			continue
		}
		p.PushNow(ctx)
	}
}

// PushNow builds and pushes immediately.
func (p *Pusher) PushNow(ctx context.Context) {
	p.setMu.Lock()
	defer p.setMu.Unlock()
	p.mu.Lock()
	sets := p.prepareLocked()
	p.mu.Unlock()
	p.deliver(ctx, sets)
}

// MarkSynced says every input (config kinds, registry sources) has been
// loaded once: proxies that connected before get their first config now,
// and later ones never see the empty initial snapshot.
func (p *Pusher) MarkSynced() {
	p.mu.Lock()
	already := p.synced
	p.synced = true
	p.mu.Unlock()
	if !already {
		p.PushNow(context.Background())
	}
}

// set is one snapshot to hand to one proxy.
type set struct {
	id   string
	snap *Snapshot
}

// prepareLocked builds the new model snapshot and works out, for every
// proxy, whether its resources changed. The caller holds setMu and mu.
func (p *Pusher) prepareLocked() []set {
	if !p.synced {
		return nil
	}
	start := p.opts.Clock()
	changeStart := p.firstChange
	if changeStart.IsZero() {
		changeStart = start
	}
	p.firstChange, p.lastChange = time.Time{}, time.Time{}
	configs := make([]*model.Config, 0, len(p.configs))
	for _, c := range p.configs {
		configs = append(configs, c)
	}
	p.seq++
	p.snap = model.NewSnapshot(strconv.FormatUint(p.seq, 10), p.mesh, configs, p.registry)
	p.snap.TrustBundle = p.trustBundle
	p.addrs = endpointAddrs(p.snap)
	classes := map[string]*built{}
	ids := make([]string, 0, len(p.proxies))
	for id := range p.proxies {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var sets []set
	for _, id := range ids {
		if s, ok := p.updateProxyLocked(p.proxies[id], classes, changeStart); ok {
			sets = append(sets, s)
		}
	}
	p.classes = classes
	p.log.Debug("push prepared", "version", p.snap.Version, "proxies", len(ids), "changed", len(sets), "classes", len(classes),
		"took", p.opts.Clock().Sub(start))
	p.pushStart = start
	return sets
}

// deliver hands snapshots to the cache without holding mu. The caller
// holds setMu.
func (p *Pusher) deliver(ctx context.Context, sets []set) {
	for _, s := range sets {
		if err := p.cache.Set(ctx, s.id, s.snap); err != nil {
			p.log.Error("setting snapshot", "proxy", s.id, "error", err)
		}
	}
	if len(sets) > 0 {
		p.metrics.pushTime.Observe(p.opts.Clock().Sub(p.pushStart).Seconds())
	}
}

// built is one translation, shared by every proxy of the same class.
type built struct {
	snap     *Snapshot
	versions map[string]string
	warnings []string
	err      error
}

// endpointAddrs is the set of endpoint addresses in a snapshot: a proxy's
// IPs matter to its resources only when one of them is an endpoint (its
// inbound side).
func endpointAddrs(s *model.Snapshot) map[string]bool {
	out := map[string]bool{}
	for _, eps := range s.Registry.Endpoints {
		for _, e := range eps {
			out[e.Address] = true
		}
	}
	return out
}

// classKey groups proxies that get identical resources: same type,
// namespace, locality (load assignments follow it), labels, capture
// mode and (for sidecars and gateways, whose inbound side and registry
// locality depend on them) the IPs that are endpoints.
func classKey(p *model.Proxy, addrs map[string]bool) string {
	var b strings.Builder
	b.WriteString(string(p.Type))
	b.WriteString("|" + p.Namespace + "|" + p.Locality + "|" + strconv.FormatBool(p.Explicit) + "|" + strconv.FormatBool(p.Verified) + "|")
	keys := make([]string, 0, len(p.Labels))
	for k := range p.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString(k + "=" + p.Labels[k] + ",")
	}
	if p.Type != model.Proxyless {
		var ips []string
		for _, ip := range p.IPs {
			if addrs[ip] {
				ips = append(ips, ip)
			}
		}
		sort.Strings(ips)
		b.WriteString("|" + strings.Join(ips, ","))
	}
	return b.String()
}

// build translates the current snapshot for p and makes a consistent
// go-control-plane snapshot with one version per type (a content hash, so
// an unchanged type is not resent).
func (p *Pusher) build(proxy *model.Proxy) *built {
	res := translate.Build(p.snap, proxy)
	out0 := &built{warnings: res.Warnings}
	if err := checkConsistent(res); err != nil {
		out0.err = fmt.Errorf("inconsistent snapshot: %w", err)
		return out0
	}
	byType := map[string][]types.Resource{
		resourcev3.ClusterType:  toResources(res.Clusters),
		resourcev3.EndpointType: toResources(res.Endpoints),
		resourcev3.ListenerType: toResources(res.Listeners),
		resourcev3.RouteType:    toResources(res.Routes),
		resourcev3.SecretType:   toResources(res.Secrets),
	}
	out := &built{versions: map[string]string{}, warnings: res.Warnings}
	gcp := &cachev3.Snapshot{}
	ps := &Snapshot{Snapshot: gcp, Versions: out.versions, Marshalled: map[string][]*anypb.Any{}, Names: map[string][]string{}}
	for _, typ := range XDSTypes {
		anys, names, v, err := marshalResources(typ, byType[typ])
		if err != nil {
			out.err = err
			return out
		}
		out.versions[typ] = v
		ps.Marshalled[typ], ps.Names[typ] = anys, names
		gcp.Resources[cacheIndex(typ)] = cachev3.NewResources(v, byType[typ])
	}
	// The snapshot is shared by every proxy of the class: compute the
	// delta-xDS version map now, before any reader can race on it.
	if err := gcp.ConstructVersionMap(); err != nil {
		out.err = err
		return out
	}
	out.snap = ps
	return out
}

func cacheIndex(typ string) types.ResponseType {
	switch typ {
	case resourcev3.ClusterType:
		return types.Cluster
	case resourcev3.EndpointType:
		return types.Endpoint
	case resourcev3.ListenerType:
		return types.Listener
	case resourcev3.SecretType:
		return types.Secret
	}
	return types.Route
}

func toResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// marshalResources marshals resources once (deterministically) into Anys
// and returns them with their names and a short content hash as version.
// Order is translate's, which is sorted by name.
func marshalResources(typ string, rs []types.Resource) ([]*anypb.Any, []string, string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	anys := make([]*anypb.Any, 0, len(rs))
	names := make([]string, 0, len(rs))
	for _, r := range rs {
		b, err := opts.Marshal(r)
		if err != nil {
			return nil, nil, "", fmt.Errorf("marshalling %T: %w", r, err)
		}
		h.Write(b)
		h.Write([]byte{0})
		anys = append(anys, &anypb.Any{TypeUrl: typ, Value: b})
		names = append(names, cachev3.GetResourceName(r))
	}
	return anys, names, hex.EncodeToString(h.Sum(nil))[:16], nil
}

// updateProxyLocked recomputes one proxy and returns the snapshot to set
// if anything changed. The caller holds mu.
func (p *Pusher) updateProxyLocked(st *proxyState, classes map[string]*built, changeStart time.Time) (set, bool) {
	key := classKey(st.proxy, p.addrs)
	b, ok := classes[key]
	if !ok {
		b = p.build(st.proxy)
		classes[key] = b
	}
	if b.err != nil {
		p.metrics.inconsistent.Inc()
		p.log.Error("not pushing: translation failed", "proxy", st.proxy.ID, "error", b.err)
		return set{}, false
	}
	st.warnings = b.warnings
	var changed []string
	for _, typ := range XDSTypes {
		if st.versions[typ] != b.versions[typ] {
			changed = append(changed, typ)
		}
	}
	if len(changed) == 0 {
		return set{}, false
	}
	st.versions = b.versions
	if len(st.pending) == 0 {
		st.changeStart = changeStart
		st.pending = map[string]bool{}
	}
	for _, typ := range changed {
		if typ == resourcev3.SecretType && len(b.snap.Names[typ]) == 0 {
			continue // no secrets for this proxy: nothing it will acknowledge
		}
		st.pending[typ] = true
		p.metrics.pushes.WithLabelValues(shortType(typ)).Inc()
	}
	return set{id: st.proxy.ID, snap: b.snap}, true
}

// AddProxy registers a stream of a proxy and gives it a snapshot at once.
func (p *Pusher) AddProxy(ctx context.Context, proxy *model.Proxy) {
	p.setMu.Lock()
	defer p.setMu.Unlock()
	p.mu.Lock()
	st, ok := p.proxies[proxy.ID]
	if ok {
		st.streams++
		p.mu.Unlock()
		return
	}
	st = &proxyState{proxy: proxy, streams: 1, versions: map[string]string{}}
	p.proxies[proxy.ID] = st
	p.metrics.connected.Set(float64(len(p.proxies)))
	var sets []set
	if p.synced {
		if s, ok := p.updateProxyLocked(st, p.classes, p.opts.Clock()); ok {
			sets = append(sets, s)
		}
	}
	p.mu.Unlock()
	for _, s := range sets {
		if err := p.cache.Set(ctx, s.id, s.snap); err != nil {
			p.log.Error("setting snapshot", "proxy", s.id, "error", err)
		}
	}
}

// RemoveProxy unregisters one stream; the last one drops the snapshot.
func (p *Pusher) RemoveProxy(id string) {
	p.setMu.Lock()
	defer p.setMu.Unlock()
	p.mu.Lock()
	st, ok := p.proxies[id]
	if !ok {
		p.mu.Unlock()
		return
	}
	st.streams--
	last := st.streams <= 0
	if last {
		delete(p.proxies, id)
		p.metrics.connected.Set(float64(len(p.proxies)))
	}
	p.mu.Unlock()
	if last {
		p.cache.Clear(id)
	}
}

// Acked records that id acknowledged version of typ; when every type of a
// push is acknowledged, the convergence time is observed.
func (p *Pusher) Acked(id, typ, version string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.proxies[id]
	if !ok || !st.pending[typ] || st.versions[typ] != version {
		return
	}
	delete(st.pending, typ)
	if len(st.pending) == 0 {
		p.metrics.convergence.Observe(p.opts.Clock().Sub(st.changeStart).Seconds())
	}
}

// Rejected counts a NACK.
func (p *Pusher) Rejected(typ string) {
	p.metrics.rejects.WithLabelValues(shortType(typ)).Inc()
}

// ProxyInfo is what the pusher reports about one proxy.
type ProxyInfo struct {
	Proxy *model.Proxy
	// Versions are the versions set per type URL.
	Versions map[string]string
	Warnings []string
}

// Proxies lists the connected proxies, sorted by ID.
func (p *Pusher) Proxies() []ProxyInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ProxyInfo, 0, len(p.proxies))
	for _, st := range p.proxies {
		v := make(map[string]string, len(st.versions))
		for k, x := range st.versions {
			v[k] = x
		}
		out = append(out, ProxyInfo{Proxy: st.proxy, Versions: v, Warnings: st.warnings})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proxy.ID < out[j].Proxy.ID })
	return out
}

// Resources returns the resources last set for a proxy.
func (p *Pusher) Resources(id string) (map[string][]types.Resource, bool) {
	snap, ok := p.cache.Get(id)
	if !ok {
		return nil, false
	}
	out := map[string][]types.Resource{}
	for _, typ := range XDSTypes {
		rs := snap.Snapshot.GetResources(typ)
		names := make([]string, 0, len(rs))
		for n := range rs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			out[typ] = append(out[typ], rs[n])
		}
	}
	return out, true
}

func shortType(typ string) string {
	switch typ {
	case resourcev3.ClusterType:
		return "cds"
	case resourcev3.EndpointType:
		return "eds"
	case resourcev3.ListenerType:
		return "lds"
	case resourcev3.RouteType:
		return "rds"
	case resourcev3.SecretType:
		return "sds"
	}
	return typ
}
