package engine

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// requestLines is a request head's lines: the request line, then the
// fields sorted (their order does not matter on the wire).
func requestLines(t *testing.T, head string) []string {
	t.Helper()
	if !strings.HasSuffix(head, "\r\n\r\n") {
		t.Fatalf("head %q does not end in an empty line", head)
	}
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
	slices.Sort(lines[1:])
	return lines
}

// checkRequestHead compares writeRequestHead with req.Write for req; it
// reports whether the fast writer took the request.
func checkRequestHead(t *testing.T, req *http.Request) bool {
	t.Helper()
	var fast, std bytes.Buffer
	bw := bufio.NewWriter(&fast)
	if !writeRequestHead(bw, req) {
		if bw.Buffered() != 0 {
			t.Fatalf("declined %v after writing %d bytes", req.URL, bw.Buffered())
		}
		return false
	}
	_ = bw.Flush()
	if err := req.Write(&std); err != nil {
		t.Fatalf("fast writer took %v, req.Write fails: %v", req.URL, err)
	}
	if got, want := requestLines(t, fast.String()), requestLines(t, std.String()); !slices.Equal(got, want) {
		t.Fatalf("head of %v:\n got %q\nwant %q", req.URL, got, want)
	}
	return true
}

func TestWriteRequestHeadAsRequestWrite(t *testing.T) {
	for _, tc := range []struct {
		method, url, host string
		h                 http.Header
		close, fast       bool
	}{
		{method: "GET", url: "http://10.0.0.1:8080/x?y=1", host: "reviews:9080", fast: true,
			h: http.Header{"X-A": {"1", " two "}, "X-Forwarded-For": {"1.2.3.4"}}},
		{method: "HEAD", url: "http://u/a%2Fb/c d", fast: true, h: http.Header{"User-Agent": {"curl/8", "other"}}},
		{method: "OPTIONS", url: "http://u", fast: true, h: http.Header{"User-Agent": {}}},
		{method: "GET", url: "http://u/?", fast: true, h: http.Header{"User-Agent": {""}, "X-Nl": {"a\r\nb\nc\r"}}},
		{method: "GET", url: "http://u/p", fast: true, close: true,
			h: http.Header{"bad key": {"v"}, "lower": {"v"}, "Content-Length": {"5"}, "Transfer-Encoding": {"chunked"},
				"Trailer": {"X"}, "Host": {"other"}, "Te": {"trailers"}}},
		{method: "GET", url: "http://u/p", fast: true, h: http.Header{}, host: "[::1]:80"},
		{method: "GET", url: "http://u/p", h: http.Header{"Connection": {"keep-alive"}}},
		{method: "GET", url: "http://u/p", host: "bücher.example", h: http.Header{}},
		{method: "GET", url: "http://u/p", host: "[fe80::1%25eth0]:80", h: http.Header{}},
		{method: "GET", url: "http://u/p", host: "a b", h: http.Header{}},
	} {
		req, err := http.NewRequest(tc.method, tc.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header, req.Close = tc.h, tc.close
		if tc.host != "" {
			req.Host = tc.host
		}
		if got := checkRequestHead(t, req); got != tc.fast {
			t.Errorf("%s %s (Host %q): fast writer took it: %v, want %v", tc.method, tc.url, tc.host, got, tc.fast)
		}
	}
	req, _ := http.NewRequest("GET", "http://u/", nil)
	req.URL.RawQuery = "a=\x01"
	if checkRequestHead(t, req) {
		t.Error("a control byte in the query was written")
	}
}

// FuzzH1RequestHead: whenever writeRequestHead writes a head, it is
// req.Write's, up to the order of the fields.
func FuzzH1RequestHead(f *testing.F) {
	f.Add("/x", "y=1", "reviews:9080", "X-A", "v", "ua", false, true)
	f.Add("/a b", "", "", "lower", "a\r\nb", "", true, false)
	f.Fuzz(func(t *testing.T, path, query, host, key, value, ua string, close, setUA bool) {
		u := &url.URL{Scheme: "http", Host: "10.0.0.1:80", Path: path, RawQuery: query}
		req, _ := http.NewRequest("GET", "http://10.0.0.1:80/", nil)
		req.URL, req.Host, req.Close = u, host, close
		req.Header = http.Header{key: {value, value + "2"}}
		if setUA {
			req.Header["User-Agent"] = []string{ua}
		}
		checkRequestHead(t, req)
	})
}

// responseSeeds are response heads (and bodies) for the fuzz target.
var responseSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T, x-u\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
	"HTTP/1.1 200\r\n\r\nno reason",
	"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
	"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
	"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nConnection: keep-alive\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
	"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
	"HTTP/1.0 200 OK\r\n\r\nold",
	"HTTP/1.1 200 OK\r\nTrailer: X\r\nContent-Length: 0\r\n\r\n",
}

