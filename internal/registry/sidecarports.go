package registry

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// AnnotationInboundPorts on a WorkloadEntry names the ports an
// explicit-mode sidecar accepts mesh traffic on for the workload:
// "<app port>=<sidecar port>[,…]", e.g. "9080=15080". The sidecar listens
// on <workload address>:<sidecar port>, terminates mesh mTLS and forwards
// to 127.0.0.1:<app port>; peers dial the sidecar port. Auto-registration
// copies it from the proxy's INBOUND_PORTS node metadata.
const AnnotationInboundPorts = "weft.io/inbound-ports"

// ParseInboundPorts parses "<app port>=<sidecar port>[,…]" (spaces around
// items allowed, empty string: none). Ports are 1–65535; an app port may be
// listed once, a sidecar port may serve one app port only, and no port may
// be both an app and a sidecar port.
func ParseInboundPorts(s string) (map[uint32]uint32, error) {
	out := map[uint32]uint32{}
	used := map[uint32]uint32{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		appS, sideS, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("inbound ports: %q: want <app port>=<sidecar port>, e.g. 9080=15080", item)
		}
		app, err := parsePort(appS)
		if err != nil {
			return nil, fmt.Errorf("inbound ports: %q: app port: %w", item, err)
		}
		side, err := parsePort(sideS)
		if err != nil {
			return nil, fmt.Errorf("inbound ports: %q: sidecar port: %w", item, err)
		}
		if _, dup := out[app]; dup {
			return nil, fmt.Errorf("inbound ports: app port %d listed twice", app)
		}
		if prev, dup := used[side]; dup {
			return nil, fmt.Errorf("inbound ports: sidecar port %d serves both app ports %d and %d", side, prev, app)
		}
		out[app], used[side] = side, app
	}
	for app := range out {
		if other, ok := used[app]; ok {
			return nil, fmt.Errorf("inbound ports: port %d is an app port and the sidecar port of app port %d", app, other)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// FormatInboundPorts is ParseInboundPorts' inverse, sorted by app port.
func FormatInboundPorts(m map[uint32]uint32) string {
	apps := make([]uint32, 0, len(m))
	for a := range m {
		apps = append(apps, a)
	}
	sort.Slice(apps, func(i, j int) bool { return apps[i] < apps[j] })
	parts := make([]string, 0, len(apps))
	for _, a := range apps {
		parts = append(parts, strconv.FormatUint(uint64(a), 10)+"="+strconv.FormatUint(uint64(m[a]), 10))
	}
	return strings.Join(parts, ",")
}

func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n == 0 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", strings.TrimSpace(s))
	}
	return uint32(n), nil
}
