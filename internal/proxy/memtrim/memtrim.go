// Package memtrim drops the resident pages of a process's read-only file
// mappings — its own executable's code and read-only data, shared
// libraries — that it no longer uses.
//
// A Go sidecar's binary is large (the Envoy API's generated code and
// descriptors), and start-up touches much of it once: every protobuf
// package registers its descriptors, flag and config parsing run once.
// The kernel also maps pages around each one faulted in ("fault-around",
// 64 KiB), so after start-up about 20 of the binary's 27 MiB of code and
// read-only data count in the process's RSS although the data path uses a
// few MiB of them. Trim unmaps those pages from this process
// (madvise(MADV_DONTNEED)); they stay in the page cache, shared with every
// other process mapping the file, and whatever the process touches again
// comes back on a minor fault without I/O.
//
// Only private, non-writable, file-backed mappings without anonymous
// (copied-on-write) pages are trimmed: for those, dropping a page and
// reading it back from the file yields the same bytes. Relocated
// read-only data (RELRO) has anonymous pages and is left alone.
package memtrim

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Mapping is one trimmable region of /proc/<pid>/smaps.
type Mapping struct {
	Start, End uintptr
	Path       string
	RssKB      int64
}

// Trim drops this process's trimmable mappings and returns the resident
// kB they held just before.
func Trim() (int64, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	maps, err := Trimmable(f)
	f.Close()
	if err != nil {
		return 0, err
	}
	var kb int64
	for _, m := range maps {
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, m.Start, m.End-m.Start, syscall.MADV_DONTNEED); e != 0 {
			return kb, fmt.Errorf("madvise %s %#x-%#x: %w", m.Path, m.Start, m.End, e)
		}
		kb += m.RssKB
	}
	return kb, nil
}

// Trimmable parses smaps and returns the mappings Trim may drop: readable,
// not writable, private, backed by a file (a path, not [vdso] or the
// like), with no anonymous pages.
func Trimmable(smaps io.Reader) ([]Mapping, error) {
	var (
		out  []Mapping
		cur  *Mapping
		anon int64
		ok   bool
	)
	flush := func() {
		if cur != nil && ok && anon == 0 {
			out = append(out, *cur)
		}
		cur = nil
	}
	sc := bufio.NewScanner(smaps)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if k, v, isField := field(line); isField {
			if cur == nil {
				continue
			}
			switch k {
			case "Rss":
				cur.RssKB = v
			case "Anonymous":
				anon = v
			}
			continue
		}
		flush()
		m, trimmable, err := header(string(line))
		if err != nil {
			return nil, err
		}
		cur, ok, anon = &m, trimmable, 0
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	return out, nil
}

// field parses a "Key:   123 kB" line; a mapping's header line never has
// a colon right after its first word.
func field(line []byte) (string, int64, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 || bytes.IndexByte(line[:i], ' ') >= 0 || bytes.IndexByte(line[:i], '-') >= 0 {
		return "", 0, false
	}
	rest := strings.Fields(string(line[i+1:]))
	if len(rest) == 0 {
		return string(line[:i]), 0, true
	}
	v, _ := strconv.ParseInt(rest[0], 10, 64)
	return string(line[:i]), v, true
}

// header parses "start-end perms offset dev inode [path]".
func header(line string) (Mapping, bool, error) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return Mapping{}, false, fmt.Errorf("smaps: unexpected line %q", line)
	}
	lo, hi, found := strings.Cut(f[0], "-")
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if !found || err1 != nil || err2 != nil || end < start || len(f[1]) != 4 {
		return Mapping{}, false, fmt.Errorf("smaps: unexpected line %q", line)
	}
	m := Mapping{Start: uintptr(start), End: uintptr(end)}
	if len(f) >= 6 {
		m.Path = strings.Join(f[5:], " ")
	}
	perms := f[1]
	trimmable := perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p' && f[4] != "0" &&
		strings.HasPrefix(m.Path, "/") && !strings.HasSuffix(m.Path, " (deleted)")
	return m, trimmable, nil
}
