package resource

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/internal/registry"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	sigsjson "sigs.k8s.io/json"
)

// FieldError is one problem with one field of an object.
type FieldError struct {
	// Field is the path, e.g. "spec.http[0].route[0].weight".
	Field string
	// Detail says what is wrong and, where possible, what would be right.
	Detail string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Detail }

// FieldErrors is every problem found in one object.
type FieldErrors []FieldError

func (es FieldErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, ", ")
}

func (es *FieldErrors) add(field, format string, args ...any) {
	*es = append(*es, FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
}

var (
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	labelValue       = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	labelName        = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
)

// ValidateName checks an object name the way Kubernetes does for this kind.
func (k *Kind) ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("metadata.name: Required value: name or generateName is required")
	}
	if k.Group == "rbac.authorization.k8s.io" {
		// RBAC names are path segments, as in Kubernetes ("system:masters").
		if name == "." || name == ".." || strings.ContainsAny(name, "/%") {
			return fmt.Errorf("metadata.name: Invalid value: %q: may not be '.' or '..' and may not contain '/' or '%%'", name)
		}
		return nil
	}
	if k.Kind == "Namespace" {
		if len(name) > 63 || !dns1123Label.MatchString(name) {
			return fmt.Errorf("metadata.name: Invalid value: %q: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character", name)
		}
		return nil
	}
	if len(name) > 253 || !dns1123Subdomain.MatchString(name) {
		return fmt.Errorf("metadata.name: Invalid value: %q: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')", name)
	}
	return nil
}

func validateLabels(es *FieldErrors, field string, labels map[string]any) {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := k
		if i := strings.LastIndex(k, "/"); i >= 0 {
			prefix := k[:i]
			name = k[i+1:]
			if len(prefix) > 253 || !dns1123Subdomain.MatchString(prefix) {
				es.add(field, "Invalid value: %q: prefix part must be a lowercase RFC 1123 subdomain", k)
				continue
			}
		}
		if len(name) > 63 || !labelName.MatchString(name) {
			es.add(field, "Invalid value: %q: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", k)
		}
		if field == "metadata.labels" {
			v, ok := labels[k].(string)
			if !ok {
				es.add(field+"."+k, "Invalid value: label values must be strings")
			} else if len(v) > 63 || !labelValue.MatchString(v) {
				es.add(field+"."+k, "Invalid value: %q: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", v)
			}
		} else if _, ok := labels[k].(string); !ok {
			es.add(field+"."+k, "Invalid value: annotation values must be strings")
		}
	}
}

// Validate checks obj (already known to be of this kind) and returns every
// problem found. It does not modify obj.
func (k *Kind) Validate(obj map[string]any) FieldErrors {
	var es FieldErrors
	md, _ := obj["metadata"].(map[string]any)
	if md == nil {
		es.add("metadata", "Required value")
		return es
	}
	if name, _ := md["name"].(string); name != "" {
		if err := k.ValidateName(name); err != nil {
			es.add("metadata.name", "%s", strings.TrimPrefix(err.Error(), "metadata.name: "))
		}
	}
	for _, f := range []string{"labels", "annotations"} {
		if v, ok := md[f]; ok && v != nil {
			m, ok := v.(map[string]any)
			if !ok {
				es.add("metadata."+f, "Invalid value: must be a map of strings")
				continue
			}
			validateLabels(&es, "metadata."+f, m)
		}
	}
	if k.Kind == "AuthorizationPolicy" {
		ann, _ := md["annotations"].(map[string]any)
		if v, ok := ann["istio.io/dry-run"].(string); ok {
			if _, err := strconv.ParseBool(v); err != nil {
				es.add("metadata.annotations[istio.io/dry-run]", `Invalid value: %q: must be "true" or "false"`, v)
			}
		}
	}
	if k.Kind == "WorkloadEntry" {
		ann, _ := md["annotations"].(map[string]any)
		if v, ok := ann[registry.AnnotationInboundPorts].(string); ok {
			if _, err := registry.ParseInboundPorts(v); err != nil {
				es.add("metadata.annotations["+registry.AnnotationInboundPorts+"]", "Invalid value: %q: %v", v, err)
			}
		}
	}
	for key := range obj {
		switch key {
		case "apiVersion", "kind", "metadata":
		default:
			if !k.allowsTopLevel(key) {
				es.add(key, "unknown field %q (%s has %s)", key, k.Kind, strings.Join(k.topLevel(), ", "))
			}
		}
	}
	if len(es) > 0 {
		return es
	}
	if k.validate != nil {
		es = append(es, k.validate(obj)...)
	}
	return es
}

