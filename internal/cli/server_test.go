package cli

import (
	"strings"
	"testing"
	"time"
)

func TestServerRefusesBadCertTTLs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--workload-cert-ttl", "10s"}, "invalid --workload-cert-ttl 10s"},
		{[]string{"--workload-cert-ttl", "-1h"}, "invalid --workload-cert-ttl -1h0m0s"},
		{[]string{"--max-workload-cert-ttl", "0s", "--workload-cert-ttl", "2m"}, "invalid --max-workload-cert-ttl"},
		{[]string{"--workload-cert-ttl", "48h", "--max-workload-cert-ttl", "24h"}, "exceeds --max-workload-cert-ttl"},
	} {
		dir := t.TempDir()
		var out strings.Builder
		root := NewRoot(strings.NewReader(""), &out, &out)
		root.SetArgs(append([]string{"server", "--data-dir", dir, "--listen", "127.0.0.1:0"}, tc.args...))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("server %v: err = %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
	if err := checkCertTTLs(2*time.Minute, 2*time.Minute); err != nil {
		t.Errorf("2m/2m refused: %v", err)
	}
}
