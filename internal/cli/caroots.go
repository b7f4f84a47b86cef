package cli

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/ca"
)

// newCACmd is `weft ca roots list|add|remove`: the mesh trust bundle, for
// rotating the CA's root (add the new root everywhere, switch the signing
// CA, remove the old root once no certificate chains to it).
func newCACmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Inspect and rotate the mesh CA's trust bundle"}
	roots := &cobra.Command{Use: "roots", Short: "List, add and remove trusted roots (sent to every sidecar over SDS)"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the roots of the trust bundle",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var out struct {
				Roots []ca.RootInfo `json:"roots"`
			}
			if _, err := c.do(cmd.Context(), "GET", ca.RootsPath, nil, "", nil, "", &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "FINGERPRINT\tSUBJECT\tEXPIRES\tKIND")
			for _, r := range out.Roots {
				kind := "signing"
				if r.Extra {
					kind = "extra"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Fingerprint, r.Subject, r.NotAfter.Format(time.RFC3339), kind)
			}
			return tw.Flush()
		},
	}
	add := &cobra.Command{
		Use:   "add FILE",
		Short: "Trust the CA certificate(s) in a PEM file mesh-wide",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pemData, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var st struct{ Message string }
			if _, err := c.do(cmd.Context(), "POST", ca.RootsPath, nil, "application/x-pem-file", pemData, "", &st); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), st.Message)
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove FINGERPRINT",
		Short: "Stop trusting an extra root (the signing CA's roots cannot be removed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var st struct{ Message string }
			if _, err := c.do(cmd.Context(), "DELETE", ca.RootsPath+"/"+args[0], nil, "", nil, "", &st); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), st.Message)
			return nil
		},
	}
	roots.AddCommand(list, add, remove)
	cmd.AddCommand(roots)
	return cmd
}
