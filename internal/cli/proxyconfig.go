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
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/pilot/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// proxyConfigFlags are the source and output flags every proxy-config
// subcommand shares.
type proxyConfigFlags struct {
	admin, file, output string
}

func newProxyConfigCmd(g *globalFlags) *cobra.Command {
	pf := &proxyConfigFlags{}
	cmd := &cobra.Command{
		Use:     "proxy-config",
		Aliases: []string{"pc"},
		Short:   "Show a proxy's listeners, routes, clusters, endpoints and certificates, as istioctl proxy-config does",
		Long: `Show one proxy's xDS config as tables (or JSON/YAML), with istioctl
proxy-config's columns. The config comes from one of:

  PROXY             what weft's discovery sent that proxy, by its ID as
                    'weft proxy-status' lists it, or the ID's name.namespace
                    part (just the name in the -n namespace), or its IP;
  --admin URL       what a sidecar applied, from its admin endpoint
                    (http://127.0.0.1:15000 on the sidecar's host); STATUS
                    and OUTLIER CHECK of endpoints are then live;
  -f FILE           a saved config dump: Envoy's or weft-proxy's
                    /config_dump, or discovery's /debug/config_dump.`,
		Example: `  weft proxy-config cluster reviews-v1.default
  weft proxy-config route --admin http://127.0.0.1:15000 --name 9080 -o json
  weft proxy-config endpoint -f dump.json --status healthy`,
	}
	fl := cmd.PersistentFlags()
	fl.StringVar(&pf.admin, "admin", "", "a sidecar's admin URL (e.g. http://127.0.0.1:15000): show what it applied")
	fl.StringVarP(&pf.file, "file", "f", "", "a config dump file (Envoy's /config_dump or discovery's /debug/config_dump); - for standard input")
	fl.StringVarP(&pf.output, "output", "o", "short", "output: short (a table), json or yaml")

	var cf clusterFilter
	clusters := rowsSub(pf, g, "cluster [PROXY]", []string{"clusters", "c"}, "Show a proxy's clusters",
		func(d *proxyDump) []clusterRow { return clusterRows(d, cf) }, writeClusters)
	clusters.Flags().StringVar(&cf.fqdn, "fqdn", "", "only clusters whose service FQDN contains this")
	clusters.Flags().IntVar(&cf.port, "port", 0, "only clusters of this port")
	clusters.Flags().StringVar(&cf.subset, "subset", "", "only clusters of this subset")
	clusters.Flags().StringVar(&cf.direction, "direction", "", "only inbound or outbound clusters")

	var lf listenerFilter
	listeners := rowsSub(pf, g, "listener [PROXY]", []string{"listeners", "l"}, "Show a proxy's listeners, a row per filter chain",
		func(d *proxyDump) []listenerRow { return listenerRows(d, lf) }, writeListeners)
	listeners.Flags().StringVar(&lf.address, "address", "", "only listeners on this address")
	listeners.Flags().IntVar(&lf.port, "port", 0, "only listeners on this port")
	listeners.Flags().StringVar(&lf.typ, "type", "", "only filter chains of this type: HTTP or TCP")

	var routeName string
	routes := pf.sub(g, "route [PROXY]", []string{"routes", "r"}, "Show a proxy's route tables, a row per route",
		func(w io.Writer, d *proxyDump) error {
			if pf.output != "short" {
				var list []proto.Message
				for _, rc := range d.Routes {
					if routeName == "" || rc.GetName() == routeName {
						list = append(list, rc)
					}
				}
				return pf.resources(w, list)
			}
			return writeRoutes(w, routeRows(d, routeName))
		})
	routes.Flags().StringVar(&routeName, "name", "", "only the route table of this name")

	var ef endpointFilter
	endpoints := rowsSub(pf, g, "endpoint [PROXY]", []string{"endpoints", "ep"}, "Show the endpoints of a proxy's clusters",
		func(d *proxyDump) []endpointRow { return endpointRows(d, ef) }, writeEndpoints)
	endpoints.Flags().StringVar(&ef.address, "address", "", "only endpoints of this address")
	endpoints.Flags().IntVar(&ef.port, "port", 0, "only endpoints of this port")
	endpoints.Flags().StringVar(&ef.cluster, "cluster", "", "only endpoints of this cluster")
	endpoints.Flags().StringVar(&ef.status, "status", "", "only endpoints of this status (healthy, unhealthy, …)")

	secrets := pf.sub(g, "secret [PROXY]", []string{"secrets", "s"}, "Show a proxy's workload certificate and trust bundle",
		func(w io.Writer, d *proxyDump) error {
			if pf.output != "short" {
				return pf.resources(w, messages(d.Secrets))
			}
			return writeSecrets(w, secretRows(d, time.Now()))
		})

	all := pf.sub(g, "all [PROXY]", nil, "Show all of a proxy's config",
		func(w io.Writer, d *proxyDump) error {
			if pf.output != "short" {
				return pf.resources(w, d.all())
			}
			sections := []func() error{
				func() error { return writeClusters(w, clusterRows(d, clusterFilter{})) },
				func() error { return writeListeners(w, listenerRows(d, listenerFilter{})) },
				func() error { return writeRoutes(w, routeRows(d, "")) },
				func() error { return writeEndpoints(w, endpointRows(d, endpointFilter{})) },
				func() error { return writeSecrets(w, secretRows(d, time.Now())) },
			}
			for i, s := range sections {
				if i > 0 {
					fmt.Fprintln(w)
				}
				if err := s(); err != nil {
					return err
				}
			}
			return nil
		})
	bootstrap := pf.sub(g, "bootstrap [PROXY]", []string{"b"}, "Show a sidecar's bootstrap: its node (ID, metadata), admin address and discovery server",
		func(w io.Writer, d *proxyDump) error {
			if d.Bootstrap == nil {
				return errors.New("this dump has no bootstrap: discovery does not keep proxies' bootstraps; read the sidecar's with --admin")
			}
			if pf.output != "short" {
				return pf.resources(w, []proto.Message{d.Bootstrap})
			}
			return writeBootstrap(w, d.Bootstrap)
		})

	var level string
	logCmd := &cobra.Command{
		Use:   "log --admin URL [--level LEVEL]",
		Short: "Show or set a sidecar's log level (Envoy's names: trace, debug, info, warning, error, critical, off)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pf.admin == "" || pf.file != "" {
				return errors.New("log talks to one sidecar: give its --admin URL (and no -f)")
			}
			method, path := http.MethodGet, "/logging"
			if level != "" {
				method, path = http.MethodPost, "/logging?level="+url.QueryEscape(level)
			}
			b, err := adminRequest(cmd.Context(), pf.admin, g.timeout, method, path)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	logCmd.Flags().StringVar(&level, "level", "", "set the level")
	cmd.AddCommand(clusters, listeners, routes, endpoints, secrets, all, bootstrap, logCmd)
	return cmd
}

