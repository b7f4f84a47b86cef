package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/install/onboard"
	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/proxy/bootstrap"
	"github.com/weftmesh/weft/internal/resource"
)

// discoveryPort is the control plane's xDS and CA TLS port.
const discoveryPort = "15012"

// workloadGroupKind is networking.istio.io/v1 WorkloadGroup.
func workloadGroupKind() *resource.Kind {
	k, err := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	if err != nil {
		panic(err) // a kind weft always registers
	}
	return k
}

// newWorkloadGroupCmd is `weft workload group`.
func newWorkloadGroupCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "group", Short: "Create the WorkloadGroup that VMs and bare-metal hosts join"}
	var name, labels, sa, output string
	var ports []string
	create := &cobra.Command{
		Use:   "create --name NAME [-n NAMESPACE] [--labels k=v,...] [--service-account SA] [--port name=number]...",
		Short: "Create (or update) a WorkloadGroup; -o yaml only prints it",
		Long: `Create or update a networking.istio.io/v1 WorkloadGroup: the template every
workload that joins it is registered from (its labels, service account and
ports), like istioctl x workload group create. With -o yaml or -o json the
group is only printed, for review or for weft apply -f.`,
		Example: `  weft workload group create --name ratings -n bookinfo --labels app=ratings,version=v1 \
    --service-account ratings --port http=9080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return fmt.Errorf("--name is required: the WorkloadGroup's name")
			}
			switch output {
			case "", "yaml", "json":
			default:
				return fmt.Errorf("invalid --output %q: use yaml or json (or leave it out to create the group)", output)
			}
			lbl, err := bootstrap.ParseLabels(labels)
			if err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			pm, err := parsePorts(ports)
			if err != nil {
				return err
			}
			ns := g.namespace
			var c *client
			if output == "" {
				if c, err = newClient(g); err != nil {
					return err
				}
				ns = c.namespace
			}
			if ns == "" {
				ns = "default"
			}
			obj := workloadGroupObject(ns, name, lbl, sa, pm)
			if output != "" {
				return printObject(cmd.OutOrStdout(), obj, output)
			}
			m := &manifest{source: "<flags>", doc: resource.Document{Index: 1, Line: 1, Object: obj},
				kind: workloadGroupKind(), version: "v1", ns: ns, name: name}
			res, err := c.applyOne(cmd.Context(), m, false)
			if err != nil {
				return fmt.Errorf("%s: %w", m.label(), err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", m.label(), res)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&name, "name", "", "the WorkloadGroup's name (required)")
	f.StringVar(&labels, "labels", "", "labels of every member workload, k=v,k2=v2 (services select them)")
	f.StringVar(&sa, "service-account", "", `the members' identity (default "default")`)
	f.StringSliceVar(&ports, "port", nil, "named port of the members, name=number; repeatable or comma-separated")
	f.StringVarP(&output, "output", "o", "", "only print the group: yaml or json")
	cmd.AddCommand(create)
	return cmd
}

// parsePorts parses name=number pairs.
func parsePorts(in []string) (map[string]any, error) {
	out := map[string]any{}
	for _, p := range in {
		n, v, ok := strings.Cut(p, "=")
		num, err := strconv.Atoi(v)
		if !ok || n == "" || err != nil || num < 1 || num > 65535 {
			return nil, fmt.Errorf("--port %q: want name=number with a port 1-65535, e.g. http=8080", p)
		}
		out[n] = num
	}
	return out, nil
}

// workloadGroupObject builds the WorkloadGroup as Istio writes it.
func workloadGroupObject(ns, name string, labels map[string]string, sa string, ports map[string]any) map[string]any {
	template := map[string]any{}
	if sa != "" {
		template["serviceAccount"] = sa
	}
	if len(ports) > 0 {
		template["ports"] = ports
	}
	spec := map[string]any{"template": template}
	if len(labels) > 0 {
		l := map[string]any{}
		for k, v := range labels {
			l[k] = v
		}
		spec["metadata"] = map[string]any{"labels": l}
	}
	return map[string]any{
		"apiVersion": "networking.istio.io/v1",
		"kind":       "WorkloadGroup",
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       spec,
	}
}

// entryOptions are the flags of `weft workload entry configure`.
type entryOptions struct {
	group, dir, discovery, discoveryIP, instanceIP string
	proxyPath, proxyUser, configDir, stateDir      string
	inboundPorts, captureMode                      string
	ttl                                            time.Duration
	explicit                                       bool
}

