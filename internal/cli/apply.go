package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/resource"
)

// manifest is one object read from a file, with where it came from.
type manifest struct {
	source  string
	doc     resource.Document
	kind    *resource.Kind
	version string
	ns      string
	name    string
}

func (m *manifest) label() string {
	s := strings.ToLower(m.kind.Kind)
	if m.kind.Group != "" {
		s += "." + m.kind.Group
	}
	return s + "/" + m.name
}

// readManifests reads FILE, every *.yaml/*.yml/*.json in DIR, or stdin
// ("-"), and resolves each document's kind and namespace. Any error stops
// everything before a single write.
func readManifests(stdin io.Reader, paths []string, defaultNS string) ([]*manifest, error) {
	return readManifestsSkipping(stdin, paths, defaultNS, nil)
}

// readManifestsSkipping is readManifests, except that a document whose
// kind cannot be resolved goes to skip (when not nil) instead of stopping
// everything.
func readManifestsSkipping(stdin io.Reader, paths []string, defaultNS string, skip func(where string, err error)) ([]*manifest, error) {
	var files []string
	for _, p := range paths {
		if p == "-" {
			files = append(files, p)
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		var found []string
		for _, ext := range []string{"*.yaml", "*.yml", "*.json"} {
			m, _ := filepath.Glob(filepath.Join(p, ext))
			found = append(found, m...)
		}
		sort.Strings(found)
		if len(found) == 0 {
			return nil, fmt.Errorf("%s: no .yaml, .yml or .json files in this directory", p)
		}
		files = append(files, found...)
	}
	var out []*manifest
	for _, f := range files {
		var data []byte
		var err error
		if f == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			return nil, err
		}
		src := f
		if f == "-" {
			src = "<stdin>"
		}
		docs, err := resource.SplitYAML(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (nothing was applied)", src, err)
		}
		for _, d := range docs {
			m, err := resolveManifest(src, d, defaultNS)
			if err != nil && skip != nil {
				skip(d.Position(src), err)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w (nothing was applied)", d.Position(src), err)
			}
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no objects found in %s", strings.Join(paths, ", "))
	}
	return out, nil
}

func resolveManifest(src string, d resource.Document, defaultNS string) (*manifest, error) {
	av, _ := d.Object["apiVersion"].(string)
	kindName, _ := d.Object["kind"].(string)
	if av == "" || kindName == "" {
		return nil, fmt.Errorf("apiVersion and kind are required")
	}
	k, err := resource.ByKind(av, kindName)
	if err != nil {
		return nil, err
	}
	md, _ := d.Object["metadata"].(map[string]any)
	name, _ := md["name"].(string)
	if name == "" {
		return nil, fmt.Errorf("%s: metadata.name is required", kindName)
	}
	ns, _ := md["namespace"].(string)
	if k.Namespaced && ns == "" {
		ns = defaultNS
	}
	version := av[strings.LastIndex(av, "/")+1:]
	return &manifest{source: src, doc: d, kind: k, version: version, ns: ns, name: name}, nil
}

// applyOne creates m or replaces the existing object with it. With dry set,
// the server validates without storing. It returns created, configured or
// unchanged.
func (c *client) applyOne(ctx context.Context, m *manifest, dry bool) (string, error) {
	obj := m.doc.Object
	if m.kind.Namespaced {
		md := obj["metadata"].(map[string]any)
		md["namespace"] = m.ns
	}
	q := url.Values{}
	if dry {
		q.Set("dryRun", "All")
	}
	var existing map[string]any
	_, err := c.do(ctx, "GET", objectPath(m.kind, m.version, m.ns, m.name), nil, "", nil, "", &existing)
	var se *statusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		body, _ := json.Marshal(obj)
		if _, err := c.do(ctx, "POST", collectionPath(m.kind, m.version, m.ns), q, "application/json", body, "", nil); err != nil {
			return "", err
		}
		return "created", nil
	case err != nil:
		return "", err
	}
	if sameContent(existing, obj) {
		return "unchanged", nil
	}
	update := map[string]any{}
	for k, v := range obj {
		update[k] = v
	}
	md := map[string]any{}
	for k, v := range obj["metadata"].(map[string]any) {
		md[k] = v
	}
	emd, _ := existing["metadata"].(map[string]any)
	md["resourceVersion"] = emd["resourceVersion"]
	update["metadata"] = md
	body, _ := json.Marshal(update)
	if _, err := c.do(ctx, "PUT", objectPath(m.kind, m.version, m.ns, m.name), q, "application/json", body, "", nil); err != nil {
		return "", err
	}
	return "configured", nil
}

// sameContent compares what apply controls: everything but server-owned
// metadata and status.
func sameContent(existing, want map[string]any) bool {
	strip := func(o map[string]any) map[string]any {
		c := map[string]any{}
		for k, v := range o {
			switch k {
			case "apiVersion", "kind", "status":
			case "metadata":
				md, _ := v.(map[string]any)
				c["labels"], c["annotations"] = md["labels"], md["annotations"]
			default:
				c[k] = v
			}
		}
		raw, _ := json.Marshal(c)
		var out map[string]any
		_ = json.Unmarshal(raw, &out)
		return out
	}
	return reflect.DeepEqual(strip(existing), strip(want))
}

func newApplyCmd(g *globalFlags) *cobra.Command {
	var files []string
	var dry bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR|-",
		Short: "Create or update objects from YAML or JSON files",
		Long: `Create or update objects from multi-document YAML or JSON.

Every document is first checked by the server (a dry run); if any is refused,
nothing is applied and every problem is listed with its file and position.
Existing objects are replaced by the file's version (labels, annotations and
spec), guarded by their resourceVersion.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("-f is required: a file, a directory, or - for stdin")
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			ms, err := readManifests(cmd.InOrStdin(), files, c.namespace)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var problems []string
			warnings := c.warnings
			c.warnings = nil // the real apply below reports them once
			// Namespaces this batch creates: objects in them cannot be
			// dry-run before the namespace exists.
			batchNS := map[string]bool{}
			for _, m := range ms {
				if m.kind.Kind == "Namespace" {
					batchNS[m.name] = true
				}
			}
			for _, m := range ms {
				_, err := c.applyOne(ctx, m, true)
				var se *statusError
				if errors.As(err, &se) && se.Code == http.StatusNotFound && batchNS[m.ns] &&
					strings.HasPrefix(se.Message, fmt.Sprintf("namespaces %q not found", m.ns)) {
					continue
				}
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s: %v", m.doc.Position(m.source), m.label(), err))
				}
			}
			c.warnings = warnings
			if len(problems) > 0 {
				return fmt.Errorf("%d of %d objects were refused, so nothing was applied:\n  %s", len(problems), len(ms), strings.Join(problems, "\n  "))
			}
			out := cmd.OutOrStdout()
			for i, m := range ms {
				if dry {
					fmt.Fprintf(out, "%s valid (dry run)\n", m.label())
					continue
				}
				res, err := c.applyOne(ctx, m, false)
				if err != nil {
					var rest []string
					for _, r := range ms[i+1:] {
						rest = append(rest, r.label())
					}
					return fmt.Errorf("%s: %s: %v\napplied %d of %d objects before this failure; not applied: %s",
						m.doc.Position(m.source), m.label(), err, i, len(ms), strings.Join(append([]string{m.label()}, rest...), ", "))
				}
				fmt.Fprintf(out, "%s %s\n", m.label(), res)
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "file, directory or - (stdin); repeatable")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only validate on the server; change nothing")
	return cmd
}
