package engine

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

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
