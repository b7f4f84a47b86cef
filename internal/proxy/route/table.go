// Package route compiles an Envoy v3 RouteConfiguration into an immutable
// HTTP routing table for weft-proxy and answers, per request, which virtual
// host and route apply and what the route does: forward to a cluster (or
// one of weighted clusters), redirect, or answer directly; rewrite the path
// and host; bound the time; retry; inject faults; mirror; enforce CORS;
// change headers; and hash for consistent-hash load balancing.
//
// The package is pure: no I/O, no clocks, no globals that change, no
// logging. Randomness is passed in by the caller (rnd arguments), so every
// decision is reproducible in tests. A Table is safe for concurrent use and
// never changes after Compile; a new RouteConfiguration gives a new Table.
//
// # What Compile accepts
//
// Compile supports the subset of RouteConfiguration that weft's control
// plane emits and a little more (see the field lists in check.go). A field
// that would change how a request is routed or answered and that this
// package does not implement (rate limits, hedging, internal redirects,
// runtime-fraction route matches, cluster_header, metadata_match, path
// templates, VHDS, header formatters like %REQ(x)%, …) makes Compile fail
// with an error naming the virtual host, the route and the field, so the
// xDS client NACKs the update and keeps the last good table.
//
// Fields ignored on purpose, because they only affect observability or
// Envoy-internal mechanisms weft does not have, are: metadata, decorator,
// tracing, stat_prefix, virtual_clusters, validate_clusters,
// per_request_buffer_limit_bytes, request_body_buffer_limit, priority,
// include_vh_rate_limits, runtime keys (runtime_key, runtime_key_prefix and
// the fault filter's *_runtime fields: weft has no runtime layer, so the
// default values apply), google_re2 program-size limits, CORS
// shadow_enabled, mirror trace_sampled, the previous_priorities retry
// priority (weft's load balancer has a single priority), and
// FilterConfig.is_optional configs for filters weft does not run.
//
// # Differences from Envoy worth knowing
//
//   - Virtual host selection tries the Host as given, then the Host without
//     its port, before falling back to "*" (Envoy tries the port-stripped
//     form only with ignore_port_in_host_matching or strip_any_host_port).
//     weft's control plane lists both forms in domains, so the result is
//     the same for its configs.
//   - Fault.Decide takes one random number and derives the abort draw from
//     it, rather than drawing twice.
//   - Hashes (HashKey) use FNV-1a, not Envoy's xxHash: keys are stable
//     across weft proxies, not identical to Envoy's.
package route

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"unsafe"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// ErrUnsupported is wrapped by Compile errors for configuration this
// package does not implement (as opposed to configuration that is invalid).
var ErrUnsupported = errors.New("not supported")

// Request is the view of a request that routing needs. The proxy fills it
// once per request; Match and the Route methods never modify it.
type Request struct {
	// Method is the HTTP method ("GET").
	Method string
	// Scheme is "http" or "https" (the downstream scheme, or
	// x-forwarded-proto when the proxy trusts it); empty means "http".
	Scheme string
	// Host is the authority (Host header), possibly with a port.
	Host string
	// Path is the raw request target: path and query ("/a/b?x=1").
	Path string
	// Headers are the request headers with canonical keys, as net/http
	// produces them. Host is read from Host above, not from here.
	Headers http.Header
	// SourceIP is the downstream peer address (for source-IP hashing).
	SourceIP netip.Addr
}

// scheme returns the request's scheme, defaulting to "http".
func (r *Request) scheme() string {
	if r.Scheme == "" {
		return "http"
	}
	return r.Scheme
}

// Table is a compiled RouteConfiguration. It is immutable and safe for
// concurrent use.
type Table struct {
	// Name is the RouteConfiguration's name.
	Name string
	// VirtualHosts are in configuration order.
	VirtualHosts []*VirtualHost
	// RequestHeaders and ResponseHeaders are the route-configuration-level
	// header operations (applied through Route.ApplyRequestHeaders and
	// Route.ApplyResponseHeaders, which honour the level order).
	RequestHeaders, ResponseHeaders HeaderOps
	// InternalOnlyHeaders must be removed from requests that come from
	// outside the mesh (canonical keys).
	InternalOnlyHeaders []string
	// MostSpecificHeaderMutationsWins reverses the order header operations
	// of the levels are applied in (see Route.ApplyRequestHeaders).
	MostSpecificHeaderMutationsWins bool

	ignorePort bool
	exact      map[string]*VirtualHost
	// suffix and prefix wildcards, grouped by the length of their fixed
	// part, longest first (longest wins, as in Envoy).
	suffix   []wildcardGroup
	prefix   []wildcardGroup
	fallback *VirtualHost
}

// wildcardGroup holds the wildcard domains whose fixed part has length n.
type wildcardGroup struct {
	n     int
	hosts map[string]*VirtualHost
}