// rowsSub builds a subcommand that shows rows as a table, or with -o
// json or yaml the distinct resources behind them.
func rowsSub[R interface{ resource() proto.Message }](pf *proxyConfigFlags, g *globalFlags, use string, aliases []string, short string,
	rows func(*proxyDump) []R, write func(io.Writer, []R) error) *cobra.Command {
	return pf.sub(g, use, aliases, short, func(w io.Writer, d *proxyDump) error {
		if pf.output != "short" {
			return pf.resources(w, resourcesOf(rows(d), R.resource))
		}
		return write(w, rows(d))
	})
}

// sub builds one subcommand: it loads the dump from the chosen source and
// hands it to show.
func (pf *proxyConfigFlags) sub(g *globalFlags, use string, aliases []string, short string, show func(io.Writer, *proxyDump) error) *cobra.Command {
	return &cobra.Command{
		Use:     use,
		Aliases: aliases,
		Short:   short,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch pf.output {
			case "short", "json", "yaml":
			default:
				return fmt.Errorf("--output %q: want short, json or yaml", pf.output)
			}
			d, err := pf.load(cmd.Context(), g, args, cmd.InOrStdin())
			if err != nil {
				return err
			}
			return show(cmd.OutOrStdout(), d)
		},
	}
}

// load reads the dump from exactly one source.
func (pf *proxyConfigFlags) load(ctx context.Context, g *globalFlags, args []string, stdin io.Reader) (*proxyDump, error) {
	n := len(args)
	if pf.admin != "" {
		n++
	}
	if pf.file != "" {
		n++
	}
	if n != 1 {
		return nil, errors.New("name exactly one source: a PROXY (see weft proxy-status), --admin URL or -f FILE")
	}
	switch {
	case pf.file != "":
		var b []byte
		var err error
		if pf.file == "-" {
			b, err = io.ReadAll(stdin)
		} else {
			b, err = os.ReadFile(pf.file)
		}
		if err != nil {
			return nil, err
		}
		d, err := parseDump(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", pf.file, err)
		}
		return d, nil
	case pf.admin != "":
		return loadAdmin(ctx, pf.admin, g.timeout)
	}
	return loadDiscovery(ctx, g, args[0])
}

