package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// apiError is an error with the Kubernetes Status it maps to.
type apiError struct {
	status metav1.Status
}

func (e *apiError) Error() string { return e.status.Message }

func newError(code int32, reason metav1.StatusReason, format string, args ...any) *apiError {
	return &apiError{status: metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  fmt.Sprintf(format, args...),
		Reason:   reason,
		Code:     code,
	}}
}

func (e *apiError) withDetails(k *resource.Kind, name string) *apiError {
	d := &metav1.StatusDetails{Name: name}
	if k != nil {
		d.Group, d.Kind = k.Group, k.Resource
	}
	e.status.Details = d
	return e
}

func errBadRequest(format string, args ...any) *apiError {
	return newError(http.StatusBadRequest, metav1.StatusReasonBadRequest, format, args...)
}

func errNotFound(k *resource.Kind, name string) *apiError {
	return newError(http.StatusNotFound, metav1.StatusReasonNotFound, "%s %q not found", k.GroupResource(), name).withDetails(k, name)
}

func errAlreadyExists(k *resource.Kind, name string) *apiError {
	return newError(http.StatusConflict, metav1.StatusReasonAlreadyExists, "%s %q already exists", k.GroupResource(), name).withDetails(k, name)
}

func errConflict(k *resource.Kind, name string) *apiError {
	return newError(http.StatusConflict, metav1.StatusReasonConflict,
		"Operation cannot be fulfilled on %s %q: the object has been modified; please apply your changes to the latest version and try again",
		k.GroupResource(), name).withDetails(k, name)
}

func errInvalid(k *resource.Kind, name string, es resource.FieldErrors) *apiError {
	e := newError(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, "%s %q is invalid: %s", k.Kind, name, es.Error()).withDetails(k, name)
	e.status.Details.Kind = k.Kind
	for _, fe := range es {
		e.status.Details.Causes = append(e.status.Details.Causes, metav1.StatusCause{
			Type: metav1.CauseTypeFieldValueInvalid, Message: fe.Detail, Field: fe.Field,
		})
	}
	return e
}

func errGone(format string, args ...any) *apiError {
	return newError(http.StatusGone, metav1.StatusReasonExpired, format, args...)
}

// fromStore maps store sentinels to API errors at this one boundary.
func fromStore(err error, k *resource.Kind, name string) error {
	var ae *apiError
	if k == nil {
		k = &resource.Kind{Resource: "object", Kind: "Object"}
	}
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, store.ErrNotFound):
		return errNotFound(k, name)
	case errors.Is(err, store.ErrExists):
		return errAlreadyExists(k, name)
	case errors.Is(err, store.ErrConflict):
		return errConflict(k, name)
	case errors.Is(err, store.ErrCompacted):
		return errGone("too old resource version: %v", err)
	case errors.Is(err, store.ErrFutureRevision):
		return newError(http.StatusGatewayTimeout, metav1.StatusReasonTimeout, "Too large resource version: %v", err)
	}
	return newError(http.StatusInternalServerError, metav1.StatusReasonInternalError, "Internal error occurred: %v", err)
}

// writeError writes err as a Kubernetes Status.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = fromStore(err, nil, "").(*apiError)
	}
	if ae.status.Code >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	writeJSON(w, int(ae.status.Code), ae.status)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
