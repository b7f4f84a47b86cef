package resource

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	telemetry "istio.io/api/telemetry/v1alpha1"
)

// semanticChecks are Istio's validation rules beyond the schema: what
// Istio's validating webhook rejects. Each kind lists only rules that make an
// object meaningless or ambiguous, so anything Istio accepts, weft accepts.
var semanticChecks = map[string]func(*FieldErrors, proto.Message){
	"VirtualService":  func(es *FieldErrors, m proto.Message) { checkVirtualService(es, m.(*networking.VirtualService)) },
	"DestinationRule": func(es *FieldErrors, m proto.Message) { checkDestinationRule(es, m.(*networking.DestinationRule)) },
	"Gateway":         func(es *FieldErrors, m proto.Message) { checkGateway(es, m.(*networking.Gateway)) },
	"ServiceEntry":    func(es *FieldErrors, m proto.Message) { checkServiceEntry(es, m.(*networking.ServiceEntry)) },
	"Sidecar":         func(es *FieldErrors, m proto.Message) { checkSidecar(es, m.(*networking.Sidecar)) },
	"AuthorizationPolicy": func(es *FieldErrors, m proto.Message) {
		checkAuthorizationPolicy(es, m.(*security.AuthorizationPolicy))
	},
	"PeerAuthentication": func(es *FieldErrors, m proto.Message) { checkPeerAuthentication(es, m.(*security.PeerAuthentication)) },
	"RequestAuthentication": func(es *FieldErrors, m proto.Message) {
		checkRequestAuthentication(es, m.(*security.RequestAuthentication))
	},
	"Telemetry": func(es *FieldErrors, m proto.Message) { checkTelemetry(es, m.(*telemetry.Telemetry)) },
}

func checkHost(es *FieldErrors, path, host string) {
	if host == "" {
		es.add(path, "Required value: host must not be empty")
		return
	}
	if strings.ContainsAny(host, " /:") && !strings.Contains(host, "/") {
		es.add(path, "Invalid value: %q: not a valid host name", host)
	}
}

func checkPercent(es *FieldErrors, path string, p *networking.Percent) {
	if p != nil && (p.GetValue() < 0 || p.GetValue() > 100) {
		es.add(path+".value", "Invalid value: %v: percentage must be in [0, 100]", p.GetValue())
	}
}

func checkStringMatch(es *FieldErrors, path string, m *networking.StringMatch) {
	if m == nil {
		return
	}
	if re := m.GetRegex(); re != "" {
		if _, err := regexp.Compile(re); err != nil {
			es.add(path+".regex", "Invalid value: %q: %v", re, err)
		}
	}
}

func checkDestination(es *FieldErrors, path string, d *networking.Destination) {
	if d == nil {
		es.add(path, "Required value: destination is required")
		return
	}
	checkHost(es, path+".host", d.GetHost())
	if p := d.GetPort(); p != nil && (p.GetNumber() == 0 || p.GetNumber() > 65535) {
		es.add(path+".port.number", "Invalid value: %d: port must be in [1, 65535]", p.GetNumber())
	}
}

