package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/proxy/certs"
	"github.com/weftmesh/weft/internal/server"
	"github.com/weftmesh/weft/internal/testutil/wefttest"
)

// fakeClock is a manual clock. Waiters fire when Advance reaches them;
// every After call is reported on afters so tests know what is pending.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	afters  chan time.Duration
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(start time.Time) *fakeClock {
	return &fakeClock{now: start, afters: make(chan time.Duration, 64)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	if d <= 0 {
		ch <- c.now
	} else {
		c.waiters = append(c.waiters, waiter{at: c.now.Add(d), ch: ch})
	}
	c.mu.Unlock()
	select {
	case c.afters <- d:
	default:
	}
	return ch
}

// Advance moves the clock by d and fires the waiters that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// nextAfter waits (10 s at most) for the next After call and returns its
// duration.
func (c *fakeClock) nextAfter(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.afters:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("clock: no After call within 10s")
		return 0
	}
}

// weft is an in-process weft server with an API client.
type weft struct {
	*wefttest.Server
	t      *testing.T
	caPool *x509.CertPool // the API server CA, which signs :15012's certificate
}

// startWeft runs a weft server whose clock (and so its CA's) is now; nil
// means the system clock.
func startWeft(t *testing.T, now func() time.Time) *weft {
	t.Helper()
	srv := wefttest.Start(t, func(c *server.Config) { c.Clock = now })
	return &weft{Server: srv, t: t, caPool: srv.CAPool()}
}

// group creates WorkloadGroup name in namespace default with the service
// account sa, and returns a bootstrap token for it and the token's id.
func (w *weft) group(name, sa string) (token, id string) {
	w.t.Helper()
	obj := fmt.Sprintf(`{"apiVersion":"networking.istio.io/v1","kind":"WorkloadGroup","metadata":{"name":%q,"namespace":"default"},
		"spec":{"metadata":{"labels":{"app":%q}},"template":{"serviceAccount":%q}}}`, name, name, sa)
	if code, body := w.Do("POST", "/apis/networking.istio.io/v1/namespaces/default/workloadgroups", obj); code != 201 {
		w.t.Fatalf("creating WorkloadGroup %s: %d %s", name, code, body)
	}
	code, body := w.Do("POST", "/weft/v1/workload-tokens", fmt.Sprintf(`{"namespace":"default","group":%q,"ttl":"1h"}`, name))
	if code != 201 {
		w.t.Fatalf("creating a bootstrap token: %d %s", code, body)
	}
	var tok struct{ Token, ID string }
	if err := json.Unmarshal([]byte(body), &tok); err != nil || !strings.HasPrefix(tok.Token, "wbt_") {
		w.t.Fatalf("token reply %s: %v", body, err)
	}
	return tok.Token, tok.ID
}

func (w *weft) revoke(id string) {
	w.t.Helper()
	if code, body := w.Do("DELETE", "/weft/v1/workload-tokens/"+id, ""); code != 200 {
		w.t.Fatalf("revoking token %s: %d %s", id, code, body)
	}
}

// config is a Manager config for w's CA.
func (w *weft) config(token string, clock certs.Clock) certs.Config {
	c := certs.Config{CAAddress: w.XDSTLS, CARoots: w.caPool, ServerName: "127.0.0.1", BootstrapToken: token}
	if clock != nil {
		c.Clock = clock
	}
	return c
}

// running is a Manager whose Run goroutine the test controls.
type running struct {
	*certs.Manager
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned err
	err    error
}

func start(t *testing.T, cfg certs.Config) *running {
	t.Helper()
	m, err := certs.New(cfg, wefttest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Manager: m, cancel: cancel, done: make(chan struct{})}
	go func() { r.err = m.Run(ctx); close(r.done) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and returns its result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.result(t)
}

// result waits for Run to return.
func (r *running) result(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s")
		return nil
	}
}

// update waits for the next certificate and returns it.
func (r *running) update(t *testing.T) *tls.Certificate {
	t.Helper()
	select {
	case <-r.Updates():
	case <-r.done:
		t.Fatalf("Run returned %v while waiting for a certificate", r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("no new certificate within 20s")
	}
	c, err := r.Current()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
