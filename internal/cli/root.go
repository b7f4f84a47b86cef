// Package cli implements the `weft` command line: the control plane
// (`weft server`) and the operator commands, each a thin layer over the
// packages that do the work.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags.
var Version = "0.1.0-dev"

// globalFlags are shared by every client command.
type globalFlags struct {
	kubeconfig string
	context    string
	namespace  string
	timeout    time.Duration
	logLevel   string
	logFormat  string
	// stderr receives warnings from the server.
	stderr io.Writer
}

// NewRoot builds the weft command tree.
func NewRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{stderr: stderr}
	root := &cobra.Command{
		Use:           "weft",
		Short:         "weft: a service mesh for VMs, bare metal, Consul, Nomad and Kubernetes that speaks Istio's API",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "kubeconfig file (default $WEFTCONFIG, then ~/.weft/kubeconfig)")
	pf.StringVar(&g.context, "context", "", "kubeconfig context to use (default: its current-context)")
	pf.StringVarP(&g.namespace, "namespace", "n", "", "namespace (default: the context's namespace, else \"default\")")
	pf.DurationVar(&g.timeout, "request-timeout", 30*time.Second, "timeout of each request to the API server")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(
		newServerCmd(g),
		newApplyCmd(g),
		newGetCmd(g),
		newDeleteCmd(g),
		newTokenCmd(g),
		newWorkloadCmd(g),
		newProxyStatusCmd(g),
		newProxyConfigCmd(g),
		newAnalyzeCmd(g),
		newCACmd(g),
		&cobra.Command{
			Use:   "version",
			Short: "Print weft's version",
			Args:  cobra.NoArgs,
			Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "weft", Version) },
		},
	)
	return root
}

// Execute runs the command line and returns the process exit code.
func Execute(ctx context.Context, args []string) int {
	root := NewRoot(os.Stdin, os.Stdout, os.Stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// newLogger builds the slog logger of a long-running command.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q: use text or json", format)
}