func (k *Kind) topLevel() []string {
	switch {
	case k.NewSpec != nil:
		return []string{"spec", "status"}
	case k.Kind == "Namespace":
		return []string{"spec", "status"}
	case k.Kind == "Secret":
		return []string{"data", "stringData", "type", "immutable"}
	case k.Kind == "Role" || k.Kind == "ClusterRole":
		return []string{"rules", "aggregationRule"}
	default:
		return []string{"subjects", "roleRef"}
	}
}

func (k *Kind) allowsTopLevel(key string) bool {
	for _, f := range k.topLevel() {
		if f == key {
			return true
		}
	}
	return false
}

func validatorFor(k *Kind) func(map[string]any) FieldErrors {
	if k.NewSpec != nil {
		return func(obj map[string]any) FieldErrors { return validateIstio(k, obj) }
	}
	switch k.Kind {
	case "Namespace":
		return strictK8s[corev1.Namespace]
	case "Secret":
		return validateSecret
	case "Role", "ClusterRole":
		return strictK8s[rbacv1.ClusterRole]
	case "RoleBinding", "ClusterRoleBinding":
		return validateBinding
	}
	return nil
}

// strictK8s decodes obj into T rejecting unknown fields and wrong types.
func strictK8s[T any](obj map[string]any) FieldErrors {
	var es FieldErrors
	raw, err := json.Marshal(obj)
	if err != nil {
		es.add("", "cannot encode: %v", err)
		return es
	}
	var v T
	strictErrs, err := sigsjson.UnmarshalStrict(raw, &v)
	if err != nil {
		es.add("", "%v", err)
	}
	for _, e := range strictErrs {
		es.add("", "%v", e)
	}
	return es
}

func validateSecret(obj map[string]any) FieldErrors {
	es := strictK8s[corev1.Secret](withoutBinaryData(obj))
	if data, ok := obj["data"].(map[string]any); ok {
		for key, v := range data {
			s, ok := v.(string)
			if !ok {
				es.add("data."+key, "Invalid value: must be a base64-encoded string")
				continue
			}
			if _, err := base64.StdEncoding.DecodeString(s); err != nil {
				es.add("data."+key, "Invalid value: not valid base64: %v", err)
			}
		}
	}
	return es
}

// withoutBinaryData drops data so the strict decode does not try to decode
// base64 into []byte (validated separately with a clearer message).
func withoutBinaryData(obj map[string]any) map[string]any {
	out := make(map[string]any, len(obj))
	for k, v := range obj {
		if k != "data" {
			out[k] = v
		}
	}
	return out
}

func validateBinding(obj map[string]any) FieldErrors {
	es := strictK8s[rbacv1.ClusterRoleBinding](obj)
	if len(es) > 0 {
		return es
	}
	ref, _ := obj["roleRef"].(map[string]any)
	if ref == nil {
		es.add("roleRef", "Required value")
		return es
	}
	if kind, _ := ref["kind"].(string); kind != "Role" && kind != "ClusterRole" {
		es.add("roleRef.kind", "Unsupported value: %q: supported values: \"Role\", \"ClusterRole\"", kind)
	}
	if name, _ := ref["name"].(string); name == "" {
		es.add("roleRef.name", "Required value")
	}
	if obj["kind"] == "ClusterRoleBinding" && ref["kind"] == "Role" {
		es.add("roleRef.kind", "Unsupported value: \"Role\": a ClusterRoleBinding can only reference a ClusterRole")
	}
	subjects, _ := obj["subjects"].([]any)
	for i, s := range subjects {
		sm, _ := s.(map[string]any)
		kind, _ := sm["kind"].(string)
		switch kind {
		case "User", "Group", "ServiceAccount":
		default:
			es.add(fmt.Sprintf("subjects[%d].kind", i), "Unsupported value: %q: supported values: \"User\", \"Group\", \"ServiceAccount\"", kind)
		}
		if name, _ := sm["name"].(string); name == "" {
			es.add(fmt.Sprintf("subjects[%d].name", i), "Required value")
		}
	}
	return es
}

// validateIstio checks spec against the istio.io/api message (field names,
// types, enum values) and then Istio's own semantic rules.
func validateIstio(k *Kind, obj map[string]any) FieldErrors {
	var es FieldErrors
	spec, ok := obj["spec"]
	if !ok || spec == nil {
		spec = map[string]any{}
	}
	m := k.NewSpec()
	checkMessage(&es, "spec", spec, m.ProtoReflect().Descriptor())
	if len(es) > 0 {
		return es
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		es.add("spec", "cannot encode: %v", err)
		return es
	}
	if err := UnmarshalSpec(raw, m, false); err != nil {
		es.add("spec", "%v", err)
		return es
	}
	if check, ok := semanticChecks[k.Kind]; ok {
		check(&es, m)
	}
	return es
}
