package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ednsSize is the UDP payload size the server advertises in its own
// answers (the DNS flag day 2020 value).
const ednsSize = 1232

// query is what handle parsed of a request.
type query struct {
	hdr dnsmessage.Header
	q   dnsmessage.Question
	// maxUDP is the largest UDP answer the client takes (512, or its EDNS
	// payload size).
	maxUDP int
	edns   bool
	// hasQ is set once the question parsed.
	hasQ bool
}

// handle answers one query: from the table for A and AAAA questions about
// mesh names, else from an upstream. It returns nil for what deserves no
// answer (unparseable headers, responses).
func (s *Server) handle(ctx context.Context, msg []byte, udp bool) []byte {
	s.metrics.requests.Inc()
	var p dnsmessage.Parser
	hdr, err := p.Start(msg)
	if err != nil || hdr.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return reply(query{hdr: hdr, maxUDP: 512}, dnsmessage.RCodeFormatError)
	}
	qr := query{hdr: hdr, q: q, maxUDP: 512, hasQ: true}
	if _, err := p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		return s.forward(ctx, msg, qr, udp) // several questions: not ours to judge
	}
	if p.SkipAllAnswers() == nil && p.SkipAllAuthorities() == nil {
		for {
			rh, err := p.AdditionalHeader()
			if err != nil {
				break
			}
			if rh.Type == dnsmessage.TypeOPT {
				qr.edns = true
				qr.maxUDP = min(max(int(rh.Class), 512), 65535)
			}
			if p.SkipAdditional() != nil {
				break
			}
		}
	}
	if s.looping(hdr.ID, q) {
		s.log.Warn("DNS query came back while forwarded: the proxy's own queries are captured; answering SERVFAIL",
			"name", q.Name.String())
		return reply(qr, dnsmessage.RCodeServerFailure)
	}
	if hdr.OpCode == 0 && q.Class == dnsmessage.ClassINET && (q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeAAAA) {
		if r := s.lookup(s.table.Load(), canonical(q.Name.String())); r != nil {
			s.metrics.answered.Inc()
			return s.answer(qr, r, udp)
		}
	}
	return s.forward(ctx, msg, qr, udp)
}

// lookup finds name in t: as asked; without a search domain the client's
// stub resolver appended; then, as a short name, under the mesh's domains
// and the search domains ("reviews" → reviews.default.svc.cluster.local).
func (s *Server) lookup(t *Table, name string) *record {
	if r := t.get(name); r != nil {
		return r
	}
	bases := []string{name}
	for _, d := range s.strip {
		if base, ok := strings.CutSuffix(name, "."+d); ok && base != "" {
			if r := t.get(base); r != nil {
				return r
			}
			bases = append(bases, base)
		}
	}
	for _, b := range bases {
		for _, d := range s.expand {
			if r := t.get(b + "." + d); r != nil {
				return r
			}
		}
	}
	return nil
}

// answer builds the authoritative answer for a table name: its addresses
// of the asked family, or none (NODATA) when it has no such address.
func (s *Server) answer(qr query, r *record, udp bool) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), dnsmessage.Header{ID: qr.hdr.ID, Response: true, Authoritative: true,
		RecursionDesired: qr.hdr.RecursionDesired, RecursionAvailable: true})
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(qr.q)
	_ = b.StartAnswers()
	rh := dnsmessage.ResourceHeader{Name: qr.q.Name, Class: dnsmessage.ClassINET, TTL: s.ttl}
	if qr.q.Type == dnsmessage.TypeA {
		for _, a := range r.v4 {
			_ = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		}
	} else {
		for _, a := range r.v6 {
			_ = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	if qr.edns {
		_ = b.StartAdditionals()
		var opt dnsmessage.ResourceHeader
		_ = opt.SetEDNS0(ednsSize, dnsmessage.RCodeSuccess, false)
		_ = b.OPTResource(opt, dnsmessage.OPTResource{})
	}
	msg, err := b.Finish()
	if err != nil {
		return reply(qr, dnsmessage.RCodeServerFailure)
	}
	if udp && len(msg) > qr.maxUDP {
		return truncated(qr)
	}
	return msg
}

// reply is an answer without records: rcode, and the question if parsed.
func reply(qr query, rcode dnsmessage.RCode) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: qr.hdr.ID, Response: true, OpCode: qr.hdr.OpCode,
		RecursionDesired: qr.hdr.RecursionDesired, RecursionAvailable: true, RCode: rcode})
	if qr.hasQ {
		_ = b.StartQuestions()
		_ = b.Question(qr.q)
	}
	msg, _ := b.Finish()
	return msg
}

