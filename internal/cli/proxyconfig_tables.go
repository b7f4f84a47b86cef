package cli

import (
	"cmp"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/translate"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// resourcesOf lists the distinct resources behind rows, in row order
// (the -o json and yaml output of a filtered table).
func resourcesOf[R any](rows []R, res func(R) proto.Message) []proto.Message {
	var out []proto.Message
	seen := map[proto.Message]bool{}
	for _, r := range rows {
		if m := res(r); m != nil && !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}

// The tables below follow istioctl proxy-config's columns, so that what an
// operator reads (and greps) is the same.

type clusterFilter struct {
	fqdn, subset, direction string
	port                    int
}

type clusterRow struct {
	fqdn, port, subset, direction, typ, rule string
	res                                      proto.Message
}

// clusterRows lists d's clusters matching f, sorted as istioctl sorts
// them: by FQDN, then port, subset and direction.
func clusterRows(d *proxyDump, f clusterFilter) []clusterRow {
	var rows []clusterRow
	for _, c := range d.Clusters {
		r := clusterRow{fqdn: c.GetName(), port: "-", subset: "-", direction: "-", typ: clusterTypeName(c), rule: configRef(c.GetMetadata(), "destination-rule"), res: c}
		if parts := strings.SplitN(c.GetName(), "|", 4); len(parts) == 4 && (parts[0] == "outbound" || parts[0] == "inbound") {
			r.direction, r.port, r.fqdn = parts[0], parts[1], parts[3]
			if parts[2] != "" {
				r.subset = parts[2]
			}
		}
		if (f.fqdn != "" && !strings.Contains(r.fqdn, f.fqdn)) || (f.port != 0 && r.port != strconv.Itoa(f.port)) ||
			(f.subset != "" && r.subset != f.subset) || (f.direction != "" && r.direction != f.direction) {
			continue
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b clusterRow) int {
		return cmp.Or(cmp.Compare(a.fqdn, b.fqdn), cmp.Compare(atoiOr(a.port), atoiOr(b.port)), cmp.Compare(a.subset, b.subset), cmp.Compare(a.direction, b.direction))
	})
	return rows
}

func atoiOr(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

func clusterTypeName(c *clusterv3.Cluster) string {
	if ct := c.GetClusterType(); ct != nil {
		return ct.GetName()
	}
	return c.GetType().String()
}

// configRef is the name.namespace of the Istio object of the given kind
// that istiod (or weft's discovery) recorded in the istio.config metadata,
// or "" (also for metadata naming another kind).
func configRef(md *corev3.Metadata, kind string) string {
	v := md.GetFilterMetadata()[translate.IstioMetadataKey].GetFields()[translate.ConfigMetadataField].GetStringValue()
	k, ref, ok := translate.ParseConfigPath(v)
	if !ok || k != kind {
		return ""
	}
	return ref
}

func writeClusters(w io.Writer, rows []clusterRow) error {
	return writeRows(w, rows, "SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE")
}

func (r clusterRow) resource() proto.Message { return r.res }

func (r clusterRow) cells() []string {
	return []string{r.fqdn, r.port, r.subset, r.direction, r.typ, r.rule}
}

type listenerFilter struct {
	address, typ string
	port         int
}

type listenerRow struct {
	address, port, match, destination string
	portNum                           int
	res                               proto.Message
}

// listenerRows lists one row per filter chain (the default chain too) of
// d's listeners matching f, sorted by port, then address.
func listenerRows(d *proxyDump, f listenerFilter) []listenerRow {
	var rows []listenerRow
	for _, l := range d.Listeners {
		var addrs []string
		port := 0
		if sa := l.GetAddress().GetSocketAddress(); sa != nil {
			addrs, port = append(addrs, sa.GetAddress()), int(sa.GetPortValue())
		}
		for _, a := range l.GetAdditionalAddresses() {
			if sa := a.GetAddress().GetSocketAddress(); sa != nil {
				addrs = append(addrs, sa.GetAddress())
			}
		}
		if (f.address != "" && !slices.Contains(addrs, f.address)) || (f.port != 0 && port != f.port) {
			continue
		}
		chains := l.GetFilterChains()
		if dc := l.GetDefaultFilterChain(); dc != nil {
			chains = append(slices.Clip(chains), dc)
		}
		for _, fc := range chains {
			dest, isHTTP, isTCP := chainDestination(fc)
			switch strings.ToUpper(f.typ) {
			case "HTTP":
				if !isHTTP {
					continue
				}
			case "TCP":
				if !isTCP {
					continue
				}
			}
			rows = append(rows, listenerRow{address: strings.Join(addrs, ","), port: strconv.Itoa(port), portNum: port,
				match: chainMatch(fc.GetFilterChainMatch()), destination: dest, res: l})
		}
	}
	slices.SortStableFunc(rows, func(a, b listenerRow) int {
		return cmp.Or(cmp.Compare(a.portNum, b.portNum), cmp.Compare(a.address, b.address))
	})
	return rows
}

// chainMatch describes a filter chain match as istioctl does: "ALL" for
// none, else its parts.
func chainMatch(m *listenerv3.FilterChainMatch) string {
	var parts []string
	if p := m.GetDestinationPort(); p != nil {
		parts = append(parts, "Port: "+strconv.Itoa(int(p.GetValue())))
	}
	if len(m.GetServerNames()) > 0 {
		parts = append(parts, "SNI: "+strings.Join(m.GetServerNames(), ","))
	}
	if t := m.GetTransportProtocol(); t != "" {
		parts = append(parts, "Trans: "+t)
	}
	if len(m.GetApplicationProtocols()) > 0 {
		parts = append(parts, "App: "+strings.Join(m.GetApplicationProtocols(), ","))
	}
	if len(m.GetPrefixRanges()) > 0 {
		var rs []string
		for _, r := range m.GetPrefixRanges() {
			rs = append(rs, r.GetAddressPrefix()+"/"+strconv.Itoa(int(r.GetPrefixLen().GetValue())))
		}
		parts = append(parts, "Addr: "+strings.Join(rs, ","))
	}
	if len(parts) == 0 {
		return "ALL"
	}
	return strings.Join(parts, "; ")
}

// chainDestination says where a filter chain sends traffic: its HTTP
// connection manager's route table, or its tcp_proxy's cluster.
func chainDestination(fc *listenerv3.FilterChain) (dest string, isHTTP, isTCP bool) {
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		if tc == nil {
			continue
		}
		switch {
		case tc.MessageIs((*hcmv3.HttpConnectionManager)(nil)):
			var h hcmv3.HttpConnectionManager
			if tc.UnmarshalTo(&h) != nil {
				return "HTTP (unreadable config)", true, false
			}
			if rds := h.GetRds(); rds != nil {
				return "Route: " + rds.GetRouteConfigName(), true, false
			}
			var matches []string
			for _, vh := range h.GetRouteConfig().GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					matches = append(matches, routeMatchText(r.GetMatch()))
				}
			}
			return "Inline Route: " + strings.Join(matches, "; "), true, false
		case tc.MessageIs((*tcpv3.TcpProxy)(nil)):
			var t tcpv3.TcpProxy
			if tc.UnmarshalTo(&t) != nil {
				return "TCP (unreadable config)", false, true
			}
			if c := t.GetCluster(); c != "" {
				return "Cluster: " + c, false, true
			}
			var names []string
			for _, c := range t.GetWeightedClusters().GetClusters() {
				names = append(names, c.GetName())
			}
			return "WeightedCluster: " + strings.Join(names, ","), false, true
		}
	}
	return "Non-HTTP/Non-TCP", false, false
}

