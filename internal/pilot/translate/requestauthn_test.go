package translate

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/weftmesh/weft/internal/proxy/httpfilter/jwtauthn"
	"google.golang.org/protobuf/encoding/protojson"
)

// RequestAuthentication golden cases live in testdata/jwt/<case>.yaml, in
// the CDS test input format (testhelpers_cds_test.go); their golden
// testdata/jwt/<case>.json holds the inbound listeners (virtualInbound,
// inbound_<port>, explicit_inbound_<port>) and the warnings of a full
// Build.

// runJWTCase builds a case, validates its listeners, checks two builds
// agree and compares with the golden file.
func runJWTCase(t *testing.T, name string) *mtlsResult {
	t.Helper()
	in := loadCDSCase(t, filepath.Join("testdata", "jwt", name+".yaml"))
	res := Build(in.snap, in.proxy)
	for _, l := range res.Listeners {
		ldsValidate(t, l)
	}
	r := newMTLSResult(res)
	if !bytes.Equal(renderJWT(t, newMTLSResult(Build(in.snap, in.proxy))), renderJWT(t, r)) {
		t.Errorf("%s: two builds differ", name)
	}
	compareGolden(t, filepath.Join("testdata", "jwt", name+".json"), renderJWT(t, r), ldsLineDiff)
	return r
}

