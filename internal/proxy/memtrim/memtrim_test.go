package memtrim

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

const sample = `00400000-00f2a000 r-xp 00000000 fe:00 10019031                           /opt/weft/weft-proxy
Size:              11432 kB
Rss:                9832 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
00f2a000-01dc3000 r--p 00b2a000 fe:00 10019031                           /opt/weft/weft-proxy
Rss:               10300 kB
Anonymous:             0 kB
01dc3000-01e5b000 rw-p 019c3000 fe:00 10019031                           /opt/weft/weft-proxy
Rss:                 608 kB
Anonymous:           100 kB
3da48d400000-3da48e000000 rw-p 00000000 00:00 0 
Rss:                8472 kB
Anonymous:          8472 kB
7f0000000000-7f0000010000 r--p 001e0000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                  64 kB
Anonymous:            64 kB
7f0000010000-7f0000020000 r-xp 00026000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 868 kB
Anonymous:             0 kB
7f0000020000-7f0000030000 ---p 00036000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
7f0000030000-7f0000040000 r--s 00000000 fe:00 777                        /dev/shm/shared
Rss:                  64 kB
Anonymous:             0 kB
7f0000040000-7f0000050000 r-xp 00000000 fe:00 778                        /opt/old/weft-proxy (deleted)
Rss:                  64 kB
Anonymous:             0 kB
7ffd1e5f2000-7ffd1e5f4000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
`

func TestTrimmableSelectsCleanReadOnlyFileMappings(t *testing.T) {
	got, err := Trimmable(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{Start: 0x400000, End: 0xf2a000, Path: "/opt/weft/weft-proxy", RssKB: 9832},
		{Start: 0xf2a000, End: 0x1dc3000, Path: "/opt/weft/weft-proxy", RssKB: 10300},
		{Start: 0x7f0000010000, End: 0x7f0000020000, Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", RssKB: 868},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mappings %+v, want %+v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestTrimmableRejectsGarbage(t *testing.T) {
	for _, in := range []string{"zz-00 r-xp 0 fe:00 1 /x\n", "00400000 r-xp\n", "0500-0400 r-xp 0 fe:00 1 /x\n"} {
		if _, err := Trimmable(strings.NewReader(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// TestTrimDropsOwnBinaryPages trims the test binary itself: its file-backed
// resident set shrinks, and the code that runs afterwards (the rest of this
// test, the testing package) is faulted back in intact.
func TestTrimDropsOwnBinaryPages(t *testing.T) {
	before := rssFile(t)
	kb, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("RssFile %d kB → %d kB (trimmed mappings held %d kB)", before, after, kb)
	if kb <= 0 || after >= before {
		t.Fatalf("RssFile %d kB → %d kB after trimming %d kB: nothing dropped", before, after, kb)
	}
	// Everything still runs: strconv, maps, the runtime.
	if s := strconv.Itoa(12345); s != "12345" {
		t.Fatalf("strconv after trim: %q", s)
	}
}

func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}