func writeListeners(w io.Writer, rows []listenerRow) error {
	return writeRows(w, rows, "ADDRESSES", "PORT", "MATCH", "DESTINATION")
}

func (r listenerRow) resource() proto.Message { return r.res }

func (r listenerRow) cells() []string {
	return []string{r.address, r.port, r.match, r.destination}
}

type routeRow struct {
	name, vhost, domains, match, vs string
}

// routeRows lists one row per route of d's route tables (named name, if
// set), in the tables' order.
func routeRows(d *proxyDump, name string) []routeRow {
	var rows []routeRow
	rcs := slices.Clone(d.Routes)
	slices.SortStableFunc(rcs, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.GetName(), b.GetName()) })
	for _, rc := range rcs {
		if name != "" && rc.GetName() != name {
			continue
		}
		for _, vh := range rc.GetVirtualHosts() {
			domains := vh.GetDomains()
			shown := strings.Join(domains[:min(2, len(domains))], ", ")
			if len(domains) > 2 {
				shown += fmt.Sprintf(" + %d more...", len(domains)-2)
			}
			for _, r := range vh.GetRoutes() {
				rows = append(rows, routeRow{name: rc.GetName(), vhost: vh.GetName(), domains: shown,
					match: routeMatchText(r.GetMatch()), vs: configRef(r.GetMetadata(), "virtual-service")})
			}
		}
	}
	return rows
}

