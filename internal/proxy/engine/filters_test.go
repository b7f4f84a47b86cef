package engine

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"github.com/weftmesh/weft/internal/proxy/route"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// denyHeader is a test filter: it answers 403 to requests carrying the
// header its config names, and records that it ran.
type denyHeader struct{ header string }

func (d denyHeader) Decode(c *httpfilter.Call) *httpfilter.Reply {
	c.Request.Header.Set("X-Test-Filter-Ran", "1")
	if c.Request.Header.Get(d.header) != "" {
		return &httpfilter.Reply{Status: http.StatusForbidden, Body: "denied by " + d.header, Flags: "RBAC",
			Header: http.Header{"X-Denied": {"yes"}}}
	}
	return nil
}

const testFilterType = "type.googleapis.com/google.protobuf.StringValue"

func init() {
	httpfilter.Register(testFilterType, func(cfg *anypb.Any) (httpfilter.Filter, error) {
		v := &wrapperspb.StringValue{}
		if err := cfg.UnmarshalTo(v); err != nil {
			return nil, err
		}
		return denyHeader{header: v.GetValue()}, nil
	})
}

func hf(name string, cfg *anypb.Any, optional bool) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, IsOptional: optional, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}
}

func TestCompileHTTPFilters(t *testing.T) {
	router, _ := anypb.New(&routerv3.Router{})
	deny, _ := anypb.New(wrapperspb.String("X-Evil"))
	unknown, _ := anypb.New(wrapperspb.Bool(true))

	fs, err := compileHTTPFilters([]*hcmv3.HttpFilter{hf("test", deny, false), hf("envoy.filters.http.router", router, false)})
	if err != nil || len(fs) != 1 {
		t.Fatalf("compile = %v, %v; want one filter", fs, err)
	}
	_, err = compileHTTPFilters([]*hcmv3.HttpFilter{hf("mystery", unknown, false), hf("router", router, false)})
	if err == nil || !strings.Contains(err.Error(), "google.protobuf.BoolValue") || !strings.Contains(err.Error(), "mystery") {
		t.Fatalf("unknown non-optional filter: err = %v, want it named with its type", err)
	}
	fs, err = compileHTTPFilters([]*hcmv3.HttpFilter{hf("mystery", unknown, true), hf("router", router, false)})
	if err != nil || len(fs) != 0 {
		t.Fatalf("optional unknown filter: %v, %v; want skipped", fs, err)
	}
	if _, err := compileHTTPFilters([]*hcmv3.HttpFilter{hf("router", router, false), hf("test", deny, false)}); err == nil {
		t.Fatal("a filter after the router was accepted")
	}
}

func TestFiltersRunBeforeRouting(t *testing.T) {
	deny, _ := anypb.New(wrapperspb.String("X-Evil"))
	f, err := httpfilter.Build(deny)
	if err != nil {
		t.Fatal(err)
	}
	e := New(slog.New(slog.DiscardHandler), Options{})
	e.cur.Store(&runtime{routes: map[string]*route.Table{}})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cc := &chainConn{Conn: a, chain: &httpChain{rdsName: "none", filters: []httpfilter.Filter{f}}}

	do := func(evil bool) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "http://svc/x", nil)
		if evil {
			r.Header.Set("X-Evil", "1")
		}
		r = r.WithContext(context.WithValue(r.Context(), connKey{}, cc))
		w := httptest.NewRecorder()
		e.serveHTTP(w, r)
		if r.Header.Get("X-Test-Filter-Ran") != "1" {
			t.Error("the filter did not run")
		}
		return w
	}
	w := do(true)
	body, _ := io.ReadAll(w.Body)
	if w.Code != http.StatusForbidden || string(body) != "denied by X-Evil" || w.Header().Get("X-Denied") != "yes" {
		t.Fatalf("denied request: %d %q %v", w.Code, body, w.Header())
	}
	// Allowed: the request goes on to routing, which finds no route here.
	if w := do(false); w.Code != http.StatusNotFound {
		t.Fatalf("allowed request: %d, want 404 from the router", w.Code)
	}
}
