package translate

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbactcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	rbacfilter "github.com/weftmesh/weft/internal/proxy/httpfilter/rbac"
	"github.com/weftmesh/weft/internal/proxy/rbac"
	"google.golang.org/protobuf/encoding/protojson"
	security "istio.io/api/security/v1beta1"
)

// AuthorizationPolicy golden cases live in testdata/authz/<case>.yaml, in
// the CDS test input format; their golden JSON holds the inbound
// listeners and the warnings of a full Build.

func runAuthzCase(t *testing.T, name string) *mtlsResult {
	t.Helper()
	in := loadCDSCase(t, filepath.Join("testdata", "authz", name+".yaml"))
	res := Build(in.snap, in.proxy)
	for _, l := range res.Listeners {
		ldsValidate(t, l)
	}
	r := newMTLSResult(res)
	raw := func(l *listenerv3.Listener) json.RawMessage {
		b, err := protojson.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	out := struct {
		Inbound  []json.RawMessage `json:"inboundListeners"`
		Warnings []string          `json:"warnings"`
	}{Inbound: []json.RawMessage{}, Warnings: res.Warnings}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	for _, l := range r.inbound {
		out.Inbound = append(out.Inbound, raw(l))
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	compareGolden(t, filepath.Join("testdata", "authz", name+".json"), append(b, '\n'), ldsLineDiff)
	return r
}

// chainRBAC returns the RBAC actions of a chain, in order: HTTP filters
// for an HCM chain, network filters otherwise.
func chainRBAC(t *testing.T, fc *listenerv3.FilterChain) (actions []string, rules []*rbacv3.RBAC) {
	t.Helper()
	for _, f := range fc.GetFilters() {
		switch f.GetName() {
		case tcpRBACFilterName:
			c := &rbactcpv3.RBAC{}
			if err := f.GetTypedConfig().UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			actions, rules = append(actions, "tcp:"+c.GetRules().GetAction().String()), append(rules, c.GetRules())
		case hcmFilterName:
			h := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
				t.Fatal(err)
			}
			for _, hf := range h.GetHttpFilters() {
				if hf.GetName() != httpRBACFilterName {
					continue
				}
				c := &rbachttpv3.RBAC{}
				if err := hf.GetTypedConfig().UnmarshalTo(c); err != nil {
					t.Fatal(err)
				}
				actions, rules = append(actions, "http:"+c.GetRules().GetAction().String()), append(rules, c.GetRules())
			}
		}
	}
	return actions, rules
}

func policyNames(r *rbacv3.RBAC) []string {
	var out []string
	for n := range r.GetPolicies() {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func TestAuthzCapture(t *testing.T) {
	r := runAuthzCase(t, "capture")
	vi := r.listener(t, VirtualInboundListener)
	byName := map[string]*listenerv3.FilterChain{}
	for _, fc := range vi.GetFilterChains() {
		byName[fc.GetName()] = fc
	}
	for _, name := range []string{"inbound|9080||", "inbound|9080||-mtls", "inbound|9000||", "inbound|9000||-mtls", "virtualInbound-passthrough-mtls"} {
		fc := byName[name]
		if fc == nil {
			t.Fatalf("no chain %s", name)
		}
		actions, rules := chainRBAC(t, fc)
		kind := "tcp:"
		if strings.HasPrefix(name, "inbound|9080") {
			kind = "http:"
		}
		if want := []string{kind + "LOG", kind + "DENY", kind + "ALLOW"}; !slices.Equal(actions, want) {
			t.Errorf("%s: RBAC filters %v, want %v", name, actions, want)
			continue
		}
		deny, allow := policyNames(rules[1]), policyNames(rules[2])
		wantDeny := []string{"ns[default]-policy[deny-admin]-rule[0]", "ns[default]-policy[deny-admin]-rule[1]",
			"ns[default]-policy[ext]-rule[0]", "ns[istio-system]-policy[mesh-productpage]-rule[0]"}
		if !slices.Equal(deny, wantDeny) {
			t.Errorf("%s: DENY policies %v, want %v", name, deny, wantDeny)
		}
		wantAllow := []string{"ns[default]-policy[productpage-viewer]-rule[0]", "ns[default]-policy[productpage-viewer]-rule[1]"}
		if kind == "tcp:" {
			// methods are HTTP-only: the ALLOW rule using them is dropped.
			wantAllow = wantAllow[1:]
		}
		if !slices.Equal(allow, wantAllow) {
			t.Errorf("%s: ALLOW policies %v, want %v", name, allow, wantAllow)
		}
	}
	if !slices.ContainsFunc(r.res.Warnings, func(w string) bool { return strings.Contains(w, "CUSTOM") }) ||
		!slices.ContainsFunc(r.res.Warnings, func(w string) bool { return strings.Contains(w, "targetRef") }) {
		t.Errorf("warnings %q: want CUSTOM and targetRef reported", r.res.Warnings)
	}
}

func TestAuthzExplicitFields(t *testing.T) {
	r := runAuthzCase(t, "explicit-fields")
	l := r.listener(t, "explicit_inbound_15080")
	actions, rules := chainRBAC(t, l.GetFilterChains()[0])
	if !slices.Equal(actions, []string{"http:ALLOW"}) || !slices.Equal(policyNames(rules[0]), []string{"ns[default]-policy[everything]-rule[0]"}) {
		t.Errorf("explicit_inbound_15080: %v %v", actions, policyNames(rules[0]))
	}
	h := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	if !h.GetNormalizePath().GetValue() || !h.GetMergeSlashes() || h.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD {
		t.Errorf("DECODE_AND_MERGE_SLASHES: normalize_path %v merge_slashes %v escaped slashes %v",
			h.GetNormalizePath(), h.GetMergeSlashes(), h.GetPathWithEscapedSlashesAction())
	}
	tcp := r.listener(t, "explicit_inbound_15090")
	if actions, rules := chainRBAC(t, tcp.GetFilterChains()[0]); !slices.Equal(actions, []string{"tcp:ALLOW"}) || len(rules[0].GetPolicies()) != 0 {
		t.Errorf("explicit_inbound_15090: %v %v; want an ALLOW filter with no policies (the only rule is HTTP-only)", actions, rules)
	}
}

// authzCase evaluates one rule, translated for HTTP (or TCP), with the
// proxy's RBAC engine.
type authzCase struct {
	name   string
	rule   string // security.Rule as JSON
	action rbacv3.RBAC_Action
	tcp    bool
	in     authzIn
	want   bool // the rule matches
}

type authzIn struct {
	method, target, host string
	headers              map[string]string
	src, dst             string
	principal, sni       string
	authn                map[string]any
}

func (a authzIn) input() *rbac.Input {
	method, target := a.method, a.target
	if method == "" {
		method = "GET"
	}
	if target == "" {
		target = "/"
	}
	r := httptest.NewRequest(method, target, nil)
	r.Host = a.host
	if r.Host == "" {
		r.Host = "productpage"
	}
	for k, v := range a.headers {
		r.Header.Set(k, v)
	}
	src, dst := a.src, a.dst
	if src == "" {
		src = "10.0.0.1:40000"
	}
	if dst == "" {
		dst = "10.0.0.99:9080"
	}
	c := &httpfilter.Conn{Source: netip.MustParseAddrPort(src), Destination: netip.MustParseAddrPort(dst),
		TLS: a.principal != "", Principal: a.principal, SNI: a.sni}
	in := &rbac.Input{Conn: c, Request: r}
	if a.authn != nil {
		in.Metadata = map[string]map[string]any{AuthnFilterName: a.authn}
	}
	return in
}

func TestAuthzFieldMapping(t *testing.T) {
	sleep := "cluster.local/ns/default/sa/sleep"
	tests := []authzCase{
		// principals / notPrincipals: SPIFFE ID without scheme; plaintext fails closed.
		{name: "principal exact", rule: `{"from":[{"source":{"principals":["cluster.local/ns/default/sa/sleep"]}}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "principal other", rule: `{"from":[{"source":{"principals":["cluster.local/ns/default/sa/sleep"]}}]}`, in: authzIn{principal: "cluster.local/ns/default/sa/other"}},
		{name: "principal plaintext", rule: `{"from":[{"source":{"principals":["*"]}}]}`, in: authzIn{}},
		{name: "principal any", rule: `{"from":[{"source":{"principals":["*"]}}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "principal suffix", rule: `{"from":[{"source":{"principals":["*/sa/sleep"]}}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "principal prefix", rule: `{"from":[{"source":{"principals":["cluster.local/ns/default/*"]}}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "notPrincipals plaintext", rule: `{"from":[{"source":{"notPrincipals":["*"]}}]}`, in: authzIn{}, want: true},
		{name: "notPrincipals match", rule: `{"from":[{"source":{"notPrincipals":["cluster.local/ns/default/sa/sleep"]}}]}`, in: authzIn{principal: sleep}},
		// namespaces: principal */ns/<ns>/*.
		{name: "namespace", rule: `{"from":[{"source":{"namespaces":["default"]}}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "namespace other", rule: `{"from":[{"source":{"namespaces":["prod"]}}]}`, in: authzIn{principal: sleep}},
		{name: "namespace plaintext", rule: `{"from":[{"source":{"namespaces":["default"]}}]}`, in: authzIn{}},
		{name: "namespace wildcard", rule: `{"from":[{"source":{"namespaces":["def*"]}}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "notNamespaces", rule: `{"from":[{"source":{"notNamespaces":["default"]}}]}`, in: authzIn{principal: "cluster.local/ns/prod/sa/x"}, want: true},
		// requestPrincipals: istio_authn metadata.
		{name: "requestPrincipal", rule: `{"from":[{"source":{"requestPrincipals":["iss/sub"]}}]}`, in: authzIn{authn: map[string]any{"request.auth.principal": "iss/sub"}}, want: true},
		{name: "requestPrincipal none", rule: `{"from":[{"source":{"requestPrincipals":["*"]}}]}`, in: authzIn{}},
		{name: "requestPrincipal prefix", rule: `{"from":[{"source":{"requestPrincipals":["iss/*"]}}]}`, in: authzIn{authn: map[string]any{"request.auth.principal": "iss/sub"}}, want: true},
		{name: "notRequestPrincipals none", rule: `{"from":[{"source":{"notRequestPrincipals":["*"]}}]}`, in: authzIn{}, want: true},
		// ipBlocks (direct peer) and remoteIpBlocks.
		{name: "ipBlocks", rule: `{"from":[{"source":{"ipBlocks":["10.0.0.0/24"]}}]}`, in: authzIn{src: "10.0.0.7:1"}, want: true},
		{name: "ipBlocks single", rule: `{"from":[{"source":{"ipBlocks":["10.0.0.7"]}}]}`, in: authzIn{src: "10.0.0.8:1"}},
		{name: "notIpBlocks", rule: `{"from":[{"source":{"notIpBlocks":["10.0.0.0/24"]}}]}`, in: authzIn{src: "10.0.0.7:1"}},
		{name: "remoteIpBlocks", rule: `{"from":[{"source":{"remoteIpBlocks":["10.0.0.0/8"]}}]}`, in: authzIn{src: "10.3.0.7:1"}, want: true},
		{name: "notRemoteIpBlocks", rule: `{"from":[{"source":{"notRemoteIpBlocks":["10.0.0.0/8"]}}]}`, in: authzIn{src: "10.3.0.7:1"}},
		// hosts: case-insensitive, prefix/suffix/presence.
		{name: "hosts exact", rule: `{"to":[{"operation":{"hosts":["ProductPage.example"]}}]}`, in: authzIn{host: "productpage.EXAMPLE"}, want: true},
		{name: "hosts suffix", rule: `{"to":[{"operation":{"hosts":["*.example"]}}]}`, in: authzIn{host: "a.example"}, want: true},
		{name: "hosts prefix", rule: `{"to":[{"operation":{"hosts":["api.*"]}}]}`, in: authzIn{host: "web.example"}},
		{name: "notHosts", rule: `{"to":[{"operation":{"notHosts":["admin.example"]}}]}`, in: authzIn{host: "admin.example"}},
		// ports / notPorts: destination port.
		{name: "ports", rule: `{"to":[{"operation":{"ports":["9080"]}}]}`, in: authzIn{dst: "10.0.0.99:9080"}, want: true},
		{name: "ports other", rule: `{"to":[{"operation":{"ports":["9000"]}}]}`, in: authzIn{dst: "10.0.0.99:9080"}},
		{name: "notPorts", rule: `{"to":[{"operation":{"notPorts":["9000"]}}]}`, in: authzIn{dst: "10.0.0.99:9080"}, want: true},
		// methods (case-sensitive).
		{name: "methods", rule: `{"to":[{"operation":{"methods":["GET","HEAD"]}}]}`, in: authzIn{method: "HEAD"}, want: true},
		{name: "methods prefix", rule: `{"to":[{"operation":{"methods":["P*"]}}]}`, in: authzIn{method: "PATCH"}, want: true},
		{name: "notMethods", rule: `{"to":[{"operation":{"notMethods":["DELETE"]}}]}`, in: authzIn{method: "DELETE"}},
		// paths: exact, prefix "/x/*", suffix "*x", "*"; no query.
		{name: "paths exact", rule: `{"to":[{"operation":{"paths":["/admin"]}}]}`, in: authzIn{target: "/admin?x=1"}, want: true},
		{name: "paths exact case", rule: `{"to":[{"operation":{"paths":["/admin"]}}]}`, in: authzIn{target: "/ADMIN"}},
		{name: "paths exact sub", rule: `{"to":[{"operation":{"paths":["/admin"]}}]}`, in: authzIn{target: "/admin/x"}},
		{name: "paths prefix", rule: `{"to":[{"operation":{"paths":["/admin/*"]}}]}`, in: authzIn{target: "/admin/x/y"}, want: true},
		{name: "paths prefix root", rule: `{"to":[{"operation":{"paths":["/admin/*"]}}]}`, in: authzIn{target: "/admin"}},
		{name: "paths suffix", rule: `{"to":[{"operation":{"paths":["*.js"]}}]}`, in: authzIn{target: "/a/b.js"}, want: true},
		{name: "paths any", rule: `{"to":[{"operation":{"paths":["*"]}}]}`, in: authzIn{target: "/"}, want: true},
		{name: "notPaths", rule: `{"to":[{"operation":{"notPaths":["/admin"]}}]}`, in: authzIn{target: "/admin"}},
		// path templates: {*} one segment, {**} any; no query.
		{name: "paths template one", rule: `{"to":[{"operation":{"paths":["/api/{*}/info"]}}]}`, in: authzIn{target: "/api/v1/info?x=1"}, want: true},
		{name: "paths template one, two segments", rule: `{"to":[{"operation":{"paths":["/api/{*}/info"]}}]}`, in: authzIn{target: "/api/v1/x/info"}},
		{name: "paths template any", rule: `{"to":[{"operation":{"paths":["/api/{**}/info"]}}]}`, in: authzIn{target: "/api/v1/x/info"}, want: true},
		{name: "paths template any, other suffix", rule: `{"to":[{"operation":{"paths":["/api/{**}/info"]}}]}`, in: authzIn{target: "/api/v1/x/data"}},
		{name: "paths template both", rule: `{"to":[{"operation":{"paths":["/{*}/foo/{**}"]}}]}`, in: authzIn{target: "/a/foo/b/c"}, want: true},
		{name: "notPaths template", rule: `{"to":[{"operation":{"notPaths":["/admin/{**}"]}}]}`, in: authzIn{target: "/admin/users/7"}},
		// when conditions.
		{name: "when header", rule: `{"when":[{"key":"request.headers[X-Tenant]","values":["acme"]}]}`, in: authzIn{headers: map[string]string{"x-tenant": "acme"}}, want: true},
		{name: "when header missing", rule: `{"when":[{"key":"request.headers[x-tenant]","values":["*"]}]}`, in: authzIn{}},
		{name: "when header notValues", rule: `{"when":[{"key":"request.headers[x-tenant]","notValues":["evil"]}]}`, in: authzIn{headers: map[string]string{"x-tenant": "evil"}}},
		{name: "when source.ip", rule: `{"when":[{"key":"source.ip","values":["10.0.0.1"]}]}`, in: authzIn{}, want: true},
		{name: "when remote.ip", rule: `{"when":[{"key":"remote.ip","notValues":["10.0.0.1"]}]}`, in: authzIn{}},
		{name: "when source.namespace", rule: `{"when":[{"key":"source.namespace","values":["default"]}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "when source.principal", rule: `{"when":[{"key":"source.principal","values":["cluster.local/ns/default/sa/sleep"]}]}`, in: authzIn{principal: sleep}, want: true},
		{name: "when request.auth.principal", rule: `{"when":[{"key":"request.auth.principal","values":["iss/sub"]}]}`, in: authzIn{authn: map[string]any{"request.auth.principal": "iss/other"}}},
		{name: "when audiences", rule: `{"when":[{"key":"request.auth.audiences","values":["weft"]}]}`, in: authzIn{authn: map[string]any{"request.auth.audiences": []string{"a", "weft"}}}, want: true},
		{name: "when presenter", rule: `{"when":[{"key":"request.auth.presenter","values":["app"]}]}`, in: authzIn{authn: map[string]any{"request.auth.presenter": "app"}}, want: true},
		{name: "when claims list", rule: `{"when":[{"key":"request.auth.claims[groups]","values":["admins"]}]}`,
			in: authzIn{authn: map[string]any{"request.auth.claims": map[string]any{"groups": []any{"dev", "admins"}}}}, want: true},
		{name: "when claims string", rule: `{"when":[{"key":"request.auth.claims[iss]","values":["https://idp"]}]}`,
			in: authzIn{authn: map[string]any{"request.auth.claims": map[string]any{"iss": "https://idp"}}}, want: true},
		{name: "when claims nested", rule: `{"when":[{"key":"request.auth.claims[nested][role]","values":["owner"]}]}`,
			in: authzIn{authn: map[string]any{"request.auth.claims": map[string]any{"nested": map[string]any{"role": "owner"}}}}, want: true},
		{name: "when claims absent", rule: `{"when":[{"key":"request.auth.claims[groups]","values":["admins"]}]}`, in: authzIn{}},
		{name: "when destination.ip", rule: `{"when":[{"key":"destination.ip","values":["10.0.0.0/24"]}]}`, in: authzIn{}, want: true},
		{name: "when destination.port", rule: `{"when":[{"key":"destination.port","values":["9000"]}]}`, in: authzIn{}},
		{name: "when connection.sni", rule: `{"when":[{"key":"connection.sni","values":["*.local"]}]}`, in: authzIn{principal: sleep, sni: "x.local"}, want: true},
		// from AND to; values OR; several from entries OR.
		{name: "from and to", rule: `{"from":[{"source":{"principals":["cluster.local/ns/default/sa/sleep"]}}],"to":[{"operation":{"methods":["GET"]}}]}`,
			in: authzIn{principal: sleep, method: "POST"}},
		{name: "from or from", rule: `{"from":[{"source":{"namespaces":["prod"]}},{"source":{"ipBlocks":["10.0.0.1"]}}]}`, in: authzIn{}, want: true},
		{name: "fields and", rule: `{"to":[{"operation":{"methods":["GET"],"paths":["/a"]}}]}`, in: authzIn{target: "/b"}},
		{name: "empty rule", rule: `{}`, in: authzIn{}, want: true},
		// TCP: HTTP-only fields. DENY keeps the rest (matches more)...
		{name: "tcp deny drops paths", rule: `{"to":[{"operation":{"paths":["/admin"],"ports":["9080"]}}]}`, action: rbacv3.RBAC_DENY, tcp: true,
			in: authzIn{target: "/other"}, want: true},
		{name: "tcp deny keeps ports", rule: `{"to":[{"operation":{"paths":["/admin"],"ports":["9000"]}}]}`, action: rbacv3.RBAC_DENY, tcp: true, in: authzIn{}},
		{name: "tcp deny request principal", rule: `{"from":[{"source":{"requestPrincipals":["*"]}}]}`, action: rbacv3.RBAC_DENY, tcp: true, in: authzIn{}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rule := &security.Rule{}
			if err := protojson.Unmarshal([]byte(tt.rule), rule); err != nil {
				t.Fatal(err)
			}
			action := tt.action
			pol, err := authzPolicy(rule, action, tt.tcp)
			if err != nil {
				t.Fatal(err)
			}
			e, err := rbac.Compile(&rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{"p": pol}})
			if err != nil {
				t.Fatal(err)
			}
			in := tt.in.input()
			if tt.tcp {
				in.Request, in.Metadata = nil, nil
			}
			if _, got := e.Match(in); got != tt.want {
				b, _ := protojson.Marshal(pol)
				t.Errorf("match = %v, want %v; policy %s", got, tt.want, b)
			}
		})
	}
}

// TestAuthzTCPAllowDropsHTTPRules: in an ALLOW policy a rule with an
// HTTP-only field cannot be translated for TCP chains.
func TestAuthzTCPAllowDropsHTTPRules(t *testing.T) {
	for _, js := range []string{
		`{"to":[{"operation":{"methods":["GET"]}}]}`,
		`{"from":[{"source":{"requestPrincipals":["*"]}}]}`,
		`{"when":[{"key":"request.headers[x]","values":["y"]}]}`,
	} {
		rule := &security.Rule{}
		if err := protojson.Unmarshal([]byte(js), rule); err != nil {
			t.Fatal(err)
		}
		if _, err := authzPolicy(rule, rbacv3.RBAC_ALLOW, true); !errorsIsHTTPOnly(err) {
			t.Errorf("%s: err %v, want HTTP-only", js, err)
		}
		if _, err := authzPolicy(rule, rbacv3.RBAC_ALLOW, false); err != nil {
			t.Errorf("%s for HTTP: %v", js, err)
		}
	}
}

// TestAuthzPathTemplateInvalid: a path template Istio refuses (stored
// before the API server checked templates) is not sent to the sidecar,
// which would refuse the whole listener: an ALLOW rule with it is
// dropped, as Istio drops rules it cannot translate.
func TestAuthzPathTemplateInvalid(t *testing.T) {
	rule := &security.Rule{}
	if err := protojson.Unmarshal([]byte(`{"to":[{"operation":{"paths":["/api/{*}x"]}}]}`), rule); err != nil {
		t.Fatal(err)
	}
	if _, err := authzPolicy(rule, rbacv3.RBAC_ALLOW, false); err == nil || !strings.Contains(err.Error(), "must be whole path segments") {
		t.Errorf("ALLOW rule with an invalid template: %v, want it dropped with the reason", err)
	}
}

// TestAuthzDryRun: policies annotated istio.io/dry-run: true become the
// RBAC filters' shadow rules under Istio's prefixes: the sidecar's filter
// enforces the /debug DENY only, and records what the dry-run DENY and
// ALLOW would have decided.
func TestAuthzDryRun(t *testing.T) {
	r := runAuthzCase(t, "dry-run")
	filters := inboundRBAC(t, r, "inbound|9080||")
	if len(filters) != 2 {
		t.Fatalf("%d RBAC filters, want DENY and ALLOW (the dry AUDIT left out)", len(filters))
	}
	decide := func(target, principal string) (int, map[string]any) { return decideRBAC(filters, target, principal) }
	sleep := "cluster.local/ns/default/sa/sleep"
	if st, md := decide("/admin", "cluster.local/ns/default/sa/other"); st != 200 ||
		md["istio_dry_run_deny_shadow_engine_result"] != "denied" || md["istio_dry_run_deny_shadow_effective_policy_id"] != "ns[default]-policy[deny-admin]-rule[0]" ||
		md["istio_dry_run_allow_shadow_engine_result"] != "denied" {
		t.Errorf("/admin from other: %d %v; want served, the dry DENY and ALLOW both recording denied", st, md)
	}
	if st, md := decide("/", sleep); st != 200 || md["istio_dry_run_deny_shadow_engine_result"] != "allowed" ||
		md["istio_dry_run_allow_shadow_engine_result"] != "allowed" {
		t.Errorf("/ from sleep: %d %v; want served, both dry policies allowing", st, md)
	}
	if st, _ := decide("/debug", sleep); st != 403 {
		t.Errorf("/debug: %d, want 403 (its policy's annotation is not a boolean: enforced)", st)
	}
	for _, w := range []string{"audit-all: AUDIT policies cannot run dry", `istio.io/dry-run="maybe" is not a boolean`} {
		if !slices.ContainsFunc(r.res.Warnings, func(s string) bool { return strings.Contains(s, w) }) {
			t.Errorf("warnings %q: want %q", r.res.Warnings, w)
		}
	}
}

// inboundRBAC is weft-proxy's RBAC filters of the inbound filter chain
// named chain, in order.
func inboundRBAC(t *testing.T, r *mtlsResult, chain string) []httpfilter.Filter {
	t.Helper()
	var fc *listenerv3.FilterChain
	for _, c := range r.listener(t, VirtualInboundListener).GetFilterChains() {
		if c.GetName() == chain {
			fc = c
		}
	}
	if fc == nil {
		t.Fatalf("no %s chain", chain)
	}
	h := &hcmv3.HttpConnectionManager{}
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	var filters []httpfilter.Filter
	for _, hf := range h.GetHttpFilters() {
		if hf.GetName() == httpRBACFilterName {
			f, err := rbacfilter.New(hf.GetTypedConfig())
			if err != nil {
				t.Fatal(err)
			}
			filters = append(filters, f)
		}
	}
	return filters
}

// decideRBAC runs a request for target from a peer with principal (""
// for plaintext) through filters: the status of the first reply (200
// when none replies) and the RBAC metadata the filters left.
func decideRBAC(filters []httpfilter.Filter, target, principal string) (int, map[string]any) {
	in := authzIn{target: target, principal: principal}.input()
	c := &httpfilter.Call{Request: in.Request, Conn: in.Conn}
	for _, f := range filters {
		if rep := f.Decode(c); rep != nil {
			return rep.Status, c.Metadata[rbacfilter.MetadataNamespace]
		}
	}
	return 200, c.Metadata[rbacfilter.MetadataNamespace]
}

// TestAuthzTrustDomains: a mesh migrating from trust domain old.example
// to new.example (trustDomainAliases). As istiod does, a policy's
// principals of either trust domain, or of "cluster.local" (the mesh's
// own, whatever it is), cover both — in from.source and in
// source.principal conditions, and in notPrincipals; another mesh's
// principal, a "*" trust domain and a prefix match are kept as written.
// The listeners are evaluated by weft-proxy's RBAC filter; the client
// side accepts a server in either trust domain.
func TestAuthzTrustDomains(t *testing.T) {
	r := runAuthzCase(t, "trust-domains")
	filters := inboundRBAC(t, r, "inbound|9080||")
	for _, tc := range []struct {
		target, principal string
		want              int
	}{
		{"/", "new.example/ns/default/sa/sleep", 200},
		{"/", "old.example/ns/default/sa/sleep", 200},
		{"/", "cluster.local/ns/default/sa/sleep", 403}, // a pointer, not a trust domain of this mesh
		{"/", "new.example/ns/ops/sa/admin", 200},       // an alias's principal covers the new trust domain
		{"/", "partner.example/ns/a/sa/b", 200},
		{"/", "new.example/ns/a/sa/b", 403}, // another mesh's principal is not rewritten
		{"/", "old.example/ns/batch/sa/job", 200},
		{"/", "cluster.local/ns/legacy/sa/x", 200},
		{"/", "new.example/ns/legacy/sa/x", 403}, // a prefix match is not rewritten
		{"/status", "old.example/ns/probe/sa/prober", 200},
		{"/", "new.example/ns/probe/sa/prober", 403},
		{"/", "", 403},
	} {
		if st, _ := decideRBAC(filters, tc.target, tc.principal); st != tc.want {
			t.Errorf("%s from %q: %d, want %d", tc.target, tc.principal, st, tc.want)
		}
	}
	wantIstioMutual(t, r.cluster(t, OutboundCluster(9080, "", mtlsReviews)), "outbound_.9080_._."+mtlsReviews,
		[]string{"spiffe://new.example/ns/default/sa/bookinfo-reviews", "spiffe://old.example/ns/default/sa/bookinfo-reviews"}, false)
}

func TestPrincipalsInTrustDomains(t *testing.T) {
	tds := []string{"new.example", "old.example"}
	for _, tc := range []struct{ in, want []string }{
		{[]string{"new.example/ns/a/sa/b"}, []string{"new.example/ns/a/sa/b", "old.example/ns/a/sa/b"}},
		{[]string{"old.example/ns/a/sa/b", "new.example/ns/a/sa/b"}, []string{"new.example/ns/a/sa/b", "old.example/ns/a/sa/b"}},
		{[]string{"cluster.local/ns/a/sa/*"}, []string{"new.example/ns/a/sa/*", "old.example/ns/a/sa/*"}},
		{[]string{"*", "*/ns/a/sa/b", "*.example/ns/a/sa/b", "other/ns/a/sa/b", "new.example/ns/a/*", "sa/b"},
			[]string{"*", "*/ns/a/sa/b", "*.example/ns/a/sa/b", "other/ns/a/sa/b", "new.example/ns/a/*", "sa/b"}},
		{nil, nil},
	} {
		if got := principalsInTrustDomains(tc.in, tds); !slices.Equal(got, tc.want) {
			t.Errorf("principalsInTrustDomains(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// A mesh in cluster.local without aliases keeps its policies as written.
	in := []string{"cluster.local/ns/a/sa/b", "other/ns/a/sa/b"}
	if got := principalsInTrustDomains(in, []string{"cluster.local"}); !slices.Equal(got, in) {
		t.Errorf("default mesh: %q", got)
	}
	if got := spiffeInTrustDomains([]string{"spiffe://new.example/ns/a/sa/b", "spiffe://x/y", "dns.example"}, []string{"old.example"}); !slices.Equal(got,
		[]string{"dns.example", "spiffe://new.example/ns/a/sa/b", "spiffe://old.example/ns/a/sa/b", "spiffe://x/y"}) {
		t.Errorf("spiffeInTrustDomains: %q", got)
	}
}
