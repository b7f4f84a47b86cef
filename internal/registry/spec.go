package registry

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The command-line form shared by the sources that talk to a catalog agent
// (Consul, Nomad): kind=ADDR[,key=value]... . Each source's Parse walks the
// options of a Spec with its own switch; the syntax, duplicate and value
// checks, and the TLS options live here.

// Spec is a source's command-line form split into its address and options.
// Create it with ParseSpec.
type Spec struct {
	// Kind is the source kind, the text before the first "=" ("consul").
	Kind string
	// Text is the whole spec, quoted in errors.
	Text string
	// Addr is ADDR: host:port or a URL, never empty.
	Addr string
	// Options are the key=value options in the order given.
	Options []Option
}

// Option is one key=value option of a Spec; neither part is empty.
type Option struct {
	Key, Value string
}

// ParseSpec splits text, which must be kind=ADDR[,key=value]... . Each key
// may be given once, except those listed in repeatable.
func ParseSpec(kind, text string, repeatable ...string) (Spec, error) {
	s := Spec{Kind: kind, Text: text}
	fields := strings.Split(text, ",")
	addr, ok := strings.CutPrefix(strings.TrimSpace(fields[0]), kind+"=")
	if !ok {
		return s, fmt.Errorf("%s: %q must start with %s=ADDR", kind, text, kind)
	}
	if addr == "" {
		return s, s.Errorf("the address after %s= is empty", kind)
	}
	s.Addr = addr
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || k == "" || v == "" {
			return s, s.Errorf("option %q is not key=value", f)
		}
		if seen[k] && !slices.Contains(repeatable, k) {
			return s, s.Errorf("option %s given twice", k)
		}
		seen[k] = true
		s.Options = append(s.Options, Option{Key: k, Value: v})
	}
	return s, nil
}

// Errorf returns an error about the spec: "<kind>: <quoted text>: <message>".
func (s Spec) Errorf(format string, args ...any) error {
	return fmt.Errorf("%s: %q: %s", s.Kind, s.Text, fmt.Sprintf(format, args...))
}

// Duration reads o's value as a positive duration ("30s", "5m").
func (s Spec) Duration(o Option) (time.Duration, error) {
	d, err := time.ParseDuration(o.Value)
	if err != nil || d <= 0 {
		return 0, s.Errorf("%s=%s is not a positive duration", o.Key, o.Value)
	}
	return d, nil
}

// Bool reads o's value as a boolean (strconv.ParseBool).
func (s Spec) Bool(o Option) (bool, error) {
	b, err := strconv.ParseBool(o.Value)
	if err != nil {
		return false, s.Errorf("%s=%s is not a boolean", o.Key, o.Value)
	}
	return b, nil
}

// TLS configures HTTPS to a catalog agent.
type TLS struct {
	// CAFile verifies the agent's certificate (default: system roots).
	CAFile string
	// CertFile and KeyFile are the client certificate, when the agent
	// verifies clients.
	CertFile, KeyFile string
	// InsecureSkipVerify disables certificate verification (tests only).
	InsecureSkipVerify bool
}

// SetOption applies a TLS option of s: ca=FILE, cert=FILE, key=FILE or
// insecure-skip-verify=BOOL.
func (t *TLS) SetOption(s Spec, o Option) error {
	switch o.Key {
	case "ca":
		t.CAFile = o.Value
	case "cert":
		t.CertFile = o.Value
	case "key":
		t.KeyFile = o.Value
	case "insecure-skip-verify":
		b, err := s.Bool(o)
		if err != nil {
			return err
		}
		t.InsecureSkipVerify = b
	default:
		return s.Errorf("%s is not a TLS option", o.Key)
	}
	return nil
}

// Check reports a client certificate without its key, or a key without its
// certificate.
func (t TLS) Check(s Spec) error {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return s.Errorf("cert and key go together")
	}
	return nil
}
