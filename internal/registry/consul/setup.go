package consul

import (
	"log/slog"
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
type TLS = registry.TLS

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
	s, err := registry.ParseSpec(SourceName, spec, "domain")
	if err != nil {
		return Config{}, err
	}
	c := Config{Address: s.Addr}
	for _, o := range s.Options {
		switch o.Key {
		case "token":
			c.Token = o.Value
		case "domain":
			c.ExtraDomains = append(c.ExtraDomains, strings.Trim(o.Value, "."))
		case "ns", "namespace":
			c.Namespace = o.Value
		case "datacenter", "dc":
			c.Datacenter = o.Value
		case "wait":
			c.WaitTime, err = s.Duration(o)
		case "ca", "cert", "key", "insecure-skip-verify":
			err = c.TLS.SetOption(s, o)
		default:
			err = s.Errorf("unknown option %q (want token, domain, ns, datacenter, wait, ca, cert, key, insecure-skip-verify)", o.Key)
		}
		if err != nil {
			return c, err
		}
	}
	return c, c.TLS.Check(s)
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
