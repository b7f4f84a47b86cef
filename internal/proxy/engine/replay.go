package engine

import (
	"errors"
	"io"
	"sync"
)

// replayBody makes a request body of unknown length (a gRPC call, a
// chunked upload) retryable without holding it back: each attempt reads
// it as it arrives, and what has been read is kept, up to max bytes, so
// that a retry can send it again before reading on. Past max nothing is
// kept and no retry is made (as Envoy does past its buffer limit).
//
// A transport may still be reading an attempt's body when the next
// attempt starts; that late reader gets errAttemptOver, and what it read
// from the client stays in the buffer for the new attempt. Only one
// reader reads the client's body at a time.
type replayBody struct {
	mu      sync.Mutex
	cond    sync.Cond
	src     io.Reader
	max     int
	buf     []byte
	over    bool  // more than max was read: no replay
	reading bool  // a Read on src is in progress
	err     error // src's final error (io.EOF at the end)
	gen     int   // the current attempt
}

var errAttemptOver = errors.New("request body: the attempt is over")

func newReplayBody(src io.Reader, max int) *replayBody {
	b := &replayBody{src: src, max: max}
	b.cond.L = &b.mu
	return b
}

// attempt returns the body for the current attempt, from the start.
func (b *replayBody) attempt() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &replayReader{b: b, gen: b.gen}
}

// next ends the current attempt for a retry; false when the body can no
// longer be replayed.
func (b *replayBody) next() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.over {
		return false
	}
	b.gen++
	b.cond.Broadcast()
	return true
}

// replayable reports whether a retry could still send the whole body.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.over
}

type replayReader struct {
	b   *replayBody
	gen int
	pos int
}

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if r.gen != b.gen {
			return 0, errAttemptOver
		}
		if !b.over && r.pos < len(b.buf) {
			n := copy(p, b.buf[r.pos:])
			r.pos += n
			return n, nil
		}
		if b.err != nil {
			return 0, b.err
		}
		if !b.reading {
			break
		}
		b.cond.Wait()
	}
	b.reading = true
	b.mu.Unlock()
	n, err := b.src.Read(p)
	b.mu.Lock()
	b.reading = false
	b.cond.Broadcast()
	if err != nil {
		b.err = err
	}
	current := r.gen == b.gen
	if n > 0 && !b.over {
		if len(b.buf)+n <= b.max || !current {
			// A late reader's bytes are kept whatever the size: the
			// current attempt has not sent them yet.
			b.buf = append(b.buf, p[:n]...)
		} else {
			b.over, b.buf = true, nil // this attempt has sent all of it
		}
	}
	if !current {
		return 0, errAttemptOver
	}
	r.pos += n
	if n == 0 {
		return 0, err
	}
	return n, nil
}

// Close ends nothing: the client's body belongs to the server.
func (r *replayReader) Close() error { return nil }
