package apiserver

import (
	"net/http"
	"strings"

	"github.com/weftmesh/weft/internal/resource"
)

// handleOpenAPIV3 serves just enough OpenAPI v3 for kubectl: the root index
// of group versions and, per group version, each kind's PATCH operation
// declaring the fieldValidation query parameter. That tells kubectl to leave
// validation to the server (which always validates strictly against
// istio.io/api and k8s.io/api types) instead of downloading schemas. No
// component schemas are published, so kubectl computes JSON merge patches.
func (s *Server) handleOpenAPIV3(w http.ResponseWriter, r *http.Request) {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/openapi/v3"), "/")
	if rest == "" {
		paths := map[string]any{}
		add := func(gv string) { paths[gv] = map[string]any{"serverRelativeURL": "/openapi/v3/" + gv} }
		add("api/v1")
		for _, g := range resource.Groups() {
			for _, v := range resource.GroupVersions(g) {
				add("apis/" + g + "/" + v)
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"paths": paths})
		return
	}
	var group, version string
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 2 && parts[0] == "api":
		version = parts[1]
	case len(parts) == 3 && parts[0] == "apis":
		group, version = parts[1], parts[2]
	default:
		s.handleOpenAPINotFound(w, r)
		return
	}
	kinds := resource.InGroupVersion(group, version)
	if len(kinds) == 0 {
		s.handleOpenAPINotFound(w, r)
		return
	}
	params := []any{
		map[string]any{"name": "fieldValidation", "in": "query", "schema": map[string]any{"type": "string", "uniqueItems": true}},
		map[string]any{"name": "dryRun", "in": "query", "schema": map[string]any{"type": "string", "uniqueItems": true}},
	}
	paths := map[string]any{}
	for _, k := range kinds {
		p := apiPrefix(group, version)
		if k.Namespaced {
			p += "/namespaces/{namespace}"
		}
		p += "/" + k.Resource + "/{name}"
		gvk := map[string]any{"group": group, "version": version, "kind": k.Kind}
		paths[p] = map[string]any{"patch": map[string]any{
			"operationId": "patch" + k.Kind, "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch",
			"parameters": params,
			"responses":  map[string]any{"200": map[string]any{"description": "OK"}},
		}}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"openapi": "3.0.0",
		"info":    map[string]any{"title": "weft", "version": s.opts.Version},
		"paths":   paths,
	})
}
