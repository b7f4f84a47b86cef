package analyze

import (
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/pilot/translate"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/serviceentry"
	networking "istio.io/api/networking/v1alpha3"
)

// notAsInIstio is weft's own code: discovery warned, translating the
// config for a sidecar, that it skips or changes something Istio would
// act on (a field weft does not support, a conflict it resolves).
var notAsInIstio = msgType{"WEFT0001", "TranslationWarning", Warning}

// keyed matches the object a translation warning starts with:
// "VirtualService/default/reviews: …" or "RequestAuthentication ns/name: …".
var keyed = regexp.MustCompile(`^([A-Za-z]+)[/ ]([a-z0-9.-]+)/([a-z0-9.-]+): (.+)$`)

// translationWarnings translates the config for a sidecar of every
// workload the objects define (WorkloadEntries and ServiceEntry
// endpoints, by namespace and labels) and one unlabelled sidecar per
// namespace, against the registry the ServiceEntries make, and reports
// discovery's warnings once each, about the object they name (else about
// the namespace's sidecars). others holds the services of the other
// registries (Consul, Nomad), as discovery has them.
func translationWarnings(configs []*model.Config, mesh model.Mesh, others registry.State) []Message {
	var entries []serviceentry.Entry
	type proxy struct {
		ns     string
		labels map[string]string
		ip     string
	}
	var proxies []proxy
	namespaces := map[string]bool{}
	for _, c := range configs {
		namespaces[c.Namespace] = true
		switch spec := c.Spec.(type) {
		case *networking.ServiceEntry:
			entries = append(entries, serviceentry.Entry{Namespace: c.Namespace, Name: c.Name, Labels: c.Labels, ServiceEntry: spec})
			for _, e := range spec.GetEndpoints() {
				proxies = append(proxies, proxy{c.Namespace, e.GetLabels(), e.GetAddress()})
			}
		case *networking.WorkloadEntry:
			entries = append(entries, serviceentry.Entry{Namespace: c.Namespace, Name: c.Name, Labels: c.Labels, WorkloadEntry: spec})
			proxies = append(proxies, proxy{c.Namespace, spec.GetLabels(), spec.GetAddress()})
		}
	}
	// A sidecar of each namespace, and one for each selector, as if the
	// workload it was written for ran.
	for _, ns := range slices.Sorted(maps.Keys(namespaces)) {
		proxies = append(proxies, proxy{ns, nil, "10.255.255.254"})
	}
	for _, c := range configs {
		if sel := selectorOf(c); len(sel) > 0 {
			proxies = append(proxies, proxy{c.Namespace, sel, "10.255.255.254"})
		}
	}
	agg := registry.NewAggregator()
	agg.Update(serviceentry.SourceName, serviceentry.StateOf(entries))
	agg.Update("others", others)
	snap := model.NewSnapshot("analyze", mesh, configs, agg.Snapshot())

	seen := map[string]bool{}
	var out []Message
	for _, p := range proxies {
		ip := p.ip
		if !isIP(ip) {
			ip = "10.255.255.254" // a DNS name or Unix socket: any address serves here
		}
		r := translate.Build(snap, &model.Proxy{ID: "sidecar~" + ip + "~analyze." + p.ns + "~" + p.ns + ".svc." + mesh.DomainSuffix,
			Type: model.Sidecar, Namespace: p.ns, Labels: p.labels, IPs: []string{ip}})
		for _, w := range r.Warnings {
			if seen[w] {
				continue
			}
			seen[w] = true
			if m := keyed.FindStringSubmatch(w); m != nil {
				out = append(out, notAsInIstio.New(m[1], m[2], m[3], "%s", m[4]))
				continue
			}
			out = append(out, notAsInIstio.New("Sidecar", p.ns, "(the namespace's sidecars)", "%s", w))
		}
	}
	slices.SortFunc(out, func(a, b Message) int { return strings.Compare(a.Text, b.Text) })
	return out
}

func isIP(s string) bool { return net.ParseIP(s) != nil }
