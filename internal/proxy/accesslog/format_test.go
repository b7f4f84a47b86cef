package accesslog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestEnvoyDefaultFormat: the compiled default format writes what the
// built-in Text format writes.
func TestEnvoyDefaultFormat(t *testing.T) {
	f, err := ParseText("")
	if err != nil {
		t.Fatal(err)
	}
	noUpstream := Entry{Start: entry.Start, Method: "GET", Path: "/", Protocol: "HTTP/2", Code: 503, Flags: "UH", UpstreamTime: -1}
	for _, e := range []*Entry{&entry, &noUpstream} {
		if got, want := string(f.Append(nil, e)), string(appendText(nil, e)); got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
}

func TestIstioTextFormat(t *testing.T) {
	f, err := ParseText(IstioTextFormat)
	if err != nil {
		t.Fatal(err)
	}
	e := entry
	e.DownstreamLocal, e.DownstreamRemote, e.RouteName = "10.0.0.9:8080", "10.0.0.7:51234", "default"
	want := `[2026-11-23T15:04:05.310Z] "GET /echo?size=1024 HTTP/1.1" 200 - via_upstream - "-" 0 1024 3 2 "10.0.0.7" ` +
		`"fortio.org/fortio-1.66.0" "6b1f0c9e-0b4e-4b8f-9d0e-6a8f7c1d2e3f" "server.default.svc.cluster.local:8080" "10.0.0.8:8080" ` +
		`outbound|8080||server.default.svc.cluster.local - 10.0.0.9:8080 10.0.0.7:51234 - default` + "\n"
	if diff := cmp.Diff(string(f.Append(nil, &e)), want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
	tcp := Entry{Start: entry.Start, BytesReceived: 10, BytesSent: 20, UpstreamHost: "10.0.0.8:3306", UpstreamCluster: "outbound|3306||db", UpstreamTime: -1}
	want = `[2026-11-23T15:04:05.310Z] "- - -" 0 - - - "-" 10 20 0 - "-" "-" "-" "-" "10.0.0.8:3306" outbound|3306||db - - - - -` + "\n"
	if diff := cmp.Diff(string(f.Append(nil, &tcp)), want); diff != "" {
		t.Fatalf("TCP (-got +want)\n%s", diff)
	}
}

func TestIstioJSONFormat(t *testing.T) {
	f, err := ParseJSONMap(IstioJSONFormat)
	if err != nil {
		t.Fatal(err)
	}
	line := f.Append(nil, &entry)
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	for k, want := range map[string]any{"method": "GET", "path": "/echo?size=1024", "response_code": 200.0,
		"duration": 3.0, "upstream_service_time": "2", "response_flags": nil, "start_time": "2026-11-23T15:04:05.310Z",
		"response_code_details": "via_upstream", "upstream_cluster": "outbound|8080||server.default.svc.cluster.local"} {
		if diff := cmp.Diff(got[k], want); diff != "" {
			t.Errorf("%s: (-got +want)\n%s", k, diff)
		}
	}
	if len(got) != len(IstioJSONFormat) {
		t.Errorf("%d keys, want %d", len(got), len(IstioJSONFormat))
	}
}

func TestCustomFormats(t *testing.T) {
	e := entry
	e.Headers = []Header{{Name: "X-B3-Traceid", Value: "abc"}, {Response: true, Name: "Content-Type", Value: "text/plain"}}
	for format, want := range map[string]string{
		"%REQ(x-b3-traceid)% %RESP(content-type)% %REQ(x-missing?user-agent):7%":              "abc text/plain fortio.\n",
		"%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s)% %HOSTNAME%\n":                                 "2026/11/23 15:04:05.310 1795446245 " + hostname + "\n",
		"%START_TIME(%F)%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%RESPONSE_CODE%|100% done": "2026-11-23|-|200|100% done\n",
	} {
		f, err := ParseText(format)
		if err != nil {
			if strings.Contains(format, "100%") {
				continue // see TestParseErrors
			}
			t.Fatalf("%q: %v", format, err)
		}
		if diff := cmp.Diff(string(f.Append(nil, &e)), want); diff != "" {
			t.Errorf("%q: (-got +want)\n%s", format, diff)
		}
	}
	f, _ := ParseText("%REQ(x-b3-traceid)% %RESP(content-type)% %REQ(user-agent)%")
	if diff := cmp.Diff(f.Headers(), []HeaderRef{{Name: "X-B3-Traceid"}, {Response: true, Name: "Content-Type"}}); diff != "" {
		t.Errorf("headers (-got +want)\n%s", diff)
	}
	js, _ := structpb.NewStruct(map[string]any{"code": "%RESPONSE_CODE%", "msg": "code %RESPONSE_CODE% for %REQ(:METHOD)%",
		"env": "prod", "n": 3, "nested": map[string]any{"host": "%UPSTREAM_HOST%", "none": "%ROUTE_NAME%"}})
	jf, err := ParseJSON(js)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"code":200,"env":"prod","msg":"code 200 for GET","n":3,"nested":{"host":"10.0.0.8:8080","none":null}}` + "\n"
	if diff := cmp.Diff(string(jf.Append(nil, &entry)), want); diff != "" {
		t.Errorf("json (-got +want)\n%s", diff)
	}
}

func TestParseErrors(t *testing.T) {
	for format, want := range map[string]string{
		"%FOO_BAR%":                  "command operator %FOO_BAR% is not supported",
		"%REQ(:scheme)%":             "pseudo-header :scheme is not supported",
		"%REQ%":                      "needs a header name",
		"%RESPONSE_CODE":             "not closed",
		"100% done":                  "does not start a command operator",
		"%START_TIME(%Q)%":           "%Q is not supported",
		"%DURATION(x)%":              "takes no argument",
		"%REQ(user-agent):0%":        "bad length",
		"%FILTER_STATE(istio)%":      "not supported",
		"%UPSTREAM_PEER_SUBJECT%":    "not supported",
		"%REQ(user-agent%":           "missing ')'",
		"%START_TIME(%Y-%m-%d %H:%M": "missing ')'",
	} {
		_, err := ParseText(format)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", format, err, want)
		}
	}
}

func TestFilter(t *testing.T) {
	for expr, codes := range map[string][]int{ // codes that pass, of 200 404 429 500 503 0
		"response.code >= 400":                            {404, 429, 500, 503},
		"response.code >= 500":                            {500, 503},
		" response.code>=500||response.code == 429":       {429, 500, 503},
		"400 <= response.code && !(response.code >= 500)": {404, 429},
		"response.code != 200":                            {404, 429, 500, 503},
		"response.code < 300":                             {200},
		"response.code in [500, 503]":                     {500, 503},
		"!has(response.code)":                             {0},
	} {
		f, err := ParseFilter(expr)
		if err != nil {
			t.Fatalf("%q: %v", expr, err)
		}
		var got []int
		for _, c := range []int{200, 404, 429, 500, 503, 0} {
			if f.Match(&Entry{Method: "GET", Code: c}) {
				got = append(got, c)
			}
		}
		if diff := cmp.Diff(got, codes); diff != "" {
			t.Errorf("%q: (-got +want)\n%s", expr, diff)
		}
	}

	// Every attribute, on an HTTP entry and on a TCP connection's.
	e := entry
	e.Flags, e.BytesReceived, e.GRPCStatus = "UF,URX", 5, "14"
	e.DownstreamRemote, e.DownstreamLocal, e.UpstreamLocal = "10.0.0.7:40000", "10.0.0.8:8080", "10.0.0.7:41000"
	e.ServerName, e.PeerCert, e.TLSVersion, e.RouteName = "outbound_.8080_._.server", peerCert(t), "TLSv1.3", "default"
	e.Headers = []Header{{Name: "X-Debug", Value: "on"}, {Name: "Referer", Value: "http://r"}, {Response: true, Name: "Content-Type", Value: "text/plain"}}
	tcp := Entry{Start: e.Start, Flags: "UF", BytesReceived: 7, BytesSent: 9, Duration: time.Second, UpstreamTime: -1,
		UpstreamHost: "10.0.0.8:3306", UpstreamCluster: "outbound|3306||db", DownstreamRemote: "10.0.0.7:40001", UpstreamFailure: "connection_failure"}
	for expr, want := range map[string][2]bool{ // HTTP entry, TCP entry
		"request.path == '/echo?size=1024' && request.url_path == '/echo' && request.query == 'size=1024'":           {true, false},
		"request.host == 'server.default.svc.cluster.local:8080' && request.method == 'GET'":                         {true, false},
		"request.protocol == 'HTTP/1.1' && request.useragent.startsWith('fortio')":                                   {true, false},
		"request.id.size() == 36 && request.referer == 'http://r'":                                                   {true, false},
		"request.headers['x-debug'] == 'on' && request.headers['X-DEBUG'] == 'on'":                                   {true, false},
		"'x-debug' in request.headers && !('x-other' in request.headers)":                                            {true, false},
		"has(request.headers.referer) && request.headers[':method'] == 'GET'":                                        {true, false},
		"request.time < timestamp('2027-01-01T00:00:00Z') && request.duration == duration('3ms')":                    {true, false},
		"request.size == 5 && response.size == 1024":                                                                 {true, false},
		"response.headers['content-type'] == 'text/plain'":                                                           {true, false},
		"response.flags == 32u + 32768u":                                                                             {true, false},
		"response.grpc_status == 14":                                                                                 {true, false},
		"response.flags == 32u && response.size == 9":                                                                {false, true},
		"source.address == '10.0.0.7:40000' && source.port == 40000 && destination.port == 8080":                     {true, false},
		"source.port == 40001 && !has(destination.address)":                                                          {false, true},
		"upstream.address == '10.0.0.8:8080' && upstream.port == 8080 && upstream.local_address == '10.0.0.7:41000'": {true, false},
		"upstream.transport_failure_reason == 'connection_failure'":                                                  {false, true},
		"connection.mtls && connection.requested_server_name.endsWith('server')":                                     {true, false},
		"!connection.mtls": {false, true},
		"xds.cluster_name.startsWith('outbound|3306')":                {false, true},
		"xds.route_name == 'default'":                                 {true, false},
		"request.method == 'GET' || response.code >= 400":             {true, false}, // TCP: both sides fail
		"response.code >= 400 || response.flags != 0u":                {true, true},  // an error on the left, true on the right
		"response.flags != 0u && request.headers.size() > 0 == false": {false, false},
	} {
		f, err := ParseFilter(expr)
		if strings.Contains(expr, "request.headers.size()") {
			if err == nil || !strings.Contains(err.Error(), "constant name") {
				t.Errorf("%q: %v, want the headers error", expr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", expr, err)
			continue
		}
		if got := [2]bool{f.Match(&e), f.Match(&tcp)}; got != want {
			t.Errorf("%q: HTTP, TCP %v, want %v", expr, got, want)
		}
	}

	if f, _ := ParseFilter("response.code_details == 'via_upstream'"); !f.Match(&entry) {
		t.Error("response.code_details: not via_upstream")
	}
	// Evaluation is bounded: 10,000 nested iterations stop and do not log.
	ten := "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
	small, _ := ParseFilter(ten + ".all(a, " + ten + ".all(b, a * b > 0))")
	large, _ := ParseFilter(ten + ".all(a, " + ten + ".all(b, " + ten + ".all(c, " + ten + ".all(d, a * b * c * d > 0))))")
	if !small.Match(&entry) || large.Match(&entry) {
		t.Errorf("100 iterations logged %v, 10,000 logged %v; want true, false", small.Match(&entry), large.Match(&entry))
	}

	// The headers a filter reads are captured; those Entry has fields for
	// and pseudo-headers are not.
	f, err := ParseFilter("request.headers['x-a'] == request.headers['user-agent'] || response.headers['x-b'] != '' || " +
		"request.referer == '' || has(request.headers.x_c) || request.headers[':path'] == '/'")
	if err != nil {
		t.Fatal(err)
	}
	wantRefs := []HeaderRef{{Name: "X-A"}, {Response: true, Name: "X-B"}, {Name: "Referer"}, {Name: "X_c"}}
	if diff := cmp.Diff(f.Headers(), wantRefs); diff != "" {
		t.Errorf("headers (-got +want)\n%s", diff)
	}

	for bad, want := range map[string]string{
		"":                                      "Syntax error",
		"response.code >= 400 &&":               "Syntax error",
		"(response.code >= 400":                 "Syntax error",
		"response.code >= 400 response.code":    "Syntax error",
		"1 + 2":                                 "not a bool",
		"'x'":                                   "not a bool",
		"foo.bar == 1":                          "^ (the attributes are request.{path,",
		"size(request.headers) > 3":             "constant name",
		"request.headers[request.method] == ''": "constant name",
		"request.headers.exists(k, k == 'x')":   "constant name",
		"request.headers['bad name'] == ''":     "bad header name",
	} {
		if _, err := ParseFilter(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", bad, err, want)
		}
	}
	var nilFilter *Filter
	if !nilFilter.Match(&Entry{}) {
		t.Error("nil filter must log everything")
	}
}

func TestFilesShared(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	fs := NewFiles(0)
	a, err := fs.Acquire(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := fs.Acquire(path)
	if a != b {
		t.Fatal("one path, two loggers")
	}
	text, _ := ParseText("%REQ(:METHOD)% %RESPONSE_CODE%\n")
	js, _ := ParseJSONMap(map[string]string{"code": "%RESPONSE_CODE%"})
	a.LogWith(text, &Entry{Method: "GET", Code: 200})
	b.LogWith(js, &Entry{Method: "GET", Code: 404})
	fs.Release(path)
	if len(fs.Paths()) != 1 {
		t.Fatalf("released too early: %v", fs.Paths())
	}
	fs.Release(path)
	if len(fs.Paths()) != 0 {
		t.Fatalf("still open: %v", fs.Paths())
	}
	a.LogWith(text, &Entry{Method: "POST", Code: 500}) // after close: discarded
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(got), "GET 200\n{\"code\":404}\n"); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
	if _, err := fs.Acquire(filepath.Join(dir, "missing", "x.log")); err == nil {
		t.Fatal("opened a file in a missing directory")
	}
}

func FuzzParseText(f *testing.F) {
	f.Add(IstioTextFormat)
	f.Add("%START_TIME(%Y %3f)% %REQ(a?b):3% %%")
	f.Fuzz(func(t *testing.T, format string) {
		fm, err := ParseText(format)
		if err != nil {
			return
		}
		_ = fm.Append(nil, &entry)
	})
}

func FuzzParseFilter(f *testing.F) {
	f.Add("response.code >= 400 || !(response.code < 200)")
	f.Fuzz(func(t *testing.T, expr string) {
		if fl, err := ParseFilter(expr); err == nil {
			_ = fl.Match(&entry)
		}
	})
}

// FuzzParseValue: any expression either fails to compile or evaluates
// to text on any entry (HTTP or TCP), without panicking.
func FuzzParseValue(f *testing.F) {
	f.Add("request.host")
	f.Add("string(destination.port) + '/' + request.headers['x-tenant']")
	f.Fuzz(func(t *testing.T, expr string) {
		v, err := ParseValue(expr)
		if err != nil {
			return
		}
		_ = v.Eval(&entry)
		_ = v.Eval(&Entry{})
	})
}

func FuzzJSONString(f *testing.F) {
	f.Add("plain")
	f.Add("q\"b\\s\n\t\x01<&>\u2028\xff é")
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Fatalf("%q: got %s want %s", s, got, want)
		}
	})
}

// BenchmarkFilter: one evaluation, for a filter on the code alone and
// one that reads a request header too.
func BenchmarkFilter(b *testing.B) {
	e := entry
	e.Headers = []Header{{Name: "X-Debug", Value: "on"}}
	for name, expr := range map[string]string{"code": "response.code >= 400",
		"header": "request.headers['x-debug'] == 'on' && response.code == 200"} {
		f, err := ParseFilter(expr)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				f.Match(&e)
			}
		})
	}
}
