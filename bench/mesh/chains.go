package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Ports of the proxy chains (host A listens on loopback, host B on its
// bridge address).
const (
	appPort        = "8080"
	nginxLocal     = "18080"
	nginxRemote    = "18443"
	haproxyLocal   = "18081"
	haproxyRemote  = "18444"
	proxyUID       = "1337"
	clientUID      = "65534" // nobody: not the proxy UID, so captured
	serverNameB    = "b.bench"
	clientNameA    = "a.bench"
	certLifetime   = 2 * time.Hour
	readyTimeout   = 60 * time.Second
	commandTimeout = 30 * time.Second
)

// writeCerts writes a throwaway ECDSA P-256 CA, a server certificate for
// host B (b.bench and its address) and a client certificate for host A,
// as separate PEM files (nginx) and cert+key bundles (haproxy).
func writeCerts(dir, addrB string) error {
	newKey := func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	caKey, err := newKey()
	if err != nil {
		return err
	}
	now := time.Now().Add(-time.Minute)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft bench CA"},
		NotBefore: now, NotAfter: now.Add(certLifetime), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pemOf("CERTIFICATE", caDER), 0o644); err != nil {
		return err
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) error {
		key, err := newKey()
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now, NotAfter: now.Add(certLifetime), DNSNames: []string{name}, IPAddresses: ips,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		c, k := pemOf("CERTIFICATE", der), pemOf("EC PRIVATE KEY", kder)
		for file, b := range map[string][]byte{name + ".crt": c, name + ".key": k, name + ".pem": append(append([]byte{}, c...), k...)} {
			if err := os.WriteFile(filepath.Join(dir, file), b, 0o600); err != nil {
				return err
			}
		}
		return nil
	}
	if err := leaf(serverNameB, 2, x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP(addrB)}); err != nil {
		return err
	}
	return leaf(clientNameA, 3, x509.ExtKeyUsageClientAuth, nil)
}

// nginxConf is one side of the nginx chain: on A, plaintext on loopback
// proxied over mTLS to B; on B, mTLS (client certificate required)
// proxied to the app. Upstream connections are kept alive on both hops
// (as the sidecars pool theirs); two workers, one per CPU of the host
// (the weft sidecars default to one, --concurrency 1).
func nginxConf(dir, side, addrB string) string {
	tmp := filepath.Join(dir, "nginx-"+side+"-tmp")
	var server string
	if side == "a" {
		server = fmt.Sprintf(`
  upstream hop { server %s:%s; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:%s;
    location / {
      proxy_pass https://hop;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate %[4]s/%[5]s.crt;
      proxy_ssl_certificate_key %[4]s/%[5]s.key;
      proxy_ssl_trusted_certificate %[4]s/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name %[6]s;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
    }
  }`, addrB, nginxRemote, nginxLocal, dir, clientNameA, serverNameB)
	} else {
		server = fmt.Sprintf(`
  upstream app { server 127.0.0.1:%s; keepalive 64; keepalive_requests 1000000; }
  server {
    listen %s:%s ssl;
    ssl_certificate %[4]s/%[5]s.crt;
    ssl_certificate_key %[4]s/%[5]s.key;
    ssl_client_certificate %[4]s/ca.pem;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }`, appPort, addrB, nginxRemote, dir, serverNameB)
	}
	return fmt.Sprintf(`worker_processes 2;
pid %[1]s/nginx-%[2]s.pid;
error_log %[1]s/nginx-%[2]s.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path %[3]s/body;
  proxy_temp_path %[3]s/proxy;
  fastcgi_temp_path %[3]s/fastcgi;
  uwsgi_temp_path %[3]s/uwsgi;
  scgi_temp_path %[3]s/scgi;
%[4]s
}
`, dir, side, tmp, server)
}

