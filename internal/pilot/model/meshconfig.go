package model

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/resource"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	meshv1 "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

// meshConfigFields are the MeshConfig fields weft uses; others are
// reported as warnings.
var meshConfigFields = map[string]bool{
	"rootNamespace": true, "trustDomain": true, "trustDomainAliases": true, "outboundTrafficPolicy": true,
	"connectTimeout": true, "enableAutoMtls": true, "pathNormalization": true,
	"accessLogFile": true, "accessLogEncoding": true, "accessLogFormat": true, "extensionProviders": true,
	"defaultProviders": true, "enableTracing": true, "defaultConfig": true, "localityLbSetting": true,
}

// defaultConfigFields are the defaultConfig (ProxyConfig) fields weft
// uses.
var defaultConfigFields = map[string]bool{"tracing": true, "proxyHeaders": true}

// proxyHeadersFields are the defaultConfig.proxyHeaders fields weft uses
// (metadataExchangeHeaders has nothing to do: weft's sidecars learn their
// peers from mTLS, not from headers).
var proxyHeadersFields = map[string]bool{"server": true, "requestId": true, "attemptCount": true,
	"envoyDebugHeaders": true, "forwardedClientCert": true, "setCurrentClientCertDetails": true}

// knownFields decodes the object raw at path and keeps the fields known
// lists, with a warning for each other one.
func knownFields(raw json.RawMessage, path string, known map[string]bool, warnings *[]string) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("mesh config: %s: %w", path, err)
	}
	for k := range fields {
		if !known[k] {
			*warnings = append(*warnings, fmt.Sprintf("mesh config: %s.%s is not used by weft; ignored", path, k))
			delete(fields, k)
		}
	}
	return fields, nil
}

