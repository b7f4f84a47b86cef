// Package httpfilter is the registry of weft-proxy's HTTP filters: the
// entries of an HttpConnectionManager's http_filters list that run on a
// request before the router (RBAC, JWT authentication, …). Each filter
// package registers a Factory under its xDS type URL in init; the engine
// builds the filters of every HCM it receives from that registry and NACKs
// an HCM naming a non-optional filter nobody registered.
//
// The router, fault and CORS filters are not in the registry: the engine
// implements them itself from per-route config.
package httpfilter

import (
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"sync"

	"google.golang.org/protobuf/types/known/anypb"
)

// Conn is what a filter knows of the downstream connection.
type Conn struct {
	// Source is the peer's address, Destination the (original) address it
	// connected to.
	Source, Destination netip.AddrPort
	// TLS reports whether mesh TLS was terminated on this connection.
	TLS bool
	// Principal is the verified peer's identity without the "spiffe://"
	// scheme ("cluster.local/ns/default/sa/sleep", as Envoy's RBAC sees
	// it); empty for plaintext peers and peers without a SPIFFE ID.
	Principal string
	// SNI is the server name the peer asked for ("" without TLS).
	SNI string
}

// Call is one request crossing the filter chain.
type Call struct {
	// Request is the downstream request. Its URL path is already
	// normalised by the connection manager and is exactly what the router
	// and the upstream see. Filters may change its headers.
	Request *http.Request
	Conn    *Conn
	// Metadata is Envoy's dynamic metadata: results one filter leaves for
	// the next, by namespace (filter name). Created on first use.
	Metadata map[string]map[string]any
	// Count increments one of the filter's Envoy statistics, named as
	// under the connection manager's "http.<stat_prefix>." ("rbac.denied");
	// nil when none are kept.
	Count func(stat string)
}

// SetMetadata records value under namespace ns and key.
func (c *Call) SetMetadata(ns, key string, value any) {
	if c.Metadata == nil {
		c.Metadata = map[string]map[string]any{}
	}
	m := c.Metadata[ns]
	if m == nil {
		m = map[string]any{}
		c.Metadata[ns] = m
	}
	m[key] = value
}

// GetMetadata returns the value under namespace ns and key.
func (c *Call) GetMetadata(ns, key string) (any, bool) {
	v, ok := c.Metadata[ns][key]
	return v, ok
}

// MetadataValue is the value in dynamic metadata md under namespace ns
// and then each key of path in turn (nested maps); false when any step
// is absent. An empty path is the whole namespace.
func MetadataValue(md map[string]map[string]any, ns string, path []string) (any, bool) {
	m := md[ns]
	if m == nil {
		return nil, false
	}
	var v any = m
	for _, k := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = mm[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

// Reply is a local response that ends the exchange: the request goes no
// further (neither to later filters nor upstream).
type Reply struct {
	Status int
	Body   string
	Header http.Header
	// Flags are the access log's response flags ("UAEX", "RBAC", …).
	Flags string
}

// Filter is one compiled filter. Decode runs for every request on the
// chain, concurrently; it returns nil to continue or a Reply to stop.
// A Filter is immutable once built.
type Filter interface {
	Decode(*Call) *Reply
}

// Factory builds a Filter from its typed_config. It returns a precise
// error for config it cannot honour: the engine NACKs the update with it.
type Factory func(cfg *anypb.Any) (Filter, error)

var (
	mu        sync.RWMutex
	factories = map[string]Factory{}
)

// Register makes a filter available under its xDS type URL
// ("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC").
// It panics when the type URL is registered twice.
func Register(typeURL string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := factories[typeURL]; dup {
		panic("httpfilter: type URL registered twice: " + typeURL)
	}
	factories[typeURL] = f
}

// Build builds the filter for a typed_config.
func Build(cfg *anypb.Any) (Filter, error) {
	mu.RLock()
	f, ok := factories[cfg.GetTypeUrl()]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknown, cfg.GetTypeUrl())
	}
	return f(cfg)
}

// Registered lists the registered type URLs, sorted.
func Registered() []string {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]string, 0, len(factories))
	for k := range factories {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ErrUnknown is returned by Build for a type URL nobody registered.
var ErrUnknown = fmt.Errorf("http filter type is not supported by weft-proxy")
