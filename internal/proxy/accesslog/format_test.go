package accesslog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		"%DYNAMIC_METADATA(istio)%":  "not supported",
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
	} {
		f, err := ParseFilter(expr)
		if err != nil {
			t.Fatalf("%q: %v", expr, err)
		}
		var got []int
		for _, c := range []int{200, 404, 429, 500, 503, 0} {
			if f.Match(&Entry{Code: c}) {
				got = append(got, c)
			}
		}
		if diff := cmp.Diff(got, codes); diff != "" {
			t.Errorf("%q: (-got +want)\n%s", expr, diff)
		}
	}
	for _, bad := range []string{"", "response.code", "response.code >= '400'", "request.method == 'GET'",
		"response.code >= 400 &&", "(response.code >= 400", "response.flags != '-'", "response.code in [500, 503]",
		"has(request.headers.x)", "response.code >= 400 response.code"} {
		if _, err := ParseFilter(bad); err == nil || !strings.Contains(err.Error(), "weft supports") {
			t.Errorf("%q: %v", bad, err)
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