// haproxyConf is the haproxy equivalent: two threads, connection reuse
// towards the next hop, mTLS verified on both ends.
func haproxyConf(dir, side, addrB string) string {
	head := `global
  nbthread 2
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
`
	if side == "a" {
		return head + fmt.Sprintf(`frontend local
  bind 127.0.0.1:%s
  default_backend hop
backend hop
  server b %s:%s ssl crt %[4]s/%[5]s.pem ca-file %[4]s/ca.pem verify required verifyhost %[6]s sni str(%[6]s) ssl-min-ver TLSv1.3
`, haproxyLocal, addrB, haproxyRemote, dir, clientNameA, serverNameB)
	}
	return head + fmt.Sprintf(`frontend mtls
  bind %s:%s ssl crt %[3]s/%[4]s.pem ca-file %[3]s/ca.pem verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:%[5]s
`, addrB, haproxyRemote, dir, serverNameB, appPort)
}

// startProxyChain starts kind ("nginx" or "haproxy") on B then A and
// waits until a request crosses the chain; it returns the processes
// (stop them after the measurement) and the URL for the client on A.
func startProxyChain(ctx context.Context, dir string, t *topology, kind string) ([]*proc, string, error) {
	var procs []*proc
	for _, side := range []string{"b", "a"} {
		conf := filepath.Join(dir, kind+"-"+side+".conf")
		var body string
		var args []string
		if kind == "nginx" {
			body = nginxConf(dir, side, t.addr["b"])
			if err := os.MkdirAll(filepath.Join(dir, "nginx-"+side+"-tmp"), 0o755); err != nil {
				return procs, "", err
			}
			args = []string{"nginx", "-c", conf, "-g", "daemon off;"}
		} else {
			body = haproxyConf(dir, side, t.addr["b"])
			args = []string{"haproxy", "-db", "-f", conf}
		}
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			return procs, "", err
		}
		p, err := bg(dir, kind+"-"+side, t.ns[side], args...)
		if err != nil {
			return procs, "", err
		}
		procs = append(procs, p)
	}
	port := map[string]string{"nginx": nginxLocal, "haproxy": haproxyLocal}[kind]
	url := "http://127.0.0.1:" + port + "/echo?size=1024"
	err := eventually(ctx, kind+" chain answering", readyTimeout, func() error {
		_, err := in(ctx, commandTimeout, t.ns["a"], filepath.Join(dir, "fortio"), "curl", "-quiet", url)
		return err
	}, procs...)
	return procs, url, err
}

// weftMesh is the weft chain: the control plane in cp, and on A and B a
// sidecar as the proxy UID with a workload certificate from a bootstrap
// token, behind capture rules or in explicit mode; STRICT mTLS.
type weftMesh struct {
	sidecars map[string]*proc
	pids     map[string]int
	cp       *proc
	cleanups []func() // capture rules
}

// The weft chains' kinds.
const (
	weftCapture  = "weft"          // capture rules on both hosts, the client calls a VIP
	weftTCP      = "weft-tcp"      // the same with the port declared TCP
	weftExplicit = "weft-explicit" // no capture: nginx's shape
)

// chainKind splits a -chains entry into its kind and, for a variant
// ("weft@GOGC=100 --concurrency 2"), the sidecar flags after the @, which
// follow -sidecar-args; variants of one kind alternate in -rounds like
// any other chains.
func chainKind(c string) (kind string, flags []string) {
	kind, rest, ok := strings.Cut(c, "@")
	if !ok {
		return c, nil
	}
	return kind, strings.Fields(rest)
}

// explicitInbound is sidecar B's port in front of the app in explicit mode.
const explicitInbound = "15080"

// stop ends the chain (another weft chain may follow): sidecars, control
// plane, capture rules.
func (m *weftMesh) stop() {
	for _, p := range m.sidecars {
		p.stop()
	}
	m.cp.stop()
	for _, f := range m.cleanups {
		f()
	}
}

