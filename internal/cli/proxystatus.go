package cli

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/pilot/xds"
)

func newProxyStatusCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "proxy-status",
		Short: "List every proxy connected to discovery and its xDS sync state",
		Long: `List every proxy (sidecar, gateway or proxyless client) connected to weft's
discovery and, per resource type, whether it has acknowledged the latest
config: SYNCED, STALE (sent, not yet acknowledged), NACKED (rejected; the
reason is shown) or NOT SENT.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var rows []xds.SyncStatus
			if _, err := c.do(cmd.Context(), "GET", "/weft/v1/debug/syncz", nil, "", nil, "", &rows); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(rows) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "No proxies are connected.")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tNAMESPACE\tCDS\tLDS\tEDS\tRDS\tVERSION")
			var nacks []string
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Type, r.Namespace,
					r.State["cds"], r.State["lds"], r.State["eds"], r.State["rds"], r.Current["lds"])
				keys := make([]string, 0, len(r.Types))
				for k := range r.Types {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					if t := r.Types[k]; t.NackError != "" {
						nacks = append(nacks, fmt.Sprintf("%s %s version %s rejected: %s", r.ID, strings.ToUpper(k), t.Nacked, t.NackError))
					}
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, n := range nacks {
				fmt.Fprintln(out, n)
			}
			return nil
		},
	}
}
