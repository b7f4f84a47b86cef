package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2cProxy serves plaintext HTTP (h2c with prior knowledge too) routed to
// a backend that answers only when its client goes away or after a
// second, so that every reset stream is reset before its response.
func h2cProxy(t *testing.T) netip.AddrPort {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(time.Second):
			}
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(backend.Close)
	addr := freeAddr(t)
	startEngine(t, nil, httpListener("0.0.0.0_8080", addr, "outbound|80||backend", nil),
		staticCluster("outbound|80||backend", netip.MustParseAddrPort(backend.Listener.Addr().String()), false))
	return addr
}

// TestH2RapidResetClosesConnection opens streams and resets each at once
// (HTTP/2 rapid reset, CVE-2023-44487): the proxy closes the connection
// after h2PrematureResetCount/2 premature resets.
func TestH2RapidResetClosesConnection(t *testing.T) {
	addr := h2cProxy(t)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/slow"}, {Name: ":authority", Value: "backend"}} {
		_ = enc.WriteField(f)
	}
	// The reader drains the server's frames (so its writes never block)
	// and reports how the connection ended.
	ended := make(chan error, 1)
	go func() {
		rd := http2.NewFramer(io.Discard, c)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				ended <- err
				return
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				ended <- errors.New("GOAWAY " + ga.ErrCode.String())
				return
			}
		}
	}()
	const attempts = 4 * h2PrematureResetCount
	sent := 0
	for id := uint32(1); sent < attempts; id += 2 {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			break // closed by the proxy
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
		sent++
	}
	select {
	case err := <-ended:
		// Go's own queue limit would answer GOAWAY ENHANCE_YOUR_CALM;
		// the premature-reset limit closes the socket.
		if err == nil || (!errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isConnReset(err)) {
			t.Fatalf("connection ended with %v, want closed by the proxy", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("connection still open after %d rapid resets", sent)
	}
	if sent >= attempts {
		t.Logf("all %d resets were written before the close was seen", sent)
	}
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// TestH2ManyStreamsStayOpen: a client that completes its streams keeps its
// connection however many it sends.
func TestH2ManyStreamsStayOpen(t *testing.T) {
	addr := h2cProxy(t)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	newConns := 0
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			newConns++
		}
	}}
	for i := range 3 * h2PrematureResetCount {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "http://"+addr.String()+"/", nil)
		req.Host = "backend"
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("request %d over %s, want HTTP/2", i, resp.Proto)
		}
	}
	if newConns != 1 {
		t.Fatalf("%d connections for %d streams, want 1", newConns, 3*h2PrematureResetCount)
	}
}
