package apiserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/resource"
	"k8s.io/apimachinery/pkg/util/duration"
)

// table renders objects as a meta.k8s.io/v1 Table, which is what kubectl
// and weft get print: NAME, the kind's own columns, AGE.
func (s *Server) table(r *http.Request, k *resource.Kind, items []object, rv string) map[string]any {
	cols := []map[string]any{{"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}}
	for _, c := range k.Columns {
		prio := 0
		if c.Wide {
			prio = 1
		}
		cols = append(cols, map[string]any{"name": columnTitle(c.Name), "type": "string", "format": "", "description": c.Path, "priority": prio})
	}
	cols = append(cols, map[string]any{"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0})
	now := s.opts.Clock()
	rows := make([]map[string]any, 0, len(items))
	for _, o := range items {
		m := meta(o)
		cells := []any{str(m, "name")}
		for _, c := range k.Columns {
			cells = append(cells, cell(lookupPath(o, c.Path)))
		}
		age := "<unknown>"
		if t, err := time.Parse(time.RFC3339, str(m, "creationTimestamp")); err == nil {
			age = duration.HumanDuration(now.Sub(t))
		}
		cells = append(cells, age)
		rows = append(rows, map[string]any{"cells": cells, "object": o})
	}
	md := map[string]any{}
	if rv != "" {
		md["resourceVersion"] = rv
	}
	return map[string]any{
		"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md,
		"columnDefinitions": cols, "rows": rows,
	}
}

func columnTitle(s string) string {
	s = strings.ToLower(s)
	return strings.ToUpper(s[:1]) + s[1:]
}

// lookupPath follows a dotted path through maps.
func lookupPath(o object, path string) any {
	var cur any = o
	for _, p := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func cell(v any) any {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []any, map[string]any:
		raw, _ := json.Marshal(x)
		return string(raw)
	}
	return fmt.Sprint(v)
}