// meshWorkloads are every weft chain's workload groups (the echo
// group's port matters only to the auto-registered entry of the explicit
// chain) and STRICT mTLS.
const meshWorkloads = `apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: client}
spec:
  metadata: {labels: {app: client}}
  template: {serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: echo}
spec:
  metadata: {labels: {app: echo}}
  template: {serviceAccount: echo, ports: {http: ` + appPort + `}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
`

// echoEntry is the echo ServiceEntry on port appPort with the port's name
// and protocol, and its endpoints (the spec's last lines).
func echoEntry(portName, protocol, endpoints string) string {
	return `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: ` + appPort + `, name: ` + portName + `, protocol: ` + protocol + `}]
` + endpoints
}

// captureConfig is the capture chains' mesh: the echo service on a VIP,
// with a static endpoint at addr.
func captureConfig(portName, protocol, addr string) string {
	return meshWorkloads + echoEntry(portName, protocol, `  addresses: [`+vip+`]
  endpoints:
  - {address: `+addr+`, serviceAccount: echo, labels: {app: echo, security.istio.io/tlsMode: istio}}
`)
}

// explicitConfig is the weft-explicit chain's mesh: the echo service
// selects its auto-registered WorkloadEntry, which advertises sidecar B's
// inbound port (--inbound-ports); B's Sidecar resource keeps B from
// binding the upstream listener 127.0.0.1:8080 that the app holds.
var explicitConfig = meshWorkloads + echoEntry("http", "HTTP", `  workloadSelector: {labels: {app: echo}}
`) + `---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: echo}
spec:
  workloadSelector: {labels: {app: echo}}
  egress: [{hosts: ["~/*"]}]
`