// routeMatchText shows a route's path match as istioctl does: a prefix
// with a trailing "*".
func routeMatchText(m *routev3.RouteMatch) string {
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		return p.Prefix + "*"
	case *routev3.RouteMatch_Path:
		return p.Path
	case *routev3.RouteMatch_SafeRegex:
		return "regex " + p.SafeRegex.GetRegex()
	case *routev3.RouteMatch_PathSeparatedPrefix:
		return p.PathSeparatedPrefix + "/*"
	case *routev3.RouteMatch_ConnectMatcher_:
		return "CONNECT"
	}
	return "-"
}

func writeRoutes(w io.Writer, rows []routeRow) error {
	return writeRows(w, rows, "NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE")
}

func (r routeRow) cells() []string {
	return []string{r.name, r.vhost, r.domains, r.match, r.vs}
}

type endpointFilter struct {
	address, cluster, status string
	port                     int
}

type endpointRow struct {
	endpoint, status, outlier, cluster string
	res                                proto.Message // the load assignment
}

// endpointRows lists the endpoints of d's clusters: EDS assignments and
// the load assignments clusters carry themselves. With a sidecar's live
// state (/clusters), STATUS and OUTLIER CHECK are what the sidecar sees;
// without it, STATUS is the health discovery sent and OUTLIER CHECK "-".
func endpointRows(d *proxyDump, f endpointFilter) []endpointRow {
	byService := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, la := range d.Endpoints {
		byService[la.GetClusterName()] = la
	}
	var rows []endpointRow
	for _, c := range d.Clusters {
		la := c.GetLoadAssignment()
		if c.GetType() == clusterv3.Cluster_EDS {
			svc := c.GetEdsClusterConfig().GetServiceName()
			if svc == "" {
				svc = c.GetName()
			}
			la = byService[svc]
		}
		if f.cluster != "" && c.GetName() != f.cluster {
			continue
		}
		for _, lle := range la.GetEndpoints() {
			for _, lb := range lle.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				if sa == nil {
					continue
				}
				addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
				r := endpointRow{endpoint: addr, cluster: c.GetName(), status: edsStatus(lb.GetHealthStatus()), outlier: "-", res: la}
				if live, ok := d.live[c.GetName()][addr]; ok {
					r.status, r.outlier = liveStatus(live)
				}
				if (f.address != "" && sa.GetAddress() != f.address) || (f.port != 0 && int(sa.GetPortValue()) != f.port) ||
					(f.status != "" && !strings.EqualFold(r.status, f.status)) {
					continue
				}
				rows = append(rows, r)
			}
		}
	}
	slices.SortStableFunc(rows, func(a, b endpointRow) int {
		return cmp.Or(cmp.Compare(a.endpoint, b.endpoint), cmp.Compare(a.cluster, b.cluster))
	})
	return rows
}

// edsStatus names a health status as istioctl does; Envoy routes to
// UNKNOWN endpoints, so they show HEALTHY.
func edsStatus(h corev3.HealthStatus) string {
	if h == corev3.HealthStatus_UNKNOWN {
		return "HEALTHY"
	}
	return h.String()
}

// liveStatus reads a /clusters health_flags value.
func liveStatus(flags string) (status, outlier string) {
	status, outlier = "HEALTHY", "OK"
	if strings.Contains(flags, "/failed_outlier_check") {
		outlier = "FAILED"
	}
	if strings.Contains(flags, "/failed_eds_health") || strings.Contains(flags, "/failed_active_hc") {
		status = "UNHEALTHY"
	}
	return status, outlier
}

func writeEndpoints(w io.Writer, rows []endpointRow) error {
	return writeRows(w, rows, "ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER")
}

func (r endpointRow) resource() proto.Message { return r.res }

