package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// The JWT tests' modes:
//
//   - "headers": an HTTP server answering every request with its request
//     headers as JSON;
//   - "file": an HTTP server answering every request with one file (a
//     JWKS server);
//   - "call": one GET with the -H headers, printing the status code on the
//     first line, then the body, whatever the status.
func init() {
	modes["headers"] = func(args []string) int { return serveMode("headers", args) }
	modes["file"] = func(args []string) int { return serveMode("file", args) }
	modes["call"] = callMode
}

// serveMode runs "headers" and "file".
func serveMode(mode string, args []string) int {
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	addr := fs.String("addr", ":9080", "listen address")
	file := fs.String("file", "", "file: the file to serve")
	_ = fs.Parse(args)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mode == "file" {
			http.ServeFile(w, r, *file)
			return
		}
		_ = json.NewEncoder(w).Encode(r.Header)
	})
	srv := &http.Server{Addr: *addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	fmt.Println("ready")
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// callMode runs "call".
func callMode(args []string) int {
	fs := flag.NewFlagSet("call", flag.ExitOnError)
	url := fs.String("url", "", "the URL")
	var headers headerFlags
	fs.Var(&headers, "H", `a request header, "Name: value" (repeatable)`)
	_ = fs.Parse(args)
	req, err := http.NewRequest(http.MethodGet, *url, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
	_, _ = io.Copy(os.Stdout, resp.Body)
	return 0
}

// headerFlags collects repeated -H flags.
type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }

func (h *headerFlags) Set(v string) error {
	*h = append(*h, v)
	return nil
}
