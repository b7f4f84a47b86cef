package apiserver

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// object is a decoded API object: apiVersion, kind, metadata and the rest.
type object = map[string]any

func meta(o object) map[string]any {
	m, _ := o["metadata"].(map[string]any)
	if m == nil {
		m = map[string]any{}
		o["metadata"] = m
	}
	return m
}

func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// decodeBody reads a JSON or YAML request body into an object.
func decodeBody(r *http.Request) (object, error) {
	raw, err := readBody(r)
	if err != nil {
		return nil, err
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/vnd.kubernetes.protobuf" {
		return decodeProtobuf(raw)
	}
	if ct == "application/yaml" || ct == "application/apply-patch+yaml" {
		if raw, err = yaml.YAMLToJSON(raw); err != nil {
			return nil, errBadRequest("invalid YAML body: %v", err)
		}
	}
	var o object
	if err := json.Unmarshal(raw, &o); err != nil || o == nil {
		return nil, errBadRequest("the request body is not a JSON object: %v", err)
	}
	return o, nil
}

// decodeStored decodes a stored value and stamps it with its revision and
// the API version the client asked for.
func decodeStored(kv store.KV, k *resource.Kind, version string) (object, error) {
	var o object
	if err := json.Unmarshal(kv.Value, &o); err != nil {
		return nil, fmt.Errorf("decoding stored %s %s: %w", k.Kind, kv.Key, err)
	}
	o["apiVersion"] = resource.GroupVersion(k.Group, version)
	o["kind"] = k.Kind
	meta(o)["resourceVersion"] = strconv.FormatInt(kv.ModRevision, 10)
	return o, nil
}

// encodeForStorage returns the stored form: storage apiVersion, no
// resourceVersion (that is the store's ModRevision), no managedFields.
func encodeForStorage(k *resource.Kind, o object) ([]byte, error) {
	c := shallowCopy(o)
	c["apiVersion"] = k.APIVersion()
	c["kind"] = k.Kind
	m := shallowCopy(meta(o))
	delete(m, "resourceVersion")
	delete(m, "managedFields")
	delete(m, "selfLink")
	c["metadata"] = m
	return json.Marshal(c)
}

