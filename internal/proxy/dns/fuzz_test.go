package dns

import (
	"context"
	"encoding/binary"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzHandle feeds arbitrary bytes to the query path (parsing, table
// lookup with search expansion, EDNS, answer building). Without upstreams
// nothing leaves the process. Whatever comes back must be a well-formed
// response carrying the query's ID, and never larger than a UDP client
// may take.
func FuzzHandle(f *testing.F) {
	for _, q := range []dnsmessage.Message{
		{Header: dnsmessage.Header{ID: 1, RecursionDesired: true}, Questions: []dnsmessage.Question{
			{Name: dnsmessage.MustNewName("reviews.default.svc.cluster.local."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}},
		{Header: dnsmessage.Header{ID: 2}, Questions: []dnsmessage.Question{
			{Name: dnsmessage.MustNewName("reviews.corp.example."), Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET}}},
		{Header: dnsmessage.Header{ID: 3}, Questions: []dnsmessage.Question{
			{Name: dnsmessage.MustNewName("example.com."), Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassINET}}},
	} {
		raw, err := q.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw, true)
		f.Add(raw, false)
	}
	f.Add([]byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}, true)
	f.Add([]byte{}, true)
	s, err := New(Config{Addrs: []string{"127.0.0.1:0"}, Resolv: &ResolvConf{Search: []string{"corp.example"}}}, quiet)
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	s.Update(meshTable())
	f.Fuzz(func(t *testing.T, msg []byte, udp bool) {
		resp := s.handle(context.Background(), msg, udp)
		if resp == nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		if !m.Response || len(msg) < 2 || m.ID != binary.BigEndian.Uint16(msg) {
			t.Fatalf("answer header %+v for query %x", m.Header, msg)
		}
		if udp && len(resp) > 65535 {
			t.Fatalf("UDP answer of %d bytes", len(resp))
		}
	})
}