func checkVirtualService(es *FieldErrors, vs *networking.VirtualService) {
	delegate := len(vs.GetHosts()) == 0
	if delegate && len(vs.GetGateways()) > 0 {
		es.add("spec.gateways", "Forbidden: a delegate VirtualService (one without hosts) must not set gateways")
	}
	for i, h := range vs.GetHosts() {
		checkHost(es, fmt.Sprintf("spec.hosts[%d]", i), h)
	}
	if len(vs.GetHttp()) == 0 && len(vs.GetTcp()) == 0 && len(vs.GetTls()) == 0 {
		es.add("spec", "Required value: http, tcp or tls must be provided in a VirtualService")
	}
	for i, r := range vs.GetHttp() {
		p := fmt.Sprintf("spec.http[%d]", i)
		if len(r.GetRoute()) == 0 && r.GetRedirect() == nil && r.GetDirectResponse() == nil && r.GetDelegate() == nil {
			es.add(p, "Required value: an HTTP route needs route, redirect, directResponse or delegate")
		}
		if r.GetRedirect() != nil && len(r.GetRoute()) > 0 {
			es.add(p+".redirect", "Forbidden: redirect and route cannot be set together")
		}
		for j, m := range r.GetMatch() {
			mp := fmt.Sprintf("%s.match[%d]", p, j)
			checkStringMatch(es, mp+".uri", m.GetUri())
			checkStringMatch(es, mp+".method", m.GetMethod())
			checkStringMatch(es, mp+".authority", m.GetAuthority())
			for k, h := range m.GetHeaders() {
				checkStringMatch(es, fmt.Sprintf("%s.headers[%q]", mp, k), h)
			}
			for k, q := range m.GetQueryParams() {
				checkStringMatch(es, fmt.Sprintf("%s.queryParams[%q]", mp, k), q)
			}
			if m.GetPort() > 65535 {
				es.add(mp+".port", "Invalid value: %d: port must be in [1, 65535]", m.GetPort())
			}
		}
		for j, d := range r.GetRoute() {
			dp := fmt.Sprintf("%s.route[%d]", p, j)
			checkDestination(es, dp+".destination", d.GetDestination())
			if d.GetWeight() < 0 {
				es.add(dp+".weight", "Invalid value: %d: weight must not be negative", d.GetWeight())
			}
		}
		if rt := r.GetRetries(); rt != nil && rt.GetAttempts() < 0 {
			es.add(p+".retries.attempts", "Invalid value: %d: attempts must not be negative", rt.GetAttempts())
		}
		if f := r.GetFault(); f != nil {
			if d := f.GetDelay(); d != nil {
				checkPercent(es, p+".fault.delay.percentage", d.GetPercentage())
				// The deprecated integer form is still accepted, as Istio does.
				//lint:ignore SA1019 validating the deprecated field is the point
				if pct := d.GetPercent(); pct < 0 || pct > 100 {
					es.add(p+".fault.delay.percent", "Invalid value: %d: percentage must be in [0, 100]", pct)
				}
				if d.GetFixedDelay() == nil && d.GetExponentialDelay() == nil {
					es.add(p+".fault.delay", "Required value: fixedDelay is required")
				}
			}
			if a := f.GetAbort(); a != nil {
				checkPercent(es, p+".fault.abort.percentage", a.GetPercentage())
				if hs := a.GetHttpStatus(); a.GetGrpcStatus() == "" && (hs < 200 || hs > 599) {
					es.add(p+".fault.abort.httpStatus", "Invalid value: %d: must be an HTTP status in [200, 599]", hs)
				}
			}
		}
		if r.GetMirror() != nil {
			checkDestination(es, p+".mirror", r.GetMirror())
		}
		checkPercent(es, p+".mirrorPercentage", r.GetMirrorPercentage())
	}
	for i, r := range vs.GetTcp() {
		for j, d := range r.GetRoute() {
			checkDestination(es, fmt.Sprintf("spec.tcp[%d].route[%d].destination", i, j), d.GetDestination())
		}
	}
	for i, r := range vs.GetTls() {
		if len(r.GetMatch()) == 0 {
			es.add(fmt.Sprintf("spec.tls[%d].match", i), "Required value: TLS routes need at least one match with sniHosts")
		}
		for j, d := range r.GetRoute() {
			checkDestination(es, fmt.Sprintf("spec.tls[%d].route[%d].destination", i, j), d.GetDestination())
		}
	}
}

func checkDestinationRule(es *FieldErrors, dr *networking.DestinationRule) {
	checkHost(es, "spec.host", dr.GetHost())
	seen := map[string]bool{}
	for i, s := range dr.GetSubsets() {
		p := fmt.Sprintf("spec.subsets[%d].name", i)
		switch {
		case s.GetName() == "":
			es.add(p, "Required value: subset name is required")
		case seen[s.GetName()]:
			es.add(p, "Duplicate value: %q", s.GetName())
		case len(s.GetName()) > 63 || !dns1123Label.MatchString(s.GetName()):
			es.add(p, "Invalid value: %q: subset names must be lowercase RFC 1123 labels", s.GetName())
		}
		seen[s.GetName()] = true
	}
	checkTrafficPolicyLocality(es, "spec.trafficPolicy", dr.GetTrafficPolicy())
	for i, s := range dr.GetSubsets() {
		checkTrafficPolicyLocality(es, fmt.Sprintf("spec.subsets[%d].trafficPolicy", i), s.GetTrafficPolicy())
	}
}

