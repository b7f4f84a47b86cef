package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server.
type Config struct {
	// Addrs are the host:port addresses served over both UDP and TCP.
	// Default ["127.0.0.1:15053"]: with capture, the application's DNS
	// packets are REDIRECTed there. Port 0 picks a free port (the same for
	// UDP and TCP).
	Addrs []string
	// OptionalAddrs are served too when they can be bound, and skipped
	// silently when not (e.g. "[::1]:15053" on a host without IPv6).
	OptionalAddrs []string
	// Resolv gives the upstream resolvers and search domains; nil reads
	// ResolvConfPath.
	Resolv *ResolvConf
	// ResolvConfPath is read when Resolv is nil. Default
	// "/etc/resolv.conf". A missing file leaves the server without
	// upstreams: names not in the table get SERVFAIL.
	ResolvConfPath string
	// Namespace is the workload's namespace: short names are also tried
	// under <Namespace>.svc.<suffix>. Default "default".
	Namespace string
	// DomainSuffixes are the mesh's DNS suffixes for short-name expansion
	// (<name>.<ns>.svc.<suffix>, <name>.svc.<suffix>, <name>.<suffix>).
	// Default ["cluster.local"].
	DomainSuffixes []string
	// TTL of the answers from the table. Default 30s.
	TTL time.Duration
	// Timeout bounds one exchange with one upstream (UDP, and again for
	// the TCP retry of a truncated answer). Default 2s.
	Timeout time.Duration
	// MaxInflight bounds the UDP queries handled at once (more are
	// dropped; clients retry) and, separately, the TCP connections.
	// Default 256.
	MaxInflight int
	// Registerer receives the DNS metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
}

// Server answers mesh names from its table and forwards the rest.
type Server struct {
	log       *slog.Logger
	cfg       Config
	table     atomic.Pointer[Table]
	upstreams []string
	strip     []string // resolv.conf search domains a stub may have appended
	expand    []string // domains tried after a short name
	ttl       uint32
	udp       []net.PacketConn
	tcp       []net.Listener
	udpSem    chan struct{}
	tcpSem    chan struct{}
	metrics   metrics

	mu       sync.Mutex
	inflight map[uint16]string // forwarded query ID -> question key

	wg        sync.WaitGroup
	done      chan struct{}
	closeOnce sync.Once
}

type metrics struct {
	requests, answered, upstream, failures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		requests: prometheus.NewCounter(prometheus.CounterOpts{Name: "dns_requests_total",
			Help: "DNS queries the proxy received."}),
		answered: prometheus.NewCounter(prometheus.CounterOpts{Name: "dns_table_answers_total",
			Help: "DNS queries answered from the mesh name table."}),
		upstream: prometheus.NewCounter(prometheus.CounterOpts{Name: "dns_upstream_requests_total",
			Help: "DNS queries forwarded to upstream resolvers."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "dns_upstream_failures_total",
			Help: "Forwarded DNS queries no upstream resolver answered."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.answered, m.upstream, m.failures} {
			if err := reg.Register(c); err != nil {
				return m, fmt.Errorf("dns: metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New binds the server's sockets (so a port clash fails here) and returns
// it with an empty table; Serve answers, Update swaps the table.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if len(cfg.Addrs) == 0 {
		cfg.Addrs = []string{"127.0.0.1:15053"}
	}
	if cfg.ResolvConfPath == "" {
		cfg.ResolvConfPath = "/etc/resolv.conf"
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if len(cfg.DomainSuffixes) == 0 {
		cfg.DomainSuffixes = []string{"cluster.local"}
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 256
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log, cfg: cfg, ttl: uint32(cfg.TTL / time.Second), metrics: m, inflight: map[uint16]string{},
		udpSem: make(chan struct{}, cfg.MaxInflight), tcpSem: make(chan struct{}, cfg.MaxInflight), done: make(chan struct{})}
	s.table.Store(NewTable(nil))
	rc := ResolvConf{}
	if cfg.Resolv != nil {
		rc = *cfg.Resolv
	} else if rc, err = ReadResolvConf(cfg.ResolvConfPath); err != nil {
		log.Warn("no upstream resolvers: names outside the mesh will fail", "error", err)
	}
	for _, a := range cfg.Addrs {
		if err := s.bind(a); err != nil {
			s.closeSockets()
			return nil, err
		}
	}
	for _, a := range cfg.OptionalAddrs {
		if err := s.bind(a); err != nil {
			log.Debug("optional DNS address not served", "address", a, "error", err)
		}
	}
	s.upstreams = s.filterUpstreams(rc.Nameservers)
	s.strip = rc.Search
	seen := map[string]bool{}
	add := func(d string) {
		if d = canonical(d); d != "" && !seen[d] {
			seen[d] = true
			s.expand = append(s.expand, d)
		}
	}
	for _, suffix := range cfg.DomainSuffixes {
		add(canonical(cfg.Namespace) + ".svc." + suffix)
		add("svc." + suffix)
		add(suffix)
	}
	for _, d := range rc.Search {
		add(d)
	}
	return s, nil
}

// bind listens on addr over UDP and TCP (on the same port when addr's
// port is 0).
func (s *Server) bind(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("dns: address %q: %w", addr, err)
	}
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, port))
		if err != nil {
			return fmt.Errorf("dns: %w (the port is --dns-port; 0 disables the DNS proxy)", err)
		}
		_, p, _ := net.SplitHostPort(pc.LocalAddr().String())
		ln, err := net.Listen("tcp", net.JoinHostPort(host, p))
		if err == nil {
			s.udp, s.tcp = append(s.udp, pc), append(s.tcp, ln)
			return nil
		}
		_ = pc.Close()
		lastErr = err
		if port != "0" {
			break
		}
	}
	return fmt.Errorf("dns: %w (the port is --dns-port; 0 disables the DNS proxy)", lastErr)
}

