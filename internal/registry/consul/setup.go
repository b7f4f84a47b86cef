package consul

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/registry"
)

// SourceName is the name the source reports under (registry.Service.Source).
const SourceName = "consul"

// Defaults for Config fields left zero.
const (
	DefaultAddress   = "127.0.0.1:8500"
	DefaultDomain    = "service.consul"
	DefaultNamespace = "default"
	DefaultWaitTime  = 5 * time.Minute
	DefaultRetryMin  = 250 * time.Millisecond
	DefaultRetryMax  = 30 * time.Second
)

// TLS configures HTTPS to the Consul agent.
type TLS struct {
	// CAFile verifies the agent's certificate (default: system roots).
	CAFile string
	// CertFile and KeyFile are the client certificate, if the agent
	// verifies clients.
	CertFile, KeyFile string
	// InsecureSkipVerify disables certificate verification (tests only).
	InsecureSkipVerify bool
}

// Config configures the Consul source.
type Config struct {
	// Address of the agent: "host:port" or a URL ("https://host:8501").
	// Default "127.0.0.1:8500" (or CONSUL_HTTP_ADDR, as for the consul CLI).
	Address string
	// Token is the ACL token (default: none, or CONSUL_HTTP_TOKEN).
	Token string
	// Datacenter to query (default: the agent's).
	Datacenter string
	// Domain names services: <service>.<Domain>. Default "service.consul".
	Domain string
	// ExtraDomains each add another host name <service>.<domain> for every
	// service, e.g. "consul.example" gives web.consul.example.
	ExtraDomains []string
	// Namespace is the weft namespace the services are put in. Default
	// "default".
	Namespace string
	// TLS configures HTTPS; setting any file implies an https:// address.
	TLS TLS
	// WaitTime bounds each blocking query. Default 5m (Consul caps it at 10m).
	WaitTime time.Duration
	// RetryMin and RetryMax bound the exponential backoff (with jitter)
	// after a failed query. Defaults 250ms and 30s.
	RetryMin, RetryMax time.Duration
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.Domain == "" {
		c.Domain = DefaultDomain
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.WaitTime <= 0 {
		c.WaitTime = DefaultWaitTime
	}
	if c.RetryMin <= 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	c.RetryMax = max(c.RetryMax, c.RetryMin)
	c.Domain = strings.Trim(c.Domain, ".")
	return c
}

// Parse reads the command-line form of a Consul source:
//
//	consul=ADDR[,token=T][,domain=D][,ns=N][,datacenter=DC][,wait=DUR]
//	      [,ca=FILE][,cert=FILE][,key=FILE][,insecure-skip-verify=BOOL]
//
// ADDR is host:port or a URL. domain may be repeated: each adds a host name
// <service>.<D> next to <service>.service.consul.
func Parse(spec string) (Config, error) {
	var c Config
	fields := strings.Split(spec, ",")
	addr, ok := strings.CutPrefix(strings.TrimSpace(fields[0]), "consul=")
	if !ok {
		return c, fmt.Errorf("consul: %q must start with consul=ADDR", spec)
	}
	if addr == "" {
		return c, fmt.Errorf("consul: %q: the address after consul= is empty", spec)
	}
	c.Address = addr
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || k == "" || v == "" {
			return c, fmt.Errorf("consul: %q: option %q is not key=value", spec, f)
		}
		if seen[k] && k != "domain" {
			return c, fmt.Errorf("consul: %q: option %s given twice", spec, k)
		}
		seen[k] = true
		switch k {
		case "token":
			c.Token = v
		case "domain":
			c.ExtraDomains = append(c.ExtraDomains, strings.Trim(v, "."))
		case "ns", "namespace":
			c.Namespace = v
		case "datacenter", "dc":
			c.Datacenter = v
		case "wait":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return c, fmt.Errorf("consul: %q: wait=%s is not a positive duration", spec, v)
			}
			c.WaitTime = d
		case "ca":
			c.TLS.CAFile = v
		case "cert":
			c.TLS.CertFile = v
		case "key":
			c.TLS.KeyFile = v
		case "insecure-skip-verify":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return c, fmt.Errorf("consul: %q: insecure-skip-verify=%s is not a boolean", spec, v)
			}
			c.TLS.InsecureSkipVerify = b
		default:
			return c, fmt.Errorf("consul: %q: unknown option %q (want token, domain, ns, datacenter, wait, ca, cert, key, insecure-skip-verify)", spec, k)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return c, fmt.Errorf("consul: %q: cert and key go together", spec)
	}
	return c, nil
}

func init() {
	registry.RegisterFactory(SourceName, func(spec string, log *slog.Logger) (registry.Source, error) {
		cfg, err := Parse(SourceName + "=" + spec)
		if err != nil {
			return nil, err
		}
		return New(cfg, log)
	})
}
