package nomad

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want Config
		err  string
	}{
		{spec: "nomad=127.0.0.1:4646", want: Config{Address: "127.0.0.1:4646"}},
		{spec: "nomad=https://nomad:4646,token=T,region=eu,namespace=prod,wait=2m",
			want: Config{Address: "https://nomad:4646", Token: "T", Region: "eu", Namespace: "prod", WaitTime: 2 * time.Minute}},
		{spec: "nomad=n:4646,ca=/ca.pem,cert=/c.pem,key=/k.pem",
			want: Config{Address: "n:4646", TLS: TLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"}}},
		{spec: "consul=x", err: "must start with nomad=ADDR"},
		{spec: "nomad=", err: "address after nomad= is empty"},
		{spec: "nomad=a,region", err: `option "region" is not key=value`},
		{spec: "nomad=a,region=a,region=b", err: "option region given twice"},
		{spec: "nomad=a,domain=x", err: `unknown option "domain"`},
		{spec: "nomad=a,wait=-1s", err: "is not a positive duration"},
		{spec: "nomad=a,key=/k.pem", err: "cert and key go together"},
	} {
		got, err := Parse(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Parse(%q) error %v, want one containing %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.spec, err)
			continue
		}
		if d := cmp.Diff(got, tc.want); d != "" {
			t.Errorf("Parse(%q) (-got +want):\n%s", tc.spec, d)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Config{Address: "10.0.0.1:4646", TLS: TLS{CAFile: "/ca.pem"}}.withDefaults()
	if c.Address != "https://10.0.0.1:4646" || c.Namespace != "*" || c.Domain != "nomad" || c.WaitTime != 5*time.Minute {
		t.Errorf("defaults: %+v", c)
	}
	s, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Hostname("Prod", "Web"); got != "web.prod.nomad" {
		t.Errorf("Hostname = %q", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("nomad=127.0.0.1:4646,token=T,region=R")
	f.Add("nomad=,=,,")
	f.Fuzz(func(t *testing.T, spec string) {
		c, err := Parse(spec)
		if err == nil && c.Address == "" {
			t.Errorf("Parse(%q) accepted an empty address", spec)
		}
	})
}
