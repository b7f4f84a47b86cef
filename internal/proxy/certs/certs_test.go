package certs_test

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/proxy/certs"
)

func verifies(t *testing.T, m *running, c *tls.Certificate, now time.Time) {
	t.Helper()
	inter := x509.NewCertPool()
	for _, raw := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: m.Roots(), Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("certificate does not verify against Roots(): %v", err)
	}
}

// TestBootstrapRenewRestartExpire: the first certificate comes with the
// bootstrap token; renewal uses the certificate (the token is revoked by
// then); a restart renews from the key directory without a token; an
// expired certificate is never served.
func TestBootstrapRenewRestartExpire(t *testing.T) {
	// The server's CA shares the fake clock. Its TLS port checks client
	// certificates against real time, so the fake clock starts 18h in the
	// past: certificates issued during the test stay valid in real time.
	clock := newFakeClock(time.Now().Add(-18 * time.Hour))
	w := startWeft(t, clock.Now)
	tok, tokID := w.group("ratings", "ratings-sa")
	keyDir := filepath.Join(t.TempDir(), "keys")
	cfg := w.config(tok, clock)
	cfg.KeyDir = keyDir
	m := start(t, cfg)

	c0 := m.update(t)
	const want = "spiffe://cluster.local/ns/default/sa/ratings-sa"
	if got := m.Identity(); got != want {
		t.Fatalf("Identity() = %q, want %q", got, want)
	}
	if len(c0.Leaf.URIs) != 1 || c0.Leaf.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want [%s]", c0.Leaf.URIs, want)
	}
	life := c0.Leaf.NotAfter.Sub(clock.Now()) // X.509 times are whole seconds
	if life <= 24*time.Hour-time.Second || life > 24*time.Hour {
		t.Fatalf("lifetime %v, want the CA default 24h", life)
	}
	verifies(t, m, c0, clock.Now())
	select {
	case <-m.Ready():
	default:
		t.Fatal("Ready not closed after the first certificate")
	}
	for _, f := range []string{certs.KeyFile, certs.ChainFile} {
		fi, err := os.Stat(filepath.Join(keyDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}

	// Renewal: the token is revoked; the certificate authenticates.
	w.revoke(tokID)
	d := clock.nextAfter(t)
	if d < life*4/10 || d > life*6/10 {
		t.Fatalf("renewal scheduled in %v, want 50%% ± 10%% of %v", d, life)
	}
	clock.Advance(d)
	c1 := m.update(t)
	if c1.Leaf.SerialNumber.Cmp(c0.Leaf.SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	if c1.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(c0.Leaf.PublicKey) {
		t.Error("renewal reused the key; want a fresh key per certificate")
	}
	if m.Identity() != want || c1.Leaf.URIs[0].String() != want {
		t.Fatalf("identity after renewal %q, want %q", m.Identity(), want)
	}
	verifies(t, m, c1, clock.Now())
	if err := m.stop(t); err != nil {
		t.Fatalf("Run after cancellation: %v", err)
	}
	clock.drain()

	// Restart without a token: the key directory holds a valid
	// certificate, which is served at once and renews itself.
	cfg = w.config("", clock)
	cfg.KeyDir = keyDir
	m2 := start(t, cfg)
	got := m2.update(t)
	if got.Leaf.SerialNumber.Cmp(c1.Leaf.SerialNumber) != 0 {
		t.Fatalf("restart serves serial %x, want the persisted %x", got.Leaf.SerialNumber, c1.Leaf.SerialNumber)
	}
	clock.Advance(clock.nextAfter(t))
	c2 := m2.update(t)
	if c2.Leaf.SerialNumber.Cmp(c1.Leaf.SerialNumber) == 0 || m2.Identity() != want {
		t.Fatalf("renewal after restart: serial %x identity %s", c2.Leaf.SerialNumber, m2.Identity())
	}

	// Expiry: the clock jumps past the certificate's end with no way to
	// renew (no token). Nothing is served; Run says why.
	clock.nextAfter(t)
	clock.Advance(25 * time.Hour)
	if err := m2.result(t); !errors.Is(err, certs.ErrExpired) {
		t.Fatalf("Run = %v, want ErrExpired", err)
	}
	if _, err := m2.Current(); !errors.Is(err, certs.ErrExpired) {
		t.Fatalf("Current() = %v, want ErrExpired", err)
	}
	if _, err := m2.GetCertificate(nil); !errors.Is(err, certs.ErrExpired) {
		t.Fatalf("GetCertificate = %v, want ErrExpired", err)
	}
	if _, err := m2.GetClientCertificate(nil); !errors.Is(err, certs.ErrExpired) {
		t.Fatalf("GetClientCertificate = %v, want ErrExpired", err)
	}
	if _, cErr, sErr := handshake(m2.ClientTLS(nil), m2.ServerTLS(nil)); cErr == nil || sErr == nil {
		t.Fatalf("handshake with an expired certificate: client %v, server %v; want both to fail", cErr, sErr)
	}
}

// TestRotationKeepsConnections: with a 2m lifetime the certificate rotates
// again and again; a connection made before keeps working with the
// certificate it was made with, new handshakes see the newest one.
func TestRotationKeepsConnections(t *testing.T) {
	// Certificates issued at fake time F are valid in real time from F-1m
	// to F+2m; starting 90s in the past leaves room for three rotations.
	clock := newFakeClock(time.Now().Add(-90 * time.Second))
	w := startWeft(t, clock.Now)
	tok, _ := w.group("reviews", "reviews")
	cfg := w.config(tok, clock)
	cfg.TTL = 2 * time.Minute
	m := start(t, cfg)
	c0 := m.update(t)
	life := c0.Leaf.NotAfter.Sub(clock.Now()) // X.509 times are whole seconds
	if life <= 2*time.Minute-time.Second || life > 2*time.Minute {
		t.Fatalf("lifetime %v, want the requested 2m", life)
	}
	id := m.Identity()

	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.ServerTLS([]string{id}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), m.ClientTLS([]string{id}))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, buf, err)
		}
	}
	served := func(c *tls.Conn) string { return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16) }

	old := dial()
	defer old.Close()
	echo(old, "hello")
	if served(old) != c0.Leaf.SerialNumber.Text(16) {
		t.Fatalf("first connection served %s, want %x", served(old), c0.Leaf.SerialNumber)
	}
	prev := c0
	for i := range 3 {
		d := clock.nextAfter(t)
		if d < life*4/10 || d > life*6/10 {
			t.Fatalf("rotation %d scheduled in %v, want 50%% ± 10%% of %v", i, d, life)
		}
		clock.Advance(d)
		c := m.update(t)
		if c.Leaf.SerialNumber.Cmp(prev.Leaf.SerialNumber) == 0 {
			t.Fatalf("rotation %d: same certificate", i)
		}
		echo(old, fmt.Sprintf("still there %d", i))
		if served(old) != c0.Leaf.SerialNumber.Text(16) {
			t.Fatalf("the established connection changed certificate")
		}
		fresh := dial()
		echo(fresh, "new")
		if served(fresh) != c.Leaf.SerialNumber.Text(16) {
			t.Fatalf("rotation %d: a new handshake got %s, want the new %x", i, served(fresh), c.Leaf.SerialNumber)
		}
		fresh.Close()
		prev = c
		life = c.Leaf.NotAfter.Sub(clock.Now())
	}
}

