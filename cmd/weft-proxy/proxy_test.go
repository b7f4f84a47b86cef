package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/proxy/sidecar"
)

// configure runs kind's command with args and returns the configuration
// it would run the proxy with.
func configure(t *testing.T, kind proxyKind, args ...string) sidecar.Config {
	t.Helper()
	var got *sidecar.Config
	cmd := proxyCmd(kind, func(_ context.Context, cfg sidecar.Config, _ *slog.Logger) error {
		got = &cfg
		return nil
	})
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%s %v: %v", kind.use, args, err)
	}
	if got == nil {
		t.Fatalf("%s %v: the proxy was not run", kind.use, args)
	}
	return *got
}

// TestRouterCommand: `weft-proxy router` is the sidecar command with node
// type router (whatever WEFT_NODE_TYPE says), no DNS proxy unless asked
// for, and the gateway credential directory from --credential-dir or
// WEFT_CREDENTIAL_DIR; the capture flags it does not use are refused.
func TestRouterCommand(t *testing.T) {
	t.Setenv("WEFT_CREDENTIAL_DIR", "/etc/weft/credentials")
	t.Setenv("WEFT_NODE_TYPE", "sidecar")
	base := []string{"--ip", "10.0.0.5", "--name", "ingress", "-n", "istio-system", "--labels", "istio=ingressgateway"}
	cfg := configure(t, routerKind, base...)
	b := cfg.Bootstrap
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if b.Type != "router" || !strings.HasPrefix(b.NodeID(), "router~10.0.0.5~ingress.istio-system~") || b.Labels["istio"] != "ingressgateway" {
		t.Errorf("bootstrap %+v, node id %s", b, b.NodeID())
	}
	if cfg.DNSPort != 0 || cfg.CredentialDir != "/etc/weft/credentials" || cfg.AdminAddr != "127.0.0.1:15000" {
		t.Errorf("DNS port %d, credential dir %q, admin %q; want 0, the environment's, 127.0.0.1:15000", cfg.DNSPort, cfg.CredentialDir, cfg.AdminAddr)
	}
	cfg = configure(t, routerKind, append(base, "--credential-dir", "/secrets", "--dns-port", "15053")...)
	if cfg.CredentialDir != "/secrets" || cfg.DNSPort != 15053 {
		t.Errorf("flags: credential dir %q, DNS port %d", cfg.CredentialDir, cfg.DNSPort)
	}
	cfg = configure(t, routerKind, append(base, "--inbound-ports", "9080=15080")...)
	if err := cfg.Bootstrap.Validate(); err == nil || !strings.Contains(err.Error(), "router (gateway) has no inbound side") {
		t.Errorf("router with --inbound-ports: %v", err)
	}
}

// TestSidecarCommand: the sidecar keeps its DNS proxy by default, unless
// its bootstrap makes it a router.
func TestSidecarCommand(t *testing.T) {
	t.Setenv("WEFT_NODE_TYPE", "")
	t.Setenv("WEFT_CREDENTIAL_DIR", "")
	base := []string{"--ip", "10.0.0.6", "--name", "web"}
	cfg := configure(t, sidecarKind, base...)
	if cfg.Bootstrap.Type != "" || cfg.DNSPort != 15053 || cfg.CredentialDir != "" {
		t.Errorf("type %q, DNS port %d, credential dir %q", cfg.Bootstrap.Type, cfg.DNSPort, cfg.CredentialDir)
	}
	t.Setenv("WEFT_NODE_TYPE", "router")
	if cfg := configure(t, sidecarKind, base...); cfg.Bootstrap.Type != "router" || cfg.DNSPort != 0 {
		t.Errorf("WEFT_NODE_TYPE=router: type %q, DNS port %d", cfg.Bootstrap.Type, cfg.DNSPort)
	}
}
