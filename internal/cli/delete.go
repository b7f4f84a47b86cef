package cli

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/resource"
)

func newDeleteCmd(g *globalFlags) *cobra.Command {
	var files []string
	var ignoreNotFound bool
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME... | -f FILE|DIR|-)",
		Short: "Delete objects by kind and name, or those a file describes",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			type target struct {
				kind        *resource.Kind
				version, ns string
				name        string
			}
			var targets []target
			switch {
			case len(files) > 0 && len(args) > 0:
				return fmt.Errorf("give either -f or KIND NAME..., not both")
			case len(files) > 0:
				ms, err := readManifests(cmd.InOrStdin(), files, c.namespace)
				if err != nil {
					return wrapNothingDeleted(err)
				}
				for _, m := range ms {
					targets = append(targets, target{m.kind, m.version, m.ns, m.name})
				}
			case len(args) >= 2:
				k, err := resource.Lookup(args[0])
				if err != nil {
					return err
				}
				ns := c.namespace
				if !k.Namespaced {
					ns = ""
				}
				for _, n := range args[1:] {
					targets = append(targets, target{k, k.StorageVersion(), ns, n})
				}
			default:
				return fmt.Errorf("give KIND and at least one NAME, or -f FILE")
			}
			var failed []string
			for _, t := range targets {
				label := strings.ToLower(t.kind.Kind)
				if t.kind.Group != "" {
					label += "." + t.kind.Group
				}
				_, err := c.do(cmd.Context(), "DELETE", objectPath(t.kind, t.version, t.ns, t.name), nil, "", nil, "", nil)
				var se *statusError
				if errors.As(err, &se) && se.Code == http.StatusNotFound && ignoreNotFound {
					continue
				}
				if err != nil {
					failed = append(failed, err.Error())
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %q deleted\n", label, t.name)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%s", strings.Join(failed, "\n"))
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "file, directory or - (stdin) naming the objects to delete")
	cmd.Flags().BoolVar(&ignoreNotFound, "ignore-not-found", false, "treat objects that do not exist as deleted")
	return cmd
}

func wrapNothingDeleted(err error) error {
	return fmt.Errorf("%s", strings.Replace(err.Error(), "nothing was applied", "nothing was deleted", 1))
}
