package dns

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/dns/dnsmessage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// upstream is a fake resolver on loopback (UDP and TCP on one port).
type upstream struct {
	addr string
	// answer builds the response to a query received over UDP or TCP.
	answer func(q dnsmessage.Message, tcp bool) dnsmessage.Message
	mu     sync.Mutex
	seen   []dnsmessage.Message // queries received
	udp    atomic.Int64
	tcp    atomic.Int64
}

func startUpstream(t *testing.T, answer func(q dnsmessage.Message, tcp bool) dnsmessage.Message) *upstream {
	t.Helper()
	// UDP and TCP on one port: the UDP port's TCP twin may be taken (by
	// any connection's ephemeral port), so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		_ = pc.Close()
		if attempt == 20 {
			t.Fatal(err)
		}
	}
	u := &upstream{addr: pc.LocalAddr().String(), answer: answer}
	t.Cleanup(func() { _ = pc.Close(); _ = ln.Close() })
	respond := func(raw []byte, tcp bool) []byte {
		var q dnsmessage.Message
		if err := q.Unpack(raw); err != nil {
			return nil
		}
		u.mu.Lock()
		u.seen = append(u.seen, q)
		u.mu.Unlock()
		r := u.answer(q, tcp)
		r.ID, r.Response, r.Questions = q.ID, true, q.Questions
		out, err := r.Pack()
		if err != nil {
			t.Errorf("upstream: %v", err)
		}
		return out
	}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.udp.Add(1)
			if out := respond(buf[:n], false); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					msg, err := readTCP(c)
					if err != nil {
						return
					}
					u.tcp.Add(1)
					if err := writeTCP(c, respond(msg, true)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return u
}

func (u *upstream) queries() []dnsmessage.Message {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]dnsmessage.Message(nil), u.seen...)
}

// aRecords answers every A question with n addresses 192.0.2.x.
func aRecords(n int) func(q dnsmessage.Message, _ bool) dnsmessage.Message {
	return func(q dnsmessage.Message, _ bool) dnsmessage.Message {
		var r dnsmessage.Message
		if q.Questions[0].Type != dnsmessage.TypeA {
			return r
		}
		for i := 0; i < n; i++ {
			r.Answers = append(r.Answers, dnsmessage.Resource{
				Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
				Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, byte(i + 1)}}})
		}
		return r
	}
}

func nxdomain(dnsmessage.Message, bool) dnsmessage.Message {
	return dnsmessage.Message{Header: dnsmessage.Header{RCode: dnsmessage.RCodeNameError}}
}

// startServer runs a DNS server on loopback (a free port) until the test
// ends.
func startServer(t *testing.T, cfg Config, table *Table) *Server {
	t.Helper()
	cfg.Addrs = []string{"127.0.0.1:0"}
	if cfg.Resolv == nil {
		cfg.Resolv = &ResolvConf{}
	}
	s, err := New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s.Update(table)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	return s
}

// ask sends one query to the server over network ("udp" or "tcp") and
// returns the unpacked answer.
func ask(t *testing.T, s *Server, network, name string, typ dnsmessage.Type, id uint16, edns uint16) dnsmessage.Message {
	t.Helper()
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}}}
	if edns > 0 {
		var opt dnsmessage.ResourceHeader
		_ = opt.SetEDNS0(int(edns), dnsmessage.RCodeSuccess, false)
		q.Additionals = []dnsmessage.Resource{{Header: opt, Body: &dnsmessage.OPTResource{}}}
	}
	raw, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout(network, s.Addrs()[0].String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var resp []byte
	if network == "tcp" {
		if err := writeTCP(c, raw); err != nil {
			t.Fatal(err)
		}
		if resp, err = readTCP(c); err != nil {
			t.Fatal(err)
		}
	} else {
		if _, err := c.Write(raw); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		resp = buf[:n]
	}
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	if m.ID != id || !m.Response {
		t.Fatalf("answer ID %#x response=%v, want ID %#x", m.ID, m.Response, id)
	}
	return m
}

