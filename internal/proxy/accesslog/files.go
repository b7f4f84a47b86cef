package accesslog

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Files opens access log files once per path and shares them: every
// listener logging to one path uses the same Logger (one writer
// goroutine, one queue). Acquire and Release count users; the last
// Release closes the logger (and the file). /dev/stdout and /dev/stderr
// are the process's own and never closed.
type Files struct {
	queue int
	mu    sync.Mutex
	open  map[string]*sharedFile
	// closedDropped are the drops of loggers already closed.
	closedDropped atomic.Uint64
}

type sharedFile struct {
	l    *Logger
	c    io.Closer
	refs int
}

// NewFiles returns an empty set; each logger gets a queue of queue
// entries (0: DefaultQueue).
func NewFiles(queue int) *Files {
	return &Files{queue: queue, open: map[string]*sharedFile{}}
}

// Acquire returns the logger of path, opening it (append, create 0644)
// on first use.
func (fs *Files) Acquire(path string) (*Logger, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if sf, ok := fs.open[path]; ok {
		sf.refs++
		return sf.l, nil
	}
	var w io.Writer
	var c io.Closer
	switch path {
	case "/dev/stdout":
		w = os.Stdout
	case "/dev/stderr":
		w = os.Stderr
	case "":
		return nil, fmt.Errorf("access log: empty path")
	default:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		w, c = f, f
	}
	sf := &sharedFile{l: New(w, Text, fs.queue), c: c, refs: 1}
	fs.open[path] = sf
	return sf.l, nil
}

// Check reports whether Acquire(path) would succeed, without keeping
// anything open: a path already open is fine, another is opened for
// appending (and created, as Acquire would) and closed again. Config that
// names a file the proxy cannot write is refused with this error (the xDS
// client NACKs it) instead of logging nothing.
func (fs *Files) Check(path string) error {
	fs.mu.Lock()
	_, open := fs.open[path]
	fs.mu.Unlock()
	switch {
	case open, path == "/dev/stdout", path == "/dev/stderr":
		return nil
	case path == "":
		return fmt.Errorf("access log: empty path")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	return f.Close()
}

// Release gives up one use of path; the last one writes what is queued
// and closes the file.
func (fs *Files) Release(path string) {
	fs.mu.Lock()
	sf, ok := fs.open[path]
	if ok {
		sf.refs--
		if sf.refs > 0 {
			ok = false
		} else {
			delete(fs.open, path)
		}
	}
	fs.mu.Unlock()
	if ok {
		sf.close()
		fs.closedDropped.Add(sf.l.Dropped())
	}
}

func (sf *sharedFile) close() {
	_ = sf.l.Close()
	if sf.c != nil {
		_ = sf.c.Close()
	}
}

// Paths lists the open paths (for tests and debugging).
func (fs *Files) Paths() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make([]string, 0, len(fs.open))
	for p := range fs.open {
		out = append(out, p)
	}
	return out
}

// Dropped is the number of entries dropped because a queue was full,
// since fs was made.
func (fs *Files) Dropped() uint64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := fs.closedDropped.Load()
	for _, sf := range fs.open {
		n += sf.l.Dropped()
	}
	return n
}

// CloseAll closes every open logger regardless of users (at exit).
func (fs *Files) CloseAll() {
	fs.mu.Lock()
	open := fs.open
	fs.open = map[string]*sharedFile{}
	fs.mu.Unlock()
	for _, sf := range open {
		sf.close()
		fs.closedDropped.Add(sf.l.Dropped())
	}
}