// VirtualHost is a compiled virtual host.
type VirtualHost struct {
	// Name is the virtual host's name.
	Name string
	// Domains are the domains as configured (lower-cased).
	Domains []string
	// Routes are tried in order; the first that matches wins.
	Routes []*Route
	// RequestHeaders and ResponseHeaders are this level's header operations.
	RequestHeaders, ResponseHeaders HeaderOps
	// IncludeRequestAttemptCount asks for x-envoy-attempt-count on upstream
	// requests; IncludeAttemptCountInResponse on downstream responses.
	IncludeRequestAttemptCount, IncludeAttemptCountInResponse bool
	// RequireTLS is require_tls ALL (Istio's Gateway tls.httpsRedirect):
	// Match answers every request whose scheme is not https with a
	// redirect to https, whatever its routes.
	RequireTLS bool

	table *Table
	// tlsRedirect is the route Match returns for RequireTLS.
	tlsRedirect *Route
}

// Compile builds a Table from rc. It fails, naming the virtual host and
// route, on anything invalid or unsupported that would change how requests
// are routed; the caller should NACK such a configuration.
func Compile(rc *routev3.RouteConfiguration) (*Table, error) {
	if rc == nil {
		return nil, errors.New("route: nil RouteConfiguration")
	}
	where := fmt.Sprintf("route configuration %q", rc.GetName())
	if err := checkFields(rc, where); err != nil {
		return nil, err
	}
	t := &Table{
		Name:                            rc.GetName(),
		exact:                           map[string]*VirtualHost{},
		ignorePort:                      rc.GetIgnorePortInHostMatching(),
		MostSpecificHeaderMutationsWins: rc.GetMostSpecificHeaderMutationsWins(),
	}
	for _, h := range rc.GetInternalOnlyHeaders() {
		t.InternalOnlyHeaders = append(t.InternalOnlyHeaders, http.CanonicalHeaderKey(h))
	}
	var err error
	if t.RequestHeaders, err = compileHeaderOps(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), true); err != nil {
		return nil, fmt.Errorf("route: %s: request headers: %w", where, err)
	}
	if t.ResponseHeaders, err = compileHeaderOps(rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove(), false); err != nil {
		return nil, fmt.Errorf("route: %s: response headers: %w", where, err)
	}
	maxBody := uint32(4096) // Envoy's default
	if m := rc.GetMaxDirectResponseBodySizeBytes(); m != nil {
		maxBody = m.GetValue()
	}
	rcFilters, err := compileFilterConfigs(rc.GetTypedPerFilterConfig(), nil)
	if err != nil {
		return nil, fmt.Errorf("route: %s: typed_per_filter_config: %w", where, err)
	}
	suffix := map[int]map[string]*VirtualHost{}
	prefix := map[int]map[string]*VirtualHost{}
	for i, pvh := range rc.GetVirtualHosts() {
		vh, err := compileVirtualHost(t, pvh, rcFilters, maxBody)
		if err != nil {
			return nil, fmt.Errorf("route: %s: virtual host %q (#%d): %w", where, pvh.GetName(), i, err)
		}
		t.VirtualHosts = append(t.VirtualHosts, vh)
		for _, d := range vh.Domains {
			if err := t.addDomain(d, vh, suffix, prefix); err != nil {
				return nil, fmt.Errorf("route: %s: virtual host %q (#%d): %w", where, pvh.GetName(), i, err)
			}
		}
	}
	t.suffix = groups(suffix)
	t.prefix = groups(prefix)
	return t, nil
}

// addDomain indexes one domain of vh; duplicates are an error, as in Envoy.
func (t *Table) addDomain(d string, vh *VirtualHost, suffix, prefix map[int]map[string]*VirtualHost) error {
	dup := func() error {
		return fmt.Errorf("domain %q is already used by virtual host %q", d, t.lookupDomain(d, suffix, prefix).Name)
	}
	switch {
	case d == "":
		return errors.New("empty domain")
	case d == "*":
		if t.fallback != nil {
			return dup()
		}
		t.fallback = vh
	case strings.Count(d, "*") > 1 || (strings.Contains(d, "*") && !strings.HasPrefix(d, "*") && !strings.HasSuffix(d, "*")):
		return fmt.Errorf("domain %q: a wildcard must be the first or last character, once", d)
	case strings.HasPrefix(d, "*"):
		return addWild(suffix, d[1:], vh, dup)
	case strings.HasSuffix(d, "*"):
		return addWild(prefix, d[:len(d)-1], vh, dup)
	default:
		if _, ok := t.exact[d]; ok {
			return dup()
		}
		t.exact[d] = vh
	}
	return nil
}