// addrs lists the A and AAAA answers.
func addrs(m dnsmessage.Message) []string {
	var out []string
	for _, r := range m.Answers {
		switch b := r.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(b.A).String())
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(b.AAAA).String())
		}
	}
	return out
}

func meshTable() *Table {
	return NewTable(map[string][]netip.Addr{
		"reviews.default.svc.cluster.local": {netip.MustParseAddr("10.0.0.13"), netip.MustParseAddr("fd00::13")},
		"ratings.default.svc.cluster.local": {netip.MustParseAddr("10.0.0.12")},
		"reviews.mesh":                      {netip.MustParseAddr("240.240.0.10")},
		"web.service.consul":                {netip.MustParseAddr("240.240.0.20")},
	})
}

func TestAnswersFromTable(t *testing.T) {
	up := startUpstream(t, nxdomain)
	reg := prometheus.NewRegistry()
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{up.addr}}, Registerer: reg}, meshTable())
	for _, network := range []string{"udp", "tcp"} {
		m := ask(t, s, network, "reviews.default.svc.cluster.local.", dnsmessage.TypeA, 0xbeef, 0)
		if d := cmp.Diff(addrs(m), []string{"10.0.0.13"}); d != "" || !m.Authoritative || m.RCode != dnsmessage.RCodeSuccess {
			t.Fatalf("%s A: %v %v %s", network, m.Header, m.Answers, d)
		}
		if m.Answers[0].Header.TTL != 30 || m.Answers[0].Header.Name.String() != "reviews.default.svc.cluster.local." {
			t.Fatalf("%s A: %+v", network, m.Answers[0].Header)
		}
		m = ask(t, s, network, "REVIEWS.default.svc.cluster.local.", dnsmessage.TypeAAAA, 7, 0)
		if d := cmp.Diff(addrs(m), []string{"fd00::13"}); d != "" {
			t.Fatalf("%s AAAA: %s", network, d)
		}
		// A v4-only name has no AAAA: NODATA, not forwarded.
		m = ask(t, s, network, "ratings.default.svc.cluster.local.", dnsmessage.TypeAAAA, 8, 1232)
		if len(m.Answers) != 0 || m.RCode != dnsmessage.RCodeSuccess || !m.Authoritative {
			t.Fatalf("%s AAAA of a v4-only name: %v %v", network, m.Header, m.Answers)
		}
		if len(m.Additionals) != 1 || m.Additionals[0].Header.Type != dnsmessage.TypeOPT {
			t.Fatalf("%s: EDNS query answered without OPT: %v", network, m.Additionals)
		}
		for _, name := range []string{"reviews.mesh.", "web.service.consul."} {
			if got := addrs(ask(t, s, network, name, dnsmessage.TypeA, 9, 0)); len(got) != 1 {
				t.Fatalf("%s %s: %v", network, name, got)
			}
		}
	}
	if n := len(up.queries()); n != 0 {
		t.Fatalf("table names were forwarded %d times", n)
	}
	var got dto.Metric
	if err := s.metrics.answered.Write(&got); err != nil || got.GetCounter().GetValue() != 10 {
		t.Fatalf("dns_table_answers_total = %v, want 10", got.GetCounter().GetValue())
	}
}