// checkTrafficPolicyLocality checks the localityLbSetting of a traffic
// policy and of its port-level settings.
func checkTrafficPolicyLocality(es *FieldErrors, path string, tp *networking.TrafficPolicy) {
	check := func(path string, lb *networking.LoadBalancerSettings) {
		*es = append(*es, CheckLocalityLB(path+".localityLbSetting", lb.GetLocalityLbSetting())...)
		if lb.GetLocalityLbSetting() != nil && lb.GetZoneAwareLbSetting() != nil {
			es.add(path, "Invalid value: localityLbSetting and zoneAwareLbSetting cannot both be set")
		}
	}
	check(path+".loadBalancer", tp.GetLoadBalancer())
	for i, pl := range tp.GetPortLevelSettings() {
		check(fmt.Sprintf("%s.portLevelSettings[%d].loadBalancer", path, i), pl.GetLoadBalancer())
	}
}

// CheckLocalityLB applies Istio's rules to a localityLbSetting (in a
// DestinationRule or the mesh config) at path: distribute or failover,
// not both; each distribute rule's weights in [1, 100] adding up to 100;
// localities "region/zone/subzone" with at most one "*", at the end;
// failover between two different regions, named without "/" or "*", and
// not beside a locality label in failoverPriority.
func CheckLocalityLB(path string, s *networking.LocalityLoadBalancerSetting) FieldErrors {
	var es FieldErrors
	if s == nil {
		return nil
	}
	if len(s.GetDistribute()) > 0 && len(s.GetFailover()) > 0 {
		es.add(path, "Invalid value: distribute and failover cannot both be set")
	}
	checkLoc := func(p, l string) {
		if n := strings.Count(l, "*"); n > 1 || (n == 1 && !strings.HasSuffix(l, "*")) {
			es.add(p, "Invalid value: %q: a locality takes at most one \"*\", at its end", l)
		}
		if l == "" || strings.Count(l, "/") > 2 {
			es.add(p, "Invalid value: %q: a locality is region[/zone[/subzone]]", l)
		}
	}
	for i, d := range s.GetDistribute() {
		p := fmt.Sprintf("%s.distribute[%d]", path, i)
		checkLoc(p+".from", d.GetFrom())
		var total uint32
		for _, to := range slices.Sorted(maps.Keys(d.GetTo())) {
			w := d.GetTo()[to]
			checkLoc(p+".to", to)
			if w < 1 || w > 100 {
				es.add(p+".to", "Invalid value: %q: %d: a weight is in [1, 100]", to, w)
			}
			total += w
		}
		if total != 100 {
			es.add(p+".to", "Invalid value: the weights add up to %d, not 100", total)
		}
	}
	if len(s.GetFailover()) > 0 {
		for i, e := range s.GetFailoverPriority() {
			switch name, _, _ := strings.Cut(e, "="); name {
			case "topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone":
				es.add(fmt.Sprintf("%s.failoverPriority[%d]", path, i),
					"Invalid value: %q: failover and a locality label in failoverPriority cannot both be set", e)
			}
		}
	}
	for i, f := range s.GetFailover() {
		p := fmt.Sprintf("%s.failover[%d]", path, i)
		switch {
		case f.GetFrom() == "" || f.GetTo() == "":
			es.add(p, "Required value: from and to name regions")
		case f.GetFrom() == f.GetTo():
			es.add(p, "Invalid value: from and to are both %q: fail over to a different region", f.GetFrom())
		case strings.ContainsAny(f.GetFrom()+f.GetTo(), "/*"):
			es.add(p, "Invalid value: %q to %q: failover names regions only, without \"/\" or \"*\"", f.GetFrom(), f.GetTo())
		}
	}
	return es
}