// envWord is an environment assignment in -sidecar-args.
var envWord = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`)

// startWeft runs the control plane and the two sidecars of the chain
// name (weftCapture, weftTCP or weftExplicit). For weftTCP the echo
// service's port is declared TCP: the sidecars relay its bytes over mesh
// mTLS without HTTP processing (the L4 path, for comparison). For
// weftExplicit nothing is captured: the client calls sidecar A on
// 127.0.0.1:8080, and sidecar A calls sidecar B's inbound port, as the
// nginx and haproxy chains do.
// Its files are named after tag (the chain, and the round after the first).
func startWeft(ctx context.Context, dir string, t *topology, extra []string, name, tag string) (*weftMesh, string, error) {
	weftBin, proxyBin := filepath.Join(dir, "weft"), filepath.Join(dir, "weft-proxy")
	data := filepath.Join(dir, tag+"-cp-data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return nil, "", err
	}
	cp, err := bg(dir, tag+"-server", t.ns["cp"], weftBin, "server", "--data-dir", data, "--listen", "127.0.0.1:15443",
		"--tls-san", t.addr["cp"], "--monitoring-listen", "", "--xds-listen", "0.0.0.0:15012", "--xds-plaintext-listen", "",
		"--debounce", "20ms")
	if err != nil {
		return nil, "", err
	}
	kc := filepath.Join(data, "kubeconfig")
	weft := func(stdin string, args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, commandTimeout)
		defer cancel()
		cmd := exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", t.ns["cp"], weftBin, "--kubeconfig", kc}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("weft %v: %v", args, err)
		}
		return string(out), nil
	}
	if err := eventually(ctx, "weft server answering", readyTimeout, func() error { _, err := weft("", "get", "ns"); return err }, cp); err != nil {
		return nil, "", err
	}
	config := captureConfig("http", "HTTP", t.addr["b"])
	switch name {
	case weftTCP:
		config = captureConfig("tcp", "TCP", t.addr["b"])
	case weftExplicit:
		config = explicitConfig
	}
	if _, err := weft(config, "apply", "-f", "-"); err != nil {
		return nil, "", err
	}
	caPEM, err := os.ReadFile(filepath.Join(data, "ca.crt"))
	if err != nil {
		return nil, "", err
	}
	rootCert := filepath.Join(dir, tag+"-root-cert.pem")
	if err := os.WriteFile(rootCert, caPEM, 0o644); err != nil {
		return nil, "", err
	}
	m := &weftMesh{sidecars: map[string]*proc{}, pids: map[string]int{}, cp: cp}
	for _, h := range []string{"b", "a"} {
		group := map[string]string{"a": "client", "b": "echo"}[h]
		tok, err := weft("", "workload", "token", "create", "--group", group, "--ttl", "1h")
		if err != nil {
			return nil, "", err
		}
		certDir := filepath.Join(dir, tag+"-certs-"+h)
		if err := os.Mkdir(certDir, 0o777); err != nil {
			return nil, "", err
		}
		if err := os.Chmod(certDir, 0o777); err != nil { // past the umask
			return nil, "", err
		}
		var mode []string
		if name == weftExplicit {
			mode = []string{"--explicit", "--workload-group", group}
			if h == "b" {
				mode = append(mode, "--inbound-ports", appPort+"="+explicitInbound)
			}
		} else {
			owner := "bench-" + h
			if out, err := in(ctx, commandTimeout, t.ns[h], proxyBin, "iptables", "-u", proxyUID, "--owner", owner); err != nil {
				return nil, "", fmt.Errorf("iptables on %s: %v %s", h, err, out)
			}
			ns := t.ns[h]
			cleanup := func() {
				_, _ = in(context.Background(), commandTimeout, ns, proxyBin, "iptables", "--cleanup", "--owner", owner)
			}
			atExit(cleanup)
			m.cleanups = append(m.cleanups, cleanup)
		}
		// Leading NAME=value words of -sidecar-args are the sidecar's
		// environment (GOGC=100), the rest its flags.
		// A leading "nice=N" runs the sidecar at that nice value (as a
		// systemd unit's Nice= would).
		args := []string{"setpriv", "--reuid=" + proxyUID, "--regid=" + proxyUID, "--clear-groups", "env"}
		flags := extra
		if len(flags) > 0 && strings.HasPrefix(flags[0], "nice=") {
			args = append([]string{"nice", "-n", strings.TrimPrefix(flags[0], "nice=")}, args...)
			flags = flags[1:]
		}
		for len(flags) > 0 && envWord.MatchString(flags[0]) {
			args, flags = append(args, flags[0]), flags[1:]
		}
		args = append(append(args, proxyBin, "sidecar", "--ip", t.addr[h], "--name", group+"-1", "--labels", "app="+group, "--service-account", group,
			"--discovery-address", t.addr["cp"]+":15012", "--ca-root-file", rootCert,
			"--bootstrap-token", strings.TrimSpace(tok), "--cert-dir", certDir), append(mode, flags...)...)
		p, err := bg(dir, tag+"-sidecar-"+h, t.ns[h], args...)
		if err != nil {
			return nil, "", err
		}
		m.sidecars[h] = p
	}
	for _, h := range []string{"a", "b"} {
		if err := eventually(ctx, "sidecar on "+h+" ready", readyTimeout, func() error {
			_, err := in(ctx, commandTimeout, t.ns[h], filepath.Join(dir, "fortio"), "curl", "-quiet", "http://127.0.0.1:15021/healthz/ready")
			return err
		}, m.sidecars[h], cp); err != nil {
			return nil, "", err
		}
		pid, err := procPID(m.sidecars[h].cmd.Process.Pid, "weft-proxy")
		if err != nil {
			return nil, "", err
		}
		m.pids[h] = pid
	}
	url := "http://" + vip + ":" + appPort + "/echo?size=1024"
	if name == weftExplicit {
		url = "http://127.0.0.1:" + appPort + "/echo?size=1024"
	}
	err = eventually(ctx, "request through both sidecars", readyTimeout, func() error {
		_, err := in(ctx, commandTimeout, t.ns["a"], "setpriv", "--reuid="+clientUID, "--regid="+clientUID, "--clear-groups",
			filepath.Join(dir, "fortio"), "curl", "-quiet", url)
		return err
	}, m.sidecars["a"], m.sidecars["b"])
	return m, url, err
}
