package engine

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestRetryBudgetBoundsRetries: a backend that always answers 503 behind a
// route retrying 5xx three times. With Envoy's default limits every
// request is tried four times; with a retry budget of 0 % and no floor,
// no retry is made (and each one refused is counted), so retries cannot
// multiply the load on the failing backend.
func TestRetryBudgetBoundsRetries(t *testing.T) {
	var hits atomic.Int64
	backendAddr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))

	for _, tc := range []struct {
		name      string
		budget    *clusterv3.CircuitBreakers_Thresholds_RetryBudget
		wantHits  int64
		overflows float64
	}{
		{"default max_retries", nil, 4 * 5, 0},
		{"exhausted budget", &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: 0},
			MinRetryConcurrency: wrapperspb.UInt32(0)}, 1 * 5, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits.Store(0)
			addr := freeAddr(t)
			l := httpListener("out", addr, "backend", nil)
			setRetry(t, l, "5xx", 3)
			c := staticCluster("backend", backendAddr, false)
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{RetryBudget: tc.budget}}}
			reg := prometheus.NewRegistry()
			e, err := newEngineOpts(Options{Registerer: reg}, l, c)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(e.shutdown)
			for range 5 {
				resp, err := http.Get("http://" + addr.String() + "/")
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("status %d, want the backend's 503", resp.StatusCode)
				}
			}
			if got := hits.Load(); got != tc.wantHits {
				t.Errorf("backend saw %d requests for 5, want %d", got, tc.wantHits)
			}
			if got := testutil.ToFloat64(e.metrics.RetryOverflow); got != tc.overflows {
				t.Errorf("retry overflows %v, want %v", got, tc.overflows)
			}
		})
	}
}

// setRetry replaces the listener's inline route retry policy.
// serveHandler serves h on a free loopback port until the test ends.
func serveHandler(t *testing.T, h http.Handler) netip.AddrPort {
	t.Helper()
	srv := &http.Server{Handler: h}
	addr := freeAddr(t)
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return addr
}

func setRetry(t *testing.T, l *listenerv3.Listener, on string, n uint32) {
	t.Helper()
	f := l.GetFilterChains()[0].GetFilters()[0]
	h := &hcmv3.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	ra := h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
	ra.RetryPolicy = &routev3.RetryPolicy{RetryOn: on, NumRetries: wrapperspb.UInt32(n)}
	a, err := anypb.New(h)
	if err != nil {
		t.Fatal(err)
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
}

// editVirtualHost changes the first virtual host of l's first HCM.
func editVirtualHost(t *testing.T, l *listenerv3.Listener, edit func(*routev3.VirtualHost)) {
	t.Helper()
	f := l.GetFilterChains()[0].GetFilters()[0]
	h := &hcmv3.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	edit(h.GetRouteConfig().GetVirtualHosts()[0])
	a, _ := anypb.New(h)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
}

// TestHeaderCountLimit: more than 100 request header fields get 431 from
// the sidecar before routing; 100 pass.
func TestHeaderCountLimit(t *testing.T) {
	backend := startBackend(t, 16)
	addr := freeAddr(t)
	startEngine(t, nil, httpListener("out", addr, "backend", nil), staticCluster("backend", backend, false))
	for _, tc := range []struct {
		fields int
		want   int
	}{{95, http.StatusOK}, {101, http.StatusRequestHeaderFieldsTooLarge}} {
		req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
		for i := range tc.fields - 2 { // Go adds Host and User-Agent
			req.Header.Add(fmt.Sprintf("X-H%d", i%60), "v")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%d header fields: status %d, want %d", tc.fields, resp.StatusCode, tc.want)
		}
	}
}

// TestTraceContextCrossesTheSidecar: the upstream sees the caller's trace
// continued — same trace id, a new span whose parent is the caller's.
// With the Zipkin tracer's default USE_B3 that is B3 only, and a W3C
// traceparent passes through untouched, as in Envoy; with
// USE_B3_WITH_W3C_PROPAGATION the traceparent is read and both forms are
// written. Without a tracer (Istio's default since 1.22) the sidecar
// neither starts nor continues a trace: what the caller sent arrives
// unchanged, and a request without trace headers gets none.
func TestTraceContextCrossesTheSidecar(t *testing.T) {
	seen := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Clone() }))
	t.Cleanup(srv.Close)
	backend := netip.MustParseAddrPort(srv.Listener.Addr().String())
	none, b3, w3c := freeAddr(t), freeAddr(t), freeAddr(t)
	e := New(slog.New(slog.DiscardHandler), Options{})
	t.Cleanup(e.shutdown)
	withB3 := withTracing(t, httpListener("b3", b3, "backend", nil), hcmTracing(1, false))
	withW3C := withTracing(t, httpListener("w3c", w3c, "backend", nil), w3cTracing(hcmTracing(1, false)))
	if err := e.Apply(&xdsclient.Snapshot{Listeners: map[string]*listenerv3.Listener{"none": httpListener("none", none, "backend", nil), "b3": withB3, "w3c": withW3C},
		Clusters: map[string]*clusterv3.Cluster{"backend": staticCluster("backend", backend, false), zipkinCluster: staticCluster(zipkinCluster, backend, false)}}); err != nil {
		t.Fatal(err)
	}
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	send := func(addr netip.AddrPort, hdr ...string) http.Header {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return <-seen
	}

	h := send(w3c, "Traceparent", parent)
	tp := h.Get("Traceparent")
	if !strings.HasPrefix(tp, "00-0af7651916cd43dd8448eb211c80319c-") || strings.Contains(tp, "b7ad6b7169203331") ||
		h.Get("X-B3-Traceid") != "0af7651916cd43dd8448eb211c80319c" || h.Get("X-B3-Parentspanid") != "b7ad6b7169203331" {
		t.Fatalf("W3C propagation: upstream trace headers: traceparent %q, b3 %q/%q/%q", tp, h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid"), h.Get("X-B3-Parentspanid"))
	}

	h = send(b3, "Traceparent", parent)
	if h.Get("Traceparent") != parent || len(h.Get("X-B3-Traceid")) != 32 || h.Get("X-B3-Traceid") == "0af7651916cd43dd8448eb211c80319c" || h.Get("X-B3-Parentspanid") != "" {
		t.Fatalf("B3 only: a traceparent is neither read nor rewritten: %v", h)
	}
	h = send(b3, "X-B3-Traceid", "0af7651916cd43dd8448eb211c80319c", "X-B3-Spanid", "b7ad6b7169203331", "X-B3-Sampled", "1")
	if h.Get("X-B3-Traceid") != "0af7651916cd43dd8448eb211c80319c" || h.Get("X-B3-Parentspanid") != "b7ad6b7169203331" ||
		h.Get("X-B3-Spanid") == "b7ad6b7169203331" || h.Get("X-B3-Sampled") != "1" || h.Get("Traceparent") != "" {
		t.Fatalf("B3 only: upstream trace headers %v", h)
	}

	h = send(none)
	for k := range h {
		if k := strings.ToLower(k); strings.HasPrefix(k, "x-b3-") || k == "b3" || k == "traceparent" || k == "tracestate" {
			t.Fatalf("no tracer: the upstream got trace header %s (%v)", k, h)
		}
	}
	h = send(none, "X-B3-Traceid", "0af7651916cd43dd8448eb211c80319c", "X-B3-Spanid", "b7ad6b7169203331", "Traceparent", parent)
	if h.Get("X-B3-Traceid") != "0af7651916cd43dd8448eb211c80319c" || h.Get("X-B3-Spanid") != "b7ad6b7169203331" ||
		h.Get("X-B3-Parentspanid") != "" || h.Get("X-B3-Sampled") != "" || h.Get("Traceparent") != parent {
		t.Fatalf("no tracer: trace headers changed on the way: %v", h)
	}
}

