package workload

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/bolt"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func setup(t *testing.T) (store.Store, *fakeClock) {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "weft.db"), store.Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	wg := map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup",
		"metadata": map[string]any{"name": "ratings", "namespace": "bookinfo"},
		"spec": map[string]any{
			"metadata": map[string]any{"labels": map[string]any{"app": "ratings"}},
			"template": map[string]any{"serviceAccount": "bookinfo-ratings", "ports": map[string]any{"http": 9080}, "labels": map[string]any{"version": "v1"}},
		}}
	raw, _ := json.Marshal(wg)
	k, _ := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	if _, err := st.Create(context.Background(), k.Key("bookinfo", "ratings"), raw); err != nil {
		t.Fatal(err)
	}
	return st, &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func entry(t *testing.T, st store.Store, name string) (map[string]any, bool) {
	t.Helper()
	k, _ := resource.ByKind("networking.istio.io/v1", "WorkloadEntry")
	kv, err := st.Get(context.Background(), k.Key("bookinfo", name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var o map[string]any
	if err := json.Unmarshal(kv.Value, &o); err != nil {
		t.Fatal(err)
	}
	return o, true
}

func TestAutoRegistrationLifecycle(t *testing.T) {
	st, clock := setup(t)
	ctx := context.Background()
	r := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Grace: 10 * time.Second, Controller: "a", Clock: clock.Now})
	w := Workload{Group: "ratings", Namespace: "bookinfo", IP: "10.0.0.7", Labels: map[string]string{"zone": "z1"}}
	if err := r.Connected(ctx, w); err != nil {
		t.Fatal(err)
	}
	o, ok := entry(t, st, "ratings-10-0-0-7")
	if !ok {
		t.Fatal("no WorkloadEntry after Connected")
	}
	spec := o["spec"].(map[string]any)
	labels := spec["labels"].(map[string]any)
	if spec["address"] != "10.0.0.7" || spec["serviceAccount"] != "bookinfo-ratings" || labels["app"] != "ratings" || labels["version"] != "v1" || labels["zone"] != "z1" {
		t.Fatalf("entry spec = %v", spec)
	}
	k, _ := resource.ByKind("networking.istio.io/v1", "WorkloadEntry")
	if es := k.Validate(o); len(es) > 0 {
		t.Fatalf("stored entry does not validate: %v", es)
	}

	// Gone, then back within the grace period: the entry survives.
	r.Disconnected(ctx, w)
	clock.Add(5 * time.Second)
	r.Sweep(ctx)
	if _, ok := entry(t, st, "ratings-10-0-0-7"); !ok {
		t.Fatal("entry removed before the grace period")
	}
	if err := r.Connected(ctx, w); err != nil {
		t.Fatal(err)
	}
	clock.Add(20 * time.Second)
	r.Sweep(ctx)
	o, ok = entry(t, st, "ratings-10-0-0-7")
	if !ok {
		t.Fatal("reconnected entry removed")
	}
	if ann := o["metadata"].(map[string]any)["annotations"].(map[string]any); ann[AnnotationDisconnected] != nil {
		t.Fatalf("reconnected entry still marked disconnected: %v", ann)
	}

	// Gone for good: removed once the grace period has passed.
	r.Disconnected(ctx, w)
	clock.Add(9 * time.Second)
	r.Sweep(ctx)
	if _, ok := entry(t, st, "ratings-10-0-0-7"); !ok {
		t.Fatal("entry removed before the grace period")
	}
	clock.Add(2 * time.Second)
	r.Sweep(ctx)
	if _, ok := entry(t, st, "ratings-10-0-0-7"); ok {
		t.Fatal("entry still there after the grace period")
	}
}

