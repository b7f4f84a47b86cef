// Package workload auto-registers proxies into the mesh: a proxy that
// connects to discovery naming a WorkloadGroup gets a WorkloadEntry created
// from the group's template, kept while it stays connected, and removed a
// grace period after it goes away. Several server replicas may share one
// store: each heartbeats the entries it holds, and any replica removes
// entries whose holder stopped heartbeating.
package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// Annotations weft sets on auto-registered WorkloadEntries (Istio's names
// where Istio has one).
const (
	AnnotationGroup        = "istio.io/autoRegistrationGroup"
	AnnotationConnectedAt  = "istio.io/connectedAt"
	AnnotationDisconnected = "istio.io/disconnectedAt"
	AnnotationController   = "istio.io/workloadController"
	AnnotationHeartbeat    = "weft.io/heartbeat"
)

// labelTLSMode marks workloads whose sidecar accepts Istio mutual TLS, as
// Istio's injector labels pods (the value "istio").
const labelTLSMode = "security.istio.io/tlsMode"

// Store is what the registrar needs.
type Store interface {
	store.Reader
	store.Writer
}

// Options configure a Registrar.
type Options struct {
	// Grace is how long an entry outlives its proxy's last connection.
	// Default 10s (Istio's cleanup grace period).
	Grace time.Duration
	// Heartbeat is how often held entries are refreshed. Default 30s; an
	// entry whose heartbeat is 3 intervals old is treated as disconnected.
	Heartbeat time.Duration
	// Controller names this replica. Default a random id.
	Controller string
	// Clock is injectable; default time.Now.
	Clock func() time.Time
}

// Workload is the connecting proxy, as the registrar needs it.
type Workload struct {
	Group     string
	Namespace string
	IP        string
	// Labels from the proxy, merged over the group template's.
	Labels map[string]string
	// InboundPorts is an explicit-mode proxy's "<app port>=<sidecar
	// port>,…" (node metadata INBOUND_PORTS), written to the entry as
	// registry.AnnotationInboundPorts so that peers dial the sidecar ports.
	InboundPorts string
}

// Registrar creates and removes auto-registered WorkloadEntries.
type Registrar struct {
	st   Store
	log  *slog.Logger
	opts Options
	kind *resource.Kind
	mu   sync.Mutex
	// held counts live connections per entry key.
	held map[string]int
}

// New returns a Registrar over st.
func New(st Store, log *slog.Logger, opts Options) *Registrar {
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Second
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 30 * time.Second
	}
	if opts.Controller == "" {
		opts.Controller = uuid.NewString()
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	k, _ := resource.ByKind("networking.istio.io/v1", "WorkloadEntry")
	return &Registrar{st: st, log: log, opts: opts, kind: k, held: map[string]int{}}
}

// EntryName is the WorkloadEntry name for a group member: "<group>-<ip>"
// with the address made DNS-safe.
func EntryName(group, ip string) string {
	return group + "-" + strings.NewReplacer(".", "-", ":", "-").Replace(ip)
}

type object = map[string]any

