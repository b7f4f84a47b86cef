package consul

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
		{spec: "consul=127.0.0.1:8500", want: Config{Address: "127.0.0.1:8500"}},
		{spec: "consul=https://consul:8501,token=T,domain=consul.example,domain=.dc1.example.,ns=legacy,datacenter=dc2,wait=1m",
			want: Config{Address: "https://consul:8501", Token: "T", ExtraDomains: []string{"consul.example", "dc1.example"},
				Namespace: "legacy", Datacenter: "dc2", WaitTime: time.Minute}},
		{spec: "consul=c:8501,ca=/ca.pem,cert=/c.pem,key=/k.pem,insecure-skip-verify=true",
			want: Config{Address: "c:8501", TLS: TLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem", InsecureSkipVerify: true}}},
		{spec: "nomad=x", err: "must start with consul=ADDR"},
		{spec: "consul=", err: "address after consul= is empty"},
		{spec: "consul=a,token", err: `option "token" is not key=value`},
		{spec: "consul=a,token=", err: "is not key=value"},
		{spec: "consul=a,token=x,token=y", err: "option token given twice"},
		{spec: "consul=a,color=red", err: `unknown option "color"`},
		{spec: "consul=a,wait=soon", err: "wait=soon is not a positive duration"},
		{spec: "consul=a,cert=/c.pem", err: "cert and key go together"},
		{spec: "consul=a,insecure-skip-verify=maybe", err: "is not a boolean"},
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
