package onboard

import "text/template"

// tmplData is what the templates see.
type tmplData struct {
	Params
	// LabelList is Labels as k=v,k2=v2.
	LabelList string
	// Expires is the token's expiry (RFC 3339, UTC) or "".
	Expires string
	// DiscoveryHost is the host part of the discovery address; HostIsName
	// says it is a DNS name rather than an IP address.
	DiscoveryHost string
	HostIsName    bool
	// CertDir is /var/lib/<StateDirectory>.
	CertDir string
}

// envTmpl is cluster.env: systemd's EnvironmentFile= format (and a valid
// shell file), one WEFT_* variable a line, as weft-proxy reads them.
var envTmpl = template.Must(template.New(EnvFile).Parse(
	`# weft-proxy environment for WorkloadGroup {{.Namespace}}/{{.Group}}.
# Written by "weft workload entry configure"; install as {{.ConfigDir}}/cluster.env.
# weft-proxy.service reads it (EnvironmentFile=); weft-proxy reads the WEFT_* variables.
{{- if .Expires}}
# The bootstrap token in {{.ConfigDir}}/bootstrap-token expires {{.Expires}}; weft-proxy
# needs it only for its first certificate, then renews with that certificate.
{{- end}}

# This host's address in the mesh: the auto-registered WorkloadEntry's address
# and the proxy's node IP. Required: set it before starting weft-proxy.
WEFT_INSTANCE_IP={{.InstanceIP}}
# The proxy's name (proxy-status, metrics). weft-proxy.service defaults it to the
# host name; uncomment to choose another.
#WEFT_WORKLOAD_NAME=

WEFT_DISCOVERY_ADDRESS={{.DiscoveryAddress}}
WEFT_TRUST_DOMAIN={{.TrustDomain}}
WEFT_NAMESPACE={{.Namespace}}
WEFT_WORKLOAD_GROUP={{.Group}}
WEFT_SERVICE_ACCOUNT={{.ServiceAccount}}
WEFT_LABELS={{.LabelList}}
{{- if .Explicit}}

# Explicit mode: no traffic capture; the application calls its upstreams on
# 127.0.0.1:<service port> (docs/explicit-mode.md).
WEFT_INTERCEPTION_MODE=NONE
{{- if .InboundPorts}}
# Inbound: <app port>=<sidecar port>. weft-proxy accepts mesh mTLS on
# WEFT_INSTANCE_IP:<sidecar port> and forwards to 127.0.0.1:<app port>; peers are
# sent to the sidecar port.
WEFT_INBOUND_PORTS={{.InboundPorts}}
{{- end}}
{{- else}}

# Traffic capture (the iptables step of weft-proxy.service): comma-separated ports
# never redirected through the proxy. Inbound 22 (ssh), 15020, 15021 and 15090 are
# never captured anyway; the proxy's own traffic (user {{.User}}) is exempt.
WEFT_EXCLUDE_INBOUND_PORTS=
WEFT_EXCLUDE_OUTBOUND_PORTS=
# true: the host's DNS queries go to the proxy's DNS proxy (15053), which answers
# mesh names (VIPs) and forwards the rest to the host's resolvers; false: not.
WEFT_CAPTURE_DNS=true
{{- if eq .InboundCaptureMode "TPROXY"}}
# Inbound capture with TPROXY: the application sees its clients' addresses
# (weft-proxy.service installs the rules with --inbound-mode TPROXY and grants
# the proxy CAP_NET_ADMIN).
WEFT_INTERCEPTION_MODE=TPROXY
{{- end}}
{{- end}}
`))

// meshTmpl is mesh.yaml: the mesh-wide settings in weft-proxy's --bootstrap
// file format.
var meshTmpl = template.Must(template.New(MeshFile).Parse(
	`# Mesh-wide settings for weft-proxy, in its bootstrap file format
# ("weft-proxy sidecar --bootstrap mesh.yaml" when run by hand).
# weft-proxy.service does not read it: cluster.env carries the same values.
discoveryAddress: {{.DiscoveryAddress}}
trustDomain: {{.TrustDomain}}
`))

