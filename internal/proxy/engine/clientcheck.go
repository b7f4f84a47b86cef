package engine

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// clientCheck is what a downstream TLS context's default_validation_context
// asks of a client certificate once its chain is verified: Istio's Gateway
// subjectAltNames, verifyCertificateSpki and verifyCertificateHash. A
// certificate must pass every kind of check that is set: one of its SANs
// matches one matcher, its public key is one of the SPKI pins, its SHA-256
// is one of the hash pins.
type clientCheck struct {
	sans       []sanMatcher
	spki, hash [][]byte
}

// sanMatcher matches one kind of SAN (any kind when all is true).
type sanMatcher struct {
	all    bool
	typ    tlsv3.SubjectAltNameMatcher_SanType
	accept func(string) bool
}

// clientCheckFields are the default_validation_context fields weft-proxy
// enforces; any other field set is refused.
var clientCheckFields = map[protoreflect.Name]bool{
	"match_subject_alt_names": true, "match_typed_subject_alt_names": true,
	"verify_certificate_spki": true, "verify_certificate_hash": true,
}

// compileClientCheck reads a default_validation_context; nil when it asks
// for nothing.
func compileClientCheck(vc *tlsv3.CertificateValidationContext) (*clientCheck, error) {
	var bad protoreflect.Name
	vc.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !clientCheckFields[fd.Name()] {
			bad = fd.Name()
			return false
		}
		return true
	})
	if bad != "" {
		return nil, fmt.Errorf("default_validation_context: %s is not supported (match_typed_subject_alt_names, match_subject_alt_names, verify_certificate_spki and verify_certificate_hash are)", bad)
	}
	c := &clientCheck{}
	//lint:ignore SA1019 Istio's gateways still send the untyped form
	for _, m := range vc.GetMatchSubjectAltNames() {
		accept, err := compileStringMatcher(m)
		if err != nil {
			return nil, fmt.Errorf("match_subject_alt_names: %w", err)
		}
		c.sans = append(c.sans, sanMatcher{all: true, accept: accept})
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		accept, err := compileStringMatcher(m.GetMatcher())
		if err != nil {
			return nil, fmt.Errorf("match_typed_subject_alt_names: %w", err)
		}
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_DNS, tlsv3.SubjectAltNameMatcher_URI, tlsv3.SubjectAltNameMatcher_EMAIL, tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
		default:
			return nil, fmt.Errorf("match_typed_subject_alt_names: san_type %v is not supported (DNS, URI, EMAIL or IP_ADDRESS)", m.GetSanType())
		}
		c.sans = append(c.sans, sanMatcher{typ: m.GetSanType(), accept: accept})
	}
	for _, s := range vc.GetVerifyCertificateSpki() {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("verify_certificate_spki %q: want the base64 SHA-256 of a public key", s)
		}
		c.spki = append(c.spki, b)
	}
	for _, s := range vc.GetVerifyCertificateHash() {
		b, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("verify_certificate_hash %q: want the hex SHA-256 of a certificate (colons allowed)", s)
		}
		c.hash = append(c.hash, b)
	}
	if len(c.sans)+len(c.spki)+len(c.hash) == 0 {
		return nil, nil
	}
	return c, nil
}

// compileStringMatcher builds a StringMatcher's test.
func compileStringMatcher(m *matcherv3.StringMatcher) (func(string) bool, error) {
	fold := func(s string) string { return s }
	if m.GetIgnoreCase() {
		fold = strings.ToLower
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		want := fold(p.Exact)
		return func(s string) bool { return fold(s) == want }, nil
	case *matcherv3.StringMatcher_Prefix:
		want := fold(p.Prefix)
		return func(s string) bool { return strings.HasPrefix(fold(s), want) }, nil
	case *matcherv3.StringMatcher_Suffix:
		want := fold(p.Suffix)
		return func(s string) bool { return strings.HasSuffix(fold(s), want) }, nil
	case *matcherv3.StringMatcher_Contains:
		want := fold(p.Contains)
		return func(s string) bool { return strings.Contains(fold(s), want) }, nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("regex %q: %w", p.SafeRegex.GetRegex(), err)
		}
		return re.MatchString, nil
	}
	return nil, errors.New("a string matcher needs exact, prefix, suffix, contains or safe_regex")
}

// verify checks a verified client certificate.
func (c *clientCheck) verify(leaf *x509.Certificate) error {
	if len(c.sans) > 0 && !c.sanMatches(leaf) {
		return errors.New("client certificate: no subject alternative name is one the server accepts")
	}
	if len(c.spki) > 0 {
		sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		if !containsBytes(c.spki, sum[:]) {
			return errors.New("client certificate: its public key is not one the server pins")
		}
	}
	if len(c.hash) > 0 {
		sum := sha256.Sum256(leaf.Raw)
		if !containsBytes(c.hash, sum[:]) {
			return errors.New("client certificate: it is not one the server pins")
		}
	}
	return nil
}

// sanMatches reports whether one of leaf's SANs passes one matcher.
func (c *clientCheck) sanMatches(leaf *x509.Certificate) bool {
	type san struct {
		typ tlsv3.SubjectAltNameMatcher_SanType
		v   string
	}
	var sans []san
	for _, d := range leaf.DNSNames {
		sans = append(sans, san{tlsv3.SubjectAltNameMatcher_DNS, d})
	}
	for _, u := range leaf.URIs {
		sans = append(sans, san{tlsv3.SubjectAltNameMatcher_URI, u.String()})
	}
	for _, e := range leaf.EmailAddresses {
		sans = append(sans, san{tlsv3.SubjectAltNameMatcher_EMAIL, e})
	}
	for _, ip := range leaf.IPAddresses {
		sans = append(sans, san{tlsv3.SubjectAltNameMatcher_IP_ADDRESS, ip.String()})
	}
	for _, m := range c.sans {
		for _, s := range sans {
			if (m.all || m.typ == s.typ) && m.accept(s.v) {
				return true
			}
		}
	}
	return false
}

func containsBytes(list [][]byte, b []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, b) {
			return true
		}
	}
	return false
}
