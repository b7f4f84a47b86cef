package sidecar

import (
	"os"
	"strings"
	"syscall"
)

// sysmonGODEBUG keeps the Go runtime's monitor thread (sysmon) out of its
// deep sleep. Between requests a lightly loaded sidecar has no goroutine
// running, so sysmon parks; the next syscall (the next request's read)
// wakes it with a futex, and it then polls every 20 µs for about a
// millisecond before parking again — at 1,000 requests a second that is
// a futex wake and two nanosleeps per request, a third of the sidecar's
// CPU (BenchmarkSidecarProcesses: 128–144 → 84–96 µs per request). With
// schedtrace set, the runtime never deep-sleeps sysmon (so that it can
// print the trace on time); it backs off to one wake-up every 10 ms
// instead. The interval, 2^31-1 ms (24.8 days), keeps the trace itself
// to one line on stderr every 24.8 days of host uptime (and the
// scheduler state in a fatal crash report).
const sysmonGODEBUG = "schedtrace=2147483647"

// reexecMarker is set in the re-executed process's environment.
const reexecMarker = "WEFT_PROXY_REEXECUTED"

// ReexecForSysmon re-executes the running binary, same arguments, with
// sysmonGODEBUG added to GODEBUG (the runtime reads it only at start-up),
// unless GODEBUG already sets schedtrace — GODEBUG=schedtrace=0 opts
// out. It returns only when it does not re-execute, with the reason when
// it tried and failed.
func ReexecForSysmon(getenv func(string) string) error {
	if getenv(reexecMarker) != "" {
		return nil // never twice, whatever the runtime made of GODEBUG
	}
	godebug := getenv("GODEBUG")
	for _, kv := range strings.Split(godebug, ",") {
		if strings.HasPrefix(strings.TrimSpace(kv), "schedtrace=") {
			return nil
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if godebug != "" {
		godebug += ","
	}
	env := []string{"GODEBUG=" + godebug + sysmonGODEBUG, reexecMarker + "=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, reexecMarker+"=") {
			env = append(env, kv)
		}
	}
	return syscall.Exec(exe, os.Args, env)
}