// hostsTmpl is the /etc/hosts fragment.
var hostsTmpl = template.Must(template.New(HostsFile).Parse(
	`{{- if .HostIsName -}}
# Append to /etc/hosts on the host unless DNS already resolves {{.DiscoveryHost}}.
# The name must be in the control plane's serving certificate (weft server --tls-san).
{{- if .DiscoveryIP}}
{{.DiscoveryIP}} {{.DiscoveryHost}}
{{- else}}
# Replace ADDRESS with the control plane's address as this host reaches it:
#ADDRESS {{.DiscoveryHost}}
{{- end}}
{{- else -}}
# The discovery address {{.DiscoveryHost}} is an IP address: nothing to add to /etc/hosts.
# It must be in the control plane's serving certificate (weft server --tls-san).
{{- end}}
`))

// unitTmpl is weft-proxy.service.
//
// weft-proxy sidecar reads the bootstrap token from the file named by
// WEFT_BOOTSTRAP_TOKEN_FILE, so the token never shows on a command line.
var unitTmpl = template.Must(template.New(UnitFile).Parse(
	`# weft-proxy for WorkloadGroup {{.Namespace}}/{{.Group}}{{if .Explicit}}, explicit mode{{end}}.
# Written by "weft workload entry configure"; install as
# /etc/systemd/system/weft-proxy.service (docs/onboarding-vm.md).
[Unit]
Description=weft-proxy sidecar for WorkloadGroup {{.Namespace}}/{{.Group}}
Documentation=https://github.com/weftmesh/weft/blob/main/docs/onboarding-vm.md
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={{.User}}
Group={{.User}}
# The proxy's name defaults to the host name; WEFT_WORKLOAD_NAME in cluster.env
# overrides it (EnvironmentFile= wins over Environment=).
Environment=WEFT_WORKLOAD_NAME=%H
EnvironmentFile={{.ConfigDir}}/cluster.env
# Keeps the workload key and certificate across restarts: renewal needs no token.
StateDirectory={{.StateDirectory}}
StateDirectoryMode=0700
{{- if not .Explicit}}
# As root ("+"): redirect this host's TCP traffic (and DNS, WEFT_CAPTURE_DNS)
# through the proxy, except the proxy's own (user {{.User}}). The rules are
# marked with the host name.
ExecStartPre=+{{.Binary}} iptables --proxy-uid {{.User}} --owner %H --exclude-inbound-ports=${WEFT_EXCLUDE_INBOUND_PORTS} --exclude-outbound-ports=${WEFT_EXCLUDE_OUTBOUND_PORTS} --capture-dns=${WEFT_CAPTURE_DNS}{{if eq .InboundCaptureMode "TPROXY"}} --inbound-mode TPROXY{{end}}
{{- end}}
{{- if eq .InboundCaptureMode "TPROXY"}}
# TPROXY: the proxy's transparent sockets (IP_TRANSPARENT, SO_MARK) need CAP_NET_ADMIN.
AmbientCapabilities=CAP_NET_ADMIN
{{- end}}
# The bootstrap token is read from its file (needed only for the first
# certificate; renewals use the certificate). Everything else comes from cluster.env.
Environment=WEFT_BOOTSTRAP_TOKEN_FILE={{.ConfigDir}}/bootstrap-token
ExecStart={{.Binary}} sidecar{{if .Explicit}} --explicit{{end}} --ca-root-file {{.ConfigDir}}/root-cert.pem --cert-dir {{.CertDir}}
{{- if not .Explicit}}
# As root, after the proxy stopped (or failed to start): remove exactly those rules.
ExecStopPost=+{{.Binary}} iptables --cleanup --owner %H
{{- end}}
Restart=always
RestartSec=5
# weft-proxy drains for 5s (--drain-duration) on SIGTERM.
TimeoutStopSec=30
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
`))
