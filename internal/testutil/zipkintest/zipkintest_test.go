package zipkintest

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestCollector: spans POSTed as JSON to Zipkin's path are kept with the
// request's Host; anything else is refused and changes nothing.
func TestCollector(t *testing.T) {
	c := &Collector{}
	srv := httptest.NewServer(c)
	defer srv.Close()
	post := func(path, contentType, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
		req.Host = "zipkin.example"
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const span = `[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","parentId":"0020000000000001","name":"get /",` +
		`"kind":"CLIENT","timestamp":1,"duration":2,"shared":true,"localEndpoint":{"serviceName":"a.default","ipv4":"127.0.0.1"},"tags":{"k":"v"}}]`
	for _, bad := range [][3]string{
		{"/api/v1/spans", "application/json", span},
		{"/api/v2/spans", "application/x-protobuf", span},
		{"/api/v2/spans", "application/json", "{not json"},
	} {
		if code := post(bad[0], bad[1], bad[2]); code != http.StatusBadRequest {
			t.Errorf("POST %s %s: %d, want 400", bad[0], bad[1], code)
		}
	}
	if code := post("/api/v2/spans", "application/json", span); code != http.StatusAccepted {
		t.Fatalf("spans: %d, want 202", code)
	}
	got := c.Wait(1, time.Second)
	want := Span{TraceID: "463ac35c9f6413ad", ID: "a2fb4a1d1a96d312", ParentID: "0020000000000001", Name: "get /", Kind: "CLIENT",
		Timestamp: 1, Duration: 2, Shared: true, LocalEndpoint: Endpoint{ServiceName: "a.default", IPv4: "127.0.0.1"}}
	if len(got) != 1 || got[0].Tags["k"] != "v" {
		t.Fatalf("spans %+v", got)
	}
	got[0].Tags = nil
	if !reflect.DeepEqual(got[0], want) {
		t.Errorf("span %+v, want %+v", got[0], want)
	}
	if h := c.Hosts(); len(h) != 1 || h[0] != "zipkin.example" {
		t.Errorf("hosts %q", h)
	}
}