// TestAttemptCount: a virtual host with include_request_attempt_count
// (Istio's outbound ones) sends x-envoy-attempt-count with every attempt
// — 1, then 2 on the retry — and with include_attempt_count_in_response
// the client learns the count too; without them the header is not made.
// The access log's %UPSTREAM_REQUEST_ATTEMPT_COUNT% says 2 either way,
// and %REQ(X-ENVOY-ATTEMPT-COUNT)% the last attempt's count, also when
// each attempt was a copy of the request.
func TestAttemptCount(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	backendAddr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("X-Envoy-Attempt-Count"))
		first := len(seen)%2 == 1
		mu.Unlock()
		if r.URL.Path == "/flaky" && first {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))

	for _, tc := range []struct {
		name              string
		request, response bool
		want              []string
		wantResponse      string
		wantLogged        string
		perTry            bool // each attempt a copy of the request
	}{
		{"not asked for", false, false, []string{"", ""}, "", "2 -\n", false},
		{"request", true, false, []string{"1", "2"}, "", "2 2\n", false},
		{"request and response", true, true, []string{"1", "2"}, "2", "2 2\n", false},
		{"request, per-try timeout", true, false, []string{"1", "2"}, "", "2 2\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			addr := freeAddr(t)
			l := httpListener("out", addr, "backend", nil)
			setRetry(t, l, "5xx", 1)
			editVirtualHost(t, l, func(vh *routev3.VirtualHost) {
				vh.IncludeRequestAttemptCount, vh.IncludeAttemptCountInResponse = tc.request, tc.response
				if tc.perTry {
					vh.GetRoutes()[0].GetRoute().GetRetryPolicy().PerTryTimeout = durationpb.New(5 * time.Second)
				}
			})
			logPath := filepath.Join(t.TempDir(), "a.log")
			l = withAccessLogs(l, fileLogProto(logPath, "%UPSTREAM_REQUEST_ATTEMPT_COUNT% %REQ(X-ENVOY-ATTEMPT-COUNT)%\n", nil, ""))
			e, err := newEngineOpts(Options{}, l, staticCluster("backend", backendAddr, false))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.Get("http://" + addr.String() + "/flaky")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			e.shutdown() // writes what the logger holds
			if logged, _ := os.ReadFile(logPath); string(logged) != tc.wantLogged {
				t.Errorf("%%UPSTREAM_REQUEST_ATTEMPT_COUNT%% %%REQ(X-ENVOY-ATTEMPT-COUNT)%% logged %q, want %q", logged, tc.wantLogged)
			}
			mu.Lock()
			got := slices.Clone(seen)
			mu.Unlock()
			if resp.StatusCode != http.StatusOK || !slices.Equal(got, tc.want) || resp.Header.Get("X-Envoy-Attempt-Count") != tc.wantResponse {
				t.Fatalf("status %d, backend saw attempt counts %q, response %q; want 200, %q, %q", resp.StatusCode, got,
					resp.Header.Get("X-Envoy-Attempt-Count"), tc.want, tc.wantResponse)
			}
		})
	}
}

// TestAttemptCountLocalReply: when every attempt fails to connect, the
// sidecar's own 503 carries the attempt count too, with
// include_attempt_count_in_response, as Envoy's router reply does.
func TestAttemptCountLocalReply(t *testing.T) {
	addr := freeAddr(t)
	l := httpListener("out", addr, "backend", nil)
	setRetry(t, l, "connect-failure", 1)
	editVirtualHost(t, l, func(vh *routev3.VirtualHost) { vh.IncludeAttemptCountInResponse = true })
	e, err := newEngineOpts(Options{}, l, staticCluster("backend", freeAddr(t), false)) // nobody listens there
	if err != nil {
		t.Fatal(err)
	}
	defer e.shutdown()
	resp, err := http.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Envoy-Attempt-Count") != "2" {
		t.Errorf("status %d, x-envoy-attempt-count %q; want 503 after two attempts, saying 2", resp.StatusCode, resp.Header.Get("X-Envoy-Attempt-Count"))
	}
}
