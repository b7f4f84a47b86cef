package nomad

import (
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/registry/registrytest"
)

func TestParse(t *testing.T) {
	registrytest.CheckParse(t, Parse, []registrytest.ParseCase[Config]{
		{Spec: "nomad=127.0.0.1:4646", Want: Config{Address: "127.0.0.1:4646"}},
		{Spec: "nomad=https://nomad:4646,token=T,region=eu,namespace=prod,wait=2m",
			Want: Config{Address: "https://nomad:4646", Token: "T", Region: "eu", Namespace: "prod", WaitTime: 2 * time.Minute}},
		{Spec: "nomad=n:4646,ca=/ca.pem,cert=/c.pem,key=/k.pem",
			Want: Config{Address: "n:4646", TLS: TLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"}}},
		{Spec: "consul=x", Err: "must start with nomad=ADDR"},
		{Spec: "nomad=", Err: "address after nomad= is empty"},
		{Spec: "nomad=a,region", Err: `option "region" is not key=value`},
		{Spec: "nomad=a,region=a,region=b", Err: "option region given twice"},
		{Spec: "nomad=a,domain=x", Err: `unknown option "domain"`},
		{Spec: "nomad=a,wait=-1s", Err: "is not a positive duration"},
		{Spec: "nomad=a,key=/k.pem", Err: "cert and key go together"},
	})
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