// loadAdmin reads a sidecar's /config_dump (with its endpoints) and
// /clusters.
func loadAdmin(ctx context.Context, base string, timeout time.Duration) (*proxyDump, error) {
	b, err := adminRequest(ctx, base, timeout, http.MethodGet, "/config_dump?include_eds")
	if err != nil {
		return nil, err
	}
	d, err := parseDump(b)
	if err != nil {
		return nil, fmt.Errorf("%s/config_dump: %w", base, err)
	}
	if b, err := adminRequest(ctx, base, timeout, http.MethodGet, "/clusters"); err == nil {
		d.live = parseClustersText(b)
	}
	return d, nil
}

// adminRequest calls a proxy's admin endpoint at base.
func adminRequest(ctx context.Context, base string, timeout time.Duration, method, path string) ([]byte, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--admin %q: want the admin endpoint's URL, e.g. http://127.0.0.1:15000", base)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the proxy's admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s%s: %s: %.300s", method, base, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// loadDiscovery finds the proxy among those connected to discovery and
// reads what discovery sent it.
func loadDiscovery(ctx context.Context, g *globalFlags, name string) (*proxyDump, error) {
	c, err := newClient(g)
	if err != nil {
		return nil, err
	}
	var rows []xds.SyncStatus
	if _, err := c.do(ctx, "GET", "/weft/v1/debug/syncz", nil, "", nil, "", &rows); err != nil {
		return nil, err
	}
	id, err := matchProxy(rows, name, c.namespace)
	if err != nil {
		return nil, err
	}
	var dump json.RawMessage
	if _, err := c.do(ctx, "GET", "/weft/v1/debug/config_dump", url.Values{"proxyID": {id}}, "", nil, "", &dump); err != nil {
		return nil, err
	}
	return parseDump(dump)
}

// matchProxy resolves name to one connected proxy's ID: the whole ID, its
// name.namespace part, a name in namespace ns, or the proxy's IP.
func matchProxy(rows []xds.SyncStatus, name, ns string) (string, error) {
	var ids []string
	for _, r := range rows {
		parts := strings.Split(r.ID, "~")
		switch {
		case r.ID == name:
			return r.ID, nil
		case len(parts) == 4 && (parts[2] == name || parts[2] == name+"."+ns || parts[1] == name):
			ids = append(ids, r.ID)
		}
	}
	switch len(ids) {
	case 1:
		return ids[0], nil
	case 0:
		connected := make([]string, 0, len(rows))
		for _, r := range rows {
			connected = append(connected, r.ID)
		}
		if len(connected) == 0 {
			return "", fmt.Errorf("no proxy %q: no proxy is connected to discovery", name)
		}
		return "", fmt.Errorf("no proxy %q is connected to discovery; connected: %s", name, strings.Join(connected, ", "))
	}
	return "", fmt.Errorf("%q names %d proxies (%s): give a whole ID", name, len(ids), strings.Join(ids, ", "))
}

// resources prints resources as a JSON list, or YAML, in protojson's
// field names (as Envoy's config dump has them).
func (pf *proxyConfigFlags) resources(w io.Writer, list []proto.Message) error {
	items := make([]json.RawMessage, 0, len(list))
	for _, m := range list {
		b, err := protojson.MarshalOptions{Resolver: lenientResolver{}}.Marshal(m)
		if err != nil {
			return err
		}
		items = append(items, b)
	}
	js, err := json.MarshalIndent(items, "", "  ")
	if err != nil {
		return err
	}
	if pf.output == "yaml" {
		b, err := yaml.JSONToYAML(js)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", js)
	return err
}