func TestCrashedReplicaEntriesExpire(t *testing.T) {
	st, clock := setup(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := New(st, log, Options{Grace: 10 * time.Second, Heartbeat: 30 * time.Second, Controller: "a", Clock: clock.Now})
	b := New(st, log, Options{Grace: 10 * time.Second, Heartbeat: 30 * time.Second, Controller: "b", Clock: clock.Now})
	if err := a.Connected(ctx, Workload{Group: "ratings", Namespace: "bookinfo", IP: "10.0.0.8"}); err != nil {
		t.Fatal(err)
	}
	// Replica a dies without a word; b sweeps.
	clock.Add(60 * time.Second)
	b.Sweep(ctx)
	if _, ok := entry(t, st, "ratings-10-0-0-8"); !ok {
		t.Fatal("entry removed while its heartbeat was recent")
	}
	clock.Add(60 * time.Second)
	b.Sweep(ctx)
	if _, ok := entry(t, st, "ratings-10-0-0-8"); ok {
		t.Fatal("entry of a crashed replica never expires")
	}
	// Operator-made entries are never touched.
	k, _ := resource.ByKind("networking.istio.io/v1", "WorkloadEntry")
	raw, _ := json.Marshal(map[string]any{"metadata": map[string]any{"name": "manual", "namespace": "bookinfo"}, "spec": map[string]any{"address": "10.1.1.1"}})
	if _, err := st.Create(ctx, k.Key("bookinfo", "manual"), raw); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Hour)
	b.Sweep(ctx)
	if _, ok := entry(t, st, "manual"); !ok {
		t.Fatal("sweep removed an operator's WorkloadEntry")
	}
}

func TestConnectedNeedsGroupAndIP(t *testing.T) {
	st, clock := setup(t)
	r := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: clock.Now})
	if err := r.Connected(context.Background(), Workload{Group: "nope", Namespace: "bookinfo", IP: "10.0.0.1"}); err == nil {
		t.Fatal("Connected with a missing WorkloadGroup succeeded")
	}
	if err := r.Connected(context.Background(), Workload{Group: "ratings", Namespace: "bookinfo"}); err == nil {
		t.Fatal("Connected without an IP succeeded")
	}
}

// TestInboundPortsAnnotation: an explicit-mode proxy's INBOUND_PORTS reach
// the entry as weft.io/inbound-ports, normalised; the entry's ports stay the
// application's; a malformed value is refused and creates nothing.
func TestInboundPortsAnnotation(t *testing.T) {
	st, clock := setup(t)
	ctx := context.Background()
	r := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: clock.Now})
	if err := r.Connected(ctx, Workload{Group: "ratings", Namespace: "bookinfo", IP: "10.0.0.7", InboundPorts: " 9443=15443, 9080=15080"}); err != nil {
		t.Fatal(err)
	}
	o, ok := entry(t, st, "ratings-10-0-0-7")
	if !ok {
		t.Fatal("no WorkloadEntry after Connected")
	}
	ann := o["metadata"].(map[string]any)["annotations"].(map[string]any)
	if got := ann[registry.AnnotationInboundPorts]; got != "9080=15080,9443=15443" {
		t.Errorf("annotation %s = %v, want 9080=15080,9443=15443", registry.AnnotationInboundPorts, got)
	}
	if l := o["spec"].(map[string]any)["labels"].(map[string]any); l[labelTLSMode] != "istio" {
		t.Errorf("labels %v: a workload with sidecar ports accepts mesh mTLS, want %s=istio", l, labelTLSMode)
	}
	if ports := o["spec"].(map[string]any)["ports"].(map[string]any); ports["http"] != float64(9080) {
		t.Errorf("spec.ports = %v, want the template's application port http: 9080", ports)
	}
	err := r.Connected(ctx, Workload{Group: "ratings", Namespace: "bookinfo", IP: "10.0.0.8", InboundPorts: "9080"})
	if err == nil || !strings.Contains(err.Error(), "INBOUND_PORTS") {
		t.Fatalf("malformed INBOUND_PORTS: err %v, want one naming INBOUND_PORTS", err)
	}
	if _, ok := entry(t, st, "ratings-10-0-0-8"); ok {
		t.Fatal("an entry was created for a proxy with malformed INBOUND_PORTS")
	}
}