func TestSearchDomainExpansion(t *testing.T) {
	up := startUpstream(t, nxdomain)
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{up.addr}, Search: []string{"corp.example"}},
		Namespace: "default"}, meshTable())
	for _, name := range []string{
		"reviews.",                      // bare short name: <ns>.svc.cluster.local
		"reviews.default.",              // name.namespace: svc.cluster.local
		"reviews.default.svc.",          // cluster.local
		"reviews.corp.example.",         // the stub appended its search domain
		"reviews.default.corp.example.", // ... to name.namespace
		"reviews.mesh.corp.example.",    // ... to a full mesh name
		"reviews.default.svc.cluster.local.corp.example.",
	} {
		m := ask(t, s, "udp", name, dnsmessage.TypeA, 1, 0)
		if d := cmp.Diff(addrs(m), []string{map[bool]string{true: "240.240.0.10", false: "10.0.0.13"}[strings.HasPrefix(name, "reviews.mesh")]}); d != "" {
			t.Errorf("%s: %s", name, d)
		}
		if m.Answers[0].Header.Name.String() != name {
			t.Errorf("%s: answered as %s", name, m.Answers[0].Header.Name)
		}
	}
	// Not mesh names: forwarded.
	for _, name := range []string{"reviews.other.", "corp.example.", "reviews.mesh.example."} {
		if m := ask(t, s, "udp", name, dnsmessage.TypeA, 2, 0); m.RCode != dnsmessage.RCodeNameError {
			t.Errorf("%s: %v (want the upstream's NXDOMAIN)", name, m.RCode)
		}
	}
	if n := len(up.queries()); n != 3 {
		t.Fatalf("upstream saw %d queries, want 3", n)
	}
	// Another namespace's short names need the namespace.
	s2 := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{up.addr}}, Namespace: "prod"}, meshTable())
	if m := ask(t, s2, "udp", "reviews.", dnsmessage.TypeA, 3, 0); m.RCode != dnsmessage.RCodeNameError {
		t.Fatalf("reviews from namespace prod: %v %v", m.RCode, addrs(m))
	}
	if got := addrs(ask(t, s2, "udp", "reviews.default.", dnsmessage.TypeA, 4, 0)); len(got) != 1 {
		t.Fatalf("reviews.default from namespace prod: %v", got)
	}
}

func TestForwardPreservesID(t *testing.T) {
	up := startUpstream(t, aRecords(2))
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{up.addr}}}, meshTable())
	for i, network := range []string{"udp", "tcp"} {
		id := uint16(0x1234 + i)
		m := ask(t, s, network, "example.com.", dnsmessage.TypeA, id, 0)
		if d := cmp.Diff(addrs(m), []string{"192.0.2.1", "192.0.2.2"}); d != "" || m.Authoritative {
			t.Fatalf("%s: %v %s", network, m.Header, d)
		}
		seen := up.queries()[i]
		if seen.Questions[0].Name.String() != "example.com." || !seen.RecursionDesired {
			t.Fatalf("%s: upstream saw %+v", network, seen)
		}
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Fatalf("upstream udp=%d tcp=%d: a TCP client's query must go over TCP", up.udp.Load(), up.tcp.Load())
	}
	// Concurrent clients with the same ID each get their own answer.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := ask(t, s, "udp", "example.com.", dnsmessage.TypeA, 0x4242, 0)
			if len(m.Answers) != 2 {
				t.Errorf("answers %v", m.Answers)
			}
		}()
	}
	wg.Wait()
}

func TestForwardTruncationFallsBackToTCP(t *testing.T) {
	// Over UDP the upstream always truncates; over TCP it answers in full.
	up := startUpstream(t, func(q dnsmessage.Message, tcp bool) dnsmessage.Message {
		if !tcp {
			return dnsmessage.Message{Header: dnsmessage.Header{Truncated: true}}
		}
		return aRecords(40)(q, tcp)
	})
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{up.addr}}}, nil)
	// A UDP client that takes 4096 bytes gets the full answer the proxy
	// fetched over TCP.
	m := ask(t, s, "udp", "big.example.com.", dnsmessage.TypeA, 0x77, 4096)
	if len(m.Answers) != 40 || m.Truncated {
		t.Fatalf("EDNS client: %d answers, truncated=%v", len(m.Answers), m.Truncated)
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Fatalf("upstream udp=%d tcp=%d, want 1 and 1", up.udp.Load(), up.tcp.Load())
	}
	// A plain UDP client (512 bytes) is told to retry over TCP...
	m = ask(t, s, "udp", "big.example.com.", dnsmessage.TypeA, 0x78, 0)
	if !m.Truncated || len(m.Answers) != 0 || len(m.Questions) != 1 {
		t.Fatalf("512-byte client: truncated=%v answers=%d", m.Truncated, len(m.Answers))
	}
	// ... where it gets everything.
	m = ask(t, s, "tcp", "big.example.com.", dnsmessage.TypeA, 0x79, 0)
	if len(m.Answers) != 40 || m.Truncated {
		t.Fatalf("TCP client: %d answers, truncated=%v", len(m.Answers), m.Truncated)
	}
}