// TestBadToken: a refused token ends Run with a clear error and no
// certificate; an unreachable CA is retried with backoff.
func TestBadToken(t *testing.T) {
	w := startWeft(t, nil)
	w.group("ratings", "ratings")
	for _, tc := range []struct{ name, token, msg string }{
		{"forged", "wbt_0000000000000000.AAAAAAAAAAAAAAAAAAAAAA", "bootstrap token"},
		{"not a weft token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "not a weft bootstrap token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := start(t, w.config(tc.token, nil))
			err := m.result(t)
			if !errors.Is(err, certs.ErrRefused) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Run = %v, want ErrRefused mentioning %q", err, tc.msg)
			}
			if _, err := m.Current(); !errors.Is(err, certs.ErrNoCertificate) {
				t.Fatalf("Current() = %v, want ErrNoCertificate", err)
			}
			if m.Identity() != "" {
				t.Fatalf("Identity() = %q with no certificate", m.Identity())
			}
		})
	}
	t.Run("no credential", func(t *testing.T) {
		m := start(t, w.config("", nil))
		if err := m.result(t); err == nil || !strings.Contains(err.Error(), "no bootstrap token") {
			t.Fatalf("Run = %v, want an error about the missing token", err)
		}
	})
	t.Run("CA unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		clock := newFakeClock(time.Now())
		cfg := w.config("wbt_0000000000000000.AAAAAAAAAAAAAAAAAAAAAA", clock)
		cfg.CAAddress = addr
		m := start(t, cfg)
		for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
			d := clock.nextAfter(t)
			if d < want/2 || d > want {
				t.Fatalf("retry %d after %v, want within [%v, %v]", i, d, want/2, want)
			}
			if _, err := m.Current(); !errors.Is(err, certs.ErrNoCertificate) {
				t.Fatalf("Current() = %v, want ErrNoCertificate", err)
			}
			clock.Advance(d)
		}
		if err := m.stop(t); err != nil {
			t.Fatalf("Run after cancellation: %v", err)
		}
	})
}

func TestNewChecksConfig(t *testing.T) {
	pool := x509.NewCertPool()
	for _, tc := range []struct {
		name string
		cfg  certs.Config
	}{
		{"no address", certs.Config{CARoots: pool}},
		{"no port", certs.Config{CAAddress: "ca.example", CARoots: pool}},
		{"no roots", certs.Config{CAAddress: "127.0.0.1:15012"}},
		{"negative ttl", certs.Config{CAAddress: "127.0.0.1:15012", CARoots: pool, TTL: -time.Second}},
	} {
		if _, err := certs.New(tc.cfg, nil); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, tc.cfg)
		}
	}
}
