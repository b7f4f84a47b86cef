package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/bench/internal/harness"
)

// collectionPath is the VirtualService collection every benchmark uses.
const collectionPath = "/apis/networking.istio.io/v1/namespaces/default/virtualservices"

// requestTimeout bounds one create or list request.
const requestTimeout = 60 * time.Second

// api talks to one weft server. Each conn is a separate HTTP/2 transport,
// so a separate TCP+TLS connection.
type api struct {
	base  string
	token string
	tls   *tls.Config

	mu    sync.Mutex
	conns []*http.Transport
}

func newAPI(base, token string, tc *tls.Config) *api {
	return &api{base: base, token: token, tls: tc}
}

// client returns an HTTP client on a new HTTP/2 transport (its own
// connection, dialled on first use).
func (a *api) client() *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     a.tls.Clone(),
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		DisableCompression:  true, // measure the server's actual response
	}
	a.mu.Lock()
	a.conns = append(a.conns, tr)
	a.mu.Unlock()
	return &http.Client{Transport: tr}
}

func (a *api) closeAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, tr := range a.conns {
		tr.CloseIdleConnections()
	}
}

func (a *api) newRequest(ctx context.Context, method, path string, body []byte) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// virtualService returns the JSON of a small VirtualService named name.
func virtualService(name string) []byte {
	return []byte(`{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"` + name +
		`","labels":{"app":"bench"}},"spec":{"hosts":["` + name + `.default.svc.cluster.local"],"http":[{"route":[{"destination":{"host":"` +
		name + `.default.svc.cluster.local","port":{"number":8080}}}]}]}}`)
}

// create POSTs a VirtualService named name and returns the resourceVersion
// of the created object.
func (a *api) create(ctx context.Context, cl *http.Client, name string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := a.newRequest(ctx, http.MethodPost, collectionPath, virtualService(name))
	if err != nil {
		return 0, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("create %s: reading response: %w", name, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return 0, fmt.Errorf("create %s: %s: %s", name, resp.Status, bytes.TrimSpace(body))
	}
	if resp.ProtoMajor != 2 {
		return 0, fmt.Errorf("create %s: server answered over %s, not HTTP/2", name, resp.Proto)
	}
	var o struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &o); err != nil {
		return 0, fmt.Errorf("create %s: decoding response: %w", name, err)
	}
	rv, err := strconv.ParseInt(o.Metadata.ResourceVersion, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("create %s: bad resourceVersion %q in response", name, o.Metadata.ResourceVersion)
	}
	return rv, nil
}

// createMany creates names[0:n] with conc concurrent clients, one HTTP/2
// connection each, and returns each request's latency.
func (a *api) createMany(ctx context.Context, prefix string, n, conc int) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	clients := make([]*http.Client, conc)
	for i := range clients {
		clients[i] = a.client()
	}
	// Dial and handshake every connection before the clock starts.
	for _, cl := range clients {
		if err := a.ping(ctx, cl); err != nil {
			return nil, 0, err
		}
	}
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(cl *http.Client) {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if _, err := a.create(ctx, cl, fmt.Sprintf("%s-%06d", prefix, i)); err != nil {
					cancel(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}(clients[w])
	}
	wg.Wait()
	total := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return nil, 0, err
	}
	return lat, total, nil
}

// ping makes a cheap authenticated request on cl, to open its connection.
func (a *api) ping(ctx context.Context, cl *http.Client) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := a.newRequest(ctx, http.MethodGet, "/version", nil)
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("GET /version: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /version: %s", resp.Status)
	}
	if resp.ProtoMajor != 2 {
		return fmt.Errorf("GET /version: server answered over %s, not HTTP/2", resp.Proto)
	}
	return nil
}

// list GETs the whole collection into buf and returns its byte count.
func (a *api) list(ctx context.Context, cl *http.Client, buf *bytes.Buffer) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := a.newRequest(ctx, http.MethodGet, collectionPath, nil)
	if err != nil {
		return 0, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, fmt.Errorf("list: %w", err)
	}
	defer resp.Body.Close()
	buf.Reset()
	n, err := buf.ReadFrom(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("list: reading response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("list: %s: %.500s", resp.Status, bytes.TrimSpace(buf.Bytes()))
	}
	return n, nil
}

// currentRV lists the collection and returns its resourceVersion and item
// count.
func (a *api) currentRV(ctx context.Context, cl *http.Client) (rv int64, items int, size int64, err error) {
	var buf bytes.Buffer
	size, err = a.list(ctx, cl, &buf)
	if err != nil {
		return 0, 0, 0, err
	}
	var l struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(buf.Bytes(), &l); err != nil {
		return 0, 0, 0, fmt.Errorf("list: decoding response: %w", err)
	}
	rv, err = strconv.ParseInt(l.Metadata.ResourceVersion, 10, 64)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("list: bad resourceVersion %q", l.Metadata.ResourceVersion)
	}
	return rv, len(l.Items), size, nil
}

// benchWrites times o.writes creates with o.concurrency clients.
func benchWrites(ctx context.Context, o options, a *api, res *result) error {
	lat, total, err := a.createMany(ctx, "write", o.writes, o.concurrency)
	if err != nil {
		return err
	}
	res.writeTotal = total
	res.writeRate = float64(o.writes) / total.Seconds()
	res.writeP50, res.writeP99 = harness.Percentile(lat, 50), harness.Percentile(lat, 99)
	harness.Logf("  %d creates in %s: %.0f writes/s, p50 %s, p99 %s", o.writes, harness.FmtDur(total), res.writeRate, harness.FmtDur(res.writeP50), harness.FmtDur(res.writeP99))
	return nil
}

// benchList fills the namespace up to o.objects and times o.lists full
// LISTs, one after the other on one connection.
func benchList(ctx context.Context, o options, a *api, res *result) error {
	if fill := o.objects - o.writes; fill > 0 {
		harness.Logf("  filling to %d objects (%d creates)", o.objects, fill)
		_, total, err := a.createMany(ctx, "fill", fill, o.concurrency)
		if err != nil {
			return fmt.Errorf("filling: %w", err)
		}
		res.fillCount, res.fillTotal = fill, total
		harness.Logf("  filled in %s (%.0f writes/s)", harness.FmtDur(total), float64(fill)/total.Seconds())
	}
	cl := a.client()
	// Warm-up: opens the connection and checks the count.
	_, items, _, err := a.currentRV(ctx, cl)
	if err != nil {
		return err
	}
	if items != o.objects {
		return fmt.Errorf("LIST returned %d items, want %d", items, o.objects)
	}
	res.listCount = items
	var buf bytes.Buffer
	lat := make([]time.Duration, o.lists)
	for i := range lat {
		t0 := time.Now()
		n, err := a.list(ctx, cl, &buf)
		if err != nil {
			return err
		}
		lat[i] = time.Since(t0)
		if res.listBytes != 0 && n != res.listBytes {
			return fmt.Errorf("LIST %d returned %d bytes, earlier %d: the collection changed", i, n, res.listBytes)
		}
		res.listBytes = n
	}
	res.listP50, res.listP99 = harness.Percentile(lat, 50), harness.Percentile(lat, 99)
	harness.Logf("  %d LISTs of %d objects: p50 %s, p99 %s, %s", o.lists, items, harness.FmtDur(res.listP50), harness.FmtDur(res.listP99), harness.FmtBytes(res.listBytes))
	return nil
}

var errWatchEnded = errors.New("watch stream ended")
