package ca

import (
	"context"
	"strings"
	"testing"
)

func newPluggedAuthority(t *testing.T, dir string) (*Authority, error) {
	t.Helper()
	st := openStore(t, t.TempDir())
	// No KEKFile: a plugged-in CA must not need one.
	return New(context.Background(), st, Options{CACertsDir: dir}, quiet)
}

func TestPluggedInIntermediate(t *testing.T) {
	root := makeCA(t, "corp root", nil, true)
	inter := makeCA(t, "weft intermediate", &root, true)
	dir := writeCACerts(t, map[string][]byte{
		RootCertFile:  root.pem(),
		CACertFile:    inter.pem(),
		CAKeyFile:     inter.keyPEM(t),
		CertChainFile: append(inter.pem(), root.pem()...),
	})
	a, err := newPluggedAuthority(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Plugged() {
		t.Fatal("plugged-in CA not reported")
	}
	if roots := a.Roots(); len(roots) != 1 || roots[0] != string(root.pem()) {
		t.Fatalf("trust bundle = %d roots, want root-cert.pem", len(roots))
	}
	id := Identity{Namespace: "prod", ServiceAccount: "api"}
	chain, err := a.Sign(forgedCSR(t, newKey(t)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || chain[1] != string(inter.pem()) || chain[2] != string(root.pem()) {
		t.Fatalf("chain = %d certificates, want leaf, intermediate, root", len(chain))
	}
	wantOnlyIdentity(t, verifyLeaf(t, a, chain), DefaultTrustDomain, id)
	// The store holds no root: the plugged-in CA is not copied there.
	if _, err := a.st.Get(context.Background(), RootKey); err == nil {
		t.Fatal("plugged-in CA wrote a self-signed root")
	}
	// A workload certificate from it authenticates renewal, with the chain
	// the workload presents or with the leaf alone.
	certs := parseChain(t, chain)
	for _, presented := range [][]int{{0, 1}, {0}} {
		var p = certsAt(certs, presented)
		got, err := a.IdentityFromCertificate(p)
		if err != nil || got != id {
			t.Fatalf("IdentityFromCertificate(%v) = %+v, %v", presented, got, err)
		}
	}
}

func certsAt[T any](s []T, idx []int) []T {
	var out []T
	for _, i := range idx {
		out = append(out, s[i])
	}
	return out
}

func TestPluggedInRootWithoutChain(t *testing.T) {
	root := makeCA(t, "root", nil, true)
	dir := writeCACerts(t, map[string][]byte{RootCertFile: root.pem(), CACertFile: root.pem(), CAKeyFile: root.keyPEM(t)})
	a, err := newPluggedAuthority(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := a.Sign(forgedCSR(t, newKey(t)), Identity{"a", "b"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != string(root.pem()) {
		t.Fatalf("chain = %d certificates, want leaf and root", len(chain))
	}
	verifyLeaf(t, a, chain)
}

func TestPluggedInRefused(t *testing.T) {
	root := makeCA(t, "root", nil, true)
	inter := makeCA(t, "intermediate", &root, true)
	other := makeCA(t, "other root", nil, true)
	otherInter := makeCA(t, "other intermediate", &other, true)
	notCA := makeCA(t, "not a ca", &root, false)
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"key mismatch", map[string][]byte{RootCertFile: root.pem(), CACertFile: inter.pem(), CAKeyFile: other.keyPEM(t), CertChainFile: inter.pem()},
			"ca-key.pem does not match the public key of ca-cert.pem"},
		{"not a CA", map[string][]byte{RootCertFile: root.pem(), CACertFile: notCA.pem(), CAKeyFile: notCA.keyPEM(t)},
			"ca-cert.pem (CN=not a ca) is not a CA certificate"},
		{"broken chain", map[string][]byte{RootCertFile: root.pem(), CACertFile: otherInter.pem(), CAKeyFile: otherInter.keyPEM(t), CertChainFile: append(otherInter.pem(), other.pem()...)},
			"ca-cert.pem does not chain up to root-cert.pem"},
		{"root not a CA", map[string][]byte{RootCertFile: notCA.pem(), CACertFile: inter.pem(), CAKeyFile: inter.keyPEM(t)},
			"root-cert.pem: CN=not a ca is not a CA certificate"},
		{"incomplete", map[string][]byte{CACertFile: inter.pem(), CertChainFile: inter.pem()},
			"incomplete: missing ca-key.pem, root-cert.pem"},
		{"no certificate", map[string][]byte{RootCertFile: root.pem(), CACertFile: []byte("junk"), CAKeyFile: inter.keyPEM(t)},
			"ca-cert.pem holds no PEM certificate"},
		{"no key", map[string][]byte{RootCertFile: root.pem(), CACertFile: inter.pem(), CAKeyFile: inter.pem()},
			"ca-key.pem holds no PEM private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newPluggedAuthority(t, writeCACerts(t, tc.files))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestEmptyCACertsDirFallsBackToSelfSigned(t *testing.T) {
	a, _, _ := newAuthority(t, Options{CACertsDir: t.TempDir()})
	if a.Plugged() {
		t.Fatal("empty cacerts directory treated as plugged-in")
	}
	st := openStore(t, t.TempDir())
	if _, err := New(context.Background(), st, Options{}, quiet); err == nil || !strings.Contains(err.Error(), "KEKFile") {
		t.Fatalf("no KEK and no cacerts: err = %v", err)
	}
}
