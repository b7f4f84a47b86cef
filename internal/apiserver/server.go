// Package apiserver serves weft's Kubernetes-compatible REST API for mesh
// configuration: discovery documents, create/get/list/update/patch/delete,
// watch with bookmarks, server-side dry run, Table output for kubectl, bearer
// token and client certificate authentication, and RBAC authorization. All
// state lives in a store.Store; the server keeps none of its own, so any
// number of replicas can share one store.
package apiserver

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/apiserver/authn"
	"github.com/weftmesh/weft/internal/apiserver/rbac"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// Authenticator finds who sent a request.
type Authenticator interface {
	AuthenticateRequest(r *http.Request) (authn.User, error)
}

// Authorizer decides whether a user may do what a request asks.
type Authorizer interface {
	Authorize(ctx context.Context, a rbac.Attributes) (rbac.Decision, error)
}

// TokenIssuer creates and manages bearer tokens (the /weft/v1/tokens API).
type TokenIssuer interface {
	Issue(ctx context.Context, user string, groups []string, ttl time.Duration) (string, authn.TokenRecord, error)
	List(ctx context.Context) ([]authn.TokenRecord, error)
	Revoke(ctx context.Context, id string) error
}

// Options configure a Server.
type Options struct {
	// BookmarkInterval is the least time between two BOOKMARK events on a
	// watch that asked for them. Default 10s.
	BookmarkInterval time.Duration
	// MaxBodyBytes limits request bodies. Default 3 MiB (as Kubernetes).
	MaxBodyBytes int64
	// Clock returns the current time; default time.Now.
	Clock func() time.Time
	// Version is reported by /version.
	Version string
	// Debug, if set, serves pilot's /debug/* endpoints at
	// /weft/v1/debug/* (RBAC: non-resource URL, get).
	Debug http.Handler
	// Extra handlers mounted at path and path+"/" (non-resource URLs,
	// governed by RBAC like every other), e.g. the CA's token API.
	Extra map[string]http.Handler
}

// Server is the API server's HTTP handler.
type Server struct {
	store  store.Store
	authn  Authenticator
	authz  Authorizer
	tokens TokenIssuer
	log    *slog.Logger
	opts   Options
	mux    *http.ServeMux
}

// New builds a Server over st. authenticator and authorizer are required;
// tokens may be nil (the token API is then not served).
func New(st store.Store, authenticator Authenticator, authorizer Authorizer, tokens TokenIssuer, log *slog.Logger, opts Options) *Server {
	if opts.BookmarkInterval <= 0 {
		opts.BookmarkInterval = 10 * time.Second
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 3 << 20
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	s := &Server{store: st, authn: authenticator, authz: authorizer, tokens: tokens, log: log, opts: opts, mux: http.NewServeMux()}
	s.routes()
	return s
}

func (s *Server) routes() {
	s.mux.HandleFunc("/api", s.handleCoreVersions)
	s.mux.HandleFunc("/api/v1", s.handleResourceList)
	s.mux.HandleFunc("/apis", s.handleGroups)
	s.mux.HandleFunc("/apis/", s.handleAPIs)
	s.mux.HandleFunc("/version", s.handleVersion)
	s.mux.HandleFunc("/openapi/v2", s.handleOpenAPINotFound)
	s.mux.HandleFunc("/openapi/v3", s.handleOpenAPIV3)
	s.mux.HandleFunc("/openapi/v3/", s.handleOpenAPIV3)
	s.mux.HandleFunc("/weft/v1/tokens", s.handleTokens)
	s.mux.HandleFunc("/weft/v1/tokens/", s.handleTokens)
	for path, h := range s.opts.Extra {
		s.mux.Handle(path, h)
		s.mux.Handle(path+"/", h)
	}
	if s.opts.Debug != nil {
		s.mux.Handle("/weft/v1/debug/", http.StripPrefix("/weft/v1", s.opts.Debug))
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, newError(http.StatusNotFound, "NotFound", "the server could not find the requested resource"))
	})
}

type userKey struct{}

