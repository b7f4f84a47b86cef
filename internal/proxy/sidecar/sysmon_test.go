package sidecar

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestReexecForSysmon re-runs this test binary as a child that calls
// ReexecForSysmon: the re-executed child sees schedtrace in GODEBUG,
// keeps the other GODEBUG settings, and runs exactly once more.
func TestReexecForSysmon(t *testing.T) {
	if os.Getenv("WEFT_SYSMON_CHILD") == "1" {
		if err := ReexecForSysmon(os.Getenv); err != nil {
			t.Fatal(err)
		}
		// Only the re-executed process gets here.
		os.Stdout.WriteString("GODEBUG=" + os.Getenv("GODEBUG") + "\n")
		return
	}
	for _, tc := range []struct{ in, want string }{
		{"", "GODEBUG=" + sysmonGODEBUG},
		{"http2debug=0", "GODEBUG=http2debug=0," + sysmonGODEBUG},
		{"schedtrace=0", "GODEBUG=schedtrace=0"}, // opted out: no re-exec
	} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestReexecForSysmon$")
		cmd.Env = []string{"WEFT_SYSMON_CHILD=1", "GODEBUG=" + tc.in}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, reexecMarker+"=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("GODEBUG=%q: %v\n%s", tc.in, err, out)
		}
		var got []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "GODEBUG=") {
				got = append(got, l)
			}
		}
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("GODEBUG=%q: child saw %q, want [%q]", tc.in, got, tc.want)
		}
	}
}
