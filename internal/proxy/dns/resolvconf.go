package dns

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ResolvConf is what the server takes from resolv.conf(5): where to
// forward, and the search domains stub resolvers append to short names.
type ResolvConf struct {
	// Nameservers are upstream resolvers as host:port (port 53 unless
	// given), in order of preference.
	Nameservers []string
	// Search lists the search domains, lowercase, without trailing dots.
	Search []string
}

// ReadResolvConf parses the resolv.conf file at path.
func ReadResolvConf(path string) (ResolvConf, error) {
	f, err := os.Open(path)
	if err != nil {
		return ResolvConf{}, fmt.Errorf("dns: %w", err)
	}
	defer f.Close()
	rc, err := ParseResolvConf(f)
	if err != nil {
		return ResolvConf{}, fmt.Errorf("dns: %s: %w", path, err)
	}
	return rc, nil
}

// ParseResolvConf reads "nameserver", "search" and "domain" lines (the last
// search or domain line wins, as in glibc); other lines and comments are
// ignored, and so are nameserver entries that are not IP addresses.
func ParseResolvConf(r io.Reader) (ResolvConf, error) {
	var rc ResolvConf
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			host := f[1]
			if i := strings.IndexByte(host, '%'); i >= 0 {
				host = host[:i] // a zone: not kept
			}
			a, err := netip.ParseAddr(host)
			if err != nil {
				continue
			}
			rc.Nameservers = append(rc.Nameservers, net.JoinHostPort(a.Unmap().String(), "53"))
		case "search", "domain":
			rc.Search = rc.Search[:0:0]
			for _, d := range f[1:] {
				if d = canonical(d); d != "" {
					rc.Search = append(rc.Search, d)
				}
			}
		}
	}
	return rc, sc.Err()
}