func checkPortNumber(es *FieldErrors, path string, n uint32) {
	if n == 0 || n > 65535 {
		es.add(path, "Invalid value: %d: port number must be in [1, 65535]", n)
	}
}

func checkGateway(es *FieldErrors, gw *networking.Gateway) {
	if len(gw.GetServers()) == 0 {
		es.add("spec.servers", "Required value: a Gateway needs at least one server")
	}
	for i, s := range gw.GetServers() {
		p := fmt.Sprintf("spec.servers[%d]", i)
		if s.GetPort() == nil {
			es.add(p+".port", "Required value: server port is required")
		} else {
			checkPortNumber(es, p+".port.number", s.GetPort().GetNumber())
		}
		if len(s.GetHosts()) == 0 {
			es.add(p+".hosts", "Required value: a server needs at least one host")
		}
		checkServerTLS(es, p, s)
	}
}

// checkServerTLS refuses what Istio's webhook refuses in a server's TLS
// settings: TLS protocols without them, and terminating modes without the
// certificates they need.
func checkServerTLS(es *FieldErrors, p string, s *networking.Server) {
	t := s.GetTls()
	protocol := strings.ToUpper(s.GetPort().GetProtocol())
	if t == nil {
		if protocol == "HTTPS" || protocol == "TLS" {
			es.add(p+".tls", "Required value: protocol %s needs tls settings (a mode, and its certificate)", protocol)
		}
		return
	}
	switch t.GetMode() {
	case networking.ServerTLSSettings_ISTIO_MUTUAL:
		if t.GetCredentialName() != "" || t.GetServerCertificate() != "" || t.GetPrivateKey() != "" || t.GetCaCertificates() != "" {
			es.add(p+".tls", "Invalid value: ISTIO_MUTUAL uses the mesh certificate; remove credentialName, serverCertificate, privateKey and caCertificates")
		}
	case networking.ServerTLSSettings_SIMPLE, networking.ServerTLSSettings_MUTUAL, networking.ServerTLSSettings_OPTIONAL_MUTUAL:
		if t.GetCredentialName() != "" || protocol != "HTTPS" && protocol != "TLS" {
			return
		}
		if t.GetServerCertificate() == "" {
			es.add(p+".tls.serverCertificate", "Required value: %s needs a server certificate (or a credentialName)", t.GetMode())
		}
		if t.GetPrivateKey() == "" {
			es.add(p+".tls.privateKey", "Required value: %s needs a private key (or a credentialName)", t.GetMode())
		}
		if t.GetMode() != networking.ServerTLSSettings_SIMPLE && t.GetCaCertificates() == "" {
			es.add(p+".tls.caCertificates", "Required value: %s needs a client CA bundle (or a credentialName)", t.GetMode())
		}
	}
}

func checkServiceEntry(es *FieldErrors, se *networking.ServiceEntry) {
	if len(se.GetHosts()) == 0 {
		es.add("spec.hosts", "Required value: a ServiceEntry needs at least one host")
	}
	for i, h := range se.GetHosts() {
		if h == "*" {
			es.add(fmt.Sprintf("spec.hosts[%d]", i), "Invalid value: \"*\": a ServiceEntry host cannot be the bare wildcard")
		}
	}
	if len(se.GetEndpoints()) > 0 && se.GetWorkloadSelector() != nil {
		es.add("spec.workloadSelector", "Forbidden: only one of endpoints and workloadSelector may be set")
	}
	if se.GetResolution() == networking.ServiceEntry_NONE && len(se.GetEndpoints()) > 0 {
		es.add("spec.endpoints", "Forbidden: endpoints require resolution STATIC or DNS, not NONE")
	}
	numbers := map[uint32]bool{}
	names := map[string]bool{}
	for i, p := range se.GetPorts() {
		pp := fmt.Sprintf("spec.ports[%d]", i)
		checkPortNumber(es, pp+".number", p.GetNumber())
		if numbers[p.GetNumber()] {
			es.add(pp+".number", "Duplicate value: %d", p.GetNumber())
		}
		numbers[p.GetNumber()] = true
		if p.GetName() != "" && names[p.GetName()] {
			es.add(pp+".name", "Duplicate value: %q", p.GetName())
		}
		names[p.GetName()] = true
	}
	for i, ep := range se.GetEndpoints() {
		if se.GetResolution() == networking.ServiceEntry_STATIC && ep.GetAddress() == "" {
			es.add(fmt.Sprintf("spec.endpoints[%d].address", i), "Required value: STATIC resolution needs an address")
		}
		for name := range ep.GetPorts() {
			if len(se.GetPorts()) > 0 && !names[name] {
				es.add(fmt.Sprintf("spec.endpoints[%d].ports[%q]", i, name), "Invalid value: no port of the ServiceEntry is named %q", name)
			}
		}
	}
}

