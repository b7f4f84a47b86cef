//go:build linux

package listener

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// Socket options not in package syscall.
const (
	ipTransparent   = 19 // IP_TRANSPARENT (linux/in.h)
	ipv6Transparent = 75 // IPV6_TRANSPARENT (linux/in6.h)
)

// TransparentControl is a net.ListenConfig / net.Dialer Control function
// that sets IP_TRANSPARENT (and IPV6_TRANSPARENT on IPv6 sockets): a
// listener then accepts connections that TPROXY rules deliver to it with
// their original destination as local address, and a dialer may bind a
// source address that is not the host's. It needs CAP_NET_ADMIN.
func TransparentControl(network, _ string, c syscall.RawConn) error {
	return control(c, func(fd int) error { return setTransparent(fd, network) })
}

// SourceControl returns a Control function for connections that keep a
// client's address (Envoy's original_src): IP_TRANSPARENT so the dialer may
// bind the client's address, and SO_MARK mark so that the capture rules
// route the peer's replies back to this socket. It needs CAP_NET_ADMIN.
func SourceControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		return control(c, func(fd int) error {
			if err := setTransparent(fd, network); err != nil {
				return err
			}
			if mark == 0 {
				return nil
			}
			if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_MARK, int(mark)); err != nil {
				return fmt.Errorf("SO_MARK %d (needs CAP_NET_ADMIN): %w", mark, err)
			}
			return nil
		})
	}
}

// SourceAddr is the local address a source-preserving dialer binds: the
// client's IP, any port.
func SourceAddr(client netip.Addr) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(client.Unmap(), 0))
}

func setTransparent(fd int, network string) error {
	if strings.HasSuffix(network, "6") {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_IPV6, ipv6Transparent, 1); err != nil {
			return fmt.Errorf("IPV6_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
		}
		return nil
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_IP, ipTransparent, 1); err != nil {
		return fmt.Errorf("IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
	}
	return nil
}

func control(c syscall.RawConn, f func(fd int) error) error {
	var err error
	if cerr := c.Control(func(fd uintptr) { err = f(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}
