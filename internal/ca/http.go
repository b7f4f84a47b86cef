package ca

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

// TokenPath is where TokenHandler is mounted in the config API server.
const TokenPath = "/weft/v1/workload-tokens"

// TokenRequest is the body of POST /weft/v1/workload-tokens.
type TokenRequest struct {
	// Namespace and Group name an existing WorkloadGroup.
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	// TTL is the token's lifetime as a Go duration ("24h"). Required.
	TTL string `json:"ttl"`
}

// TokenResponse is the reply to a TokenRequest. Token is shown only once.
type TokenResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
	// ID names the token for revocation.
	ID string `json:"id"`
	// Identity is the SPIFFE ID certificates issued with the token carry.
	Identity string `json:"identity"`
}

// apiStatus is a Kubernetes-style Status, so that weft's and kubectl's
// clients show the message.
type apiStatus struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Status     string `json:"status"`
	Message    string `json:"message,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Code       int    `json:"code"`
}

func writeStatus(w http.ResponseWriter, code int, reason, format string, args ...any) {
	st := "Failure"
	if code < 300 {
		st = "Success"
	}
	writeJSON(w, code, apiStatus{Kind: "Status", APIVersion: "v1", Status: st, Message: fmt.Sprintf(format, args...), Reason: reason, Code: code})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// TokenHandler serves the bootstrap token API, to be mounted by the config
// API server at TokenPath and TokenPath+"/" behind its authentication and
// RBAC (non-resource URL /weft/v1/workload-tokens):
//
//   - POST   /weft/v1/workload-tokens       {namespace, group, ttl} → TokenResponse (201)
//   - GET    /weft/v1/workload-tokens       {"items": [BootstrapRecord…]} (never secrets or hashes)
//   - DELETE /weft/v1/workload-tokens/<id>  revokes
func (a *Authority) TokenHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, TokenPath), "/")
		switch {
		case r.Method == http.MethodPost && id == "":
			a.createToken(w, r)
		case r.Method == http.MethodGet && id == "":
			recs, err := a.ListBootstrapTokens(r.Context())
			if err != nil {
				writeStatus(w, http.StatusInternalServerError, "InternalError", "%v", err)
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"items": recs})
		case r.Method == http.MethodDelete && id != "":
			err := a.RevokeBootstrapToken(r.Context(), id)
			switch {
			case errors.Is(err, store.ErrNotFound):
				writeStatus(w, http.StatusNotFound, "NotFound", "bootstrap token %q not found", id)
			case err != nil:
				writeStatus(w, http.StatusInternalServerError, "InternalError", "%v", err)
			default:
				writeStatus(w, http.StatusOK, "", "bootstrap token %s revoked", id)
			}
		default:
			writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "method %s is not allowed on %s", r.Method, r.URL.Path)
		}
	})
}

func (a *Authority) createToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "invalid workload token request: %v", err)
		return
	}
	if req.Namespace == "" {
		req.Namespace = "default"
	}
	if req.Group == "" {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "group is required: the WorkloadGroup the workloads join")
		return
	}
	ttl, err := time.ParseDuration(req.TTL)
	if err != nil || ttl <= 0 {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "invalid ttl %q: use a positive Go duration such as 24h or 30m", req.TTL)
		return
	}
	tok, rec, err := a.IssueBootstrapToken(r.Context(), req.Namespace, req.Group, "", ttl)
	switch {
	case errors.Is(err, ErrGroupNotFound):
		writeStatus(w, http.StatusNotFound, "NotFound", "%v", err)
		return
	case errors.Is(err, ErrInvalidIdentity), errors.Is(err, ErrInvalidTTL):
		writeStatus(w, http.StatusBadRequest, "BadRequest", "%v", err)
		return
	case err != nil:
		writeStatus(w, http.StatusInternalServerError, "InternalError", "%v", err)
		return
	}
	writeJSON(w, http.StatusCreated, TokenResponse{Token: tok, Expires: rec.Expires, ID: rec.ID, Identity: rec.Identity().SPIFFEID(a.opts.TrustDomain)})
}

// RootsPath is where RootsHandler is mounted in the config API server.
const RootsPath = "/weft/v1/ca/roots"

// RootInfo describes one root of the trust bundle.
type RootInfo struct {
	// Fingerprint is the hex SHA-256 of the DER certificate.
	Fingerprint string    `json:"fingerprint"`
	Subject     string    `json:"subject"`
	NotAfter    time.Time `json:"notAfter"`
	// Extra is true for an extra root (removable), false for a root of the
	// signing CA.
	Extra bool   `json:"extra"`
	PEM   string `json:"pem"`
}

// RootsHandler serves the trust bundle and its rotation, to be mounted at
// RootsPath and RootsPath+"/" behind authentication and RBAC (non-resource
// URL /weft/v1/ca/roots):
//
//   - GET    /weft/v1/ca/roots                {"roots": [RootInfo…]}
//   - POST   /weft/v1/ca/roots                body: PEM CA certificate(s) → adds extra roots
//   - DELETE /weft/v1/ca/roots/<fingerprint>  removes an extra root
//
// With kubectl: `kubectl get --raw /weft/v1/ca/roots`, `kubectl create
// --raw /weft/v1/ca/roots -f new-root.pem`, `kubectl delete --raw
// /weft/v1/ca/roots/<fingerprint>`.
func (a *Authority) RootsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fp := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, RootsPath), "/")
		switch {
		case r.Method == http.MethodGet && fp == "":
			own := map[string]bool{}
			for _, c := range a.ca.roots {
				own[Fingerprint(c)] = true
			}
			out := []RootInfo{}
			for _, c := range a.RootCertificates() {
				f := Fingerprint(c)
				out = append(out, RootInfo{Fingerprint: f, Subject: c.Subject.String(), NotAfter: c.NotAfter, Extra: !own[f], PEM: certPEM(c.Raw)})
			}
			writeJSON(w, http.StatusOK, map[string]any{"roots": out})
		case r.Method == http.MethodPost && fp == "":
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
			if err != nil {
				writeStatus(w, http.StatusBadRequest, "BadRequest", "reading body: %v", err)
				return
			}
			err = a.AddRoot(r.Context(), body)
			switch {
			case errors.Is(err, ErrInvalidRoot):
				writeStatus(w, http.StatusBadRequest, "BadRequest", "%v", err)
				return
			case err != nil:
				writeStatus(w, http.StatusInternalServerError, "InternalError", "%v", err)
				return
			}
			writeStatus(w, http.StatusCreated, "", "trust bundle now holds %d roots", len(a.Roots()))
		case r.Method == http.MethodDelete && fp != "":
			err := a.RemoveRoot(r.Context(), fp)
			switch {
			case errors.Is(err, ErrUnknownRoot):
				writeStatus(w, http.StatusNotFound, "NotFound", "%v", err)
			case err != nil:
				writeStatus(w, http.StatusInternalServerError, "InternalError", "%v", err)
			default:
				writeStatus(w, http.StatusOK, "", "root %s removed; trust bundle now holds %d roots", fp, len(a.Roots()))
			}
		default:
			writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "method %s is not allowed on %s", r.Method, r.URL.Path)
		}
	})
}
