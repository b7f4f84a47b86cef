package registry

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseInboundPorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    map[uint32]uint32
		wantErr string
	}{
		{in: "", want: nil},
		{in: " , ", want: nil},
		{in: "9080=15080", want: map[uint32]uint32{9080: 15080}},
		{in: " 9443=15443 ,9080=15080,", want: map[uint32]uint32{9080: 15080, 9443: 15443}},
		{in: "9080", wantErr: "want <app port>=<sidecar port>"},
		{in: "9080=", wantErr: "sidecar port"},
		{in: "x=15080", wantErr: "app port"},
		{in: "0=15080", wantErr: "not a port"},
		{in: "9080=70000", wantErr: "not a port"},
		{in: "9080=15080,9080=15081", wantErr: "app port 9080 listed twice"},
		{in: "9080=15080,9081=15080", wantErr: "sidecar port 15080 serves both"},
		{in: "9080=15080,15080=16000", wantErr: "port 15080 is an app port and the sidecar port"},
	} {
		got, err := ParseInboundPorts(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want one containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(got, tc.want); diff != "" {
			t.Errorf("%q (-got +want):\n%s", tc.in, diff)
		}
		if back, _ := ParseInboundPorts(FormatInboundPorts(got)); !cmp.Equal(back, got) {
			t.Errorf("%q: Format/Parse round trip gave %v", tc.in, back)
		}
	}
}

func TestDialPort(t *testing.T) {
	p := Port{Name: "http", Number: 80, TargetPort: 8080}
	plain := Endpoint{}
	if got := plain.DialPort(p); got != 8080 {
		t.Errorf("no sidecar: DialPort %d, want the target port 8080", got)
	}
	e := Endpoint{Ports: map[string]uint32{"http": 9080}, SidecarPorts: map[uint32]uint32{9080: 15080}}
	if got, app := e.DialPort(p), e.PortFor(p); got != 15080 || app != 9080 {
		t.Errorf("DialPort %d PortFor %d, want 15080 and 9080", got, app)
	}
}
