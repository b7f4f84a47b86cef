package ca

import (
	"testing"
)

// BenchmarkParseCSR measures CSR decoding and its signature check alone.
func BenchmarkParseCSR(b *testing.B) {
	csr := forgedCSR(b, newKey(b))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseCSR(csr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSign measures a whole Sign (ECDSA P-256 key, self-signed P-256
// root); bench/ca measures the gRPC path.
func BenchmarkSign(b *testing.B) {
	a, _, _ := newAuthority(b, Options{})
	csr := forgedCSR(b, newKey(b))
	id := Identity{Namespace: "bench", ServiceAccount: "sa"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Sign(csr, id, 0); err != nil {
			b.Fatal(err)
		}
	}
}
