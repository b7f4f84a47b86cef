package engine

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestForwardedHeaders: as Envoy under Istio, a sidecar's connection
// manager (use_remote_address unset) passes x-forwarded-for through
// untouched and sets x-forwarded-proto only where it is missing; with
// use_remote_address (a gateway) it appends the peer to x-forwarded-for
// and overwrites x-forwarded-proto, unless skip_xff_append.
func TestForwardedHeaders(t *testing.T) {
	seen := make(chan http.Header, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
	}))
	defer backend.Close()
	backendAddr := netip.MustParseAddrPort(backend.Listener.Addr().String())

	for _, tc := range []struct {
		name             string
		useRemote, skip  bool
		xff, xfp         string // sent
		wantXFF, wantXFP string
	}{
		{name: "sidecar, nothing sent", wantXFF: "", wantXFP: "http"},
		{name: "sidecar, both sent", xff: "10.0.0.9", xfp: "https", wantXFF: "10.0.0.9", wantXFP: "https"},
		{name: "gateway, nothing sent", useRemote: true, wantXFF: "127.0.0.1", wantXFP: "http"},
		{name: "gateway, both sent", useRemote: true, xff: "10.0.0.9", xfp: "https", wantXFF: "10.0.0.9, 127.0.0.1", wantXFP: "http"},
		{name: "gateway, skip_xff_append", useRemote: true, skip: true, xff: "10.0.0.9", wantXFF: "10.0.0.9", wantXFP: "http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			l := httpListener("out", addr, "backend", nil)
			tcfg := l.FilterChains[0].Filters[0].GetTypedConfig()
			hcm := &hcmv3.HttpConnectionManager{}
			if err := tcfg.UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			if tc.useRemote {
				hcm.UseRemoteAddress = wrapperspb.Bool(true)
			}
			hcm.SkipXffAppend = tc.skip
			a, err := anypb.New(hcm)
			if err != nil {
				t.Fatal(err)
			}
			l.FilterChains[0].Filters[0].GetTypedConfig().Value = a.Value
			startEngine(t, nil, l, staticCluster("backend", backendAddr, false))

			req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
			if tc.xff != "" {
				req.Header.Set("X-Forwarded-For", tc.xff)
			}
			if tc.xfp != "" {
				req.Header.Set("X-Forwarded-Proto", tc.xfp)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := <-seen
			if got := h.Get("X-Forwarded-For"); got != tc.wantXFF {
				t.Errorf("x-forwarded-for %q, want %q", got, tc.wantXFF)
			}
			if got := h.Get("X-Forwarded-Proto"); got != tc.wantXFP {
				t.Errorf("x-forwarded-proto %q, want %q", got, tc.wantXFP)
			}
		})
	}
}