func TestForwardFailover(t *testing.T) {
	// A closed port first (refused at once), then a live resolver.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	up := startUpstream(t, aRecords(1))
	reg := prometheus.NewRegistry()
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{deadAddr, up.addr}}, Timeout: 500 * time.Millisecond,
		Registerer: reg}, nil)
	if got := addrs(ask(t, s, "udp", "example.com.", dnsmessage.TypeA, 1, 0)); len(got) != 1 {
		t.Fatalf("failover: %v", got)
	}
	// Nothing answers: SERVFAIL, within the bounded timeout.
	s2 := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{deadAddr}}, Timeout: 500 * time.Millisecond}, nil)
	start := time.Now()
	if m := ask(t, s2, "udp", "example.com.", dnsmessage.TypeA, 2, 0); m.RCode != dnsmessage.RCodeServerFailure {
		t.Fatalf("no upstream: %v", m.RCode)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("SERVFAIL took %v", time.Since(start))
	}
	// No upstream configured at all: SERVFAIL, except for table names.
	s3 := startServer(t, Config{}, meshTable())
	if m := ask(t, s3, "udp", "example.com.", dnsmessage.TypeA, 3, 0); m.RCode != dnsmessage.RCodeServerFailure {
		t.Fatalf("no upstreams: %v", m.RCode)
	}
	if got := addrs(ask(t, s3, "tcp", "reviews.mesh.", dnsmessage.TypeA, 4, 0)); len(got) != 1 {
		t.Fatalf("no upstreams, table name: %v", got)
	}
}

func TestUpdateSwapsTable(t *testing.T) {
	up := startUpstream(t, nxdomain)
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{up.addr}}}, nil)
	if m := ask(t, s, "udp", "reviews.mesh.", dnsmessage.TypeA, 1, 0); m.RCode != dnsmessage.RCodeNameError {
		t.Fatalf("before update: %v", m.RCode)
	}
	s.Update(meshTable())
	if got := addrs(ask(t, s, "udp", "reviews.mesh.", dnsmessage.TypeA, 2, 0)); len(got) != 1 {
		t.Fatalf("after update: %v", got)
	}
	s.Update(nil)
	if m := ask(t, s, "udp", "reviews.mesh.", dnsmessage.TypeA, 3, 0); m.RCode != dnsmessage.RCodeNameError {
		t.Fatalf("after emptying: %v", m.RCode)
	}
}

// TestForwardLoopIsDetected: an upstream that sends the proxy's own
// queries back to it (what capture does to a proxy not running as the
// exempt UID) gets SERVFAIL at once, not a loop until timeouts.
func TestForwardLoopIsDetected(t *testing.T) {
	relay, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	s := startServer(t, Config{Resolv: &ResolvConf{Nameservers: []string{relay.LocalAddr().String()}}, Timeout: 3 * time.Second}, nil)
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := relay.ReadFrom(buf)
			if err != nil {
				return
			}
			msg := append([]byte(nil), buf[:n]...)
			go func() {
				c, err := net.Dial("udp", s.Addrs()[0].String())
				if err != nil {
					return
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(msg)
				rb := make([]byte, 65535)
				if n, err := c.Read(rb); err == nil {
					_, _ = relay.WriteTo(rb[:n], from)
				}
			}()
		}
	}()
	start := time.Now()
	if m := ask(t, s, "udp", "loop.example.com.", dnsmessage.TypeA, 5, 0); m.RCode != dnsmessage.RCodeServerFailure {
		t.Fatalf("looped query: %v", m.RCode)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("loop detected after %v (a timeout, not detection)", d)
	}
}

