package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// drain forgets After calls reported so far.
func (c *fakeClock) drain() {
	for {
		select {
		case <-c.afters:
		default:
			return
		}
	}
}

// handshake runs a TLS handshake over a pipe and returns the SPIFFE ID
// the server saw from the client and both sides' errors.
func handshake(client, server *tls.Config) (clientID string, clientErr, serverErr error) {
	a, b := net.Pipe()
	_ = a.SetDeadline(time.Now().Add(10 * time.Second))
	_ = b.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := tls.Server(b, server)
		serverErr = s.Handshake()
		if serverErr == nil {
			if pc := s.ConnectionState().PeerCertificates; len(pc) > 0 && len(pc[0].URIs) > 0 {
				clientID = pc[0].URIs[0].String()
			}
		}
		s.Close()
	}()
	c := tls.Client(a, client)
	clientErr = c.Handshake()
	if clientErr == nil {
		// TLS 1.3 clients finish before the server has checked them; a
		// read surfaces a refusal (or EOF once the server has closed).
		if _, err := c.Read(make([]byte, 1)); err != nil && !strings.Contains(err.Error(), "EOF") {
			clientErr = err
		}
	}
	c.Close()
	<-done
	return clientID, clientErr, serverErr
}

// foreignLeaf is a workload-shaped certificate for id from another root.
func foreignLeaf(t *testing.T, id string) [][]byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	root := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other mesh"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(rootDER)
	u, _ := url.Parse(id)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, root, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{leafDER, rootDER}
}

// TestVerifyPeer: secure naming. A peer must chain to the trust bundle and
// carry one of the expected SPIFFE IDs.
func TestVerifyPeer(t *testing.T) {
	w := startWeft(t, nil)
	tokA, _ := w.group("ratings", "ratings")
	tokB, _ := w.group("reviews", "reviews")
	a := start(t, w.config(tokA, nil))
	b := start(t, w.config(tokB, nil))
	ca, cb := a.update(t), b.update(t)
	idA, idB := a.Identity(), b.Identity()
	if idA == idB {
		t.Fatalf("two service accounts got one identity %s", idA)
	}

	if err := a.VerifyPeer([]string{idA})(ca.Certificate, nil); err != nil {
		t.Errorf("own certificate refused: %v", err)
	}
	if err := a.VerifyPeer([]string{idA})(cb.Certificate, nil); err == nil || !strings.Contains(err.Error(), idB) {
		t.Errorf("another identity: %v, want a refusal naming %s", err, idB)
	}
	if err := a.VerifyPeer([]string{idA, idB})(cb.Certificate, nil); err != nil {
		t.Errorf("an expected identity refused: %v", err)
	}
	if err := a.VerifyPeer(nil)(cb.Certificate, nil); err != nil {
		t.Errorf("any mesh identity (no expectation) refused: %v", err)
	}
	if err := a.VerifyPeer([]string{idA})(foreignLeaf(t, idA), nil); err == nil || !strings.Contains(err.Error(), "trust bundle") {
		t.Errorf("a certificate for %s from another root: %v, want a refusal", idA, err)
	}
	if err := a.VerifyPeer(nil)(nil, nil); err == nil {
		t.Error("no peer certificate accepted")
	}

	// The same over real handshakes: b serves, a dials.
	if _, cErr, sErr := handshake(a.ClientTLS([]string{idA}), b.ServerTLS(nil)); cErr == nil {
		t.Errorf("client expecting %s accepted server %s (server: %v)", idA, idB, sErr)
	}
	seen, cErr, sErr := handshake(a.ClientTLS([]string{idB}), b.ServerTLS([]string{idA}))
	if cErr != nil || sErr != nil || seen != idA {
		t.Errorf("mTLS %s → %s: client %v, server %v, server saw %q", idA, idB, cErr, sErr, seen)
	}
	if _, _, sErr := handshake(a.ClientTLS([]string{idB}), b.ServerTLS([]string{idB})); sErr == nil {
		t.Errorf("server expecting %s accepted client %s", idB, idA)
	}
}