func shallowCopy(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// deepCopy copies a JSON-shaped value.
func deepCopy(o object) object {
	raw, _ := json.Marshal(o)
	var c object
	_ = json.Unmarshal(raw, &c)
	return c
}

// specOf is everything except metadata and status: what generation counts.
func specOf(o object) map[string]any {
	c := map[string]any{}
	for k, v := range o {
		switch k {
		case "metadata", "status", "apiVersion", "kind":
		default:
			c[k] = v
		}
	}
	return c
}

func randomSuffix(n int) string {
	const letters = "bcdfghjklmnpqrstvwxz2456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// prepareNew checks and fills in a new object's identity and metadata, then
// normalizes and validates it. It returns the warnings to send back.
func (s *Server) prepareNew(info *requestInfo, o object) ([]string, error) {
	k := info.kind
	if err := checkTypeMeta(info, o); err != nil {
		return nil, err
	}
	m := meta(o)
	if ns := str(m, "namespace"); k.Namespaced {
		if ns != "" && ns != info.namespace {
			return nil, errBadRequest("the namespace of the provided object (%s) does not match the namespace sent on the request (%s)", ns, info.namespace)
		}
		m["namespace"] = info.namespace
	} else {
		delete(m, "namespace")
	}
	if str(m, "name") == "" && str(m, "generateName") != "" {
		m["name"] = str(m, "generateName") + randomSuffix(5)
	}
	if err := k.ValidateName(str(m, "name")); err != nil {
		return nil, errInvalid(k, str(m, "name"), resource.FieldErrors{{Field: "metadata.name", Detail: strings.TrimPrefix(err.Error(), "metadata.name: ")}})
	}
	if info.name != "" && info.name != str(m, "name") {
		return nil, errBadRequest("the name of the object (%s) does not match the name on the URL (%s)", str(m, "name"), info.name)
	}
	m["uid"] = uuid.NewString()
	m["creationTimestamp"] = s.opts.Clock().UTC().Format(time.RFC3339)
	m["generation"] = 1
	delete(m, "resourceVersion")
	delete(m, "deletionTimestamp")
	return s.finish(info, o)
}

// finish applies per-kind defaults, normalizes and validates.
func (s *Server) finish(info *requestInfo, o object) ([]string, error) {
	k := info.kind
	switch k.Kind {
	case "Secret":
		mergeStringData(o)
		if str(o, "type") == "" {
			o["type"] = "Opaque"
		}
	case "Namespace":
		o["status"] = map[string]any{"phase": "Active"}
	}
	warnings := k.Normalize(o)
	if es := k.Validate(o); len(es) > 0 {
		return nil, errInvalid(k, str(meta(o), "name"), es)
	}
	return warnings, nil
}

func mergeStringData(o object) {
	sd, ok := o["stringData"].(map[string]any)
	if !ok {
		delete(o, "stringData")
		return
	}
	data, _ := o["data"].(map[string]any)
	if data == nil {
		data = map[string]any{}
	}
	for k, v := range sd {
		if s, ok := v.(string); ok {
			data[k] = base64.StdEncoding.EncodeToString([]byte(s))
		}
	}
	o["data"] = data
	delete(o, "stringData")
}

func checkTypeMeta(info *requestInfo, o object) error {
	k := info.kind
	av, kind := str(o, "apiVersion"), str(o, "kind")
	if kind != "" && kind != k.Kind {
		return errBadRequest("the kind of the object (%s) does not match the resource %s on the URL", kind, k.GroupResource())
	}
	if av != "" && av != resource.GroupVersion(k.Group, info.version) {
		if bk, err := resource.ByKind(av, k.Kind); err != nil || bk != k {
			return errBadRequest("the apiVersion of the object (%s) does not match the URL (%s)", av, resource.GroupVersion(k.Group, info.version))
		}
	}
	o["apiVersion"] = resource.GroupVersion(k.Group, info.version)
	o["kind"] = k.Kind
	return nil
}

// prepareUpdate carries the server-owned metadata of old into o and bumps
// generation when the spec changed.
func (s *Server) prepareUpdate(info *requestInfo, old, o object) ([]string, error) {
	if err := checkTypeMeta(info, o); err != nil {
		return nil, err
	}
	om, m := meta(old), meta(o)
	if name := str(m, "name"); name != "" && name != info.name {
		return nil, errBadRequest("the name of the object (%s) does not match the name on the URL (%s)", name, info.name)
	}
	if ns := str(m, "namespace"); info.kind.Namespaced && ns != "" && ns != info.namespace {
		return nil, errBadRequest("the namespace of the provided object (%s) does not match the namespace sent on the request (%s)", ns, info.namespace)
	}
	if uid := str(m, "uid"); uid != "" && uid != str(om, "uid") {
		return nil, errConflict(info.kind, info.name)
	}
	m["name"] = str(om, "name")
	if info.kind.Namespaced {
		m["namespace"] = str(om, "namespace")
	}
	for _, f := range []string{"uid", "creationTimestamp", "generation"} {
		m[f] = om[f]
	}
	if info.kind.NewSpec != nil {
		// Istio kinds have a status subresource: the main resource
		// cannot change status.
		if st, ok := old["status"]; ok {
			o["status"] = st
		} else {
			delete(o, "status")
		}
	}
	warnings, err := s.finish(info, o)
	if err != nil {
		return nil, err
	}
	if !reflect.DeepEqual(jsonRoundTrip(specOf(old)), jsonRoundTrip(specOf(o))) {
		gen, _ := om["generation"].(float64)
		m["generation"] = int64(gen) + 1
	}
	return warnings, nil
}

func jsonRoundTrip(v any) any {
	raw, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(raw, &out)
	return out
}

func parseRV(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errBadRequest("invalid resourceVersion %q: must be a non-negative integer", s)
	}
	return n, nil
}

func setWarnings(w http.ResponseWriter, warnings []string) {
	for _, wr := range warnings {
		w.Header().Add("Warning", `299 - "`+strings.ReplaceAll(wr, `"`, `'`)+`"`)
	}
}

// readBody reads the request body, mapping an oversized one to 413.
func readBody(r *http.Request) ([]byte, error) {
	raw, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, newError(http.StatusRequestEntityTooLarge, metav1.StatusReasonRequestEntityTooLarge,
			"the request body is larger than %d bytes", tooBig.Limit)
	case err != nil:
		return nil, errBadRequest("reading request body: %v", err)
	}
	return raw, nil
}
