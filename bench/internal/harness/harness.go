// Package harness is what the benchmark programs under bench/ share: an
// in-process weft server, timestamped progress lines, time-limited phases,
// the file-descriptor limit, process memory figures and the markdown report
// with its number formats.
package harness

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Main runs a benchmark program: it parses the arguments with parse (exit
// status 0 for -h, 2 for bad flags), then calls run and exits 1 if that
// fails. name ("xds bench") prefixes the messages.
func Main[O any](name string, parse func(args []string) (O, error), run func(O) error) {
	o, err := parse(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, name+": FAILED:", err)
		os.Exit(1)
	}
}

// Logf prints a progress line, prefixed with the wall-clock time, to stderr.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// Phase runs f under a time limit; when the limit passes, the context's
// cause is limitErr. It logs the start and the duration and labels f's error
// with name.
func Phase(parent context.Context, name string, limit time.Duration, limitErr error, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeoutCause(parent, limit, limitErr)
	defer cancel()
	start := time.Now()
	Logf("phase %s: start", name)
	if err := f(ctx); err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	Logf("phase %s: done in %s", name, time.Since(start).Round(time.Millisecond))
	return nil
}

// RaiseNoFile raises the soft RLIMIT_NOFILE to the hard limit and fails if
// that is below want.
func RaiseNoFile(want uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("setrlimit NOFILE to %d: %w", rl.Max, err)
		}
	}
	if rl.Cur < want {
		return rl.Cur, fmt.Errorf("RLIMIT_NOFILE is %d (hard limit %d), need %d: raise the hard limit (ulimit -Hn)", rl.Cur, rl.Max, want)
	}
	return rl.Cur, nil
}

// ProcStatus returns a "kB" field of /proc/self/status (such as "VmHWM:")
// in bytes, or 0.
func ProcStatus(field string) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == field && f[2] == "kB" {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

// ResetPeakRSS resets the kernel's record of the process's peak RSS
// (VmHWM); best effort, Linux only.
func ResetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }
