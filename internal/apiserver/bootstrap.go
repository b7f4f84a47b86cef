package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/weftmesh/weft/internal/apiserver/rbac"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
)

// DefaultNamespaces exist on every weft server: "default" as in Kubernetes,
// "istio-system" as Istio's root namespace for mesh-wide policy, and
// "weft-system" for weft's own objects.
var DefaultNamespaces = []string{"default", "istio-system", "weft-system"}

// Bootstrap creates what a fresh store needs: the default namespaces, the
// built-in ClusterRoles and their bindings. Existing objects are left
// untouched, so operators may edit them and several replicas may race here.
func (s *Server) Bootstrap(ctx context.Context) error {
	var objs []any
	for _, ns := range DefaultNamespaces {
		objs = append(objs, map[string]any{"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": ns}, "status": map[string]any{"phase": "Active"}})
	}
	for _, cr := range rbac.BootstrapClusterRoles() {
		objs = append(objs, cr)
	}
	for _, crb := range rbac.BootstrapClusterRoleBindings() {
		objs = append(objs, crb)
	}
	for _, v := range objs {
		raw, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		var o object
		if err := json.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		k, err := resource.ByKind(str(o, "apiVersion"), str(o, "kind"))
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		m := meta(o)
		m["uid"] = uuid.NewString()
		m["creationTimestamp"] = s.opts.Clock().UTC().Format(time.RFC3339)
		m["generation"] = 1
		if es := k.Validate(o); len(es) > 0 {
			return fmt.Errorf("bootstrap: built-in %s %s is invalid: %w", k.Kind, str(m, "name"), es)
		}
		value, err := encodeForStorage(k, o)
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		if _, err := s.store.Create(ctx, k.Key("", str(m, "name")), value); err != nil && !errors.Is(err, store.ErrExists) {
			return fmt.Errorf("bootstrap: creating %s %s: %w", k.Kind, str(m, "name"), err)
		}
	}
	return nil
}
