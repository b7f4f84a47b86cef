package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/weftmesh/weft/internal/analyze"
	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/pilot/push"
	"github.com/weftmesh/weft/internal/registry"
	"github.com/weftmesh/weft/internal/registry/serviceentry"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"sigs.k8s.io/yaml"
)

func newAnalyzeCmd(g *globalFlags) *cobra.Command {
	var files []string
	var useServer, allNamespaces bool
	var output, failure, shown, domainSuffix, meshConfig string
	cmd := &cobra.Command{
		Use:   "analyze [-f FILE|DIR ...]",
		Short: "Find mistakes across Istio config objects, with istioctl analyze's message codes",
		Long: `Analyze the mesh's config: the objects in the API server, with the files
given by -f taking the place of the stored objects of the same name (so
that a change can be checked before it is applied), or the files alone
with --use-server=false. Messages are about the namespace (-n, or the
context's) unless -A, and about every object read from a file.

Checks, with istioctl's codes:
  IST0101 a VirtualService routes to a subset no DestinationRule defines,
          or names a Gateway that does not exist
  IST0106 a file's object cannot be read as its kind
  IST0109 VirtualServices for the sidecars claim the same host
  IST0127 a policy's selector selects no workload (WorkloadEntries and
          ServiceEntry endpoints; Consul and Nomad instances are not seen)
  IST0131 an HTTP rule can never match: a rule before it takes every request
  IST0132 a VirtualService host that its Gateway does not serve
  IST0173 a DestinationRule subset selects no instance of its
          ServiceEntry's host
  WEFT0001 what discovery warns about when it translates the objects for
          the sidecars of the workloads they define: fields weft does
          not support, conflicts it resolves, references it drops

The command fails when a message reaches --failure-threshold.`,
		Example: `  weft analyze
  weft analyze -A
  weft analyze -f ../shared/istio-samples/bookinfo-networking/virtual-service-reviews-v3.yaml
  weft analyze --use-server=false -f manifests/ -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			failAt, err := analyze.ParseLevel(failure)
			if err != nil {
				return fmt.Errorf("--failure-threshold: %w", err)
			}
			showAt, err := analyze.ParseLevel(shown)
			if err != nil {
				return fmt.Errorf("--output-threshold: %w", err)
			}
			switch output {
			case "log", "json", "yaml":
			default:
				return fmt.Errorf("--output %q: want log, json or yaml", output)
			}
			if !useServer && len(files) == 0 {
				return errors.New("nothing to analyze: give -f FILE or DIR, or leave --use-server on")
			}
			ns := g.namespace
			configs := map[string]*model.Config{}
			fromFile := map[string]bool{}
			var msgs []analyze.Message
			var others registry.State
			if useServer {
				c, err := newClient(g)
				if err != nil {
					return err
				}
				ns = c.namespace
				if err := serverConfigs(cmd.Context(), c, configs); err != nil {
					return err
				}
				if others, err = otherRegistries(cmd.Context(), c); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "Note: without discovery's registry (%v), services from Consul or Nomad are not seen.\n", err)
				}
			}
			if ns == "" {
				ns = "default"
			}
			if len(files) > 0 {
				ms, err := readManifestsSkipping(cmd.InOrStdin(), files, ns, func(where string, err error) {
					fmt.Fprintf(cmd.ErrOrStderr(), "Skipped %s: %v\n", where, err)
				})
				if err != nil {
					return err
				}
				for _, m := range ms {
					if m.kind.NewSpec == nil {
						continue // not an Istio kind: nothing to analyze
					}
					c, err := manifestConfig(m)
					if err != nil {
						msgs = append(msgs, analyze.SchemaValidationError.New(m.kind.Kind, m.ns, m.name, "%s: %v", m.doc.Position(m.source), err))
						continue
					}
					configs[c.Key()] = c
					fromFile[c.Key()] = true
				}
			}
			list := make([]*model.Config, 0, len(configs))
			for _, c := range configs {
				list = append(list, c)
			}
			mesh := model.DefaultMesh()
			if meshConfig != "" {
				b, err := os.ReadFile(meshConfig)
				if err != nil {
					return err
				}
				if mesh, _, err = model.ParseMeshConfig(b, mesh); err != nil {
					return fmt.Errorf("--mesh-config %s: %w", meshConfig, err)
				}
			}
			mesh.DomainSuffix = domainSuffix
			for _, m := range analyze.Analyze(list, mesh, others) {
				msgNS, _, _ := strings.Cut(m.Ref, "/")
				if allNamespaces || fromFile[m.Kind+"/"+m.Ref] || msgNS == ns {
					msgs = append(msgs, m)
				}
			}
			return printAnalysis(cmd.OutOrStdout(), msgs, showAt, failAt, output, ns, allNamespaces)
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&files, "file", "f", nil, "a file or directory of YAML/JSON objects to analyze (repeatable; - for standard input)")
	f.BoolVar(&useServer, "use-server", true, "also read the objects in the API server")
	f.BoolVarP(&allNamespaces, "all-namespaces", "A", false, "report on every namespace")
	f.StringVarP(&output, "output", "o", "log", "output: log (a line a message), json or yaml")
	f.StringVar(&failure, "failure-threshold", "Error", "fail when a message is at this level or above: Info, Warning or Error")
	f.StringVar(&shown, "output-threshold", "Info", "show messages at this level or above")
	f.StringVar(&meshConfig, "mesh-config", "", "the mesh config weft server runs with (its --mesh-config file), for what discovery warns about")
	f.StringVar(&domainSuffix, "domain-suffix", model.DefaultMesh().DomainSuffix, "the mesh's domain suffix, which short host names are expanded with")
	return cmd
}

// serverConfigs adds every Istio object the API server holds, in all
// namespaces.
func serverConfigs(ctx context.Context, c *client, into map[string]*model.Config) error {
	for _, k := range resource.All() {
		if k.NewSpec == nil {
			continue
		}
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if _, err := c.do(ctx, "GET", collectionPath(k, k.StorageVersion(), ""), nil, "", nil, "", &list); err != nil {
			return fmt.Errorf("listing %s: %w", k.Resource, err)
		}
		for i, item := range list.Items {
			cfg, err := push.DecodeConfig(k, store.KV{Key: fmt.Sprintf("%s[%d]", k.Resource, i), Value: item})
			if err != nil {
				return err
			}
			into[cfg.Key()] = cfg
		}
	}
	return nil
}

// otherRegistries is what discovery's registry holds besides the
// ServiceEntries' services (which analyze takes from the objects, so that
// files can stand in for them): Consul's and Nomad's services and their
// endpoints.
func otherRegistries(ctx context.Context, c *client) (registry.State, error) {
	var snap registry.Snapshot
	if _, err := c.do(ctx, "GET", "/weft/v1/debug/registryz", nil, "", nil, "", &snap); err != nil {
		return registry.State{}, err
	}
	var st registry.State
	for _, svc := range snap.Services {
		if svc.Source == serviceentry.SourceName {
			continue
		}
		st.Services = append(st.Services, svc)
		st.Endpoints = append(st.Endpoints, snap.Endpoints[registry.Key(svc.Namespace, svc.Hostname)]...)
	}
	return st, nil
}

// manifestConfig reads a file's object as the API server validates it
// and pilot reads it once stored.
func manifestConfig(m *manifest) (*model.Config, error) {
	m.kind.Normalize(m.doc.Object) // deprecated fields Istio still takes
	if es := m.kind.Validate(m.doc.Object); len(es) > 0 {
		return nil, es
	}
	md, _ := m.doc.Object["metadata"].(map[string]any)
	labels := map[string]string{}
	if l, ok := md["labels"].(map[string]any); ok {
		for k, v := range l {
			labels[k] = fmt.Sprint(v)
		}
	}
	spec := m.kind.NewSpec()
	if raw, ok := m.doc.Object["spec"]; ok {
		b, err := json.Marshal(raw)
		if err != nil {
			return nil, err
		}
		if err := resource.UnmarshalSpec(b, spec, false); err != nil {
			return nil, err
		}
	}
	return &model.Config{Kind: m.kind.Kind, Namespace: m.ns, Name: m.name, Labels: labels, Spec: spec}, nil
}

func printAnalysis(w io.Writer, msgs []analyze.Message, showAt, failAt analyze.Level, output, ns string, all bool) error {
	var shown []analyze.Message
	failed := 0
	for _, m := range msgs {
		if m.Level >= showAt {
			shown = append(shown, m)
		}
		if m.Level >= failAt {
			failed++
		}
	}
	switch output {
	case "json", "yaml":
		if shown == nil {
			shown = []analyze.Message{}
		}
		b, err := json.MarshalIndent(shown, "", "  ")
		if err != nil {
			return err
		}
		if output == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return err
			}
		}
		fmt.Fprintf(w, "%s\n", b)
	default:
		for _, m := range shown {
			fmt.Fprintln(w, m)
		}
		if len(shown) == 0 {
			where := "namespace: " + ns
			if all {
				where = "all namespaces"
			}
			fmt.Fprintf(w, "✔ No validation issues found when analyzing %s.\n", where)
		}
	}
	if failed > 0 {
		return fmt.Errorf("analysis found %d message(s) at or above the failure threshold (%s)", failed, failAt)
	}
	return nil
}
