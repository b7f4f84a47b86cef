package apiserver

import (
	"bytes"
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// protobufMagic starts every Kubernetes protobuf-encoded body.
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

// protoMessage is what the generated k8s.io/api types implement.
type protoMessage interface {
	Unmarshal([]byte) error
}

// builtinProto returns an empty Go value for the Kubernetes kinds kubectl
// may send as protobuf (its built-in types); Istio kinds always come as JSON.
func builtinProto(kind string) protoMessage {
	switch kind {
	case "Namespace":
		return &corev1.Namespace{}
	case "Secret":
		return &corev1.Secret{}
	case "Role":
		return &rbacv1.Role{}
	case "ClusterRole":
		return &rbacv1.ClusterRole{}
	case "RoleBinding":
		return &rbacv1.RoleBinding{}
	case "ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}
	}
	return nil
}

// decodeProtobuf turns an application/vnd.kubernetes.protobuf body into the
// same JSON-shaped object a JSON body would give.
func decodeProtobuf(raw []byte) (object, error) {
	if !bytes.HasPrefix(raw, protobufMagic) {
		return nil, errBadRequest("protobuf body does not start with the Kubernetes magic prefix")
	}
	var u runtime.Unknown
	if err := u.Unmarshal(raw[len(protobufMagic):]); err != nil {
		return nil, errBadRequest("invalid protobuf envelope: %v", err)
	}
	msg := builtinProto(u.Kind)
	if msg == nil {
		return nil, errBadRequest("protobuf is only accepted for Kubernetes built-in kinds, not %q: send JSON", u.Kind)
	}
	if err := msg.Unmarshal(u.Raw); err != nil {
		return nil, errBadRequest("invalid protobuf %s: %v", u.Kind, err)
	}
	js, err := json.Marshal(msg)
	if err != nil {
		return nil, errBadRequest("re-encoding %s: %v", u.Kind, err)
	}
	var o object
	if err := json.Unmarshal(js, &o); err != nil {
		return nil, errBadRequest("re-encoding %s: %v", u.Kind, err)
	}
	o["apiVersion"], o["kind"] = u.APIVersion, u.Kind
	dropEmpty(o)
	return o, nil
}

// dropEmpty removes the null and empty values Go's encoding of the typed
// structs adds (creationTimestamp: null, status: {}), so the object reads
// as if the client had sent only what it set.
func dropEmpty(o map[string]any) {
	for k, v := range o {
		switch x := v.(type) {
		case nil:
			delete(o, k)
		case map[string]any:
			dropEmpty(x)
			if len(x) == 0 {
				delete(o, k)
			}
		}
	}
}
