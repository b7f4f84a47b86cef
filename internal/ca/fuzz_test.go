package ca

import (
	"encoding/pem"
	"errors"
	"testing"
)

// FuzzParseCSR feeds arbitrary bytes to the CSR parser and signer: they
// must never panic, reject everything that is not a self-signed CSR with
// ErrInvalidCSR, and issue only the given identity for what they accept.
func FuzzParseCSR(f *testing.F) {
	good := forgedCSR(f, newKey(f))
	b, _ := pem.Decode(good)
	f.Add(good)
	f.Add(b.Bytes)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	f.Add([]byte{})
	a, _, _ := newAuthority(f, Options{})
	id := Identity{Namespace: "fuzz", ServiceAccount: "sa"}
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("ParseCSR error %v does not wrap ErrInvalidCSR", err)
			}
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
		chain, err := a.Sign(data, id, 0)
		if err != nil {
			t.Fatalf("Sign failed on a CSR ParseCSR accepted: %v", err)
		}
		wantOnlyIdentity(t, parseChain(t, chain)[0], DefaultTrustDomain, id)
	})
}
