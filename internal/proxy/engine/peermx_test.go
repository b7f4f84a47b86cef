package engine

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/telemetry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// istioFrame is a frame as an Istio sidecar writes it, built here from the
// protocol's description (magic, big-endian length, an Any of a Struct
// with the node's flattened metadata and its ID), not by mxFrame.
func istioFrame(t *testing.T) []byte {
	t.Helper()
	node, err := structpb.NewStruct(map[string]any{
		"NAME": "mongodb-v1-7d9f", "NAMESPACE": "bookinfo", "WORKLOAD_NAME": "mongodb-v1", "CLUSTER_ID": "Kubernetes",
		"MESH_ID": "cluster.local", "ISTIO_VERSION": "1.22.0", "SERVICE_ACCOUNT": "bookinfo-mongodb",
		"LABELS": map[string]any{"app": "mongodb", "version": "v1", "service.istio.io/canonical-name": "mongodb",
			"service.istio.io/canonical-revision": "v1", "pod-template-hash": "7d9f"},
		"PLATFORM_METADATA": map[string]any{},
	})
	if err != nil {
		t.Fatal(err)
	}
	body := &structpb.Struct{Fields: map[string]*structpb.Value{
		"x-envoy-peer-metadata":    structpb.NewStructValue(node),
		"x-envoy-peer-metadata-id": structpb.NewStringValue("sidecar~10.0.0.9~mongodb-v1-7d9f.bookinfo~bookinfo.svc.cluster.local"),
	}}
	value, _ := proto.Marshal(body)
	payload, _ := proto.Marshal(&anypb.Any{TypeUrl: "type.googleapis.com/google.protobuf.Struct", Value: value})
	frame := []byte{0x3D, 0x23, 0x04, 0x67, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(frame[4:], uint32(len(payload)))
	return append(frame, payload...)
}

var mongoPeer = telemetry.Peer{Workload: "mongodb-v1", Namespace: "bookinfo", App: "mongodb", Version: "v1",
	CanonicalService: "mongodb", CanonicalRevision: "v1", Cluster: "Kubernetes"}

// tcpPair is a loopback TCP connection's two ends: buffered, as the
// exchange's sockets are (net.Pipe is not).
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	x, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	y, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}

// peerRecorder collects onPeer calls.
type peerRecorder struct {
	mu    sync.Mutex
	calls int
	peer  telemetry.Peer
	ok    bool
}

func (r *peerRecorder) on(p telemetry.Peer, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.peer, r.ok = p, ok
}

func (r *peerRecorder) get() (int, telemetry.Peer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.peer, r.ok
}

// TestMXFromIstio: a frame in Istio's form is taken off the stream and
// gives the peer; the stream's bytes after it, and this proxy's frame
// first in what it sends back, are intact.
func TestMXFromIstio(t *testing.T) {
	self := telemetry.Peer{Workload: "ratings-v2", Namespace: "bookinfo", App: "ratings", Version: "v2",
		CanonicalService: "ratings", CanonicalRevision: "v2", Cluster: "Kubernetes"}
	_, frame := ownPeerMetadata("sidecar~10.0.0.3~ratings-v2.bookinfo~bookinfo.svc.cluster.local", self)
	ours, theirs := tcpPair(t)
	var rec peerRecorder
	c := newMXConn(ours, frame, rec.on)
	defer c.Close()
	go func() {
		// The peer writes its frame and the stream in pieces, as TLS
		// records may split them.
		msg := append(istioFrame(t), "db.find()"...)
		for len(msg) > 0 {
			n := min(5, len(msg))
			if _, err := theirs.Write(msg[:n]); err != nil {
				return
			}
			msg = msg[n:]
		}
	}()
	// Reading the peer's frame makes this side send its own, with no
	// stream bytes of its own yet.
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(frame))
		_ = theirs.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.ReadFull(theirs, b)
		got <- b
	}()
	buf := make([]byte, 9)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "db.find()" {
		t.Fatalf("stream after the frame: %q, %v", buf, err)
	}
	if calls, p, ok := rec.get(); calls != 1 || !ok || p != mongoPeer {
		t.Errorf("peer %+v (ok %v, %d calls), want %+v", p, ok, calls, mongoPeer)
	}
	sent := <-got
	if !bytes.Equal(sent, frame) {
		t.Fatalf("this side's frame: % x", sent)
	}
	// Our frame decodes the same way on the other side.
	if p, err := decodeMXPayload(sent[8:]); err != nil || p != self {
		t.Errorf("own frame decodes to %+v, %v; want %+v", p, err, self)
	}
	if binary.BigEndian.Uint32(sent[:4]) != mxMagic || int(binary.BigEndian.Uint32(sent[4:8])) != len(sent)-8 {
		t.Errorf("own frame header % x", sent[:8])
	}
	// Later writes carry no frame.
	go func() { _, _ = c.Write([]byte("reply")) }()
	b := make([]byte, 5)
	_ = theirs.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(theirs, b); err != nil || string(b) != "reply" {
		t.Errorf("later write: %q, %v", b, err)
	}
}

