package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
)

func (s *Server) serveResource(w http.ResponseWriter, r *http.Request, info *requestInfo) {
	if info.subresource != "" {
		s.writeError(w, r, newError(http.StatusNotFound, metav1.StatusReasonNotFound, "subresource %q of %s is not served", info.subresource, info.kind.GroupResource()))
		return
	}
	var err error
	switch info.verb {
	case "get":
		err = s.get(w, r, info)
	case "list":
		err = s.list(w, r, info)
	case "watch":
		err = s.watch(w, r, info)
	case "create":
		err = s.create(w, r, info)
	case "update":
		err = s.update(w, r, info)
	case "patch":
		err = s.patch(w, r, info)
	case "delete":
		err = s.delete(w, r, info)
	case "deletecollection":
		err = s.deleteCollection(w, r, info)
	}
	if err != nil {
		s.writeError(w, r, err)
	}
}

func dryRun(r *http.Request) (bool, error) {
	vals := r.URL.Query()["dryRun"]
	for _, v := range vals {
		if v != "All" {
			return false, errBadRequest("invalid dryRun %q: only \"All\" is supported", v)
		}
	}
	return len(vals) > 0, nil
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	kv, err := s.store.Get(r.Context(), info.kind.Key(info.namespace, info.name))
	if err != nil {
		return fromStore(err, info.kind, info.name)
	}
	o, err := decodeStored(kv, info.kind, info.version)
	if err != nil {
		return err
	}
	if wantsTable(r) {
		writeJSON(w, http.StatusOK, s.table(r, info.kind, []object{o}, ""))
		return nil
	}
	writeJSON(w, http.StatusOK, o)
	return nil
}

// selectors parses labelSelector and fieldSelector.
func selectors(r *http.Request) (labels.Selector, fields.Selector, error) {
	q := r.URL.Query()
	ls, err := labels.Parse(q.Get("labelSelector"))
	if err != nil {
		return nil, nil, errBadRequest("invalid labelSelector: %v", err)
	}
	fs, err := fields.ParseSelector(q.Get("fieldSelector"))
	if err != nil {
		return nil, nil, errBadRequest("invalid fieldSelector: %v", err)
	}
	for _, req := range fs.Requirements() {
		switch req.Field {
		case "metadata.name", "metadata.namespace":
		default:
			return nil, nil, errBadRequest("field label not supported: %s (supported: metadata.name, metadata.namespace)", req.Field)
		}
	}
	return ls, fs, nil
}

func matches(o object, ls labels.Selector, fs fields.Selector) bool {
	m := meta(o)
	if !fs.Empty() && !fs.Matches(fields.Set{"metadata.name": str(m, "name"), "metadata.namespace": str(m, "namespace")}) {
		return false
	}
	if ls.Empty() {
		return true
	}
	set := labels.Set{}
	if lm, ok := m["labels"].(map[string]any); ok {
		for k, v := range lm {
			set[k], _ = v.(string)
		}
	}
	return ls.Matches(set)
}

// listObjects reads and filters the objects of a list request.
func (s *Server) listObjects(ctx context.Context, info *requestInfo, ls labels.Selector, fs fields.Selector) ([]object, int64, error) {
	kvs, rev, err := s.store.List(ctx, info.kind.KeyPrefix(info.namespace))
	if err != nil {
		return nil, 0, fromStore(err, info.kind, "")
	}
	items := make([]object, 0, len(kvs))
	for _, kv := range kvs {
		o, err := decodeStored(kv, info.kind, info.version)
		if err != nil {
			return nil, 0, err
		}
		if matches(o, ls, fs) {
			items = append(items, o)
		}
	}
	return items, rev, nil
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	ls, fs, err := selectors(r)
	if err != nil {
		return err
	}
	items, rev, err := s.listObjects(r.Context(), info, ls, fs)
	if err != nil {
		return err
	}
	rv := strconv.FormatInt(rev, 10)
	if wantsTable(r) {
		writeJSON(w, http.StatusOK, s.table(r, info.kind, items, rv))
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"apiVersion": resource.GroupVersion(info.kind.Group, info.version),
		"kind":       info.kind.Kind + "List",
		"metadata":   map[string]any{"resourceVersion": rv},
		"items":      items,
	})
	return nil
}

