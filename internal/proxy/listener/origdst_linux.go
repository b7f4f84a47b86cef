//go:build linux

package listener

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

const (
	soOriginalDst   = 80 // SO_ORIGINAL_DST (linux/netfilter_ipv4.h)
	ip6tOriginalDst = 80 // IP6T_SO_ORIGINAL_DST
)

// OriginalDst returns the address a connection redirected by iptables
// (REDIRECT) was sent to. For a TPROXY listener, or a connection that was
// not redirected, it is the connection's local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: not a TCP connection (%T)", c)
	}
	local := tc.LocalAddr().(*net.TCPAddr).AddrPort()
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			var sa syscall.RawSockaddrInet4
			size := uint32(unsafe.Sizeof(sa))
			_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, soOriginalDst,
				uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
			if e != 0 {
				serr = e
				return
			}
			port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
			dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			return
		}
		var sa syscall.RawSockaddrInet6
		size := uint32(unsafe.Sizeof(sa))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IPV6, ip6tOriginalDst,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = e
			return
		}
		port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
		dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		// ENOENT: no conntrack redirect entry (TPROXY or a direct
		// connection): the local address is the original destination.
		return local, nil
	}
	return dst, nil
}