// TestResponseHeaders: what Envoy's connection manager and router add to
// the answers they forward and make. The Server header is the connection
// manager's server_name ("envoy" unless set) on every response — the
// upstream's replaced (OVERWRITE, the default), kept when it has one
// (APPEND_IF_ABSENT), or left alone (PASS_THROUGH); the router adds
// x-envoy-upstream-service-time, the milliseconds the upstream took,
// unless suppress_envoy_headers.
func TestResponseHeaders(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(60 * time.Millisecond)
		}
		if r.URL.Path != "/anonymous" {
			w.Header().Set("Server", "app/1.0")
		}
	}))
	defer backend.Close()
	backendAddr := netip.MustParseAddrPort(backend.Listener.Addr().String())
	suppress, _ := anypb.New(&routerv3.Router{SuppressEnvoyHeaders: true})
	for _, tc := range []struct {
		name   string
		edit   func(*hcmv3.HttpConnectionManager)
		path   string
		server string // "" when absent
		timed  bool
	}{
		{name: "defaults", path: "/", server: "envoy", timed: true},
		{name: "istio's server_name", edit: func(h *hcmv3.HttpConnectionManager) { h.ServerName = "istio-envoy" }, path: "/slow", server: "istio-envoy", timed: true},
		{name: "append if absent, upstream has one", edit: func(h *hcmv3.HttpConnectionManager) {
			h.ServerName, h.ServerHeaderTransformation = "istio-envoy", hcmv3.HttpConnectionManager_APPEND_IF_ABSENT
		}, path: "/", server: "app/1.0", timed: true},
		{name: "append if absent, upstream has none", edit: func(h *hcmv3.HttpConnectionManager) {
			h.ServerName, h.ServerHeaderTransformation = "istio-envoy", hcmv3.HttpConnectionManager_APPEND_IF_ABSENT
		}, path: "/anonymous", server: "istio-envoy", timed: true},
		{name: "pass through", edit: func(h *hcmv3.HttpConnectionManager) {
			h.ServerHeaderTransformation = hcmv3.HttpConnectionManager_PASS_THROUGH
		}, path: "/anonymous", timed: true},
		{name: "router suppresses envoy headers", edit: func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[len(h.HttpFilters)-1].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: suppress}
		}, path: "/", server: "envoy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			l := httpListener("out", addr, "backend", nil)
			if tc.edit != nil {
				l = withHCM(t, l, tc.edit)
			}
			startEngine(t, nil, l, staticCluster("backend", backendAddr, false))
			resp, err := http.Get("http://" + addr.String() + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Values("Server"); tc.server == "" && len(got) != 0 || tc.server != "" && (len(got) != 1 || got[0] != tc.server) {
				t.Errorf("server %q, want %q", got, tc.server)
			}
			st := resp.Header.Get("X-Envoy-Upstream-Service-Time")
			ms, err := strconv.Atoi(st)
			switch {
			case !tc.timed && st != "":
				t.Errorf("x-envoy-upstream-service-time %q with suppress_envoy_headers", st)
			case tc.timed && (err != nil || ms < 0):
				t.Errorf("x-envoy-upstream-service-time %q, want milliseconds", st)
			case tc.path == "/slow" && ms < 60:
				t.Errorf("x-envoy-upstream-service-time %d ms for an upstream that took 60 ms", ms)
			}
		})
	}
	// The proxy's own answers carry the Server header too (no route: 404).
	addr := freeAddr(t)
	l := withHCM(t, httpListener("out", addr, "backend", nil), func(h *hcmv3.HttpConnectionManager) {
		h.ServerName = "istio-envoy"
		h.GetRouteConfig().VirtualHosts[0].Domains = []string{"elsewhere"}
	})
	startEngine(t, nil, l, staticCluster("backend", backendAddr, false))
	resp, err := http.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get("Server") != "istio-envoy" || resp.Header.Get("X-Envoy-Upstream-Service-Time") != "" {
		t.Errorf("local reply: %d, server %q, service time %q", resp.StatusCode, resp.Header.Get("Server"), resp.Header.Get("X-Envoy-Upstream-Service-Time"))
	}
}

// TestGenerateRequestID: a connection manager gives a request without
// x-request-id a fresh UUID, unless generate_request_id is false (Istio's
// proxyHeaders.requestId.disabled); a caller's id passes either way.
func TestGenerateRequestID(t *testing.T) {
	seen := make(chan string, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Get("X-Request-Id") }))
	defer backend.Close()
	backendAddr := netip.MustParseAddrPort(backend.Listener.Addr().String())
	on, off := freeAddr(t), freeAddr(t)
	startEngine(t, nil, httpListener("on", on, "backend", nil), staticCluster("backend", backendAddr, false))
	startEngine(t, nil, withHCM(t, httpListener("off", off, "backend", nil), func(h *hcmv3.HttpConnectionManager) {
		h.GenerateRequestId = wrapperspb.Bool(false)
	}), staticCluster("backend", backendAddr, false))
	send := func(addr netip.AddrPort, id string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
		if id != "" {
			req.Header.Set("X-Request-Id", id)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return <-seen
	}
	if id := send(on, ""); len(id) != 36 {
		t.Errorf("generated x-request-id %q, want a UUID", id)
	}
	if id := send(off, ""); id != "" {
		t.Errorf("generate_request_id false: x-request-id %q, want none", id)
	}
	if id := send(off, "caller-1"); id != "caller-1" {
		t.Errorf("the caller's x-request-id became %q", id)
	}
}
