// Command helper is the capture e2e suite's stand-in for a proxy, an app
// and a client inside network namespaces.
//
//	helper listen -name proxy -tcp :15001,:15006 -udp 127.0.0.1:15053 [-transparent :15006]
//	helper dial -net tcp -addr 10.77.0.1:8080
//
// A listener answers every TCP connection with one line
// "<name> listener=<port> orig=<original destination> src=<peer>" and every
// UDP datagram with "<name> listener=<port>", then closes. It prints
// "ready" on stdout once every socket is bound. Each TCP address is bound
// for IPv4 and, where the host has it, IPv6 (as separate sockets).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/internal/proxy/listener"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: helper listen|dial [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "listen":
		err = listen(os.Args[2:])
	case "dial":
		err = dial(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

const ipv6Transparent = 75 // IPV6_TRANSPARENT (linux/in6.h)

func listen(args []string) error {
	fs := flag.NewFlagSet("listen", flag.ExitOnError)
	name := fs.String("name", "proxy", "name in every answer")
	tcp := fs.String("tcp", "", "comma-separated :port list (IPv4 and IPv6)")
	udp := fs.String("udp", "", "comma-separated host:port list")
	transparent := fs.String("transparent", "", "comma-separated :port list bound with IP_TRANSPARENT (TPROXY)")
	v6 := fs.Bool("ipv6", true, "also bind IPv6")
	_ = fs.Parse(args)
	for _, addr := range split(*tcp) {
		nets := []string{"tcp4"}
		if *v6 {
			nets = append(nets, "tcp6")
		}
		for _, network := range nets {
			lc := net.ListenConfig{}
			if slices.Contains(split(*transparent), addr) {
				lc.Control = func(network, _ string, c syscall.RawConn) error {
					var serr error
					err := c.Control(func(fd uintptr) {
						if network == "tcp6" {
							serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IPV6, ipv6Transparent, 1)
						} else {
							serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_TRANSPARENT, 1)
						}
					})
					if err != nil {
						return err
					}
					return serr
				}
			}
			l, err := lc.Listen(context.Background(), network, addr)
			if err != nil {
				return err
			}
			port := l.Addr().(*net.TCPAddr).Port
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					orig, err := listener.OriginalDst(c)
					od := orig.String()
					if err != nil {
						od = "error:" + err.Error()
					}
					fmt.Fprintf(c, "%s listener=%d orig=%s src=%s\n", *name, port, od, c.RemoteAddr())
					c.Close()
				}
			}()
		}
	}
	for _, addr := range split(*udp) {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		go func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s listener=%d\n", *name, port)), from)
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

func dial(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	network := fs.String("net", "tcp", "tcp or udp")
	addr := fs.String("addr", "", "host:port")
	timeout := fs.Duration("timeout", 3*time.Second, "connect and read deadline")
	_ = fs.Parse(args)
	c, err := net.DialTimeout(*network, *addr, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(*timeout))
	if *network == "udp" {
		if _, err := c.Write([]byte("q")); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(buf[:n])
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}
