package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/apiserver"
	"github.com/weftmesh/weft/internal/apiserver/authn"
)

func newTokenCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke API bearer tokens"}
	var user string
	var groups []string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --user NAME [--group G]... [--ttl D]",
		Short: "Create a bearer token for a user (printed once; stored hashed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if user == "" {
				return fmt.Errorf("--user is required")
			}
			if ttl < 0 {
				return fmt.Errorf("invalid --ttl %s: must not be negative (0 means no expiry)", ttl)
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			body, _ := json.Marshal(apiserver.TokenRequest{User: user, Groups: groups, TTL: ttl.String()})
			var out apiserver.TokenResponse
			if _, err := c.do(cmd.Context(), "POST", "/weft/v1/tokens", nil, "application/json", body, "", &out); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
	create.Flags().StringVar(&user, "user", "", "user name the token authenticates as (required)")
	create.Flags().StringSliceVar(&groups, "group", nil, "group the user belongs to (repeatable)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime, e.g. 24h (0: never expires)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var out struct {
				Items []authn.TokenRecord `json:"items"`
			}
			if _, err := c.do(cmd.Context(), "GET", "/weft/v1/tokens", nil, "", nil, "", &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tUSER\tGROUPS\tEXPIRES")
			for _, r := range out.Items {
				exp := "never"
				if !r.Expires.IsZero() {
					exp = r.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", r.ID, r.User, r.Groups, exp)
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			if _, err := c.do(cmd.Context(), "DELETE", "/weft/v1/tokens/"+args[0], nil, "", nil, "", nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