// ServeHTTP authenticates, authorizes and dispatches a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/livez" {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok"))
		return
	}
	user, err := s.authn.AuthenticateRequest(r)
	if err != nil {
		s.log.Debug("authentication failed", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
		s.writeError(w, r, newError(http.StatusUnauthorized, "Unauthorized", "Unauthorized"))
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), userKey{}, user))
	info, perr := parseRequest(r)
	if perr != nil {
		s.writeError(w, r, perr)
		return
	}
	attrs := info.attributes(user)
	dec, err := s.authz.Authorize(r.Context(), attrs)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !dec.Allowed {
		s.writeError(w, r, forbidden(info, user))
		return
	}
	if info.kind == nil {
		s.mux.ServeHTTP(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	s.serveResource(w, r, info)
}

func forbidden(info *requestInfo, user authn.User) *apiError {
	if info.kind == nil {
		return newError(http.StatusForbidden, "Forbidden", "forbidden: User %q cannot %s path %q", user.Name, info.verb, info.path)
	}
	k := info.kind
	scope := "at the cluster scope"
	if info.namespace != "" {
		scope = "in the namespace " + `"` + info.namespace + `"`
	}
	subject := k.GroupResource()
	if info.name != "" {
		subject += ` "` + info.name + `"`
	}
	return newError(http.StatusForbidden, "Forbidden", "%s is forbidden: User %q cannot %s resource %q in API group %q %s",
		subject, user.Name, info.verb, k.Resource, k.Group, scope).withDetails(k, info.name)
}

// requestInfo is what a request is about.
type requestInfo struct {
	path        string
	verb        string
	kind        *resource.Kind
	version     string
	namespace   string
	name        string
	subresource string
}

func (i *requestInfo) attributes(u authn.User) rbac.Attributes {
	a := rbac.Attributes{User: u.Name, Groups: u.Groups, Verb: i.verb, Path: i.path}
	if i.kind != nil {
		a.ResourceRequest = true
		a.APIGroup, a.Resource, a.Subresource = i.kind.Group, i.kind.Resource, i.subresource
		a.Namespace, a.Name = i.namespace, i.name
	}
	return a
}

// parseRequest turns a URL into a requestInfo: a resource request under
// /api/v1 or /apis/<group>/<version>, or a non-resource request.
func parseRequest(r *http.Request) (*requestInfo, *apiError) {
	info := &requestInfo{path: r.URL.Path, verb: strings.ToLower(r.Method)}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var group, version string
	var rest []string
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		version, rest = parts[1], parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		group, version, rest = parts[1], parts[2], parts[3:]
	default:
		return info, nil
	}
	if rest[0] == "namespaces" && len(rest) >= 3 {
		info.namespace = rest[1]
		rest = rest[2:]
	}
	k, ok := resource.ByResource(group, version, rest[0])
	if !ok {
		return nil, newError(http.StatusNotFound, "NotFound", "the server could not find the requested resource (%s %s)", r.Method, r.URL.Path)
	}
	info.kind, info.version = k, version
	if len(rest) > 1 {
		info.name = rest[1]
	}
	if len(rest) > 2 {
		info.subresource = strings.Join(rest[2:], "/")
	}
	if !k.Namespaced && info.namespace != "" {
		return nil, errBadRequest("%s is not namespaced", k.GroupResource())
	}
	if k.Resource == "namespaces" && info.name != "" {
		// As in Kubernetes, a namespace is in its own namespace for RBAC,
		// so a RoleBinding in "team" lets its subjects get namespace "team".
		info.namespace = info.name
	}
	q := r.URL.Query()
	if k.Namespaced && info.namespace == "" && (info.name != "" || r.Method == http.MethodPost) {
		return nil, errBadRequest("%s is namespaced: use %s/namespaces/{namespace}/%s", k.GroupResource(), apiPrefix(group, version), k.Resource)
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		switch {
		case info.name != "":
			info.verb = "get"
		case q.Get("watch") == "1" || q.Get("watch") == "true":
			info.verb = "watch"
		default:
			info.verb = "list"
		}
	case http.MethodPost:
		info.verb = "create"
	case http.MethodPut:
		info.verb = "update"
	case http.MethodPatch:
		info.verb = "patch"
	case http.MethodDelete:
		info.verb = "delete"
		if info.name == "" {
			info.verb = "deletecollection"
		}
	default:
		return nil, newError(http.StatusMethodNotAllowed, metav1StatusReasonMethodNotAllowed, "method %s is not allowed", r.Method)
	}
	return info, nil
}

const metav1StatusReasonMethodNotAllowed = "MethodNotAllowed"

// apiPrefix is the URL prefix of a group version.
func apiPrefix(group, version string) string {
	if group == "" {
		return "/api/" + version
	}
	return "/apis/" + group + "/" + version
}
