package nomad

import (
	"log/slog"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/registry"
)

// SourceName is the name the source reports under (registry.Service.Source).
const SourceName = "nomad"

// Defaults for Config fields left zero.
const (
	DefaultAddress   = "http://127.0.0.1:4646"
	DefaultNamespace = "*"
	DefaultDomain    = "nomad"
	DefaultWaitTime  = 5 * time.Minute
	DefaultRetryMin  = 250 * time.Millisecond
	DefaultRetryMax  = 30 * time.Second
)

// TLS configures HTTPS to the Nomad agent.
type TLS = registry.TLS

// Config configures the Nomad source.
type Config struct {
	// Address of the agent, a URL or host:port. Default
	// "http://127.0.0.1:4646" (or NOMAD_ADDR, as for the nomad CLI).
	Address string
	// Token is the ACL token (Nomad's SecretID). Default none (or
	// NOMAD_TOKEN).
	Token string
	// Region to query. Default: the agent's.
	Region string
	// Namespace is the Nomad namespace to watch. Default "*" (all).
	Namespace string
	// Domain is the last label of host names: <service>.<namespace>.<Domain>.
	// Default "nomad".
	Domain string
	// TLS configures HTTPS; setting any field implies an https:// address.
	TLS TLS
	// WaitTime bounds each blocking query. Default 5m (Nomad caps it at 10m).
	WaitTime time.Duration
	// RetryMin and RetryMax bound the exponential backoff (with jitter)
	// after a failed query. Defaults 250ms and 30s.
	RetryMin, RetryMax time.Duration
}

func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if !strings.Contains(c.Address, "://") {
		scheme := "http://"
		if c.TLS != (TLS{}) {
			scheme = "https://"
		}
		c.Address = scheme + c.Address
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Domain = strings.Trim(c.Domain, "."); c.Domain == "" {
		c.Domain = DefaultDomain
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
	return c
}

// Parse reads the command-line form of a Nomad source:
//
//	nomad=ADDR[,token=T][,region=R][,namespace=NS][,wait=DUR]
//	      [,ca=FILE][,cert=FILE][,key=FILE][,insecure-skip-verify=BOOL]
//
// ADDR is host:port or a URL.
func Parse(spec string) (Config, error) {
	s, err := registry.ParseSpec(SourceName, spec)
	if err != nil {
		return Config{}, err
	}
	c := Config{Address: s.Addr}
	for _, o := range s.Options {
		switch o.Key {
		case "token":
			c.Token = o.Value
		case "region":
			c.Region = o.Value
		case "namespace", "ns":
			c.Namespace = o.Value
		case "wait":
			c.WaitTime, err = s.Duration(o)
		case "ca", "cert", "key", "insecure-skip-verify":
			err = c.TLS.SetOption(s, o)
		default:
			err = s.Errorf("unknown option %q (want token, region, namespace, wait, ca, cert, key, insecure-skip-verify)", o.Key)
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
