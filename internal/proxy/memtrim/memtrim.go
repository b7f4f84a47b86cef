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
	"time"
)

// ResidentFileKB is this process's RssFile (kB) from /proc/self/status:
// its resident file-backed pages, most of them the binary's.
func ResidentFileKB() (int64, error) { return StatusKB(0, "RssFile") }

// StatusKB reads a field of /proc/<pid>/status (0: this process), such
// as VmRSS or RssFile in kB.
func StatusKB(pid int, key string) (int64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := StatusField(b, key)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// StatusField returns the value (kB for sizes) of key in the text of a
// /proc/<pid>/status file.
func StatusField(status []byte, key string) (int64, error) {
	for line := range bytes.Lines(status) {
		if k, v, ok := field(bytes.TrimRight(line, "\n")); ok && k == key {
			return v, nil
		}
	}
	return 0, fmt.Errorf("no %s", key)
}

// Keeper trims again whenever the binary's resident pages grow well past
// what the process needs in steady state. Code that runs rarely — serving
// a metrics scrape or an admin request, applying a configuration —
// touches pages that the data path does not use, and fault-around makes
// each one cost 64 KiB of RSS; they would otherwise stay resident for
// good.
//
// Its baseline is the resident size Settle after a trim, once the data
// path has faulted back what it uses, provided no cold path ran
// meanwhile (Served): such a sample would count the cold path's pages as
// the working set, and a second scrape a few seconds after the first
// would then stay resident for good. A sample more than Growth kB over
// the baseline trims again, and so does a cold path served while there
// is no baseline yet; never twice within Settle. Check and Served are
// called from one goroutine.
type Keeper struct {
	Settle time.Duration
	Growth int64 // kB

	// Now, Read and Trim default to time.Now, ResidentFileKB and Trim.
	Now  func() time.Time
	Read func() (int64, error)
	Trim func() (int64, error)

	last     time.Time // the last trim
	baseline int64     // the working set; 0 until first measured
	measured bool      // baseline measured since the last trim
	dirty    bool      // a cold path ran since the last trim
}

// Trimmed tells k that the process was just trimmed.
func (k *Keeper) Trimmed() {
	k.last, k.measured, k.dirty = k.now(), false, false
}

// Served tells k that a cold path (an admin or metrics request) ran.
func (k *Keeper) Served() { k.dirty = true }

// Check samples the resident size and trims when it has grown past the
// baseline by more than Growth; it returns the resident kB the trimmed
// mappings held (0 when it did not trim).
func (k *Keeper) Check() (int64, error) {
	if k.now().Sub(k.last) < k.Settle {
		return 0, nil
	}
	read := k.Read
	if read == nil {
		read = ResidentFileKB
	}
	v, err := read()
	if err != nil {
		return 0, err
	}
	switch {
	case !k.measured && !k.dirty:
		k.baseline, k.measured = v, true
		return 0, nil
	case k.baseline == 0 && k.dirty, k.baseline > 0 && v > k.baseline+k.Growth:
		trim := k.Trim
		if trim == nil {
			trim = Trim
		}
		kb, err := trim()
		k.Trimmed()
		return kb, err
	}
	return 0, nil
}

func (k *Keeper) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

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
