package apiserver

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/apiserver/authn"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TokenRequest is the body of POST /weft/v1/tokens.
type TokenRequest struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	// TTL is a Go duration ("24h"); empty or "0" means no expiry.
	TTL string `json:"ttl,omitempty"`
}

// TokenResponse is the reply to a token request. Token is shown only once.
type TokenResponse struct {
	Token  string            `json:"token"`
	Record authn.TokenRecord `json:"record"`
}

// handleTokens serves the token API: POST creates, GET lists (without
// secrets), DELETE /weft/v1/tokens/<id> revokes. RBAC governs it as the
// non-resource URL /weft/v1/tokens (verbs post, get, delete).
func (s *Server) handleTokens(w http.ResponseWriter, r *http.Request) {
	if s.tokens == nil {
		s.writeError(w, r, newError(http.StatusNotFound, metav1.StatusReasonNotFound, "the token API is not enabled"))
		return
	}
	id := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/weft/v1/tokens"), "/")
	switch {
	case r.Method == http.MethodPost && id == "":
		var req TokenRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			s.writeError(w, r, errBadRequest("invalid token request: %v", err))
			return
		}
		var ttl time.Duration
		if req.TTL != "" {
			d, err := time.ParseDuration(req.TTL)
			if err != nil || d < 0 {
				s.writeError(w, r, errBadRequest("invalid ttl %q: use a Go duration such as 24h or 30m", req.TTL))
				return
			}
			ttl = d
		}
		tok, rec, err := s.tokens.Issue(r.Context(), req.User, req.Groups, ttl)
		if err != nil {
			s.writeError(w, r, errBadRequest("%v", err))
			return
		}
		rec.SHA256 = ""
		writeJSON(w, http.StatusCreated, TokenResponse{Token: tok, Record: rec})
	case r.Method == http.MethodGet && id == "":
		recs, err := s.tokens.List(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		for i := range recs {
			recs[i].SHA256 = "" // not even the hash leaves the server
		}
		writeJSON(w, http.StatusOK, map[string]any{"items": recs})
	case r.Method == http.MethodDelete && id != "":
		if err := s.tokens.Revoke(r.Context(), id); err != nil {
			s.writeError(w, r, newError(http.StatusNotFound, metav1.StatusReasonNotFound, "token %q: %v", id, err))
			return
		}
		writeJSON(w, http.StatusOK, metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusSuccess})
	default:
		s.writeError(w, r, newError(http.StatusMethodNotAllowed, metav1StatusReasonMethodNotAllowed, "method %s is not allowed on %s", r.Method, r.URL.Path))
	}
}