// lookupDomain finds the virtual host already holding domain d (for errors).
func (t *Table) lookupDomain(d string, suffix, prefix map[int]map[string]*VirtualHost) *VirtualHost {
	switch {
	case d == "*":
		return t.fallback
	case strings.HasPrefix(d, "*"):
		return suffix[len(d)-1][d[1:]]
	case strings.HasSuffix(d, "*"):
		return prefix[len(d)-1][d[:len(d)-1]]
	}
	return t.exact[d]
}

// addWild records a wildcard's fixed part.
func addWild(m map[int]map[string]*VirtualHost, fixed string, vh *VirtualHost, dup func() error) error {
	g := m[len(fixed)]
	if g == nil {
		g = map[string]*VirtualHost{}
		m[len(fixed)] = g
	}
	if _, ok := g[fixed]; ok {
		return dup()
	}
	g[fixed] = vh
	return nil
}

// groups orders wildcard groups longest fixed part first.
func groups(m map[int]map[string]*VirtualHost) []wildcardGroup {
	out := make([]wildcardGroup, 0, len(m))
	for n, hosts := range m {
		out = append(out, wildcardGroup{n: n, hosts: hosts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n > out[j].n })
	return out
}

// Match selects the virtual host for r's Host and returns the first of its
// routes that matches r. ok is false when no virtual host or no route
// matches (Envoy answers 404). A virtual host with RequireTLS answers a
// request that is not https, before any route is matched, with a redirect
// route (RedirectFor: 301 to https://<Host as received><path>, as
// Envoy's). The common path does not allocate.
func (t *Table) Match(r *Request) (*Route, *VirtualHost, bool) {
	vh := t.VirtualHostFor(r.Host)
	if vh == nil {
		return nil, nil, false
	}
	if vh.tlsRedirect != nil && !strings.EqualFold(r.scheme(), "https") {
		return vh.tlsRedirect, vh, true
	}
	path, query := splitPath(r.Path)
	for _, rt := range vh.Routes {
		if rt.match.matches(r, path, query) {
			return rt, vh, true
		}
	}
	return nil, vh, false
}

// VirtualHostFor selects the virtual host for a Host value: exact domain,
// then the longest suffix wildcard ("*.example.com"), then the longest
// prefix wildcard ("example.*"); first with the host as given, then without
// its port; then "*". nil when nothing matches.
func (t *Table) VirtualHostFor(host string) *VirtualHost {
	var buf [256]byte
	h := lowerHost(host, buf[:0])
	stripped, hasPort := stripPort(h)
	if t.ignorePort && hasPort {
		h, hasPort = stripped, false
	}
	if vh := t.lookup(h); vh != nil {
		return vh
	}
	if hasPort {
		if vh := t.lookup(stripped); vh != nil {
			return vh
		}
	}
	return t.fallback
}

// lookup matches one host value against exact and wildcard domains.
func (t *Table) lookup(h string) *VirtualHost {
	if vh, ok := t.exact[h]; ok {
		return vh
	}
	for _, g := range t.suffix {
		if len(h) > g.n { // a wildcard never matches the empty string
			if vh, ok := g.hosts[h[len(h)-g.n:]]; ok {
				return vh
			}
		}
	}
	for _, g := range t.prefix {
		if len(h) > g.n {
			if vh, ok := g.hosts[h[:g.n]]; ok {
				return vh
			}
		}
	}
	return nil
}

// lowerHost returns host in lower case, using buf (no allocation) when host
// has upper-case letters and fits.
func lowerHost(host string, buf []byte) string {
	i := 0
	for ; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			break
		}
	}
	if i == len(host) {
		return host
	}
	if len(host) > cap(buf) {
		return strings.ToLower(host)
	}
	buf = buf[:len(host)]
	for j := 0; j < len(host); j++ {
		c := host[j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[j] = c
	}
	// The caller's buffer lives on its stack for the duration of the
	// lookup only; map lookups with it do not retain it.
	return unsafeString(buf)
}

// stripPort removes a trailing ":port" (IPv6 literals keep their brackets).
func stripPort(h string) (string, bool) {
	i := strings.LastIndexByte(h, ':')
	if i < 0 || strings.IndexByte(h[i:], ']') >= 0 {
		return h, false
	}
	if strings.HasPrefix(h, "[") && !strings.HasSuffix(h[:i], "]") {
		return h, false // a bare IPv6 literal without brackets
	}
	if strings.Count(h, ":") > 1 && !strings.HasPrefix(h, "[") {
		return h, false // an unbracketed IPv6 address
	}
	return h[:i], true
}

// splitPath splits a request target into path and query (without '?');
// a fragment is dropped.
func splitPath(p string) (path, query string) {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		path, query = p[:i], p[i:]
		if query[0] == '#' {
			return path, ""
		}
		query = query[1:]
		if j := strings.IndexByte(query, '#'); j >= 0 {
			query = query[:j]
		}
		return path, query
	}
	return p, ""
}

// unsafeString views b as a string without copying; b must not change
// while the string is in use.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