// ParseMeshConfig applies an Istio MeshConfig document (YAML or JSON, as
// in the istio ConfigMap's "mesh" key) over base. It returns the result
// and a warning for every top-level field weft does not use; an unknown
// or invalid field of a used one is an error.
func ParseMeshConfig(data []byte, base Mesh) (Mesh, []string, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return base, nil, fmt.Errorf("mesh config: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return base, nil, fmt.Errorf("mesh config: %w", err)
	}
	var warnings []string
	used := map[string]json.RawMessage{}
	for k, v := range top {
		if meshConfigFields[k] {
			used[k] = v
			continue
		}
		warnings = append(warnings, fmt.Sprintf("mesh config: field %q is not used by weft; ignored", k))
	}
	if dc, ok := used["defaultConfig"]; ok {
		fields, err := knownFields(dc, "defaultConfig", defaultConfigFields, &warnings)
		if err != nil {
			return base, warnings, err
		}
		if ph, ok := fields["proxyHeaders"]; ok {
			sub, err := knownFields(ph, "defaultConfig.proxyHeaders", proxyHeadersFields, &warnings)
			if err != nil {
				return base, warnings, err
			}
			fields["proxyHeaders"], _ = json.Marshal(sub)
		}
		used["defaultConfig"], _ = json.Marshal(fields)
	}
	sort.Strings(warnings)
	js, _ = json.Marshal(used)
	mc := &meshv1.MeshConfig{}
	if err := protojson.Unmarshal(js, mc); err != nil {
		// Name the field: protojson's own message points into the JSON
		// it was given, not into the operator's YAML.
		for _, k := range slices.Sorted(maps.Keys(used)) {
			one, _ := json.Marshal(map[string]json.RawMessage{k: used[k]})
			if ferr := protojson.Unmarshal(one, &meshv1.MeshConfig{}); ferr != nil {
				return base, warnings, fmt.Errorf("mesh config: %s: %w", k, ferr)
			}
		}
		return base, warnings, fmt.Errorf("mesh config: %w", err)
	}
	m := base
	if _, ok := used["rootNamespace"]; ok {
		m.RootNamespace = mc.GetRootNamespace()
	}
	if _, ok := used["trustDomain"]; ok {
		m.TrustDomain = mc.GetTrustDomain()
		if !resource.ValidTrustDomain(m.TrustDomain) {
			return base, warnings, fmt.Errorf("mesh config: trustDomain %q: use lowercase letters, digits, '.', '-' and '_'", m.TrustDomain)
		}
	}
	if _, ok := used["trustDomainAliases"]; ok {
		m.TrustDomainAliases = nil
		for _, a := range mc.GetTrustDomainAliases() {
			if !resource.ValidTrustDomain(a) {
				return base, warnings, fmt.Errorf("mesh config: trustDomainAliases: %q: use lowercase letters, digits, '.', '-' and '_'", a)
			}
			m.TrustDomainAliases = append(m.TrustDomainAliases, a)
		}
	}
	m.TrustDomainAliases = slices.DeleteFunc(slices.Compact(slices.Sorted(slices.Values(m.TrustDomainAliases))),
		func(a string) bool { return a == m.TrustDomain })
	if _, ok := used["outboundTrafficPolicy"]; ok {
		m.OutboundTrafficPolicyAllowAny = mc.GetOutboundTrafficPolicy().GetMode() == meshv1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY
	}
	if _, ok := used["connectTimeout"]; ok {
		m.ConnectTimeout = mc.GetConnectTimeout().AsDuration()
	}
	if _, ok := used["enableAutoMtls"]; ok {
		m.EnableAutoMTLS = mc.GetEnableAutoMtls().GetValue()
	}
	if _, ok := used["pathNormalization"]; ok {
		switch n := mc.GetPathNormalization().GetNormalization(); n {
		case meshv1.MeshConfig_ProxyPathNormalization_DEFAULT, meshv1.MeshConfig_ProxyPathNormalization_BASE:
			m.PathNormalization = PathNormalizationBase
		case meshv1.MeshConfig_ProxyPathNormalization_NONE:
			m.PathNormalization = PathNormalizationNone
		case meshv1.MeshConfig_ProxyPathNormalization_MERGE_SLASHES:
			m.PathNormalization = PathNormalizationMergeSlashes
		case meshv1.MeshConfig_ProxyPathNormalization_DECODE_AND_MERGE_SLASHES:
			m.PathNormalization = PathNormalizationDecodeAndMergeSlashes
		default:
			return base, warnings, fmt.Errorf("mesh config: pathNormalization %s is not supported", n)
		}
	}
	if _, ok := used["enableTracing"]; ok {
		m.Tracing.Enabled = mc.GetEnableTracing()
	}
	if _, ok := used["localityLbSetting"]; ok {
		if errs := resource.CheckLocalityLB("localityLbSetting", mc.GetLocalityLbSetting()); len(errs) > 0 {
			return base, warnings, fmt.Errorf("mesh config: %w", errs)
		}
		m.LocalityLB = mc.GetLocalityLbSetting()
	}
	if t := mc.GetDefaultConfig().GetTracing(); t != nil {
		if s := t.GetSampling(); s != 0 {
			if s < 0 || s > 100 {
				return base, warnings, fmt.Errorf("mesh config: defaultConfig.tracing.sampling %v is not a percentage", s)
			}
			m.Tracing.Sampling = s
		}
		switch t.GetTracer().(type) {
		case nil:
		case *meshv1.Tracing_Zipkin_:
			if a := t.GetZipkin().GetAddress(); a != "" {
				if _, _, ok := (Tracing{ZipkinAddress: a}).ZipkinHostPort(); !ok {
					return base, warnings, fmt.Errorf("mesh config: defaultConfig.tracing.zipkin.address %q: want host:port", a)
				}
				m.Tracing.ZipkinAddress = a
			}
		default:
			return base, warnings, fmt.Errorf("mesh config: defaultConfig.tracing: only zipkin is supported (tracers report as Zipkin v2 JSON)")
		}
	}
	if ph := mc.GetDefaultConfig().GetProxyHeaders(); ph != nil {
		m.ProxyHeaders = parseProxyHeaders(ph)
	}
	tr, w, err := parseTracingProviders(mc, m.Tracing)
	warnings = append(warnings, w...)
	if err != nil {
		return base, warnings, err
	}
	m.Tracing = tr
	al, w, err := parseAccessLogging(mc)
	warnings = append(warnings, w...)
	if err != nil {
		return base, warnings, err
	}
	if al != nil {
		m.AccessLog = al
	}
	return m, warnings, nil
}

// parseAccessLogging reads the access log fields (nil when none is set).
func parseAccessLogging(mc *meshv1.MeshConfig) (*AccessLogging, []string, error) {
	al := &AccessLogging{File: mc.GetAccessLogFile(), Format: mc.GetAccessLogFormat(),
		JSON: mc.GetAccessLogEncoding() == meshv1.MeshConfig_JSON, Providers: map[string]FileLogProvider{}, OTelProviders: map[string]OTelLogProvider{},
		DefaultProviders: mc.GetDefaultProviders().GetAccessLogging()}
	var warnings []string
	if al.JSON && al.Format != "" {
		var obj map[string]any
		if err := json.Unmarshal([]byte(al.Format), &obj); err != nil {
			return nil, warnings, fmt.Errorf("mesh config: accessLogFormat must be a JSON object with accessLogEncoding JSON: %w", err)
		}
	}
	dp := mc.GetDefaultProviders()
	for _, p := range dp.GetMetrics() {
		if !strings.EqualFold(p, "prometheus") {
			warnings = append(warnings, fmt.Sprintf("mesh config: defaultProviders.metrics %q: weft's metrics provider is prometheus (Istio's metrics on :15020/stats/prometheus); ignored", p))
		}
	}
	for _, p := range mc.GetExtensionProviders() {
		if o := p.GetEnvoyOtelAls(); o != nil {
			if o.GetService() == "" || o.GetPort() == 0 {
				return nil, warnings, fmt.Errorf("mesh config: extensionProviders %q: envoyOtelAls service and port are required", p.GetName())
			}
			labels, err := logLabels(p.GetName(), o.GetLogFormat().GetLabels())
			if err != nil {
				return nil, warnings, err
			}
			al.OTelProviders[p.GetName()] = OTelLogProvider{Service: o.GetService(), Port: o.GetPort(), LogName: o.GetLogName(),
				Text: o.GetLogFormat().GetText(), Labels: labels}
			continue
		}
		f := p.GetEnvoyFileAccessLog()
		if f == nil {
			if p.GetZipkin() == nil && p.GetOpentelemetry() == nil && p.GetPrometheus() == nil {
				warnings = append(warnings, fmt.Sprintf("mesh config: extensionProviders %q: only envoyFileAccessLog, envoyOtelAls, zipkin, opentelemetry and prometheus providers are used by weft; ignored", p.GetName()))
			}
			continue
		}
		labels, err := logLabels(p.GetName(), f.GetLogFormat().GetLabels())
		if err != nil {
			return nil, warnings, err
		}
		fp := FileLogProvider{Path: f.GetPath(), Text: f.GetLogFormat().GetText(), Labels: labels}
		if fp.Path == "" {
			fp.Path = "/dev/stdout"
		}
		al.Providers[p.GetName()] = fp
	}
	if al.File == "" && len(al.Providers) == 0 && len(al.OTelProviders) == 0 && len(al.DefaultProviders) == 0 && al.Format == "" && !al.JSON {
		return nil, warnings, nil
	}
	return al, warnings, nil
}

// logLabels reads a provider's logFormat.labels (nil when unset): each
// a string.
func logLabels(provider string, labels *structpb.Struct) (map[string]string, error) {
	if labels == nil {
		return nil, nil
	}
	out := map[string]string{}
	for k, v := range labels.GetFields() {
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, fmt.Errorf("mesh config: extensionProviders %q: logFormat.labels %q must be a string", provider, k)
		}
		out[k] = s.StringValue
	}
	return out, nil
}

// parseTracingProviders adds the zipkin and opentelemetry
// extensionProviders and defaultProviders.tracing to t.
func parseTracingProviders(mc *meshv1.MeshConfig, t Tracing) (Tracing, []string, error) {
	var warnings []string
	t.DefaultProviders = mc.GetDefaultProviders().GetTracing()
	t.Providers = map[string]TracingProvider{}
	for _, p := range mc.GetExtensionProviders() {
		if o := p.GetOpentelemetry(); o != nil {
			tp, w, err := parseOTelProvider(p.GetName(), o)
			warnings = append(warnings, w...)
			if err != nil {
				return t, warnings, err
			}
			t.Providers[p.GetName()] = tp
			continue
		}
		z := p.GetZipkin()
		if z == nil {
			continue
		}
		if z.GetService() == "" || z.GetPort() == 0 {
			return t, warnings, fmt.Errorf("mesh config: extensionProviders %q: zipkin service and port are required", p.GetName())
		}
		if z.GetPath() != "" && !strings.HasPrefix(z.GetPath(), "/") {
			return t, warnings, fmt.Errorf("mesh config: extensionProviders %q: zipkin path %q must start with /", p.GetName(), z.GetPath())
		}
		tp := TracingProvider{Service: z.GetService(), Port: z.GetPort(), MaxTagLength: z.GetMaxTagLength(),
			Path: z.GetPath(), TraceID64: z.GetEnable_64BitTraceId(),
			W3C: z.GetTraceContextOption() == meshv1.MeshConfig_ExtensionProvider_ZipkinTracingProvider_USE_B3_WITH_W3C_PROPAGATION}
		var err error
		if tp.Timeout, tp.Headers, err = exportSettings(p.GetName(), "zipkin", z.GetTimeout(), z.GetHeaders()); err != nil {
			return t, warnings, err
		}
		t.Providers[p.GetName()] = tp
	}
	return t, warnings, nil
}

