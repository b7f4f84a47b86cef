package storetest

import (
	"bytes"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/store"
)

// WaitTimeout bounds every wait of the suite on a watch channel.
const WaitTimeout = 10 * time.Second

// stream wraps a watch channel and checks the ordering invariants on every
// event it reads:
//   - PUT/DELETE revisions strictly increase and equal KV.ModRevision;
//   - a PUT/DELETE never has a revision covered by an earlier PROGRESS;
//   - PROGRESS revisions never go back and are >= the last event's.
type stream struct {
	t            testing.TB
	name         string
	ch           <-chan store.Event
	lastEvent    int64
	lastProgress int64
}

func newStream(t testing.TB, name string, ch <-chan store.Event) *stream {
	return &stream{t: t, name: name, ch: ch}
}

// raw returns the next event of any type, or ok=false if the channel closed.
func (w *stream) raw(deadline time.Time) (store.Event, bool) {
	w.t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case ev, ok := <-w.ch:
		if !ok {
			return ev, false
		}
		w.check(ev)
		return ev, true
	case <-timer.C:
		w.t.Fatalf("watch %s: nothing expected within %s (last event rev %d, last progress %d)", w.name, WaitTimeout, w.lastEvent, w.lastProgress)
		return store.Event{}, false
	}
}

func (w *stream) check(ev store.Event) {
	w.t.Helper()
	switch ev.Type {
	case store.EventPut, store.EventDelete:
		if ev.Revision != ev.KV.ModRevision {
			w.t.Fatalf("watch %s: %s %q: Revision %d != KV.ModRevision %d", w.name, ev.Type, ev.KV.Key, ev.Revision, ev.KV.ModRevision)
		}
		if ev.Revision <= w.lastEvent {
			w.t.Fatalf("watch %s: %s %q at rev %d after an event at rev %d (not strictly increasing)", w.name, ev.Type, ev.KV.Key, ev.Revision, w.lastEvent)
		}
		if ev.Revision <= w.lastProgress {
			w.t.Fatalf("watch %s: %s %q at rev %d after PROGRESS %d claimed it was delivered", w.name, ev.Type, ev.KV.Key, ev.Revision, w.lastProgress)
		}
		w.lastEvent = ev.Revision
	case store.EventProgress:
		if ev.Revision < w.lastEvent {
			w.t.Fatalf("watch %s: PROGRESS %d after an event at rev %d", w.name, ev.Revision, w.lastEvent)
		}
		if ev.Revision < w.lastProgress {
			w.t.Fatalf("watch %s: PROGRESS went back from %d to %d", w.name, w.lastProgress, ev.Revision)
		}
		w.lastProgress = ev.Revision
	case store.EventError:
		if ev.Err == nil {
			w.t.Fatalf("watch %s: EventError without Err", w.name)
		}
	default:
		w.t.Fatalf("watch %s: unknown event type %v", w.name, ev.Type)
	}
}

// next returns the next PUT or DELETE, skipping PROGRESS; it fails on an
// error event or a closed channel.
func (w *stream) next() store.Event {
	w.t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		ev, ok := w.raw(deadline)
		if !ok {
			w.t.Fatalf("watch %s: channel closed while waiting for an event (last rev %d)", w.name, w.lastEvent)
		}
		switch ev.Type {
		case store.EventProgress:
			continue
		case store.EventError:
			w.t.Fatalf("watch %s: unexpected error event: %v", w.name, ev.Err)
		}
		return ev
	}
}

// expect reads the next PUT/DELETE and compares it with the wanted one.
func (w *stream) expect(typ store.EventType, key string, value string, rev, createRev int64, created bool) store.Event {
	w.t.Helper()
	ev := w.next()
	if ev.Type != typ || ev.KV.Key != key || !bytes.Equal(ev.KV.Value, []byte(value)) ||
		ev.Revision != rev || ev.KV.CreateRevision != createRev || ev.Created != created {
		w.t.Fatalf("watch %s: got %s %q=%q rev=%d create=%d created=%v; want %s %q=%q rev=%d create=%d created=%v",
			w.name, ev.Type, ev.KV.Key, ev.KV.Value, ev.Revision, ev.KV.CreateRevision, ev.Created,
			typ, key, value, rev, createRev, created)
	}
	return ev
}

// progress waits for a PROGRESS with Revision >= atLeast. Any PUT/DELETE
// meanwhile is a failure.
func (w *stream) progress(atLeast int64) store.Event {
	w.t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		ev, ok := w.raw(deadline)
		if !ok {
			w.t.Fatalf("watch %s: channel closed while waiting for PROGRESS >= %d", w.name, atLeast)
		}
		if ev.Type != store.EventProgress {
			w.t.Fatalf("watch %s: got %s %q rev %d (err %v) while waiting for PROGRESS >= %d", w.name, ev.Type, ev.KV.Key, ev.Revision, ev.Err, atLeast)
		}
		if ev.Revision >= atLeast {
			return ev
		}
	}
}

// closed drains the channel until it is closed and returns what it read.
func (w *stream) closed() []store.Event {
	w.t.Helper()
	var evs []store.Event
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-w.ch:
			if !ok {
				return evs
			}
			w.check(ev)
			evs = append(evs, ev)
		case <-deadline.C:
			w.t.Fatalf("watch %s: channel not closed within %s (%d events drained)", w.name, WaitTimeout, len(evs))
			return nil
		}
	}
}
