package apiserver

import (
	"net/http"
	"runtime"
	"strings"

	"github.com/weftmesh/weft/internal/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var allVerbs = metav1.Verbs{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}

func (s *Server) handleCoreVersions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, metav1.APIVersions{
		TypeMeta: metav1.TypeMeta{Kind: "APIVersions"},
		Versions: []string{"v1"},
		ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{
			{ClientCIDR: "0.0.0.0/0", ServerAddress: r.Host},
		},
	})
}

func resourceList(group, version string) metav1.APIResourceList {
	list := metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: resource.GroupVersion(group, version),
		APIResources: []metav1.APIResource{},
	}
	for _, k := range resource.InGroupVersion(group, version) {
		list.APIResources = append(list.APIResources, metav1.APIResource{
			Name: k.Resource, SingularName: k.Singular, Namespaced: k.Namespaced,
			Kind: k.Kind, Verbs: allVerbs, ShortNames: k.ShortNames, Categories: k.Categories,
		})
	}
	return list
}

func (s *Server) handleResourceList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, resourceList("", "v1"))
}

func apiGroup(group string) metav1.APIGroup {
	g := metav1.APIGroup{TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}, Name: group}
	for _, v := range resource.GroupVersions(group) {
		g.Versions = append(g.Versions, metav1.GroupVersionForDiscovery{GroupVersion: group + "/" + v, Version: v})
	}
	g.PreferredVersion = g.Versions[0]
	return g
}

func (s *Server) handleGroups(w http.ResponseWriter, r *http.Request) {
	list := metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}}
	for _, g := range resource.Groups() {
		list.Groups = append(list.Groups, apiGroup(g))
	}
	writeJSON(w, http.StatusOK, list)
}

// handleAPIs serves /apis/<group> and /apis/<group>/<version>.
func (s *Server) handleAPIs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/apis/"), "/"), "/")
	group := parts[0]
	if len(resource.GroupVersions(group)) == 0 || len(parts) > 2 {
		s.writeError(w, r, newError(http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource"))
		return
	}
	if len(parts) == 1 {
		writeJSON(w, http.StatusOK, apiGroup(group))
		return
	}
	if len(resource.InGroupVersion(group, parts[1])) == 0 {
		s.writeError(w, r, newError(http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource"))
		return
	}
	writeJSON(w, http.StatusOK, resourceList(group, parts[1]))
}

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{
		"major": "1", "minor": "32", "gitVersion": "v1.32.0-weft-" + s.opts.Version,
		"goVersion": runtime.Version(), "compiler": runtime.Compiler, "platform": runtime.GOOS + "/" + runtime.GOARCH,
	})
}

func (s *Server) handleOpenAPINotFound(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, newError(http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource"))
}