// newWorkloadEntryCmd is `weft workload entry`.
func newWorkloadEntryCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "entry", Short: "Prepare a VM or bare-metal host to join a WorkloadGroup"}
	var o entryOptions
	configure := &cobra.Command{
		Use:   "configure --group NAME [-n NAMESPACE] -o DIR [--ttl 24h] [--discovery-address HOST:15012]",
		Short: "Write everything a host needs to join a WorkloadGroup into DIR",
		Long: `Write into DIR what weft-proxy on a VM or bare-metal host needs to join the
mesh as a member of a WorkloadGroup (istioctl x workload entry configure):

  root-cert.pem       the CA of the control plane's serving certificate (it signs :15012)
  bootstrap-token     a new bootstrap token for the group (0600; for the first certificate)
  cluster.env         the WEFT_* variables weft-proxy reads; set WEFT_INSTANCE_IP (or pass --ip)
  mesh.yaml           mesh-wide settings in weft-proxy's --bootstrap format
  hosts               an /etc/hosts fragment for the discovery host name
  weft-proxy.service  a systemd unit: capture rules installed before the proxy starts
                      and removed after it stops (none with --explicit)

Copy DIR to the host's /etc/weft and follow docs/onboarding-vm.md. The
proxy auto-registers a WorkloadEntry when it connects and it is removed
when the proxy stops.`,
		Example: `  weft workload entry configure --group ratings -n bookinfo -o ratings-vm \
    --discovery-address weft.example.com:15012 --discovery-ip 192.0.2.10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd, g) },
	}
	f := configure.Flags()
	f.StringVar(&o.group, "group", "", "the WorkloadGroup the host joins (required; must exist)")
	f.StringVarP(&o.dir, "output", "o", "", "directory to write the files into (required; created 0700)")
	f.DurationVar(&o.ttl, "ttl", 24*time.Hour, "lifetime of the bootstrap token: the host must start weft-proxy within it")
	f.StringVar(&o.discovery, "discovery-address", "", "the control plane's TLS xDS address as the host reaches it (default: the API server's host, port "+discoveryPort+")")
	f.StringVar(&o.discoveryIP, "discovery-ip", "", "the address the discovery host name maps to in the hosts file (default: resolved here)")
	f.StringVar(&o.instanceIP, "ip", "", "the host's address in the mesh (WEFT_INSTANCE_IP); default: the operator sets it in cluster.env")
	f.BoolVar(&o.explicit, "explicit", false, "explicit mode: no iptables capture; the application calls 127.0.0.1:<service port>")
	f.StringVar(&o.inboundPorts, "inbound-ports", "", "explicit mode: <app port>=<sidecar port>,… (WEFT_INBOUND_PORTS): the sidecar takes mesh mTLS for the app on the sidecar port")
	f.StringVar(&o.captureMode, "inbound-capture-mode", "REDIRECT", "REDIRECT or TPROXY: TPROXY lets the application see its clients' addresses (the unit grants the proxy CAP_NET_ADMIN)")
	f.StringVar(&o.proxyPath, "proxy-path", "/usr/local/bin/weft-proxy", "weft-proxy's absolute path on the host, as the unit runs it")
	f.StringVar(&o.proxyUser, "proxy-user", "weft-proxy", "user (name or UID) the unit runs weft-proxy as; its traffic is never captured")
	f.StringVar(&o.configDir, "config-dir", "/etc/weft", "where the files are installed on the host, as the unit names them")
	f.StringVar(&o.stateDir, "state-directory", "weft-proxy", "the unit's StateDirectory= name: the certificate is kept in /var/lib/<name>")
	cmd.AddCommand(configure)
	return cmd
}

func (o *entryOptions) run(cmd *cobra.Command, g *globalFlags) error {
	if o.group == "" {
		return fmt.Errorf("--group is required: the WorkloadGroup the host joins")
	}
	if o.dir == "" {
		return fmt.Errorf("-o is required: the directory to write the host's files into")
	}
	if o.ttl <= 0 {
		return fmt.Errorf("invalid --ttl %s: must be positive", o.ttl)
	}
	c, err := newClient(g)
	if err != nil {
		return err
	}
	ns := c.namespace
	if ns == "" {
		ns = "default"
	}
	ctx := cmd.Context()
	stderr := cmd.ErrOrStderr()
	p := onboard.Params{Namespace: ns, Group: o.group, InstanceIP: o.instanceIP, DiscoveryIP: o.discoveryIP, Explicit: o.explicit,
		Binary: o.proxyPath, User: o.proxyUser, ConfigDir: o.configDir, StateDirectory: o.stateDir, InboundPorts: o.inboundPorts,
		InboundCaptureMode: o.captureMode}
	if p.RootCertPEM, err = clusterCA(g); err != nil {
		return err
	}
	if p.ServiceAccount, p.Labels, err = c.readWorkloadGroup(ctx, ns, o.group); err != nil {
		return err
	}
	p.DiscoveryAddress = o.discovery
	if p.DiscoveryAddress == "" {
		u, err := url.Parse(c.base)
		if err != nil || u.Hostname() == "" {
			return fmt.Errorf("cannot derive the discovery address from the API server URL %q: pass --discovery-address", c.base)
		}
		p.DiscoveryAddress = net.JoinHostPort(u.Hostname(), discoveryPort)
		if ip, err := netip.ParseAddr(u.Hostname()); u.Hostname() == "localhost" || (err == nil && ip.IsLoopback()) {
			fmt.Fprintf(stderr, "Warning: discovery address %s is this machine's loopback; pass --discovery-address with an address the host can reach\n", p.DiscoveryAddress)
		}
	}
	if host, _, err := net.SplitHostPort(p.DiscoveryAddress); err == nil && p.DiscoveryIP == "" {
		if _, perr := netip.ParseAddr(host); perr != nil {
			p.DiscoveryIP = resolveHost(ctx, host)
			if p.DiscoveryIP == "" {
				fmt.Fprintf(stderr, "Warning: cannot resolve %s here: fill in its address in %s (or pass --discovery-ip)\n", host, onboard.HostsFile)
			}
		}
	}
	// Check everything before creating a token, so that a refusal leaves
	// no token behind.
	probe := p
	probe.Token = ca.BootstrapTokenPrefix + "check"
	if _, err := onboard.Render(probe); err != nil {
		return err
	}
	body, _ := json.Marshal(ca.TokenRequest{Namespace: ns, Group: o.group, TTL: o.ttl.String()})
	var tok ca.TokenResponse
	if _, err := c.do(ctx, "POST", ca.TokenPath, nil, "application/json", body, "", &tok); err != nil {
		return fmt.Errorf("creating a bootstrap token for %s/%s: %w", ns, o.group, err)
	}
	p.Token, p.TokenExpires = tok.Token, tok.Expires
	p.TrustDomain = trustDomainOf(tok.Identity)
	files, err := onboard.Render(p)
	if err != nil {
		return err
	}
	if err := onboard.Write(o.dir, files); err != nil {
		return fmt.Errorf("%w (bootstrap token %s was created: revoke it with weft workload token revoke %s)", err, tok.ID, tok.ID)
	}
	out := cmd.OutOrStdout()
	for _, f := range files {
		fmt.Fprintln(out, filepath.Join(o.dir, f.Name))
	}
	fmt.Fprintf(stderr, "bootstrap token %s for %s, expires %s\n", tok.ID, tok.Identity, tok.Expires.Format(time.RFC3339))
	if o.instanceIP == "" {
		fmt.Fprintf(stderr, "Set WEFT_INSTANCE_IP in %s to the host's address before starting weft-proxy.\n", onboard.EnvFile)
	}
	fmt.Fprintln(stderr, "Next: copy the directory to the host and follow docs/onboarding-vm.md.")
	return nil
}

// readWorkloadGroup returns a group's service account ("default" when
// unset) and the labels its members carry (metadata, then template).
func (c *client) readWorkloadGroup(ctx context.Context, ns, name string) (string, map[string]string, error) {
	var wg struct {
		Spec struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Template struct {
				ServiceAccount string            `json:"serviceAccount"`
				Labels         map[string]string `json:"labels"`
			} `json:"template"`
		} `json:"spec"`
	}
	_, err := c.do(ctx, "GET", objectPath(workloadGroupKind(), "v1", ns, name), nil, "", nil, "", &wg)
	var se *statusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return "", nil, fmt.Errorf("WorkloadGroup %s/%s does not exist: create it with weft workload group create --name %s -n %s", ns, name, name, ns)
	}
	if err != nil {
		return "", nil, err
	}
	labels := map[string]string{}
	for k, v := range wg.Spec.Metadata.Labels {
		labels[k] = v
	}
	for k, v := range wg.Spec.Template.Labels {
		labels[k] = v
	}
	sa := wg.Spec.Template.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return sa, labels, nil
}

// clusterCA returns the PEM CA of the current context's cluster: it signs
// the API server's certificate, which the xDS TLS port serves too.
func clusterCA(g *globalFlags) ([]byte, error) {
	path := kubeconfigPath(g.kubeconfig)
	kc, err := kubeconfig.Load(path)
	if err != nil {
		return nil, err
	}
	name := g.context
	if name == "" {
		name = kc.CurrentContext
	}
	for _, nc := range kc.Contexts {
		if nc.Name != name {
			continue
		}
		for _, cl := range kc.Clusters {
			if cl.Name != nc.Context.Cluster {
				continue
			}
			if len(cl.Cluster.CertificateAuthorityData) > 0 {
				return cl.Cluster.CertificateAuthorityData, nil
			}
			if cl.Cluster.CertificateAuthority != "" {
				b, err := os.ReadFile(cl.Cluster.CertificateAuthority)
				if err != nil {
					return nil, fmt.Errorf("kubeconfig: %w", err)
				}
				return b, nil
			}
			return nil, fmt.Errorf("kubeconfig %s: cluster %q has no certificate-authority: the host needs the CA of the control plane's serving certificate (the server's data-dir ca.crt)", path, cl.Name)
		}
	}
	return nil, fmt.Errorf("kubeconfig %s: context %q or its cluster not found", path, name)
}

// resolveHost returns one address of host, IPv4 first, or "" if it does
// not resolve within 3 seconds.
func resolveHost(ctx context.Context, host string) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil || len(addrs) == 0 {
		return ""
	}
	sort.SliceStable(addrs, func(i, j int) bool { return !strings.Contains(addrs[i], ":") && strings.Contains(addrs[j], ":") })
	return addrs[0]
}

// trustDomainOf extracts the trust domain of a SPIFFE ID
// (spiffe://<trust domain>/ns/...); "" leaves the default.
func trustDomainOf(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	td, _, _ := strings.Cut(rest, "/")
	return td
}
