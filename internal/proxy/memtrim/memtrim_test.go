package memtrim

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
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
	kb, err := ResidentFileKB()
	if err != nil || kb <= 0 {
		t.Fatalf("RssFile %d kB, %v", kb, err)
	}
	return kb
}

func TestStatusField(t *testing.T) {
	status := []byte("Name:\tweft-proxy\nVmRSS:\t   22472 kB\nRssAnon:\t   11524 kB\nRssFile:\t   10948 kB\nThreads:\t6\n")
	for key, want := range map[string]int64{"RssFile": 10948, "RssAnon": 11524, "Threads": 6} {
		if got, err := StatusField(status, key); err != nil || got != want {
			t.Errorf("%s = %d, %v; want %d", key, got, err, want)
		}
	}
	if _, err := StatusField(status, "RssShmem"); err == nil {
		t.Error("a missing field gave no error")
	}
}

// TestKeeper drives a Keeper with a fake clock and resident sizes: it
// takes its baseline Settle after a trim unless a cold path ran since,
// tolerates growth up to Growth, trims above it, and never twice within
// Settle.
func TestKeeper(t *testing.T) {
	now := time.Unix(1000, 0)
	var resident int64
	var trims, reads int
	newKeeper := func() *Keeper {
		k := &Keeper{Settle: 5 * time.Second, Growth: 2048,
			Now:  func() time.Time { return now },
			Read: func() (int64, error) { reads++; return resident, nil },
			Trim: func() (int64, error) { trims++; kb := resident; resident = 6000; return kb, nil },
		}
		k.Trimmed()
		return k
	}
	k := newKeeper()
	step := func(d time.Duration, rss int64, served bool, wantTrims int) {
		t.Helper()
		now = now.Add(d)
		resident = rss
		if served {
			k.Served()
		}
		if _, err := k.Check(); err != nil {
			t.Fatal(err)
		}
		if trims != wantTrims {
			t.Fatalf("at +%s with %d kB resident: %d trims, want %d", now.Sub(time.Unix(1000, 0)), rss, trims, wantTrims)
		}
	}
	step(time.Second, 30000, false, 0) // settling: not even read
	if reads != 0 {
		t.Fatalf("read %d times while settling", reads)
	}
	step(4*time.Second, 10000, false, 0) // baseline 10000
	step(time.Second, 11500, false, 0)   // the data path's creep
	step(time.Second, 12048, false, 0)   // exactly Growth over
	step(time.Second, 13200, true, 1)    // a scrape's pages
	// A second scrape right after (another Prometheus): not trimmed
	// within Settle, and not taken for the working set after it.
	step(2*time.Second, 13000, true, 1)
	step(3*time.Second, 13100, false, 2)
	step(5*time.Second, 10400, false, 2) // a clean baseline: 10400
	step(time.Second, 12449, false, 3)   // over it
	// A cold path that adds little trims nothing.
	step(5*time.Second, 10500, false, 3)
	step(time.Second, 11000, true, 3)
	step(time.Second, 11100, false, 3)

	// No baseline yet and a cold path ran: trim rather than take its
	// pages for the working set.
	trims = 0
	k = newKeeper()
	step(time.Second, 20000, true, 0)
	step(4*time.Second, 20000, false, 1)
	step(5*time.Second, 9000, false, 1) // baseline 9000
	step(time.Second, 11048, false, 1)
	step(time.Second, 11100, false, 2)

	k.Read = func() (int64, error) { return 0, errors.New("no /proc") }
	now = now.Add(10 * time.Second)
	if _, err := k.Check(); err == nil {
		t.Fatal("a failed read gave no error")
	}
}
