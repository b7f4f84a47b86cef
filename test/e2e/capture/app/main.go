// Command app is the sample application of the capture mesh test: "serve"
// answers HTTP with its name (and /peer with the client's IP address);
// "record" answers "<name> uri=<RequestURI>" (the exact request target it
// received), or "ADMIN uri=..." when the raw path is /admin or under
// /admin/ (case-sensitive, no decoding); "get" makes N requests and prints
// how many each backend answered, as "name count" lines, and "failed N";
// "fetch" prints one response body; "raw" sends one request line exactly
// as given (-target, -host) over TCP to -addr and prints "STATUS <code>"
// and the body. Further modes for the security tests are in security.go.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app serve|get [flags]")
		os.Exit(2)
	}
	if run, ok := modes[os.Args[1]]; ok {
		os.Exit(run(os.Args[2:]))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", ":9080", "serve: listen address")
	name := fs.String("name", "app", "serve: the name to answer with")
	url := fs.String("url", "", "get: the URL")
	n := fs.Int("n", 10, "get: how many requests")
	target := fs.String("target", "/", "raw: the request target, sent as is")
	host := fs.String("host", "", "raw: the Host header")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, *name) })
		// /peer answers with the address the connection came from.
		http.HandleFunc("/peer", func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprint(w, host)
		})
		srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 10 * time.Second}
		fmt.Println("ready")
		if err := srv.ListenAndServe(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "record":
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			raw, _, _ := strings.Cut(r.RequestURI, "?")
			if raw == "/admin" || strings.HasPrefix(raw, "/admin/") {
				fmt.Fprintf(w, "ADMIN uri=%s", r.RequestURI)
				return
			}
			fmt.Fprintf(w, "%s uri=%s", *name, r.RequestURI)
		})
		srv := &http.Server{Addr: *addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
		fmt.Println("ready")
		if err := srv.ListenAndServe(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "raw":
		if err := rawRequest(*addr, *host, *target); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "get":
		c := &http.Client{Timeout: 5 * time.Second}
		counts := map[string]int{}
		failed := 0
		for i := 0; i < *n; i++ {
			resp, err := c.Get(*url)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				failed++
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				failed++
				continue
			}
			counts[string(b)]++
		}
		names := make([]string, 0, len(counts))
		for k := range counts {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Println(k, counts[k])
		}
		fmt.Println("failed", failed)
	case "fetch":
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(*url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, resp.Status)
			os.Exit(1)
		}
		_, _ = io.Copy(os.Stdout, resp.Body)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

// rawRequest writes "GET <target> HTTP/1.1" byte for byte (no client-side
// cleaning) and prints the status code and body.
func rawRequest(addr, host, target string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Printf("STATUS %d\n%s", resp.StatusCode, body)
	return nil
}