// filterUpstreams drops resolvers that are this server: forwarding there
// would loop.
func (s *Server) filterUpstreams(ns []string) []string {
	var out []string
next:
	for _, u := range ns {
		up, err := netip.ParseAddrPort(u)
		if err != nil {
			continue
		}
		for _, a := range s.Addrs() {
			if a.Port() == up.Port() && (a.Addr() == up.Addr().Unmap() || a.Addr().IsUnspecified() && up.Addr().IsLoopback()) {
				s.log.Warn("resolver is this DNS proxy; not forwarding there", "resolver", u)
				continue next
			}
		}
		out = append(out, u)
	}
	return out
}

// Addrs returns the bound addresses (UDP and TCP share each).
func (s *Server) Addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(s.udp))
	for _, pc := range s.udp {
		ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return out
}

// Upstreams returns the resolvers queries are forwarded to, in order.
func (s *Server) Upstreams() []string { return append([]string(nil), s.upstreams...) }

// Update swaps in a new table; queries already being answered finish with
// the old one.
func (s *Server) Update(t *Table) {
	if t == nil {
		t = NewTable(nil)
	}
	s.table.Store(t)
}

// Table returns the table in use.
func (s *Server) Table() *Table { return s.table.Load() }

// Serve answers queries until ctx ends or Close is called, then closes the
// sockets and waits for the queries in progress.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, pc := range s.udp {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.serveUDP(ctx, pc) }()
	}
	for _, ln := range s.tcp {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.serveTCP(ctx, ln) }()
	}
	select {
	case <-ctx.Done():
	case <-s.done:
	}
	cancel()
	s.closeSockets()
	s.wg.Wait()
	return nil
}

// Close stops Serve (or releases the sockets of a server never served).
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	s.closeSockets()
	return nil
}

func (s *Server) closeSockets() {
	for _, pc := range s.udp {
		_ = pc.Close()
	}
	for _, ln := range s.tcp {
		_ = ln.Close()
	}
}

// udpQueryBuf is the most of a UDP query read: queries are a few
// hundred bytes (one question, perhaps an OPT record), and a 64 KiB
// buffer per socket held 128 KiB of every sidecar's heap for nothing. A
// longer datagram is cut short: its question comes first and is
// answered; what follows it (EDNS options) is lost.
const udpQueryBuf = 4096

func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn) {
	buf := make([]byte, udpQueryBuf)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		select {
		case s.udpSem <- struct{}{}:
		default:
			continue // overloaded: the client retries
		}
		msg := append([]byte(nil), buf[:n]...)
		s.wg.Add(1)
		go func() {
			defer func() { <-s.udpSem; s.wg.Done() }()
			if resp := s.handle(ctx, msg, true); resp != nil {
				_, _ = pc.WriteTo(resp, addr)
			}
		}()
	}
}

// tcpIdle bounds how long a TCP client may take to send its next query.
const tcpIdle = 10 * time.Second

func (s *Server) serveTCP(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		select {
		case s.tcpSem <- struct{}{}:
		default:
			_ = c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer func() { <-s.tcpSem; s.wg.Done() }()
			s.serveConn(ctx, c)
		}()
	}
}

// serveConn answers length-prefixed queries on one TCP connection, one at
// a time, until the client is idle or gone.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	for {
		_ = c.SetDeadline(time.Now().Add(tcpIdle))
		msg, err := readTCP(c)
		if err != nil {
			return
		}
		resp := s.handle(ctx, msg, false)
		if resp == nil {
			return
		}
		_ = c.SetWriteDeadline(time.Now().Add(tcpIdle))
		if err := writeTCP(c, resp); err != nil {
			return
		}
	}
}

// readTCP reads one length-prefixed DNS message.
func readTCP(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// writeTCP writes one length-prefixed DNS message.
func writeTCP(w io.Writer, msg []byte) error {
	if len(msg) > 65535 {
		return fmt.Errorf("dns: message of %d bytes", len(msg))
	}
	out := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(out, uint16(len(msg)))
	copy(out[2:], msg)
	_, err := w.Write(out)
	return err
}
