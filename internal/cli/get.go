package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/resource"
	"sigs.k8s.io/yaml"
)

const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

// table is the meta.k8s.io/v1 Table the server renders.
type table struct {
	ColumnDefinitions []struct {
		Name     string `json:"name"`
		Priority int    `json:"priority"`
	} `json:"columnDefinitions"`
	Rows []struct {
		Cells  []any          `json:"cells"`
		Object map[string]any `json:"object"`
	} `json:"rows"`
}

func printTable(w io.Writer, t *table, wide, withNamespace bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	var head []string
	if withNamespace {
		head = append(head, "NAMESPACE")
	}
	for _, c := range t.ColumnDefinitions {
		if c.Priority == 0 || wide {
			head = append(head, strings.ToUpper(c.Name))
		}
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, r := range t.Rows {
		var cells []string
		if withNamespace {
			md, _ := r.Object["metadata"].(map[string]any)
			ns, _ := md["namespace"].(string)
			cells = append(cells, ns)
		}
		for i, c := range t.ColumnDefinitions {
			if (c.Priority == 0 || wide) && i < len(r.Cells) {
				cells = append(cells, fmt.Sprint(r.Cells[i]))
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func printObject(w io.Writer, v any, format string) error {
	switch format {
	case "json":
		raw, err := json.MarshalIndent(v, "", "    ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(raw))
		return err
	case "yaml":
		raw, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(raw)
		return err
	}
	return fmt.Errorf("invalid output format %q: use yaml, json or wide", format)
}

func newGetCmd(g *globalFlags) *cobra.Command {
	var output string
	var all bool
	var selector string
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...]",
		Short: "Show objects as a table, YAML or JSON",
		Example: `  weft get virtualservices
  weft get vs reviews -o yaml
  weft get destinationrules -A -o wide`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := resource.Lookup(args[0])
			if err != nil {
				return err
			}
			switch output {
			case "", "wide", "yaml", "json":
			default:
				return fmt.Errorf("invalid --output %q: use yaml, json or wide", output)
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			ns := c.namespace
			if all || !k.Namespaced {
				ns = ""
			}
			version := k.StorageVersion()
			out := cmd.OutOrStdout()
			ctx := cmd.Context()
			tableOut := output == "" || output == "wide"
			accept := ""
			if tableOut {
				accept = tableAccept
			}
			if len(args) == 1 {
				q := map[string][]string{}
				if selector != "" {
					q["labelSelector"] = []string{selector}
				}
				if tableOut {
					var t table
					if _, err := c.do(ctx, "GET", collectionPath(k, version, ns), q, "", nil, accept, &t); err != nil {
						return err
					}
					if len(t.Rows) == 0 {
						where := "in " + ns + " namespace"
						if ns == "" {
							where = ""
						}
						fmt.Fprintf(cmd.ErrOrStderr(), "No resources found %s.\n", where)
						return nil
					}
					return printTable(out, &t, output == "wide", all && k.Namespaced)
				}
				var list map[string]any
				if _, err := c.do(ctx, "GET", collectionPath(k, version, ns), q, "", nil, "", &list); err != nil {
					return err
				}
				list["apiVersion"], list["kind"] = "v1", "List"
				return printObject(out, list, output)
			}
			if all {
				return fmt.Errorf("a resource cannot be retrieved by name across all namespaces")
			}
			var merged table
			var objs []any
			for _, name := range args[1:] {
				if tableOut {
					var t table
					if _, err := c.do(ctx, "GET", objectPath(k, version, ns, name), nil, "", nil, accept, &t); err != nil {
						return err
					}
					merged.ColumnDefinitions = t.ColumnDefinitions
					merged.Rows = append(merged.Rows, t.Rows...)
					continue
				}
				var o map[string]any
				if _, err := c.do(ctx, "GET", objectPath(k, version, ns, name), nil, "", nil, "", &o); err != nil {
					return err
				}
				objs = append(objs, o)
			}
			if tableOut {
				return printTable(out, &merged, output == "wide", false)
			}
			if len(objs) == 1 {
				return printObject(out, objs[0], output)
			}
			return printObject(out, map[string]any{"apiVersion": "v1", "kind": "List", "items": objs}, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: yaml, json or wide")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list across all namespaces")
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector, e.g. app=reviews,version!=v1")
	return cmd
}
