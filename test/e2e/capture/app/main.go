// Command app is the sample application of the capture mesh test: "serve"
// answers HTTP with its name; "get" makes N requests and prints how many
// each backend answered, as "name count" lines, and "failed N"; "fetch"
// prints one response body.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app serve|get [flags]")
		os.Exit(2)
	}
	if run, ok := extraModes[os.Args[1]]; ok {
		run(os.Args[1], os.Args[2:])
		return
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", ":9080", "serve: listen address")
	name := fs.String("name", "app", "serve: the name to answer with")
	url := fs.String("url", "", "get: the URL")
	n := fs.Int("n", 10, "get: how many requests")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, *name) })
		srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 10 * time.Second}
		fmt.Println("ready")
		if err := srv.ListenAndServe(); err != nil {
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