// checkNamespace refuses writes into a namespace that does not exist.
func (s *Server) checkNamespace(ctx context.Context, info *requestInfo) error {
	if !info.kind.Namespaced {
		return nil
	}
	nsKind, _ := resource.ByResource("", "v1", "namespaces")
	kv, err := s.store.Get(ctx, nsKind.Key("", info.namespace))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound(nsKind, info.namespace)
		}
		return fromStore(err, nsKind, info.namespace)
	}
	var ns struct {
		Status struct{ Phase string } `json:"status"`
	}
	if json.Unmarshal(kv.Value, &ns) == nil && ns.Status.Phase == "Terminating" {
		return newError(http.StatusForbidden, metav1.StatusReasonForbidden,
			"%s %q is forbidden: unable to create new content in namespace %s because it is being terminated",
			info.kind.GroupResource(), info.name, info.namespace)
	}
	return nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	dry, err := dryRun(r)
	if err != nil {
		return err
	}
	o, err := decodeBody(r)
	if err != nil {
		return err
	}
	if err := s.checkNamespace(r.Context(), info); err != nil {
		return err
	}
	warnings, err := s.prepareNew(info, o)
	if err != nil {
		return err
	}
	name := str(meta(o), "name")
	setWarnings(w, warnings)
	if dry {
		if _, err := s.store.Get(r.Context(), info.kind.Key(info.namespace, name)); err == nil {
			return errAlreadyExists(info.kind, name)
		}
		writeJSON(w, http.StatusCreated, o)
		return nil
	}
	value, err := encodeForStorage(info.kind, o)
	if err != nil {
		return err
	}
	kv, err := s.store.Create(r.Context(), info.kind.Key(info.namespace, name), value)
	if err != nil {
		return fromStore(err, info.kind, name)
	}
	meta(o)["resourceVersion"] = strconv.FormatInt(kv.ModRevision, 10)
	writeJSON(w, http.StatusCreated, o)
	return nil
}

// write stores o over the stored kv with compare-and-swap on its revision,
// or only validates when dry is set, and replies with the result. A write
// that would store exactly what is there already is skipped, as in
// Kubernetes: no new resourceVersion, no watch event.
func (s *Server) write(w http.ResponseWriter, r *http.Request, info *requestInfo, o object, kv store.KV, dry bool, warnings []string) error {
	value, err := encodeForStorage(info.kind, o)
	if err != nil {
		return err
	}
	rev := kv.ModRevision
	if !dry && !bytes.Equal(value, kv.Value) {
		nkv, err := s.store.Update(r.Context(), info.kind.Key(info.namespace, info.name), value, kv.ModRevision)
		if err != nil {
			return err
		}
		rev = nkv.ModRevision
	}
	meta(o)["resourceVersion"] = strconv.FormatInt(rev, 10)
	setWarnings(w, warnings)
	writeJSON(w, http.StatusOK, o)
	return nil
}

func (s *Server) update(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	dry, err := dryRun(r)
	if err != nil {
		return err
	}
	o, err := decodeBody(r)
	if err != nil {
		return err
	}
	want, err := parseRV(str(meta(o), "resourceVersion"))
	if err != nil {
		return err
	}
	for {
		kv, err := s.store.Get(r.Context(), info.kind.Key(info.namespace, info.name))
		if err != nil {
			return fromStore(err, info.kind, info.name)
		}
		if want != 0 && kv.ModRevision != want {
			return errConflict(info.kind, info.name)
		}
		old, err := decodeStored(kv, info.kind, info.version)
		if err != nil {
			return err
		}
		c := deepCopy(o)
		warnings, err := s.prepareUpdate(info, old, c)
		if err != nil {
			return err
		}
		err = s.write(w, r, info, c, kv, dry, warnings)
		// An unconditional update that lost a race retries against the
		// new state for as long as the request lasts (every lost race is
		// another client's success); a conditional one reports it.
		if errors.Is(err, store.ErrConflict) && want == 0 && r.Context().Err() == nil {
			continue
		}
		return fromStore(err, info.kind, info.name)
	}
}

func (s *Server) patch(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	dry, err := dryRun(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	for {
		kv, err := s.store.Get(r.Context(), info.kind.Key(info.namespace, info.name))
		if err != nil {
			return fromStore(err, info.kind, info.name)
		}
		old, err := decodeStored(kv, info.kind, info.version)
		if err != nil {
			return err
		}
		cur, _ := json.Marshal(old)
		var patched []byte
		switch ct {
		case "application/merge-patch+json", "application/strategic-merge-patch+json":
			// Strategic merge patches from kubectl are applied with
			// JSON merge semantics: weft's kinds have no list merge keys
			// that would make them differ, except where noted in docs.
			patched, err = jsonpatch.MergePatch(cur, body)
		case "application/json-patch+json":
			var p jsonpatch.Patch
			if p, err = jsonpatch.DecodePatch(body); err == nil {
				patched, err = p.Apply(cur)
			}
		case "application/apply-patch+yaml":
			return newError(http.StatusUnsupportedMediaType, metav1.StatusReasonUnsupportedMediaType,
				"server-side apply is not supported; use client-side apply (kubectl apply without --server-side, or weft apply)")
		default:
			return newError(http.StatusUnsupportedMediaType, metav1.StatusReasonUnsupportedMediaType,
				"the body of the request was in an unknown format %q - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json", ct)
		}
		if err != nil {
			return errBadRequest("the patch could not be applied: %v", err)
		}
		var o object
		if err := json.Unmarshal(patched, &o); err != nil || o == nil {
			return errBadRequest("the patch produced something that is not an object")
		}
		want, err := parseRV(str(meta(o), "resourceVersion"))
		if err != nil {
			return err
		}
		if want != 0 && want != kv.ModRevision {
			return errConflict(info.kind, info.name)
		}
		warnings, err := s.prepareUpdate(info, old, o)
		if err != nil {
			return err
		}
		err = s.write(w, r, info, o, kv, dry, warnings)
		// The patched object always carries a resourceVersion (the one
		// read above, unless the patch set its own), so want != 0 does
		// not mean the client asked for a precondition. Retrying is safe
		// either way: the patch is re-applied to the new state and a
		// resourceVersion the patch itself names is checked again. As in
		// Kubernetes, retry for as long as the request lasts: every lost
		// race means another write succeeded, and a small fixed bound
		// fails patches under ordinary contention.
		if errors.Is(err, store.ErrConflict) && r.Context().Err() == nil {
			continue
		}
		return fromStore(err, info.kind, info.name)
	}
}

// deleteOptions reads the optional DeleteOptions body and query.
func deleteOptions(r *http.Request) (rv int64, uid string, err error) {
	body, _ := io.ReadAll(r.Body)
	var opts metav1.DeleteOptions
	if len(body) > 0 {
		if err := json.Unmarshal(body, &opts); err != nil {
			return 0, "", errBadRequest("invalid DeleteOptions: %v", err)
		}
	}
	if p := opts.Preconditions; p != nil {
		if p.ResourceVersion != nil {
			if rv, err = parseRV(*p.ResourceVersion); err != nil {
				return 0, "", err
			}
		}
		if p.UID != nil {
			uid = string(*p.UID)
		}
	}
	return rv, uid, nil
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	dry, err := dryRun(r)
	if err != nil {
		return err
	}
	rv, uid, err := deleteOptions(r)
	if err != nil {
		return err
	}
	key := info.kind.Key(info.namespace, info.name)
	for {
		kv, err := s.store.Get(r.Context(), key)
		if err != nil {
			return fromStore(err, info.kind, info.name)
		}
		old, err := decodeStored(kv, info.kind, info.version)
		if err != nil {
			return err
		}
		if (rv != 0 && rv != kv.ModRevision) || (uid != "" && uid != str(meta(old), "uid")) {
			return errConflict(info.kind, info.name)
		}
		if dry {
			writeJSON(w, http.StatusOK, old)
			return nil
		}
		if info.kind.Kind == "Namespace" {
			if kv, err = s.terminateNamespace(r.Context(), info, old, kv); err != nil {
				if errors.Is(err, store.ErrConflict) && rv == 0 {
					continue
				}
				return fromStore(err, info.kind, info.name)
			}
		}
		_, err = s.store.Delete(r.Context(), key, kv.ModRevision)
		if errors.Is(err, store.ErrConflict) && rv == 0 && r.Context().Err() == nil {
			continue // changed under us and no precondition: delete the new state
		}
		if err != nil {
			return fromStore(err, info.kind, info.name)
		}
		writeJSON(w, http.StatusOK, old)
		return nil
	}
}

// terminateNamespace marks ns Terminating (so no new objects are created in
// it), then deletes everything in it, as Kubernetes' namespace controller
// does. It returns the namespace's stored state to delete.
func (s *Server) terminateNamespace(ctx context.Context, info *requestInfo, old object, kv store.KV) (store.KV, error) {
	o := deepCopy(old)
	o["status"] = map[string]any{"phase": "Terminating"}
	meta(o)["deletionTimestamp"] = s.opts.Clock().UTC().Format(time.RFC3339)
	value, err := encodeForStorage(info.kind, o)
	if err != nil {
		return kv, err
	}
	if kv, err = s.store.Update(ctx, kv.Key, value, kv.ModRevision); err != nil {
		return kv, err
	}
	return kv, s.deleteNamespaceContents(ctx, info.name)
}

// deleteNamespaceContents removes every namespaced object in ns, as
// Kubernetes' namespace controller does before a namespace goes away.
func (s *Server) deleteNamespaceContents(ctx context.Context, ns string) error {
	for _, k := range resource.All() {
		if !k.Namespaced {
			continue
		}
		kvs, _, err := s.store.List(ctx, k.KeyPrefix(ns))
		if err != nil {
			return fromStore(err, k, "")
		}
		for _, kv := range kvs {
			if _, err := s.store.Delete(ctx, kv.Key, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fromStore(err, k, kv.Key)
			}
		}
	}
	return nil
}

func (s *Server) deleteCollection(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	dry, err := dryRun(r)
	if err != nil {
		return err
	}
	ls, fs, err := selectors(r)
	if err != nil {
		return err
	}
	items, rev, err := s.listObjects(r.Context(), info, ls, fs)
	if err != nil {
		return err
	}
	sort.Slice(items, func(i, j int) bool { return str(meta(items[i]), "name") < str(meta(items[j]), "name") })
	for _, o := range items {
		if dry {
			break
		}
		m := meta(o)
		if info.kind.Kind == "Namespace" {
			if err := s.deleteNamespaceContents(r.Context(), str(m, "name")); err != nil {
				return err
			}
		}
		if _, err := s.store.Delete(r.Context(), info.kind.Key(str(m, "namespace"), str(m, "name")), 0); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fromStore(err, info.kind, str(m, "name"))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"apiVersion": resource.GroupVersion(info.kind.Group, info.version),
		"kind":       info.kind.Kind + "List",
		"metadata":   map[string]any{"resourceVersion": strconv.FormatInt(rev, 10)},
		"items":      items,
	})
	return nil
}