func TestUpstreamsExcludeSelf(t *testing.T) {
	s := startServer(t, Config{}, nil)
	self := s.Addrs()[0].String()
	if got := s.filterUpstreams([]string{self, "10.0.0.1:53", "bogus"}); !cmp.Equal(got, []string{"10.0.0.1:53"}) {
		t.Fatalf("upstreams %v", got)
	}
}

func TestMalformedQueries(t *testing.T) {
	s := startServer(t, Config{}, meshTable())
	ctx := context.Background()
	// Too short for a header: no answer.
	if r := s.handle(ctx, []byte{1, 2, 3}, true); r != nil {
		t.Fatalf("short message answered: %v", r)
	}
	// A response: never answered (no reflection loops).
	resp, _ := (&dnsmessage.Message{Header: dnsmessage.Header{ID: 9, Response: true}}).Pack()
	if r := s.handle(ctx, resp, true); r != nil {
		t.Fatalf("response answered: %v", r)
	}
	// A header announcing a question that is not there: FORMERR.
	r := s.handle(ctx, []byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}, true)
	var m dnsmessage.Message
	if err := m.Unpack(r); err != nil || m.ID != 0xabcd || m.RCode != dnsmessage.RCodeFormatError {
		t.Fatalf("FORMERR expected: %v %+v", err, m.Header)
	}
	// A name the table holds, queried for MX: forwarded (SERVFAIL here,
	// without upstreams), not answered from the table.
	q, _ := (&dnsmessage.Message{Header: dnsmessage.Header{ID: 10},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("reviews.mesh."), Type: dnsmessage.TypeMX, Class: dnsmessage.ClassINET}}}).Pack()
	if err := m.Unpack(s.handle(ctx, q, true)); err != nil || m.RCode != dnsmessage.RCodeServerFailure {
		t.Fatalf("MX: %v %+v", err, m.Header)
	}
}

func TestParseResolvConf(t *testing.T) {
	rc, err := ParseResolvConf(strings.NewReader(`# generated
domain ignored.example
nameserver 127.0.0.53
nameserver fe80::1%eth0 ; link-local with a zone
nameserver not-an-ip
search Corp.Example. svc.cluster.local
options ndots:5 timeout:1
`))
	if err != nil {
		t.Fatal(err)
	}
	want := ResolvConf{Nameservers: []string{"127.0.0.53:53", "[fe80::1]:53"}, Search: []string{"corp.example", "svc.cluster.local"}}
	if d := cmp.Diff(rc, want); d != "" {
		t.Fatalf("(-got +want):\n%s", d)
	}
	if _, err := ReadResolvConf("/nonexistent/resolv.conf"); err == nil {
		t.Fatal("missing file: no error")
	}
}

func TestBindClash(t *testing.T) {
	s := startServer(t, Config{}, nil)
	_, err := New(Config{Addrs: []string{s.Addrs()[0].String()}, Resolv: &ResolvConf{}}, quiet)
	if err == nil || !strings.Contains(err.Error(), "--dns-port") {
		t.Fatalf("clash: %v", err)
	}
}

// TestOversizedUDPQuery: a UDP query longer than udpQueryBuf (here by a
// padding option) is cut short, and its question, which comes first, is
// still answered.
func TestOversizedUDPQuery(t *testing.T) {
	s := startServer(t, Config{}, meshTable())
	var opt dnsmessage.ResourceHeader
	_ = opt.SetEDNS0(1232, dnsmessage.RCodeSuccess, false)
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: 77, RecursionDesired: true},
		Questions:   []dnsmessage.Question{{Name: dnsmessage.MustNewName("reviews.mesh."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
		Additionals: []dnsmessage.Resource{{Header: opt, Body: &dnsmessage.OPTResource{Options: []dnsmessage.Option{{Code: 12, Data: make([]byte, udpQueryBuf)}}}}}}
	raw, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("a %d-byte query: %v", len(raw), err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil || m.ID != 77 || len(addrs(m)) != 1 {
		t.Fatalf("a %d-byte query: answer %v %+v", len(raw), err, m)
	}
}
