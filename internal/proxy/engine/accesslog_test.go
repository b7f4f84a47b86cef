package engine

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/weftmesh/weft/internal/proxy/accesslog"
	"github.com/weftmesh/weft/internal/proxy/xdsclient"
	"github.com/weftmesh/weft/internal/telemetry"
)

// TestAccessLog: a proxied request is logged once, in Envoy's format.
func TestAccessLog(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	defer backend.Close()
	var out bytes.Buffer
	log := accesslog.New(&out, accesslog.Text, 0)
	addr := freeAddr(t)
	e, err := newEngineOpts(Options{AccessLog: log}, httpListener("0.0.0.0_8080", addr, "outbound|80||backend", nil),
		staticCluster("outbound|80||backend", netip.MustParseAddrPort(backend.Listener.Addr().String()), false))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr.String()+"/greet?x=1", nil)
	req.Host = "backend.mesh"
	req.Header.Set("User-Agent", "access-log-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	e.shutdown() // every handler has returned
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /greet\?x=1 HTTP/1\.1" 200 - 0 5 \d+ \d+ ` +
		`"-" "access-log-test" "[0-9a-f-]{36}" "backend\.mesh" "` + regexp.QuoteMeta(backend.Listener.Addr().String()) + `"\n$`)
	if !want.Match(out.Bytes()) {
		t.Fatalf("access log:\n%s\nwant %s", out.Bytes(), want)
	}
}

// TestAccessLogTCP: a proxied TCP connection is logged once when it
// closes, in Envoy's TCP shape ("- - -", bytes both ways, upstream host);
// a connection whose upstream refuses is logged with UF.
func TestAccessLogTCP(t *testing.T) {
	echo := tcpEcho(t)
	dead := freeAddr(t) // nothing listens there
	var out bytes.Buffer
	log := accesslog.New(&out, accesslog.Text, 0)
	addr, deadAddr := freeAddr(t), freeAddr(t)
	e := New(slog.New(slog.DiscardHandler), Options{AccessLog: log})
	lst := func(name string, a netip.AddrPort, cluster string) *listenerv3.Listener {
		return &listenerv3.Listener{Name: name, Address: socketAddr(a), FilterChains: []*listenerv3.FilterChain{tcpChainProto(name, cluster, 0)}}
	}
	s := &xdsclient.Snapshot{
		Listeners: map[string]*listenerv3.Listener{"echo": lst("echo", addr, "echo"), "dead": lst("dead", deadAddr, "dead")},
		Clusters: map[string]*clusterv3.Cluster{"echo": staticCluster("echo", netip.MustParseAddrPort(echo.Addr().String()), false),
			"dead": staticCluster("dead", dead, false)}}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	pingTCP(t, e, addr)
	if c, err := net.Dial("tcp", deadAddr.String()); err == nil {
		_, _ = io.Copy(io.Discard, c) // closed by the proxy
		c.Close()
	}
	e.shutdown()
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	okLine := regexp.MustCompile(`^\[[^]]+\] "- - -" 0 - 5 5 \d+ - "-" "-" "-" "-" "` + regexp.QuoteMeta(echo.Addr().String()) + `"$`)
	failLine := regexp.MustCompile(`^\[[^]]+\] "- - -" 0 UF 0 0 \d+ - "-" "-" "-" "-" "` + regexp.QuoteMeta(dead.String()) + `"$`)
	if len(lines) != 2 || !slices.ContainsFunc(lines, okLine.MatchString) || !slices.ContainsFunc(lines, failLine.MatchString) {
		t.Fatalf("access log:\n%s", out.String())
	}
}

// pingTCP sends one line through e's TCP listener at addr, reads the echo,
// closes, and waits until e has counted the connection closed (it queues
// the access log entry before that).
func pingTCP(t *testing.T, e *Engine, addr netip.AddrPort) {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "ping\n")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.CollectAndCount(e.metrics.TCPVec(telemetry.TCPConnectionsClosedTotal)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the proxied TCP connection was never closed")
		}
		goruntime.Gosched() // another goroutine's progress, no channel to wait on
	}
}