// defaultOTLPPath is where an OpenTelemetry collector takes OTLP/HTTP
// traces, for an http provider without a path.
const defaultOTLPPath = "/v1/traces"

// exportSettings reads a tracing provider's export timeout (0 when
// unset) and headers (envName values read now, as istiod does).
func exportSettings(name, kind string, timeout *durationpb.Duration, headers []*meshv1.MeshConfig_ExtensionProvider_HttpHeader) (time.Duration, []Header, error) {
	var d time.Duration
	if timeout != nil {
		if err := timeout.CheckValid(); err != nil || timeout.AsDuration() <= 0 {
			return 0, nil, fmt.Errorf("mesh config: extensionProviders %q: %s timeout must be positive", name, kind)
		}
		d = timeout.AsDuration()
	}
	var out []Header
	for _, h := range headers {
		if !httpguts.ValidHeaderFieldName(h.GetName()) {
			return 0, nil, fmt.Errorf("mesh config: extensionProviders %q: %s header name %q is not valid", name, kind, h.GetName())
		}
		v := h.GetValue()
		if env := h.GetEnvName(); env != "" {
			v = os.Getenv(env)
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			return 0, nil, fmt.Errorf("mesh config: extensionProviders %q: %s header %q has a value that is not valid", name, kind, h.GetName())
		}
		out = append(out, Header{Name: h.GetName(), Value: v})
	}
	return d, out, nil
}

// parseOTelProvider reads an opentelemetry extensionProvider.
func parseOTelProvider(name string, o *meshv1.MeshConfig_ExtensionProvider_OpenTelemetryTracingProvider) (TracingProvider, []string, error) {
	var warnings []string
	if o.GetService() == "" || o.GetPort() == 0 {
		return TracingProvider{}, nil, fmt.Errorf("mesh config: extensionProviders %q: opentelemetry service and port are required", name)
	}
	tp := TracingProvider{OTel: true, Service: o.GetService(), Port: o.GetPort(), MaxTagLength: o.GetMaxTagLength()}
	headers := o.GetGrpc().GetInitialMetadata()
	timeout := o.GetGrpc().GetTimeout()
	if h := o.GetHttp(); h != nil {
		tp.OTLPHTTP, headers, timeout = true, h.GetHeaders(), h.GetTimeout()
		tp.Path = h.GetPath()
		if tp.Path == "" {
			tp.Path = defaultOTLPPath
		} else if !strings.HasPrefix(tp.Path, "/") { // Istio joins it to the host
			tp.Path = "/" + tp.Path
		}
		if strings.ContainsAny(tp.Path, "?# ") {
			return TracingProvider{}, nil, fmt.Errorf("mesh config: extensionProviders %q: opentelemetry http path %q must be a plain path", name, h.GetPath())
		}
	}
	var err error
	if tp.Timeout, tp.Headers, err = exportSettings(name, "opentelemetry", timeout, headers); err != nil {
		return TracingProvider{}, nil, err
	}
	if o.GetResourceDetectors() != nil || o.GetDynatraceSampler() != nil {
		warnings = append(warnings, fmt.Sprintf("mesh config: extensionProviders %q: opentelemetry resourceDetectors and dynatraceSampler are not supported; ignored", name))
	}
	return tp, warnings, nil
}

// parseProxyHeaders reads defaultConfig.proxyHeaders.
func parseProxyHeaders(ph *meshv1.ProxyConfig_ProxyHeaders) ProxyHeaders {
	out := ProxyHeaders{
		ServerName:                ph.GetServer().GetValue(),
		ServerDisabled:            ph.GetServer().GetDisabled().GetValue(),
		RequestIDDisabled:         ph.GetRequestId().GetDisabled().GetValue(),
		AttemptCountDisabled:      ph.GetAttemptCount().GetDisabled().GetValue(),
		EnvoyDebugHeadersDisabled: ph.GetEnvoyDebugHeaders().GetDisabled().GetValue(),
	}
	if f := ph.GetForwardedClientCert(); f != meshv1.ForwardClientCertDetails_UNDEFINED {
		out.ForwardedClientCert = f.String()
	}
	if d := ph.GetSetCurrentClientCertDetails(); d != nil {
		out.ClientCertDetails = &ClientCertDetails{Subject: d.GetSubject().GetValue(), Cert: d.GetCert().GetValue(), Chain: d.GetChain().GetValue(),
			DNS: d.GetDns().GetValue(), URI: d.GetUri().GetValue()}
	}
	return out
}
