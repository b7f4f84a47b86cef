package secrettoken

import (
	"strings"
	"testing"
)

func TestRoundTripAndRejects(t *testing.T) {
	f := Format{Prefix: "tst_"}
	secret, sum := NewSecret()
	tok := f.Token("0123456789abcdef", secret)
	id, got, ok := f.Parse(tok)
	if !ok || id != "0123456789abcdef" {
		t.Fatalf("Parse(%q) = %q, %v", tok, id, ok)
	}
	if m, err := Matches(got, sum, id, id); err != nil || !m {
		t.Fatalf("Matches = %v, %v", m, err)
	}
	got[0] ^= 1
	if m, _ := Matches(got, sum, id, id); m {
		t.Fatal("a different secret matched")
	}
	if _, err := Matches(secret, "zz", id, id); err == nil {
		t.Fatal("a corrupt hash was not reported")
	}
	for _, bad := range []string{"", tok + "x", strings.Replace(tok, "tst_", "xxx_", 1), strings.Replace(tok, ".", "-", 1),
		"tst_0123456789ABCDEF" + tok[len("tst_")+IDLen:], Format{Prefix: "other_"}.Token("0123456789abcdef", secret)} {
		if _, _, ok := f.Parse(bad); ok {
			t.Errorf("Parse accepted %q", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("tst_0123456789abcdef.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		fm := Format{Prefix: "tst_"}
		if id, secret, ok := fm.Parse(s); ok && fm.Token(id, secret) != s {
			t.Fatalf("Parse(%q) accepted a non-canonical token", s)
		}
	})
}
