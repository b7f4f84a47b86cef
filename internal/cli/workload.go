package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/ca"
)

// newWorkloadCmd is `weft workload`: onboarding workloads that run outside
// Kubernetes (VMs, bare metal) into a WorkloadGroup.
func newWorkloadCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "workload", Short: "Onboard workloads outside Kubernetes (VMs, bare metal)"}
	token := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke bootstrap tokens for the mesh CA",
		Long: "A bootstrap token lets a workload's proxy get its first certificate from the mesh CA\n" +
			"as the identity of a WorkloadGroup (its namespace and service account). Afterwards the\n" +
			"proxy renews with its certificate. See docs/identity.md.",
	}
	var group string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --group NAME [-n NAMESPACE] [--ttl D]",
		Short: "Create a bootstrap token for a WorkloadGroup (printed once; stored hashed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if group == "" {
				return fmt.Errorf("--group is required: the WorkloadGroup the workloads join")
			}
			if ttl <= 0 {
				return fmt.Errorf("invalid --ttl %s: must be positive", ttl)
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			ns := c.namespace
			if ns == "" {
				ns = "default"
			}
			body, _ := json.Marshal(ca.TokenRequest{Namespace: ns, Group: group, TTL: ttl.String()})
			var out ca.TokenResponse
			if _, err := c.do(cmd.Context(), "POST", ca.TokenPath, nil, "application/json", body, "", &out); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s for %s, expires %s\n", out.ID, out.Identity, out.Expires.Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().StringVar(&group, "group", "", "WorkloadGroup the token onboards into (required; must exist)")
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token can be used, e.g. 1h or 720h")
	list := &cobra.Command{
		Use:   "list",
		Short: "List bootstrap tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var out struct {
				Items []ca.BootstrapRecord `json:"items"`
			}
			if _, err := c.do(cmd.Context(), "GET", ca.TokenPath, nil, "", nil, "", &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAMESPACE\tGROUP\tSERVICE ACCOUNT\tEXPIRES")
			for _, r := range out.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.Namespace, r.Group, r.ServiceAccount, r.Expires.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a bootstrap token (certificates already issued stay valid until they expire)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			if _, err := c.do(cmd.Context(), "DELETE", ca.TokenPath+"/"+args[0], nil, "", nil, "", nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "bootstrap token %s revoked\n", args[0])
			return nil
		},
	}
	token.AddCommand(create, list, revoke)
	cmd.AddCommand(token, newWorkloadGroupCmd(g), newWorkloadEntryCmd(g))
	return cmd
}
