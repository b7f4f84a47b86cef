// Command weft-proxy is weft's data plane: the sidecar that runs beside
// every workload, and the ingress or egress gateway (router), configured
// by xDS from `weft server`.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags.
var version = "0.1.0-dev"

func main() {
	root := &cobra.Command{Use: "weft-proxy", Short: "weft's sidecar and gateway", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(&cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "weft-proxy", version) }})
	root.AddCommand(proxyCmd(sidecarKind, runProxy))
	root.AddCommand(proxyCmd(routerKind, runProxy))
	root.AddCommand(iptablesCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
