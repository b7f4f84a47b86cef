package engine

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// TestReplayBody: a retry sends the whole body again, however much of it
// the first attempt had read; past the limit no retry is possible; a late
// reader of a finished attempt gets an error while what it read goes to
// the next attempt.
func TestReplayBody(t *testing.T) {
	const text = "0123456789abcdefghij"
	b := newReplayBody(strings.NewReader(text), 64)
	first := b.attempt()
	p := make([]byte, 7)
	if n, err := first.Read(p); n != 7 || err != nil || string(p) != text[:7] {
		t.Fatalf("first attempt read %d %v %q", n, err, p[:n])
	}
	if !b.replayable() || !b.next() {
		t.Fatal("a 7-byte prefix of a small body cannot be replayed")
	}
	if _, err := first.Read(p); !errors.Is(err, errAttemptOver) {
		t.Fatalf("the first attempt's body after a retry: %v, want errAttemptOver", err)
	}
	if got, err := io.ReadAll(b.attempt()); err != nil || string(got) != text {
		t.Fatalf("second attempt read %q %v, want the whole body", got, err)
	}
	if !b.next() {
		t.Fatal("a body read to its end cannot be replayed")
	}
	if got, _ := io.ReadAll(b.attempt()); string(got) != text {
		t.Fatalf("third attempt read %q", got)
	}

	// Past the limit: the attempt still gets everything, retries are off.
	long := strings.Repeat("x", 100)
	b = newReplayBody(strings.NewReader(long), 64)
	if got, _ := io.ReadAll(b.attempt()); string(got) != long {
		t.Fatalf("read past the limit: %d bytes", len(got))
	}
	if b.replayable() || b.next() {
		t.Fatal("a body over the limit was offered for a retry")
	}

	// A late reader blocked on the client: its bytes reach the next attempt.
	pr, pw := io.Pipe()
	b = newReplayBody(pr, 64)
	late := b.attempt()
	done := make(chan error, 1)
	go func() {
		_, err := late.Read(make([]byte, 16))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it block in the pipe
	if !b.next() {
		t.Fatal("next refused")
	}
	second := b.attempt()
	go func() {
		_, _ = pw.Write([]byte("hello"))
		_, _ = pw.Write([]byte(" world"))
		pw.Close()
	}()
	if err := <-done; !errors.Is(err, errAttemptOver) {
		t.Fatalf("late reader: %v, want errAttemptOver", err)
	}
	if got, err := io.ReadAll(second); err != nil || string(got) != "hello world" {
		t.Fatalf("attempt after the late read: %q %v, want %q", got, err, "hello world")
	}
}
