package nomad

import (
	"fmt"
	"log/slog"
	"strconv"
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
type TLS struct {
	// CAFile verifies the agent's certificate (default: system roots).
	CAFile string
	// CertFile and KeyFile are the client certificate, when the agent
	// verifies clients (Nomad's tls.verify_https_client).
	CertFile, KeyFile string
	// InsecureSkipVerify disables certificate verification (tests only).
	InsecureSkipVerify bool
}

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
	var c Config
	fields := strings.Split(spec, ",")
	addr, ok := strings.CutPrefix(strings.TrimSpace(fields[0]), "nomad=")
	if !ok {
		return c, fmt.Errorf("nomad: %q must start with nomad=ADDR", spec)
	}
	if addr == "" {
		return c, fmt.Errorf("nomad: %q: the address after nomad= is empty", spec)
	}
	c.Address = addr
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || k == "" || v == "" {
			return c, fmt.Errorf("nomad: %q: option %q is not key=value", spec, f)
		}
		if seen[k] {
			return c, fmt.Errorf("nomad: %q: option %s given twice", spec, k)
		}
		seen[k] = true
		switch k {
		case "token":
			c.Token = v
		case "region":
			c.Region = v
		case "namespace", "ns":
			c.Namespace = v
		case "wait":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return c, fmt.Errorf("nomad: %q: wait=%s is not a positive duration", spec, v)
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
				return c, fmt.Errorf("nomad: %q: insecure-skip-verify=%s is not a boolean", spec, v)
			}
			c.TLS.InsecureSkipVerify = b
		default:
			return c, fmt.Errorf("nomad: %q: unknown option %q (want token, region, namespace, wait, ca, cert, key, insecure-skip-verify)", spec, k)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return c, fmt.Errorf("nomad: %q: cert and key go together", spec)
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