// truncated tells a UDP client the answer does not fit: retry over TCP.
func truncated(qr query) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: qr.hdr.ID, Response: true, Truncated: true,
		RecursionDesired: qr.hdr.RecursionDesired, RecursionAvailable: true})
	_ = b.StartQuestions()
	_ = b.Question(qr.q)
	msg, _ := b.Finish()
	return msg
}

// questionKey identifies a question for loop detection.
func questionKey(q dnsmessage.Question) string {
	return fmt.Sprintf("%s %d %d", canonical(q.Name.String()), q.Type, q.Class)
}

// looping reports whether a query is one of this server's own forwarded
// queries coming back (same ID and question).
func (s *Server) looping(id uint16, q dnsmessage.Question) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	key, ok := s.inflight[id]
	return ok && key == questionKey(q)
}

// track registers a forwarded query under a fresh random ID and returns
// the ID and the function that releases it.
func (s *Server) track(q dnsmessage.Question) (uint16, func()) {
	key := questionKey(q)
	s.mu.Lock()
	defer s.mu.Unlock()
	id := uint16(rand.Uint32())
	for i := 0; i < 16; i++ {
		if _, busy := s.inflight[id]; !busy {
			break
		}
		id = uint16(rand.Uint32())
	}
	s.inflight[id] = key
	return id, func() {
		s.mu.Lock()
		if s.inflight[id] == key {
			delete(s.inflight, id)
		}
		s.mu.Unlock()
	}
}

// forward asks the upstream resolvers in turn and returns the first
// answer, with the client's query ID (the upstream sees a random one).
// A UDP client whose answer needed TCP and does not fit gets a truncated
// answer, and retries over TCP.
func (s *Server) forward(ctx context.Context, msg []byte, qr query, udp bool) []byte {
	if len(s.upstreams) == 0 {
		s.metrics.failures.Inc()
		return reply(qr, dnsmessage.RCodeServerFailure)
	}
	s.metrics.upstream.Inc()
	id, release := s.track(qr.q)
	defer release()
	out := append([]byte(nil), msg...)
	binary.BigEndian.PutUint16(out, id)
	for _, up := range s.upstreams {
		resp, err := s.exchange(ctx, up, out, id, udp)
		if err != nil {
			s.log.Debug("upstream resolver failed", "resolver", up, "name", qr.q.Name.String(), "error", err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		binary.BigEndian.PutUint16(resp, qr.hdr.ID)
		if udp && len(resp) > qr.maxUDP {
			return truncated(qr)
		}
		return resp
	}
	s.metrics.failures.Inc()
	return reply(qr, dnsmessage.RCodeServerFailure)
}

// exchange asks one upstream: over UDP first when the client used UDP,
// over TCP when the client used TCP or the UDP answer was truncated.
func (s *Server) exchange(ctx context.Context, up string, msg []byte, id uint16, udp bool) ([]byte, error) {
	if udp {
		resp, err := s.exchangeUDP(ctx, up, msg, id)
		if err != nil {
			return nil, err
		}
		if resp[2]&0x02 == 0 { // TC bit clear
			return resp, nil
		}
	}
	return s.exchangeTCP(ctx, up, msg, id)
}

// deadline is the earlier of now+Timeout and ctx's deadline.
func (s *Server) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(s.cfg.Timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

func (s *Server) exchangeUDP(ctx context.Context, up string, msg []byte, id uint16) ([]byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", up)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	_ = c.SetDeadline(s.deadline(ctx))
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if ok := n >= 12 && binary.BigEndian.Uint16(buf) == id && buf[2]&0x80 != 0; ok {
			return append([]byte(nil), buf[:n]...), nil
		}
		// Not the answer (a stray or spoofed packet): keep waiting.
	}
}

func (s *Server) exchangeTCP(ctx context.Context, up string, msg []byte, id uint16) ([]byte, error) {
	dctx, cancel := context.WithDeadline(ctx, s.deadline(ctx))
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "tcp", up)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(dctx, func() { _ = c.Close() })
	defer stop()
	_ = c.SetDeadline(s.deadline(dctx))
	if err := writeTCP(c, msg); err != nil {
		return nil, err
	}
	resp, err := readTCP(c)
	if err != nil {
		return nil, err
	}
	if len(resp) < 12 || binary.BigEndian.Uint16(resp) != id || resp[2]&0x80 == 0 {
		return nil, fmt.Errorf("dns: upstream %s: answer does not match the query", up)
	}
	return resp, nil
}