// TestMXPair: two weft sidecars, client-first and server-first streams:
// each learns the other; what the applications send arrives unchanged
// and Write reports only their bytes.
func TestMXPair(t *testing.T) {
	a := telemetry.Peer{Workload: "a", Namespace: "ns", CanonicalService: "a", CanonicalRevision: "latest", Cluster: "c1"} // no app label
	b := telemetry.Peer{Workload: "b", Namespace: "ns", App: "b", CanonicalService: "b", CanonicalRevision: "latest", Cluster: "c1"}
	_, fa := ownPeerMetadata("sidecar~1.1.1.1~a.ns~ns.svc.cluster.local", a)
	_, fb := ownPeerMetadata("sidecar~2.2.2.2~b.ns~ns.svc.cluster.local", b)
	for _, first := range []string{"client", "server"} {
		t.Run(first+" first", func(t *testing.T) {
			x, y := tcpPair(t)
			var ra, rb peerRecorder
			ca, cb := newMXConn(x, fa, ra.on), newMXConn(y, fb, rb.on)
			defer ca.Close()
			defer cb.Close()
			w, r := ca, cb
			if first == "server" {
				w, r = cb, ca
			}
			go func() {
				if n, err := w.Write([]byte("hello")); n != 5 || err != nil {
					t.Errorf("Write = %d, %v; want 5", n, err)
				}
			}()
			buf := make([]byte, 5)
			if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("read %q, %v", buf, err)
			}
			// The writer learns the reader from the frame the read sent.
			go func() { _, _ = r.Write([]byte("back")) }()
			buf = buf[:4]
			if _, err := io.ReadFull(w, buf); err != nil || string(buf) != "back" {
				t.Fatalf("read back %q, %v", buf, err)
			}
			if _, p, ok := rb.get(); !ok || p != a {
				t.Errorf("b learnt %+v (%v), want %+v", p, ok, a)
			}
			if _, p, ok := ra.get(); !ok || p != b {
				t.Errorf("a learnt %+v (%v), want %+v", p, ok, b)
			}
		})
	}
}

// TestMXWithoutPeer: a peer that sends no frame keeps its bytes: ones that
// are not the magic, and a stream shorter than a frame's header; an
// oversized frame fails the connection; a frame that does not decode is
// dropped with no peer.
func TestMXWithoutPeer(t *testing.T) {
	_, frame := ownPeerMetadata("sidecar~1.1.1.1~a.ns~ns.svc.cluster.local", telemetry.Peer{Workload: "a"})
	read := func(t *testing.T, peer []byte, closeAfter bool, want int) ([]byte, *peerRecorder, error) {
		t.Helper()
		x, y := tcpPair(t)
		var rec peerRecorder
		c := newMXConn(x, frame, rec.on)
		defer c.Close()
		go func() {
			_, _ = y.Write(peer)
			if closeAfter {
				y.Close()
				return
			}
			// Drain what this side sends (its frame) until closed.
			_, _ = io.Copy(io.Discard, y)
		}()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, want)
		n, err := io.ReadFull(c, b)
		return b[:n], &rec, err
	}
	t.Run("not the magic", func(t *testing.T) {
		got, rec, err := read(t, []byte("GET / HTTP/1.1\r\n"), false, 16)
		if err != nil || string(got) != "GET / HTTP/1.1\r\n" {
			t.Errorf("stream %q, %v", got, err)
		}
		if calls, _, ok := rec.get(); calls != 1 || ok {
			t.Errorf("onPeer: %d calls, ok %v; want one, no peer", calls, ok)
		}
	})
	t.Run("short stream", func(t *testing.T) {
		got, rec, err := read(t, []byte("hi"), true, 2)
		if err != nil || string(got) != "hi" {
			t.Errorf("stream %q, %v", got, err)
		}
		if calls, _, ok := rec.get(); calls != 1 || ok {
			t.Errorf("onPeer: %d calls, ok %v", calls, ok)
		}
	})
	t.Run("oversized", func(t *testing.T) {
		head := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, mxMagic), mxMaxPayload+1)
		_, _, err := read(t, head, false, 1)
		if err == nil || !strings.Contains(err.Error(), "over the") {
			t.Errorf("err %v, want the size refused", err)
		}
	})
	t.Run("undecodable", func(t *testing.T) {
		bad := []byte("\xff\xff\xff")
		msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, mxMagic), uint32(len(bad)))
		msg = append(append(msg, bad...), "data"...)
		got, rec, err := read(t, msg, false, 4)
		if err != nil {
			t.Fatalf("err %v", err)
		}
		if string(got) != "data" {
			t.Errorf("stream after a bad frame: %q", got)
		}
		if calls, _, ok := rec.get(); calls != 1 || ok {
			t.Errorf("onPeer: %d calls, ok %v", calls, ok)
		}
	})
}

// byteConn is a connection whose peer sent in and that discards writes.
type byteConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *byteConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *byteConn) Write(b []byte) (int, error) { return len(b), nil }

// FuzzMXStream: whatever a peer sends, the exchange never panics and
// passes on exactly the stream: everything when it does not start with
// the magic, what follows a whole frame when it does; a frame cut short
// or over the limit is an error.
func FuzzMXStream(f *testing.F) {
	_, frame := ownPeerMetadata("sidecar~1.1.1.1~a.ns~ns.svc.cluster.local", telemetry.Peer{Workload: "a", Namespace: "ns"})
	f.Add(append(append([]byte{}, frame...), "data"...))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x3D, 0x23, 0x04, 0x67, 0, 0, 0, 3, 1, 2, 3, 'x'})
	f.Add([]byte{0x3D, 0x23, 0x04})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := newMXConn(&byteConn{r: bytes.NewReader(in)}, frame, func(telemetry.Peer, bool) {})
		out, err := io.ReadAll(c)
		if len(in) < 8 || binary.BigEndian.Uint32(in[:4]) != mxMagic {
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("no frame: got %q, %v; want the input", out, err)
			}
			return
		}
		size := binary.BigEndian.Uint32(in[4:8])
		if size > mxMaxPayload || uint64(len(in)) < 8+uint64(size) {
			if err == nil {
				t.Fatalf("a frame of %d bytes in %d: no error", size, len(in))
			}
			return
		}
		if err != nil || !bytes.Equal(out, in[8+size:]) {
			t.Fatalf("after the frame: got %q, %v; want %q", out, err, in[8+size:])
		}
	})
}