// FuzzH1ResponseHead: wherever parseResponseHead takes a response head,
// http.ReadResponse accepts it too and makes the same response of it:
// status, headers, length, framing, close, trailers and body.
func FuzzH1ResponseHead(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		req, _ := http.NewRequest(http.MethodGet, "http://u/", nil)
		if head {
			req.Method = http.MethodHead
		}
		br := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
		h := peekResponseHead(br)
		if h == nil {
			return
		}
		fast, _ := parseResponseHead(h, req, nil)
		if fast == nil {
			return
		}
		// The same again, with its body, parsed into heads a previous
		// exchange used (nothing of it may show through).
		fast, err := readResponse(br, req, dirtyHeads(t))
		if err != nil {
			t.Fatal(err)
		}
		std, err := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(data), 4<<10), req)
		if err != nil {
			t.Fatalf("fast parser accepts %q, http.ReadResponse: %v", data, err)
		}
		compareResponses(t, data, fast, std)
	})
}

func compareResponses(t *testing.T, data []byte, fast, std *http.Response) {
	t.Helper()
	type shape struct {
		Status            string
		StatusCode        int
		Proto             string
		ProtoMajor, Minor int
		Header, Trailer   http.Header
		ContentLength     int64
		TransferEncoding  []string
		Close, NoBody     bool
		Body              string
		BodyErr           bool
	}
	get := func(r *http.Response) shape {
		s := shape{Status: r.Status, StatusCode: r.StatusCode, Proto: r.Proto, ProtoMajor: r.ProtoMajor, Minor: r.ProtoMinor,
			Header: r.Header, ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding, Close: r.Close,
			NoBody: r.Body == http.NoBody}
		b, err := io.ReadAll(r.Body)
		s.Body, s.BodyErr, s.Trailer = string(b), err != nil, r.Trailer
		return s
	}
	if got, want := get(fast), get(std); !reflect.DeepEqual(got, want) {
		t.Fatalf("response %q:\n fast %+v\n  std %+v", data, got, want)
	}
}

func TestH1ResponseHeadSeeds(t *testing.T) {
	took := 0
	for _, s := range responseSeeds {
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			req, _ := http.NewRequest(m, "http://u/", nil)
			br := bufio.NewReaderSize(strings.NewReader(s), 4<<10)
			fast, err := readResponse(br, req, nil)
			std, serr := http.ReadResponse(bufio.NewReaderSize(strings.NewReader(s), 4<<10), req)
			if (err == nil) != (serr == nil) {
				t.Fatalf("%s %q: readResponse %v, http.ReadResponse %v", m, s, err, serr)
			}
			if err != nil {
				continue
			}
			if h := peekResponseHead(bufio.NewReader(strings.NewReader(s))); h != nil {
				if r, _ := parseResponseHead(h, req, nil); r != nil {
					took++
				}
			}
			compareResponses(t, []byte(s), fast, std)
		}
	}
	if took < 16 {
		t.Fatalf("the fast parser took %d of the seeds, want at least 16", took)
	}
}
