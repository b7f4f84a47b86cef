package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// modes are the app's further modes, for the security tests:
//
//   - "echo": an HTTP server answering its name and a TCP echo server,
//     counting every connection either accepts; the count is served on a
//     separate loopback address so reading it is not counted;
//   - "tcp": one TCP exchange, printing the echo;
//   - "tlsprobe": a TLS handshake with a given client certificate followed
//     by an HTTP request, as an attacker would try;
//   - "load": concurrent GETs for a duration, printing "ok N" and "failed N".
var modes = map[string]func(args []string) int{
	"echo":     echoMode,
	"tcp":      tcpMode,
	"tlsprobe": tlsProbeMode,
	"load":     loadMode,
}

func echoMode(args []string) int {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	httpAddr := fs.String("http", ":9080", "HTTP listen address")
	tcpAddr := fs.String("tcp", ":9090", "TCP echo listen address")
	countAddr := fs.String("count", "127.0.0.1:9999", "where the connection count is served")
	name := fs.String("name", "app", "the name to answer with")
	_ = fs.Parse(args)
	var conns atomic.Int64
	hs := &http.Server{Addr: *httpAddr, ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, *name) }),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		}}
	ln, err := net.Listen("tcp", *tcpAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	count := &http.Server{Addr: *countAddr, ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, conns.Load()) })}
	go func() { _ = count.ListenAndServe() }()
	fmt.Println("ready")
	if err := hs.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func tcpMode(args []string) int {
	fs := flag.NewFlagSet("tcp", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	msg := fs.String("msg", "ping", "the line to send")
	_ = fs.Parse(args)
	line, err := exchange(*addr, *msg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// exchange sends one line on a new connection and returns the echo.
func exchange(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no echo: %w", err)
	}
	return line, nil
}

func echoOnce(addr string) error {
	line, err := exchange(addr, "ping")
	if err == nil && line != "ping\n" {
		err = fmt.Errorf("echo %q, want ping", line)
	}
	return err
}

func tlsProbeMode(args []string) int {
	fs := flag.NewFlagSet("tlsprobe", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	certFile := fs.String("cert", "", "client certificate chain (PEM)")
	keyFile := fs.String("key", "", "client key (PEM)")
	_ = fs.Parse(args)
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{"istio-peer-exchange", "istio", "http/1.1"},
		InsecureSkipVerify: true, // the attacker does not care who answers
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "handshake:", err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		fmt.Fprintln(os.Stderr, "write:", err)
		return 1
	}
	b, err := io.ReadAll(c)
	if len(b) == 0 {
		fmt.Fprintln(os.Stderr, "no response:", err)
		return 1
	}
	fmt.Printf("%s", b)
	return 0
}

func loadMode(args []string) int {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "the URL")
	conc := fs.Int("c", 4, "concurrent clients")
	dur := fs.Duration("d", 10*time.Second, "how long")
	qps := fs.Int("qps", 100, "requests per second per client (bounded load)")
	tcpAddr := fs.String("tcp", "", "instead of GETs, one TCP connection and echo exchange per request to this host:port")
	_ = fs.Parse(args)
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(*dur)
	for range *conc {
		wg.Go(func() {
			c := &http.Client{Timeout: 5 * time.Second}
			tick := time.NewTicker(time.Second / time.Duration(*qps))
			defer tick.Stop()
			for time.Now().Before(end) {
				<-tick.C
				if *tcpAddr != "" {
					if err := echoOnce(*tcpAddr); err != nil {
						fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), err)
						failed.Add(1)
					} else {
						ok.Add(1)
					}
					continue
				}
				resp, err := c.Get(*url)
				if err != nil {
					fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), err)
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), resp.Status)
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	fmt.Println("ok", ok.Load())
	fmt.Println("failed", failed.Load())
	return 0
}