// renderJWT formats the inbound listeners and warnings as indented JSON.
func renderJWT(t *testing.T, r *mtlsResult) []byte {
	t.Helper()
	out := struct {
		Inbound  []json.RawMessage `json:"inboundListeners"`
		Warnings []string          `json:"warnings"`
	}{Inbound: []json.RawMessage{}, Warnings: append([]string{}, r.res.Warnings...)}
	for _, l := range r.inbound {
		b, err := protojson.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		out.Inbound = append(out.Inbound, b)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// httpFilterNames lists a chain's HTTP filter names ("" for a TCP chain).
func httpFilterNames(t *testing.T, fc *listenerv3.FilterChain) []string {
	t.Helper()
	if fc.GetFilters()[0].GetName() != hcmFilterName {
		return nil
	}
	var names []string
	for _, f := range hcmOf(t, fc).GetHttpFilters() {
		names = append(names, f.GetName())
	}
	return names
}

// jwtConfigOf unpacks a chain's jwt_authn config (nil when absent).
func jwtConfigOf(t *testing.T, fc *listenerv3.FilterChain) *jwtv3.JwtAuthentication {
	t.Helper()
	for _, f := range hcmOf(t, fc).GetHttpFilters() {
		if f.GetName() == JwtAuthnFilterName {
			return ldsUnpack(t, f.GetTypedConfig(), &jwtv3.JwtAuthentication{})
		}
	}
	return nil
}

func TestRequestAuthnSelectors(t *testing.T) {
	r := runJWTCase(t, "selectors")
	l := r.listener(t, VirtualInboundListener)
	for _, name := range []string{"inbound|9080||-mtls", "inbound|9080||"} {
		if got, want := httpFilterNames(t, chainNamed(t, l, name)), []string{JwtAuthnFilterName, routerFilterName}; !slices.Equal(got, want) {
			t.Errorf("%s: http filters %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"inbound|9000||-mtls", "inbound|9000||"} {
		if got := httpFilterNames(t, chainNamed(t, l, name)); got != nil {
			t.Errorf("TCP chain %s has HTTP filters %v", name, got)
		}
	}
	cfg := jwtConfigOf(t, chainNamed(t, l, "inbound|9080||"))
	issuers := map[string]string{}
	for name, p := range cfg.GetProviders() {
		issuers[name] = p.GetIssuer()
	}
	want := map[string]string{
		"origins-0": "testing@secure.istio.io",               // namespace-wide
		"origins-1": "https://accounts.example.com",          // selecting (also mesh-wide: once)
		"origins-2": "https://nokeys.example.com",            // no JWKS
		"origins-3": "https://baduri.example.com",            // relative jwksUri
		"origins-4": "http://keycloak.auth:8080/realms/weft", // root namespace, selecting
	}
	if d := cmp.Diff(issuers, want); d != "" {
		t.Errorf("providers (-got +want):\n%s", d)
	}
	var reqs []string
	for _, q := range cfg.GetRules()[0].GetRequires().GetRequiresAny().GetRequirements() {
		if q.GetAllowMissing() != nil {
			reqs = append(reqs, "allow_missing")
			continue
		}
		reqs = append(reqs, q.GetProviderName())
	}
	if d := cmp.Diff(reqs, []string{"origins-0", "origins-1", "origins-2", "origins-3", "origins-4", "allow_missing"}); d != "" {
		t.Errorf("requires_any (-got +want):\n%s", d)
	}
	if cfg.GetRules()[0].GetMatch().GetPrefix() != "/" || !cfg.GetBypassCorsPreflight() {
		t.Errorf("rule: %v", cfg.GetRules()[0])
	}
	p := cfg.GetProviders()
	if h := p["origins-0"].GetFromHeaders(); len(h) != 1 || h[0].GetName() != "x-jwt-assertion" || h[0].GetValuePrefix() != "Token " ||
		!slices.Equal(p["origins-0"].GetFromParams(), []string{"token"}) || !p["origins-0"].GetForward() ||
		p["origins-0"].GetForwardPayloadHeader() != "x-jwt-payload" || p["origins-0"].GetPayloadInMetadata() != "testing@secure.istio.io" ||
		len(p["origins-0"].GetClaimToHeaders()) != 2 || p["origins-0"].GetLocalJwks().GetInlineString() == "" {
		t.Errorf("origins-0: %v", p["origins-0"])
	}
	if d := cmp.Diff(p["origins-0"].GetNormalizePayloadInMetadata().GetSpaceDelimitedClaims(), []string{"permission", "roles", "scope"}); d != "" {
		t.Errorf("space-delimited claims (-got +want):\n%s", d)
	}
	for name, want := range map[string]struct {
		uri, cluster string
		timeout      time.Duration
	}{
		"origins-1": {"https://accounts.example.com/.well-known/jwks.json", "outbound|443||accounts.example.com", 5 * time.Second},
		"origins-4": {"http://keycloak.auth:8080/realms/weft/protocol/openid-connect/certs", "outbound|8080||keycloak.auth", 2 * time.Second},
	} {
		rj := p[name].GetRemoteJwks()
		if rj.GetHttpUri().GetUri() != want.uri || rj.GetHttpUri().GetCluster() != want.cluster ||
			rj.GetHttpUri().GetTimeout().AsDuration() != want.timeout || rj.GetCacheDuration().AsDuration() != 5*time.Minute {
			t.Errorf("%s remote_jwks: %v", name, rj)
		}
		if p[name].GetForward() || p[name].GetForwardPayloadHeader() != "" {
			t.Errorf("%s: forward or payload header by default", name)
		}
	}
	for _, n := range []string{"origins-2", "origins-3"} {
		if p[n].GetLocalJwks().GetInlineString() != emptyJWKS {
			t.Errorf("%s without usable keys: %v", n, p[n])
		}
	}
	r.wantJWTWarning(t, "default/productpage", "https://nokeys.example.com", "rejected")
	r.wantJWTWarning(t, "default/productpage", "https://baduri.example.com", `"keys.json"`, "rejected")
	// weft-proxy accepts what discovery generates.
	if _, err := jwtauthn.NewBuilder(jwtauthn.Options{}).Build(hcmOf(t, chainNamed(t, l, "inbound|9080||")).GetHttpFilters()[0].GetTypedConfig()); err != nil {
		t.Errorf("weft-proxy refuses the generated config: %v", err)
	}
}

func (r *mtlsResult) wantJWTWarning(t *testing.T, substrs ...string) {
	t.Helper()
	for _, w := range r.res.Warnings {
		ok := true
		for _, s := range substrs {
			ok = ok && strings.Contains(w, s)
		}
		if ok {
			return
		}
	}
	t.Errorf("no warning with %q in %q", substrs, r.res.Warnings)
}

func TestRequestAuthnExplicitStrict(t *testing.T) {
	r := runJWTCase(t, "explicit-strict")
	fc := chainNamed(t, r.listener(t, ExplicitInboundListener(15080)), "inbound|9080||-mtls")
	if got, want := httpFilterNames(t, fc), []string{JwtAuthnFilterName, routerFilterName}; !slices.Equal(got, want) {
		t.Errorf("http filters %v, want %v", got, want)
	}
	if c := jwtConfigOf(t, fc).GetProviders()["origins-0"].GetRemoteJwks().GetHttpUri().GetCluster(); c != "outbound|8081||10.0.0.1" {
		t.Errorf("cluster %q", c)
	}
}

func TestRequestAuthnNone(t *testing.T) {
	r := runJWTCase(t, "none")
	for _, l := range r.inbound {
		for _, fc := range l.GetFilterChains() {
			if fc.GetFilters()[0].GetName() == hcmFilterName && jwtConfigOf(t, fc) != nil {
				t.Errorf("%s: jwt_authn without an applying RequestAuthentication", fc.GetName())
			}
		}
	}
	if len(r.res.Warnings) != 0 {
		t.Errorf("warnings: %q", r.res.Warnings)
	}
}

func TestJWKSCluster(t *testing.T) {
	for uri, want := range map[string]string{
		"https://a.example/jwks":          "outbound|443||a.example",
		"http://a.example/jwks":           "outbound|80||a.example",
		"https://a.example:8443/jwks":     "outbound|8443||a.example",
		"http://[2001:db8::1]:8080/certs": "outbound|8080||2001:db8::1",
	} {
		if got := jwksCluster(uri); got != want {
			t.Errorf("jwksCluster(%q) = %q, want %q", uri, got, want)
		}
	}
}

// TestJwtAuthnFirst: jwt_authn comes before every other HTTP filter.
func TestJwtAuthnFirst(t *testing.T) {
	in := loadCDSCase(t, filepath.Join("testdata", "jwt", "explicit-strict.yaml"))
	g := newNetBuilder(&builder{s: in.snap, p: in.proxy})
	names := httpFilterNames(t, g.inboundChain(inboundPort{port: 80, protocol: "HTTP"}, false))
	if len(names) < 2 || names[0] != JwtAuthnFilterName || names[len(names)-1] != routerFilterName {
		t.Fatalf("filters %v", names)
	}
}
