package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/weftmesh/weft/internal/telemetry"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Istio's TCP metadata exchange: on a mesh mTLS connection whose ALPN
// came out as "istio-peer-exchange" (a TCP client sidecar offers it first,
// a server sidecar accepts it), each side sends, before its first byte of
// the stream, a frame: the magic 0x3D230467 and the payload's length (both
// 4 bytes, big-endian), then a google.protobuf.Any holding a Struct with
// its node metadata under "x-envoy-peer-metadata" and its node ID under
// "x-envoy-peer-metadata-id". Each side sends its own as soon as it has
// something to write or has read the other's, and reads the other's from
// the first bytes it receives; a side whose first bytes are not a frame is
// no exchange, and those bytes are the stream's. This is what Istio's
// sidecars do, so TCP connections between weft and Istio sidecars keep
// their bytes, and the TCP metrics get peer labels either way.

const (
	// mxALPN is the exchange's ALPN protocol.
	mxALPN = "istio-peer-exchange"
	// mxMagic starts every frame.
	mxMagic = 0x3D230467
	// mxMaxPayload bounds a peer's frame (Istio's carry a few hundred
	// bytes of node metadata).
	mxMaxPayload = 64 << 10
	// mxStructType is the Any's type URL.
	mxStructType = "type.googleapis.com/google.protobuf.Struct"
)

// mxFrame is this proxy's frame (nil when it cannot be encoded).
func mxFrame(nodeID string, md *structpb.Struct) []byte {
	body := &structpb.Struct{Fields: map[string]*structpb.Value{
		peerMetadataKey:   structpb.NewStructValue(md),
		peerMetadataIDKey: structpb.NewStringValue(nodeID),
	}}
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	if err != nil {
		return nil
	}
	payload, err := proto.Marshal(&anypb.Any{TypeUrl: mxStructType, Value: value})
	if err != nil {
		return nil
	}
	frame := binary.BigEndian.AppendUint32(nil, mxMagic)
	frame = binary.BigEndian.AppendUint32(frame, uint32(len(payload)))
	return append(frame, payload...)
}

// The frame's Struct keys: the header names of the HTTP exchange.
const (
	peerMetadataKey   = "x-envoy-peer-metadata"
	peerMetadataIDKey = "x-envoy-peer-metadata-id"
)

// decodeMXPayload reads a frame's payload: the peer's metadata.
func decodeMXPayload(b []byte) (telemetry.Peer, error) {
	var a anypb.Any
	if err := proto.Unmarshal(b, &a); err != nil {
		return telemetry.Peer{}, fmt.Errorf("metadata exchange: payload: %w", err)
	}
	if a.GetTypeUrl() != mxStructType {
		return telemetry.Peer{}, fmt.Errorf("metadata exchange: payload type %q, want %s", a.GetTypeUrl(), mxStructType)
	}
	var s structpb.Struct
	if err := proto.Unmarshal(a.GetValue(), &s); err != nil {
		return telemetry.Peer{}, fmt.Errorf("metadata exchange: payload: %w", err)
	}
	md := s.GetFields()[peerMetadataKey].GetStructValue()
	if md == nil {
		return telemetry.Peer{}, errors.New("metadata exchange: payload has no " + peerMetadataKey)
	}
	return peerFromStruct(md), nil
}

// mxConn runs the exchange over a connection to another sidecar: writes
// send the frame first, reads take the peer's off the stream.
type mxConn struct {
	net.Conn
	frame []byte
	// onPeer is called once, from the first Read: with the peer's
	// metadata, or ok false when its first bytes were no frame or the
	// stream ended before one.
	onPeer func(p telemetry.Peer, ok bool)

	wmu   sync.Mutex
	wrote atomic.Bool // the frame went (or is going)

	// Reader side (one goroutine reads).
	looked bool
	replay []byte // bytes read looking for a frame that are the stream's
}

func newMXConn(c net.Conn, frame []byte, onPeer func(telemetry.Peer, bool)) *mxConn {
	return &mxConn{Conn: c, frame: frame, onPeer: onPeer}
}

// Write sends b, after the frame the first time.
func (c *mxConn) Write(b []byte) (int, error) {
	if c.wrote.Load() {
		return c.Conn.Write(b)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wrote.Load() {
		return c.Conn.Write(b)
	}
	c.wrote.Store(true)
	buf := make([]byte, 0, len(c.frame)+len(b))
	n, err := c.Conn.Write(append(append(buf, c.frame...), b...))
	return max(n-len(c.frame), 0), err
}

// sendFrame sends the frame alone, unless it went already.
func (c *mxConn) sendFrame() error {
	if c.wrote.Load() {
		return nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wrote.Load() {
		return nil
	}
	c.wrote.Store(true)
	_, err := c.Conn.Write(c.frame)
	return err
}

// CloseWrite half-closes the connection, as tcp.Proxy asks of it.
func (c *mxConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Read returns the stream's bytes, the peer's frame taken off first.
func (c *mxConn) Read(b []byte) (int, error) {
	if !c.looked {
		c.looked = true
		if err := c.readFrame(); err != nil {
			return 0, err
		}
	}
	if len(c.replay) > 0 {
		n := copy(b, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// readFrame looks for the peer's frame at the start of the stream, then
// sends this proxy's if it has not gone yet.
func (c *mxConn) readFrame() error {
	var head [8]byte
	n, err := io.ReadFull(c.Conn, head[:])
	if err != nil {
		// The stream ended (or failed) within 8 bytes: no frame; what
		// came is the stream's, then the end.
		c.onPeer(telemetry.Peer{}, false)
		if n > 0 {
			c.replay = append([]byte(nil), head[:n]...)
			return nil
		}
		return err
	}
	if binary.BigEndian.Uint32(head[:4]) != mxMagic {
		// The peer does not run the exchange: its bytes pass as they are.
		c.onPeer(telemetry.Peer{}, false)
		c.replay = append([]byte(nil), head[:]...)
		return c.sendFrame()
	}
	size := binary.BigEndian.Uint32(head[4:])
	if size > mxMaxPayload {
		c.onPeer(telemetry.Peer{}, false)
		return fmt.Errorf("metadata exchange: the peer's frame is %d bytes, over the %d allowed", size, mxMaxPayload)
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(c.Conn, payload); err != nil {
		c.onPeer(telemetry.Peer{}, false)
		return fmt.Errorf("metadata exchange: reading the peer's frame: %w", err)
	}
	p, err := decodeMXPayload(payload)
	c.onPeer(p, err == nil)
	// A frame that does not decode is dropped, as Istio drops it: the
	// stream goes on without peer labels.
	return c.sendFrame()
}