// Connected creates or takes over the entry for w.
func (r *Registrar) Connected(ctx context.Context, w Workload) error {
	if w.IP == "" {
		return fmt.Errorf("auto-registration into %s/%s needs the proxy's IP (INSTANCE_IPS or the node id)", w.Namespace, w.Group)
	}
	wgKind, _ := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	wgKV, err := r.st.Get(ctx, wgKind.Key(w.Namespace, w.Group))
	if err != nil {
		return fmt.Errorf("auto-registration: WorkloadGroup %s/%s: %w", w.Namespace, w.Group, err)
	}
	var wg struct {
		Spec struct {
			Metadata struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Template map[string]any `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(wgKV.Value, &wg); err != nil {
		return fmt.Errorf("auto-registration: decoding WorkloadGroup %s/%s: %w", w.Namespace, w.Group, err)
	}
	inbound, err := registry.ParseInboundPorts(w.InboundPorts)
	if err != nil {
		return fmt.Errorf("auto-registration into %s/%s: node metadata INBOUND_PORTS: %w", w.Namespace, w.Group, err)
	}
	name := EntryName(w.Group, w.IP)
	key := r.kind.Key(w.Namespace, name)
	r.mu.Lock()
	r.held[key]++
	r.mu.Unlock()

	spec := map[string]any{}
	for k, v := range wg.Spec.Template {
		spec[k] = v
	}
	spec["address"] = w.IP
	labels := map[string]any{}
	for k, v := range wg.Spec.Metadata.Labels {
		labels[k] = v
	}
	if tl, ok := spec["labels"].(map[string]any); ok {
		for k, v := range tl {
			labels[k] = v
		}
	}
	for k, v := range w.Labels {
		labels[k] = v
	}
	if _, set := labels[labelTLSMode]; !set && len(inbound) > 0 {
		// Its sidecar terminates mesh mTLS on the sidecar ports: peers'
		// auto mTLS may use it.
		labels[labelTLSMode] = "istio"
	}
	spec["labels"] = labels
	now := r.opts.Clock().UTC().Format(time.RFC3339)
	ann := map[string]any{AnnotationGroup: w.Group, AnnotationConnectedAt: now,
		AnnotationController: r.opts.Controller, AnnotationHeartbeat: now}
	for k, v := range wg.Spec.Metadata.Annotations {
		ann[k] = v
	}
	if len(inbound) > 0 {
		ann[registry.AnnotationInboundPorts] = registry.FormatInboundPorts(inbound)
	}
	for attempt := 0; attempt < 5; attempt++ {
		kv, err := r.st.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			obj := object{"apiVersion": r.kind.APIVersion(), "kind": r.kind.Kind,
				"metadata": object{"name": name, "namespace": w.Namespace, "uid": uuid.NewString(),
					"creationTimestamp": now, "generation": 1, "labels": labels, "annotations": ann},
				"spec": spec}
			if es := r.kind.Validate(obj); len(es) > 0 {
				return fmt.Errorf("auto-registration: WorkloadEntry from group %s/%s is invalid: %w", w.Namespace, w.Group, es)
			}
			raw, _ := json.Marshal(obj)
			if _, err := r.st.Create(ctx, key, raw); errors.Is(err, store.ErrExists) {
				continue
			} else if err != nil {
				return fmt.Errorf("auto-registration: %w", err)
			}
			r.log.Info("auto-registered workload", "entry", w.Namespace+"/"+name, "group", w.Group, "address", w.IP)
			return nil
		}
		if err != nil {
			return fmt.Errorf("auto-registration: %w", err)
		}
		var obj object
		if err := json.Unmarshal(kv.Value, &obj); err != nil {
			return fmt.Errorf("auto-registration: decoding %s: %w", key, err)
		}
		md := obj["metadata"].(map[string]any)
		md["annotations"], md["labels"] = ann, labels
		obj["spec"] = spec
		raw, _ := json.Marshal(obj)
		if _, err := r.st.Update(ctx, key, raw, kv.ModRevision); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return fmt.Errorf("auto-registration: %w", err)
		}
		return nil
	}
	return fmt.Errorf("auto-registration: %s kept changing; giving up", key)
}

// Disconnected marks w's entry disconnected when its last connection to
// this replica ends; Run removes it after the grace period.
func (r *Registrar) Disconnected(ctx context.Context, w Workload) {
	key := r.kind.Key(w.Namespace, EntryName(w.Group, w.IP))
	r.mu.Lock()
	r.held[key]--
	last := r.held[key] <= 0
	if last {
		delete(r.held, key)
	}
	r.mu.Unlock()
	if !last {
		return
	}
	now := r.opts.Clock().UTC().Format(time.RFC3339)
	if err := r.annotate(ctx, key, func(ann map[string]any) bool {
		if ann[AnnotationController] != r.opts.Controller {
			return false // another replica holds it now
		}
		ann[AnnotationDisconnected] = now
		return true
	}); err != nil {
		r.log.Warn("auto-registration: marking disconnected", "entry", key, "error", err)
	}
}

// annotate applies change to key's annotations with compare-and-swap;
// change returns false to leave the object alone.
func (r *Registrar) annotate(ctx context.Context, key string, change func(map[string]any) bool) error {
	for attempt := 0; attempt < 5; attempt++ {
		kv, err := r.st.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var obj object
		if err := json.Unmarshal(kv.Value, &obj); err != nil {
			return err
		}
		md, _ := obj["metadata"].(map[string]any)
		ann, _ := md["annotations"].(map[string]any)
		if ann == nil || !change(ann) {
			return nil
		}
		raw, _ := json.Marshal(obj)
		if _, err := r.st.Update(ctx, key, raw, kv.ModRevision); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("%s kept changing", key)
}

// Run heartbeats held entries and removes expired ones until ctx ends.
func (r *Registrar) Run(ctx context.Context) {
	tick := min(r.opts.Grace, r.opts.Heartbeat) / 2
	t := time.NewTicker(tick)
	defer t.Stop()
	lastBeat := r.opts.Clock()
	for {
		r.Sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.opts.Clock().Sub(lastBeat) >= r.opts.Heartbeat {
			lastBeat = r.opts.Clock()
			r.heartbeat(ctx)
		}
	}
}

func (r *Registrar) heartbeat(ctx context.Context) {
	r.mu.Lock()
	keys := make([]string, 0, len(r.held))
	for k := range r.held {
		keys = append(keys, k)
	}
	r.mu.Unlock()
	now := r.opts.Clock().UTC().Format(time.RFC3339)
	for _, k := range keys {
		if err := r.annotate(ctx, k, func(ann map[string]any) bool {
			ann[AnnotationHeartbeat] = now
			ann[AnnotationController] = r.opts.Controller
			delete(ann, AnnotationDisconnected)
			return true
		}); err != nil {
			r.log.Warn("auto-registration heartbeat", "entry", k, "error", err)
		}
	}
}

// Sweep deletes auto-registered entries disconnected for longer than the
// grace period, or whose holder stopped heartbeating.
func (r *Registrar) Sweep(ctx context.Context) {
	kvs, _, err := r.st.List(ctx, r.kind.KeyPrefix(""))
	if err != nil {
		r.log.Warn("auto-registration sweep", "error", err)
		return
	}
	now := r.opts.Clock()
	for _, kv := range kvs {
		var obj struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		if json.Unmarshal(kv.Value, &obj) != nil {
			continue
		}
		ann := obj.Metadata.Annotations
		if ann[AnnotationGroup] == "" {
			continue // not auto-registered: operators own it
		}
		r.mu.Lock()
		held := r.held[kv.Key] > 0
		r.mu.Unlock()
		if held {
			continue
		}
		expired := false
		if t, err := time.Parse(time.RFC3339, ann[AnnotationDisconnected]); err == nil && now.Sub(t) >= r.opts.Grace {
			expired = true
		}
		if t, err := time.Parse(time.RFC3339, ann[AnnotationHeartbeat]); err == nil && now.Sub(t) >= 3*r.opts.Heartbeat+r.opts.Grace {
			expired = true
		}
		if !expired {
			continue
		}
		if _, err := r.st.Delete(ctx, kv.Key, kv.ModRevision); err == nil {
			r.log.Info("removed auto-registered workload", "entry", kv.Key)
		} else if !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
			r.log.Warn("auto-registration: removing", "entry", kv.Key, "error", err)
		}
	}
}
