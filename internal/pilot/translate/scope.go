package translate

import (
	"strings"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/registry"
	networking "istio.io/api/networking/v1alpha3"
)

// sidecarFor returns the Sidecar resource that applies to p, as Istio picks
// it: the oldest one in p's namespace whose workloadSelector matches p, else
// the oldest selector-less one in p's namespace, else the oldest
// selector-less one in the root namespace; nil when none applies.
func sidecarFor(s *model.Snapshot, p *model.Proxy) *model.Config {
	var nsWide, root *model.Config
	for _, c := range s.Configs("Sidecar") {
		sc := c.Spec.(*networking.Sidecar)
		sel := sc.GetWorkloadSelector().GetLabels()
		switch {
		case c.Namespace == p.Namespace && len(sel) > 0:
			if registry.LabelsMatch(sel, p.Labels) {
				return c
			}
		case c.Namespace == p.Namespace && nsWide == nil:
			nsWide = c
		case c.Namespace == s.Mesh.RootNamespace && len(sel) == 0 && root == nil:
			root = c
		}
	}
	if nsWide != nil {
		return nsWide
	}
	return root
}

// exportedTo reports whether something in namespace ns with exportTo list
// is visible from namespace client.
func exportedTo(exportTo []string, ns, client string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		switch e {
		case "*":
			return true
		case ".":
			if ns == client {
				return true
			}
		case "~":
		default:
			if e == client {
				return true
			}
		}
	}
	return false
}

// HostMatches reports whether host matches pattern: exact, "*", or a
// "*.suffix" wildcard.
func HostMatches(pattern, host string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*."):
		return strings.HasSuffix(host, pattern[1:])
	}
	return pattern == host
}

// egressAllows reports whether one Sidecar egress host entry
// ("namespace/host") admits service svc for a proxy in namespace client.
func egressAllows(entry string, svc *registry.Service, client string) bool {
	ns, host, ok := strings.Cut(entry, "/")
	if !ok {
		return false
	}
	switch ns {
	case "*":
	case ".":
		if svc.Namespace != client {
			return false
		}
	case "~":
		return false
	default:
		if svc.Namespace != ns {
			return false
		}
	}
	return HostMatches(host, svc.Hostname)
}

// VisibleServices returns the services p can reach: those exported to its
// namespace and, when a Sidecar resource applies (never to gateways, as in
// Istio), admitted by one of its egress listeners' hosts. Order is the
// registry's (by hostname).
func VisibleServices(s *model.Snapshot, p *model.Proxy) []registry.Service {
	var sc *model.Config
	if p.Type != model.Router {
		sc = sidecarFor(s, p)
	}
	var egress []string
	if sc != nil {
		for _, e := range sc.Spec.(*networking.Sidecar).GetEgress() {
			egress = append(egress, e.GetHosts()...)
		}
	}
	var out []registry.Service
	for i := range s.Services() {
		svc := &s.Services()[i]
		if !exportedTo(svc.ExportTo, svc.Namespace, p.Namespace) {
			continue
		}
		if sc != nil {
			allowed := false
			for _, e := range egress {
				if egressAllows(e, svc, p.Namespace) {
					allowed = true
					break
				}
			}
			if !allowed {
				continue
			}
		}
		out = append(out, *svc)
	}
	return out
}