func checkSidecar(es *FieldErrors, sc *networking.Sidecar) {
	for i, e := range sc.GetEgress() {
		if len(e.GetHosts()) == 0 {
			es.add(fmt.Sprintf("spec.egress[%d].hosts", i), "Required value: an egress listener needs at least one host")
		}
		for j, h := range e.GetHosts() {
			if !strings.Contains(h, "/") {
				es.add(fmt.Sprintf("spec.egress[%d].hosts[%d]", i, j), "Invalid value: %q: egress hosts take the form namespace/dnsName (e.g. \"./*\" or \"istio-system/*\")", h)
			}
		}
	}
}

func checkAuthorizationPolicy(es *FieldErrors, ap *security.AuthorizationPolicy) {
	custom := ap.GetAction() == security.AuthorizationPolicy_CUSTOM
	if custom && ap.GetProvider() == nil {
		es.add("spec.provider", "Required value: action CUSTOM needs a provider")
	}
	if !custom && ap.GetProvider() != nil {
		es.add("spec.provider", "Forbidden: provider is only allowed with action CUSTOM")
	}
	if ap.GetSelector() != nil && (ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0) {
		es.add("spec.selector", "Forbidden: only one of selector and targetRef(s) may be set")
	}
	for i, r := range ap.GetRules() {
		if r == nil {
			continue
		}
		for j, f := range r.GetFrom() {
			if f.GetSource() == nil {
				es.add(fmt.Sprintf("spec.rules[%d].from[%d].source", i, j), "Required value: from must have a source")
			}
		}
		for j, t := range r.GetTo() {
			op := t.GetOperation()
			p := fmt.Sprintf("spec.rules[%d].to[%d].operation", i, j)
			if op == nil {
				es.add(p, "Required value: to must have an operation")
				continue
			}
			for k, path := range append(append([]string{}, op.GetPaths()...), op.GetNotPaths()...) {
				if err := PathTemplateError(path); err != nil {
					es.add(fmt.Sprintf("%s.paths[%d]", p, k), "Invalid value: %q: %v", path, err)
				}
			}
			for k, port := range append(append([]string{}, op.GetPorts()...), op.GetNotPorts()...) {
				if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
					es.add(fmt.Sprintf("%s.ports[%d]", p, k), "Invalid value: %q: ports must be numbers in [0, 65535]", port)
				}
			}
		}
		for j, c := range r.GetWhen() {
			if c.GetKey() == "" {
				es.add(fmt.Sprintf("spec.rules[%d].when[%d].key", i, j), "Required value: condition key is required")
			}
			if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
				es.add(fmt.Sprintf("spec.rules[%d].when[%d]", i, j), "Required value: a condition needs values or notValues")
			}
		}
	}
}

func checkPeerAuthentication(es *FieldErrors, pa *security.PeerAuthentication) {
	if len(pa.GetPortLevelMtls()) > 0 && pa.GetSelector() == nil {
		es.add("spec.portLevelMtls", "Forbidden: portLevelMtls requires a workload selector")
	}
	for port := range pa.GetPortLevelMtls() {
		if port == 0 || port > 65535 {
			es.add("spec.portLevelMtls", "Invalid value: %d: port must be in [1, 65535]", port)
		}
	}
}

