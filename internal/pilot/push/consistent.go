package push

import (
	"fmt"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/weftmesh/weft/internal/pilot/translate"
)

// checkConsistent verifies that a translation is self-contained: every EDS
// cluster has exactly one load assignment and every load assignment
// belongs to one; every route configuration a listener names over RDS
// (filter chains and gRPC API listeners alike) exists and none is unused.
// go-control-plane's own check does not look inside API listeners.
func checkConsistent(r *translate.Resources) error {
	eds := map[string]bool{}
	for _, c := range r.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			eds[name] = true
		}
	}
	cla := map[string]bool{}
	for _, e := range r.Endpoints {
		if cla[e.GetClusterName()] {
			return fmt.Errorf("two load assignments for %s", e.GetClusterName())
		}
		cla[e.GetClusterName()] = true
	}
	if err := sameSet("EDS cluster", eds, "load assignment", cla); err != nil {
		return err
	}
	refs := map[string]bool{}
	for _, l := range r.Listeners {
		if err := listenerRoutes(l, refs); err != nil {
			return fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
	}
	routes := map[string]bool{}
	for _, rc := range r.Routes {
		routes[rc.GetName()] = true
	}
	return sameSet("RDS reference", refs, "route configuration", routes)
}

func listenerRoutes(l *listenerv3.Listener, refs map[string]bool) error {
	var hcms []*hcmv3.HttpConnectionManager
	if api := l.GetApiListener().GetApiListener(); api != nil {
		h := &hcmv3.HttpConnectionManager{}
		if err := api.UnmarshalTo(h); err != nil {
			return fmt.Errorf("api listener: %w", err)
		}
		hcms = append(hcms, h)
	}
	chains := append([]*listenerv3.FilterChain{}, l.GetFilterChains()...)
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, l.GetDefaultFilterChain())
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || !tc.MessageIs(&hcmv3.HttpConnectionManager{}) {
				continue
			}
			h := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(h); err != nil {
				return fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			hcms = append(hcms, h)
		}
	}
	for _, h := range hcms {
		if name := h.GetRds().GetRouteConfigName(); name != "" {
			refs[name] = true
		}
	}
	return nil
}

func sameSet(aName string, a map[string]bool, bName string, b map[string]bool) error {
	var missing, extra []string
	for k := range a {
		if !b[k] {
			missing = append(missing, k)
		}
	}
	for k := range b {
		if !a[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	switch {
	case len(missing) > 0:
		return fmt.Errorf("%s without a %s: %v", aName, bName, missing)
	case len(extra) > 0:
		return fmt.Errorf("%s without a %s: %v", bName, aName, extra)
	}
	return nil
}