func (r endpointRow) cells() []string {
	return []string{r.endpoint, r.status, r.outlier, r.cluster}
}

type secretRow struct {
	name, typ, status, valid, serial, notAfter, notBefore string
}

// secretRows lists d's certificates: the workload chain's leaf ("Cert
// Chain") and every root of a trust bundle ("CA").
func secretRows(d *proxyDump, now time.Time) []secretRow {
	var rows []secretRow
	for _, s := range d.Secrets {
		switch t := s.GetType().(type) {
		case *tlsv3.Secret_TlsCertificate:
			certs := pemCerts(t.TlsCertificate.GetCertificateChain())
			if len(certs) == 0 {
				rows = append(rows, secretRow{s.GetName(), "Cert Chain", "ACTIVE", "false", "-", "-", "-"})
				continue
			}
			rows = append(rows, certRow(s.GetName(), "Cert Chain", certs[0], now))
		case *tlsv3.Secret_ValidationContext:
			for _, c := range pemCerts(t.ValidationContext.GetTrustedCa()) {
				rows = append(rows, certRow(s.GetName(), "CA", c, now))
			}
		}
	}
	return rows
}

func certRow(name, typ string, c *x509.Certificate, now time.Time) secretRow {
	valid := !now.Before(c.NotBefore) && !now.After(c.NotAfter)
	return secretRow{name: name, typ: typ, status: "ACTIVE", valid: strconv.FormatBool(valid), serial: c.SerialNumber.Text(16),
		notAfter: c.NotAfter.UTC().Format(time.RFC3339), notBefore: c.NotBefore.UTC().Format(time.RFC3339)}
}

// pemCerts parses the certificates of an inline data source.
func pemCerts(ds *corev3.DataSource) []*x509.Certificate {
	b := ds.GetInlineBytes()
	if s := ds.GetInlineString(); s != "" {
		b = []byte(s)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && blk.Type == "CERTIFICATE" {
			out = append(out, c)
		}
	}
}

func writeSecrets(w io.Writer, rows []secretRow) error {
	return writeRows(w, rows, "RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE")
}

func (r secretRow) cells() []string {
	return []string{r.name, r.typ, r.status, r.valid, r.serial, r.notAfter, r.notBefore}
}

// textTable is a tab-aligned table with a header row.
type textTable struct{ tw *tabwriter.Writer }

// writeRows writes a table of rows under header.
func writeRows[R interface{ cells() []string }](w io.Writer, rows []R, header ...string) error {
	tw := newTable(w, header...)
	for _, r := range rows {
		tw.row(r.cells()...)
	}
	return tw.flush()
}

func newTable(w io.Writer, header ...string) *textTable {
	t := &textTable{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *textTable) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

func (t *textTable) flush() error { return t.tw.Flush() }

// writeBootstrap summarises a bootstrap: the node, the admin address and
// the ADS server's addresses.
func writeBootstrap(w io.Writer, b *bootstrapv3.Bootstrap) error {
	addr := func(a *corev3.Address) string {
		if sa := a.GetSocketAddress(); sa != nil {
			return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
		return "-"
	}
	var ads []string
	for _, c := range b.GetStaticResources().GetClusters() {
		for _, lle := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range lle.GetLbEndpoints() {
				ads = append(ads, c.GetName()+" "+addr(lb.GetEndpoint().GetAddress()))
			}
		}
	}
	tw := newTable(w, "FIELD", "VALUE")
	tw.row("node.id", b.GetNode().GetId())
	tw.row("node.cluster", cmp.Or(b.GetNode().GetCluster(), "-"))
	md := b.GetNode().GetMetadata().GetFields()
	for _, k := range slices.Sorted(maps.Keys(md)) {
		v := md[k]
		text := v.GetStringValue()
		if _, isString := v.GetKind().(*structpb.Value_StringValue); !isString {
			js, _ := protojson.Marshal(v)
			text = string(js)
		}
		tw.row("node.metadata."+k, text)
	}
	tw.row("admin", addr(b.GetAdmin().GetAddress()))
	tw.row("ads", cmp.Or(b.GetDynamicResources().GetAdsConfig().GetApiType().String(), "-"))
	for _, a := range ads {
		tw.row("static cluster", a)
	}
	return tw.flush()
}
