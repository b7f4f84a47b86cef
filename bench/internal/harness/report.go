package harness

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Table is a markdown report: a line naming the benchmark and the machine,
// a line of parameters, then a table with one row per measurement and one
// column per run.
type Table[R any] struct {
	b    strings.Builder
	runs []R
}

// NewTable starts a report titled title (e.g. "weft config API benchmark")
// with the parameters line params and a column per run, headed column(run).
func NewTable[R any](title, params string, runs []R, column func(R) string) *Table[R] {
	t := &Table[R]{runs: runs}
	host, _ := os.Hostname()
	fmt.Fprintf(&t.b, "%s, %s, %s/%s, %d CPUs (GOMAXPROCS %d), %s, host %s\n\n", title,
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), host)
	fmt.Fprintf(&t.b, "Parameters: %s\n\n", params)
	t.b.WriteString("| Measurement |")
	for _, r := range runs {
		fmt.Fprintf(&t.b, " %s |", column(r))
	}
	t.b.WriteString("\n|---|")
	for range runs {
		t.b.WriteString("---:|")
	}
	t.b.WriteString("\n")
	return t
}

// Row adds the measurement name, cell(run) for each run.
func (t *Table[R]) Row(name string, cell func(R) string) {
	fmt.Fprintf(&t.b, "| %s |", name)
	for _, r := range t.runs {
		fmt.Fprintf(&t.b, " %s |", cell(r))
	}
	t.b.WriteString("\n")
}

// String returns the markdown.
func (t *Table[R]) String() string { return t.b.String() }

// WriteReport prints the report to stdout after a blank line and, if out is
// set, also writes it to the file out.
func WriteReport(report, out string) error {
	fmt.Println()
	fmt.Print(report)
	if out == "" {
		return nil
	}
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("writing -out: %w", err)
	}
	Logf("wrote %s", out)
	return nil
}

// Percentile returns the nearest-rank p-th percentile (0-100) of ds, 0 for
// none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

// FmtDur formats d with a unit and three significant digits or so.
func FmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
}

// FmtBytes formats n in bytes, KiB, MiB or GiB.
func FmtBytes(n int64) string {
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%s%.2f GiB", neg, float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%s%.1f MiB", neg, float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%s%.1f KiB", neg, float64(n)/(1<<10))
	}
	return fmt.Sprintf("%s%d bytes", neg, n)
}
