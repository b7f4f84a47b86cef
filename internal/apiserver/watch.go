package apiserver

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
)

// watchEvent is one line of a watch stream.
type watchEvent struct {
	Type   string `json:"type"`
	Object any    `json:"object"`
}

// watch streams changes as newline-delimited JSON watch events, the way the
// Kubernetes API server does. resourceVersion "" or "0" first sends the
// current objects as ADDED; a version N resumes after N, or fails with 410
// Gone when N has been compacted.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, info *requestInfo) error {
	q := r.URL.Query()
	ls, fs, err := selectors(r)
	if err != nil {
		return err
	}
	rv := q.Get("resourceVersion")
	from, err := parseRV(rv)
	if err != nil {
		return err
	}
	bookmarks := q.Get("allowWatchBookmarks") == "true" || q.Get("allowWatchBookmarks") == "1"
	sendInitial := q.Get("sendInitialEvents") == "true"
	timeout := 30 * time.Minute
	if ts := q.Get("timeoutSeconds"); ts != "" {
		n, err := strconv.Atoi(ts)
		if err != nil || n < 0 {
			return errBadRequest("invalid timeoutSeconds %q", ts)
		}
		if n > 0 {
			timeout = time.Duration(n) * time.Second
		}
	}
	ctx := r.Context()
	var initial []object
	// visible tracks which keys a filtered watch currently sees, so that
	// an object leaving the selector is reported as DELETED and one
	// entering it as ADDED. It is seeded from the current state, so a
	// filtered watch resumed from an old version may report a transition
	// that happened before its version as MODIFIED (see docs/apiserver.md).
	// Unfiltered watches need no list and no per-watch state.
	var visible map[string]bool
	filtered := !ls.Empty() || !fs.Empty()
	listFirst := from == 0 || sendInitial
	if listFirst || filtered {
		items, listRev, err := s.listObjects(ctx, info, labels.Everything(), fields.Everything())
		if err != nil {
			return err
		}
		if filtered {
			visible = map[string]bool{}
		}
		for _, o := range items {
			if !matches(o, ls, fs) {
				continue
			}
			if filtered {
				visible[info.kind.Key(str(meta(o), "namespace"), str(meta(o), "name"))] = true
			}
			if listFirst {
				initial = append(initial, o)
			}
		}
		if listFirst {
			from = listRev
		}
	}
	events, err := s.store.Watch(ctx, info.kind.KeyPrefix(info.namespace), from)
	if err != nil {
		if errors.Is(err, store.ErrCompacted) {
			return errGone("too old resource version: %s (compacted)", rv)
		}
		return fromStore(err, info.kind, "")
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache, private")
	w.WriteHeader(http.StatusOK)
	// Send the headers now: clients (client-go, kubectl) wait for them
	// before reading events, and a watch may stay quiet for a long time.
	if flusher != nil {
		flusher.Flush()
	}
	enc := json.NewEncoder(w)
	send := func(ev watchEvent) bool {
		if err := enc.Encode(ev); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	table := wantsTable(r)
	wrap := func(o object) any {
		if table {
			return s.table(r, info.kind, []object{o}, "")
		}
		return o
	}
	for _, o := range initial {
		if !send(watchEvent{Type: "ADDED", Object: wrap(o)}) {
			return nil
		}
	}
	apiVersion := resource.GroupVersion(info.kind.Group, info.version)
	bookmark := func(rev int64, initialEnd bool) bool {
		m := map[string]any{"resourceVersion": strconv.FormatInt(rev, 10)}
		if initialEnd {
			m["annotations"] = map[string]any{"k8s.io/initial-events-end": "true"}
		}
		return send(watchEvent{Type: "BOOKMARK", Object: map[string]any{"apiVersion": apiVersion, "kind": info.kind.Kind, "metadata": m}})
	}
	if sendInitial && bookmarks && !bookmark(from, true) {
		return nil
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	lastBookmark := s.opts.Clock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-deadline.C:
			return nil
		case ev, ok := <-events:
			if !ok {
				// The store closed the watch (slow consumer or shutdown):
				// end the stream; the client resumes from its last version.
				return nil
			}
			switch ev.Type {
			case store.EventError:
				st := fromStore(ev.Err, info.kind, "").(*apiError).status
				if errors.Is(ev.Err, store.ErrCompacted) {
					st = errGone("too old resource version: %d (compacted)", from).status
				}
				send(watchEvent{Type: "ERROR", Object: st})
				return nil
			case store.EventProgress:
				if bookmarks && s.opts.Clock().Sub(lastBookmark) >= s.opts.BookmarkInterval {
					lastBookmark = s.opts.Clock()
					if !bookmark(ev.Revision, false) {
						return nil
					}
				}
				continue
			}
			o, err := decodeStored(ev.KV, info.kind, info.version)
			if err != nil {
				s.log.Error("watch: undecodable stored object", "key", ev.KV.Key, "error", err)
				continue
			}
			typ := eventType(ev, o, ls, fs, visible)
			if typ == "" {
				continue
			}
			if !send(watchEvent{Type: typ, Object: wrap(o)}) {
				return nil
			}
		}
	}
}

// eventType maps a store event to ADDED/MODIFIED/DELETED for a watcher with
// selectors, or "" when the watcher does not see it.
func eventType(ev store.Event, o object, ls labels.Selector, fs fields.Selector, visible map[string]bool) string {
	if visible == nil { // unfiltered
		switch {
		case ev.Type == store.EventDelete:
			return "DELETED"
		case ev.Created:
			return "ADDED"
		}
		return "MODIFIED"
	}
	key := ev.KV.Key
	was := visible[key]
	if ev.Type == store.EventDelete {
		delete(visible, key)
		if was || matches(o, ls, fs) {
			return "DELETED"
		}
		return ""
	}
	now := matches(o, ls, fs)
	switch {
	case now && (ev.Created || !was):
		visible[key] = true
		return "ADDED"
	case now:
		return "MODIFIED"
	case was:
		delete(visible, key)
		return "DELETED"
	}
	return ""
}

// wantsTable reports whether the client asked for meta.k8s.io Table output.
func wantsTable(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if strings.Contains(part, "as=Table") && strings.Contains(part, "g=meta.k8s.io") {
			return true
		}
		if strings.TrimSpace(part) == "application/json" {
			return false
		}
	}
	return false
}
