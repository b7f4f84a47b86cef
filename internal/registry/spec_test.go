package registry

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseSpec(t *testing.T) {
	s, err := ParseSpec("kind", " kind=h:1, a=1,b=x=y,a=2", "a")
	if err != nil {
		t.Fatal(err)
	}
	want := []Option{{"a", "1"}, {"b", "x=y"}, {"a", "2"}}
	if s.Addr != "h:1" || s.Kind != "kind" || !cmp.Equal(s.Options, want) {
		t.Errorf("ParseSpec = %+v", s)
	}
	for text, msg := range map[string]string{
		"other=h":        `kind: "other=h" must start with kind=ADDR`,
		"kind=":          `kind: "kind=": the address after kind= is empty`,
		"kind=h,b":       `kind: "kind=h,b": option "b" is not key=value`,
		"kind=h,=v":      `option "=v" is not key=value`,
		"kind=h,b=1,b=":  `option "b=" is not key=value`,
		"kind=h,b=1,b=2": `kind: "kind=h,b=1,b=2": option b given twice`,
	} {
		if _, err := ParseSpec("kind", text, "a"); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseSpec(%q) error %v, want one containing %q", text, err, msg)
		}
	}
}

func TestSpecValues(t *testing.T) {
	s := Spec{Kind: "k", Text: "k=a"}
	if d, err := s.Duration(Option{"wait", "2m"}); err != nil || d != 2*time.Minute {
		t.Errorf("Duration(2m) = %v, %v", d, err)
	}
	for _, v := range []string{"0s", "-1s", "soon"} {
		if _, err := s.Duration(Option{"wait", v}); err == nil || !strings.Contains(err.Error(), "wait="+v+" is not a positive duration") {
			t.Errorf("Duration(%s) error %v", v, err)
		}
	}
	var tls TLS
	for _, o := range []Option{{"ca", "/ca"}, {"cert", "/c"}, {"insecure-skip-verify", "true"}} {
		if err := tls.SetOption(s, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := tls.Check(s); err == nil || !strings.Contains(err.Error(), "cert and key go together") {
		t.Errorf("Check without key: %v", err)
	}
	if err := tls.SetOption(s, Option{"key", "/k"}); err != nil || tls.Check(s) != nil {
		t.Errorf("key: %v, check %v", err, tls.Check(s))
	}
	if want := (TLS{CAFile: "/ca", CertFile: "/c", KeyFile: "/k", InsecureSkipVerify: true}); tls != want {
		t.Errorf("TLS = %+v, want %+v", tls, want)
	}
	if err := tls.SetOption(s, Option{"insecure-skip-verify", "maybe"}); err == nil || !strings.Contains(err.Error(), "is not a boolean") {
		t.Errorf("insecure-skip-verify=maybe: %v", err)
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add("kind=h:1,a=1,b=2")
	f.Add("kind=,=,,")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseSpec("kind", text)
		if err != nil {
			return
		}
		if s.Addr == "" {
			t.Errorf("ParseSpec(%q) accepted an empty address", text)
		}
		for _, o := range s.Options {
			if o.Key == "" || o.Value == "" {
				t.Errorf("ParseSpec(%q): empty option part in %+v", text, o)
			}
		}
	})
}
