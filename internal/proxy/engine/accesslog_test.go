package engine

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"testing"

	"github.com/weftmesh/weft/internal/proxy/accesslog"
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
		`"127\.0\.0\.1" "access-log-test" "[0-9a-f-]{36}" "backend\.mesh" "` + regexp.QuoteMeta(backend.Listener.Addr().String()) + `"\n$`)
	if !want.Match(out.Bytes()) {
		t.Fatalf("access log:\n%s\nwant %s", out.Bytes(), want)
	}
}
