package consul

import (
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/registry/registrytest"
)

func TestParse(t *testing.T) {
	registrytest.CheckParse(t, Parse, []registrytest.ParseCase[Config]{
		{Spec: "consul=127.0.0.1:8500", Want: Config{Address: "127.0.0.1:8500"}},
		{Spec: "consul=https://consul:8501,token=T,domain=consul.example,domain=.dc1.example.,ns=legacy,datacenter=dc2,wait=1m",
			Want: Config{Address: "https://consul:8501", Token: "T", ExtraDomains: []string{"consul.example", "dc1.example"},
				Namespace: "legacy", Datacenter: "dc2", WaitTime: time.Minute}},
		{Spec: "consul=c:8501,ca=/ca.pem,cert=/c.pem,key=/k.pem,insecure-skip-verify=true",
			Want: Config{Address: "c:8501", TLS: TLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem", InsecureSkipVerify: true}}},
		{Spec: "nomad=x", Err: "must start with consul=ADDR"},
		{Spec: "consul=", Err: "address after consul= is empty"},
		{Spec: "consul=a,token", Err: `option "token" is not key=value`},
		{Spec: "consul=a,token=", Err: "is not key=value"},
		{Spec: "consul=a,token=x,token=y", Err: "option token given twice"},
		{Spec: "consul=a,color=red", Err: `unknown option "color"`},
		{Spec: "consul=a,wait=soon", Err: "wait=soon is not a positive duration"},
		{Spec: "consul=a,cert=/c.pem", Err: "cert and key go together"},
		{Spec: "consul=a,insecure-skip-verify=maybe", Err: "is not a boolean"},
	})
}

func FuzzParse(f *testing.F) {
	f.Add("consul=127.0.0.1:8500,token=T,domain=d,ns=n,datacenter=dc")
	f.Add("consul=,=,,")
	f.Fuzz(func(t *testing.T, spec string) {
		c, err := Parse(spec)
		if err == nil && c.Address == "" {
			t.Errorf("Parse(%q) accepted an empty address", spec)
		}
	})
}
