package rbac

import (
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"google.golang.org/protobuf/encoding/protojson"
)

func compileJSON(t *testing.T, js string) (*Engine, error) {
	t.Helper()
	r := &rbacv3.RBAC{}
	if err := protojson.Unmarshal([]byte(js), r); err != nil {
		t.Fatal(err)
	}
	return Compile(r)
}

func input(target string, principal string, hdr map[string]string) *Input {
	r := httptest.NewRequest("GET", target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	return &Input{Request: r, Conn: &httpfilter.Conn{Source: netip.MustParseAddrPort("10.0.0.1:1"),
		Destination: netip.MustParseAddrPort("10.0.0.2:9080"), TLS: principal != "", Principal: principal}}
}

func TestCompileRejects(t *testing.T) {
	for js, want := range map[string]string{
		`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"any":true}],"condition":{"constExpr":{"boolValue":true}}}}}`:                                                                                                          "CEL",
		`{"policies":{"p":{"permissions":[{"uriTemplate":{"name":"x"}}],"principals":[{"any":true}]}}}`:                                                                                                                                       "not supported",
		`{"policies":{"p":{"permissions":[{"uriTemplate":{"name":"x","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig","pathTemplate":"/a*"}}}],"principals":[{"any":true}]}}}`: "whole path segment",
		`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"filterState":{"key":"k"}}]}}}`:                                                                                                                                        "not supported",
		`{"policies":{"p":{"permissions":[{"notRule":{"header":{"name":":path","safeRegexMatch":{"regex":"("}}}}],"principals":[{"any":true}]}}}`:                                                                                             "safe_regex",
		`{"policies":{"p":{"permissions":[{"urlPath":{"path":{"exact":"/"}}}],"principals":[{"authenticated":{"principalName":{"custom":{"name":"x"}}}}]}}}`:                                                                                  "string matcher",
	} {
		_, err := compileJSON(t, js)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "policy p") {
			t.Errorf("%s: err %v, want one naming policy p and %q", js, err, want)
		}
	}
}

func TestEvaluate(t *testing.T) {
	allow, err := compileJSON(t, `{"action":"ALLOW","policies":{
	  "sleep":{"permissions":[{"andRules":{"rules":[{"header":{"name":":method","stringMatch":{"exact":"GET"}}},
	    {"notRule":{"urlPath":{"path":{"prefix":"/admin"}}}}]}}],
	    "principals":[{"authenticated":{"principalName":{"exact":"spiffe://cluster.local/ns/default/sa/sleep"}}}]},
	  "health":{"permissions":[{"urlPath":{"path":{"exact":"/healthz"}}}],"principals":[{"any":true}]},
	  "tenant":{"permissions":[{"header":{"name":"x-tenant","presentMatch":true,"invertMatch":true}}],
	    "principals":[{"metadata":{"filter":"istio_authn","path":[{"key":"request.auth.principal"}],"value":{"stringMatch":{"prefix":"iss/"}}}}]}}}`)
	if err != nil {
		t.Fatal(err)
	}
	sleep := "cluster.local/ns/default/sa/sleep"
	for _, tt := range []struct {
		name string
		in   *Input
		want string
	}{
		{"sleep GET", input("/x", sleep, nil), "sleep"},
		{"sleep admin", input("/admin/x", sleep, nil), ""},
		{"other sa", input("/x", "cluster.local/ns/default/sa/other", nil), ""},
		{"plaintext", input("/x", "", nil), ""},
		{"health plaintext", input("/healthz?full=1", "", nil), "health"},
		{"jwt without tenant", func() *Input {
			in := input("/x", "", nil)
			in.Metadata = map[string]map[string]any{"istio_authn": {"request.auth.principal": "iss/sub"}}
			return in
		}(), "tenant"},
		{"jwt with tenant", func() *Input {
			in := input("/x", "", map[string]string{"X-Tenant": "a"})
			in.Metadata = map[string]map[string]any{"istio_authn": {"request.auth.principal": "iss/sub"}}
			return in
		}(), ""},
	} {
		ok, pol := allow.Allowed(tt.in)
		if pol != tt.want || ok != (tt.want != "") {
			t.Errorf("%s: allowed=%v policy=%q, want %q", tt.name, ok, pol, tt.want)
		}
	}
	// Network RBAC: no request, header and path rules never match.
	in := input("/healthz", "", nil)
	in.Request = nil
	if ok, _ := allow.Allowed(in); ok {
		t.Error("a connection without a request matched a path rule")
	}
	logE, _ := compileJSON(t, `{"action":"LOG","policies":{"all":{"permissions":[{"any":true}],"principals":[{"any":true}]}}}`)
	if ok, pol := logE.Allowed(input("/", "", nil)); !ok || pol != "all" {
		t.Errorf("LOG: %v %q", ok, pol)
	}
}