func checkRequestAuthentication(es *FieldErrors, ra *security.RequestAuthentication) {
	for i, r := range ra.GetJwtRules() {
		p := fmt.Sprintf("spec.jwtRules[%d]", i)
		if r.GetIssuer() == "" {
			es.add(p+".issuer", "Required value: issuer is required")
		}
		if r.GetJwks() != "" && r.GetJwksUri() != "" {
			es.add(p+".jwks", "Forbidden: only one of jwks and jwksUri may be set")
		}
		if u := r.GetJwksUri(); u != "" {
			if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
				es.add(p+".jwksUri", "Invalid value: %q: must be an absolute http or https URI", u)
			}
		}
		for j, h := range r.GetFromHeaders() {
			if h.GetName() == "" {
				es.add(fmt.Sprintf("%s.fromHeaders[%d].name", p, j), "Required value: header name is required")
			}
		}
		for j, c := range r.GetOutputClaimToHeaders() {
			if c.GetHeader() == "" || c.GetClaim() == "" {
				es.add(fmt.Sprintf("%s.outputClaimToHeaders[%d]", p, j), "Required value: header and claim are required")
			}
		}
	}
}

// Normalize rewrites fields that Istio still accepts but its current API no
// longer has into their current form, and returns a warning for each. It
// changes obj in place; callers pass their own copy.
func (k *Kind) Normalize(obj map[string]any) []string {
	if k.Kind != "VirtualService" {
		return nil
	}
	var warnings []string
	spec, _ := obj["spec"].(map[string]any)
	routes, _ := spec["http"].([]any)
	for i, r := range routes {
		rm, _ := r.(map[string]any)
		fault, _ := rm["fault"].(map[string]any)
		abort, _ := fault["abort"].(map[string]any)
		pct, ok := abort["percent"]
		if !ok {
			continue
		}
		delete(abort, "percent")
		path := fmt.Sprintf("spec.http[%d].fault.abort.percent", i)
		if _, has := abort["percentage"]; has {
			warnings = append(warnings, path+" is deprecated and was ignored because percentage is set")
			continue
		}
		abort["percentage"] = map[string]any{"value": pct}
		warnings = append(warnings, path+" is deprecated; converted to percentage.value")
	}
	return warnings
}

// checkTelemetry: Istio's rules for tracing — a sampling percentage in
// [0, 100], named providers, custom tags with a value kind.
func checkTelemetry(es *FieldErrors, tm *telemetry.Telemetry) {
	for i, tr := range tm.GetTracing() {
		path := fmt.Sprintf("spec.tracing[%d]", i)
		if s := tr.GetRandomSamplingPercentage(); s != nil && (s.GetValue() < 0 || s.GetValue() > 100) {
			es.add(path+".randomSamplingPercentage", "Invalid value: %v: must be in [0, 100]", s.GetValue())
		}
		for j, p := range tr.GetProviders() {
			if p.GetName() == "" {
				es.add(fmt.Sprintf("%s.providers[%d].name", path, j), "Required value")
			}
		}
		for k, ct := range tr.GetCustomTags() {
			if ct.GetType() == nil {
				es.add(fmt.Sprintf("%s.customTags[%s]", path, k), "Required value: literal, environment or header")
			}
		}
	}
	for i, al := range tm.GetAccessLogging() {
		for j, p := range al.GetProviders() {
			if p.GetName() == "" {
				es.add(fmt.Sprintf("spec.accessLogging[%d].providers[%d].name", i, j), "Required value")
			}
		}
	}
}

// ValidTrustDomain reports whether td is a SPIFFE trust domain name:
// lowercase letters, digits, '.', '-' and '_', at most 255 bytes.
func ValidTrustDomain(td string) bool {
	if len(td) == 0 || len(td) > 255 {
		return false
	}
	for _, c := range []byte(td) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
