package route

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Fraction is a FractionalPercent: Numerator out of Denominator (100,
// 10,000 or 1,000,000).
type Fraction struct {
	Numerator, Denominator uint32
}

// All is the fraction that always hits.
var All = Fraction{Numerator: 100, Denominator: 100}

// Hit decides with rnd (uniform random) whether the fraction applies, as
// Envoy does: rnd % Denominator < Numerator.
func (f Fraction) Hit(rnd uint32) bool {
	if f.Numerator == 0 || f.Denominator == 0 {
		return false
	}
	if f.Numerator >= f.Denominator {
		return true
	}
	return rnd%f.Denominator < f.Numerator
}

// compileFraction converts a FractionalPercent (nil: 0%); a numerator over
// the denominator is clamped, as Envoy does.
func compileFraction(fp *typev3.FractionalPercent) (Fraction, error) {
	var den uint32
	switch fp.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		den = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10_000
	case typev3.FractionalPercent_MILLION:
		den = 1_000_000
	default:
		return Fraction{}, fmt.Errorf("denominator %v: %w", fp.GetDenominator(), ErrUnsupported)
	}
	return Fraction{Numerator: min(fp.GetNumerator(), den), Denominator: den}, nil
}

// runtimeFraction converts a RuntimeFractionalPercent (runtime keys are
// ignored: weft has no runtime); def applies when rf is nil.
func runtimeFraction(rf *corev3.RuntimeFractionalPercent, def Fraction) (Fraction, error) {
	if rf == nil {
		return def, nil
	}
	if err := checkFields(rf, "runtime fraction"); err != nil {
		return Fraction{}, err
	}
	return compileFraction(rf.GetDefaultValue())
}

// RetryOn is a set of retry conditions (Envoy's x-envoy-retry-on and
// x-envoy-retry-grpc-on names).
type RetryOn uint32

// Retry conditions.
const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryReset
	RetryResetBeforeRequest
	RetryConnectFailure
	RetryEnvoyRateLimited
	RetryRetriable4xx
	RetryRefusedStream
	RetryRetriableStatusCodes
	RetryRetriableHeaders
	RetryHTTP3PostConnectFailure
	RetryGRPCCancelled
	RetryGRPCDeadlineExceeded
	RetryGRPCInternal
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
)

// retryOnNames maps condition names to bits.
var retryOnNames = map[string]RetryOn{
	"5xx": Retry5xx, "gateway-error": RetryGatewayError, "reset": RetryReset,
	"reset-before-request": RetryResetBeforeRequest, "connect-failure": RetryConnectFailure,
	"envoy-ratelimited": RetryEnvoyRateLimited, "retriable-4xx": RetryRetriable4xx,
	"refused-stream": RetryRefusedStream, "retriable-status-codes": RetryRetriableStatusCodes,
	"retriable-headers": RetryRetriableHeaders, "http3-post-connect-failure": RetryHTTP3PostConnectFailure,
	"cancelled": RetryGRPCCancelled, "deadline-exceeded": RetryGRPCDeadlineExceeded,
	"internal": RetryGRPCInternal, "resource-exhausted": RetryGRPCResourceExhausted,
	"unavailable": RetryGRPCUnavailable,
}

// ParseRetryOn parses a comma-separated list of retry conditions; unknown
// names are an error.
func ParseRetryOn(s string) (RetryOn, error) {
	var out RetryOn
	for _, tok := range strings.Split(s, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		b, ok := retryOnNames[tok]
		if !ok {
			return 0, fmt.Errorf("unknown retry condition %q", tok)
		}
		out |= b
	}
	return out, nil
}

// Has reports whether all conditions in b are set.
func (o RetryOn) Has(b RetryOn) bool { return o&b == b }

// Default retry back-off, as Envoy's.
const defaultRetryBackoff = 25 * time.Millisecond

// RetryPolicy is a compiled retry policy.
type RetryPolicy struct {
	// NumRetries is the maximum number of retries (Envoy's default 1).
	NumRetries uint32
	// RetryOn are the conditions to retry on.
	RetryOn RetryOn
	// RetriableStatusCodes apply with RetryRetriableStatusCodes.
	RetriableStatusCodes []int
	// PerTryTimeout bounds each attempt (0: only Route.Timeout);
	// PerTryIdleTimeout bounds each attempt's idle time (0: none).
	PerTryTimeout, PerTryIdleTimeout time.Duration
	// AvoidPreviousHosts (the previous_hosts predicate): a retry goes to a
	// host not tried before, re-picking up to HostSelectionMaxAttempts times.
	AvoidPreviousHosts       bool
	HostSelectionMaxAttempts int64
	// BackoffBase and BackoffMax bound the jittered exponential back-off
	// between attempts (defaults 25ms and 10 × BackoffBase).
	BackoffBase, BackoffMax time.Duration
}

// RetriableStatus reports whether an upstream HTTP status is retriable
// under the policy's conditions.
func (p *RetryPolicy) RetriableStatus(code int) bool {
	switch {
	case p.RetryOn.Has(Retry5xx) && code >= 500 && code <= 599:
		return true
	case p.RetryOn.Has(RetryGatewayError) && code >= 502 && code <= 504:
		return true
	case p.RetryOn.Has(RetryRetriable4xx) && code == http.StatusConflict:
		return true
	case p.RetryOn.Has(RetryRetriableStatusCodes):
		return slices.Contains(p.RetriableStatusCodes, code)
	}
	return false
}

// RetriableGRPC reports whether a gRPC status code (grpc-status) is
// retriable under the policy's conditions.
func (p *RetryPolicy) RetriableGRPC(code int) bool {
	switch code {
	case 1:
		return p.RetryOn.Has(RetryGRPCCancelled)
	case 4:
		return p.RetryOn.Has(RetryGRPCDeadlineExceeded)
	case 8:
		return p.RetryOn.Has(RetryGRPCResourceExhausted)
	case 13:
		return p.RetryOn.Has(RetryGRPCInternal)
	case 14:
		return p.RetryOn.Has(RetryGRPCUnavailable)
	}
	return false
}

// Retry extension names (and the type URLs of their configs).
const (
	previousHosts      = "envoy.retry_host_predicates.previous_hosts"
	previousHostsType  = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
	previousPriorities = "envoy.retry_priorities.previous_priorities"
	previousPrioType   = "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"
)

// compileRetry compiles a retry policy; nil gives nil (no retries).
func compileRetry(rp *routev3.RetryPolicy) (*RetryPolicy, error) {
	if rp == nil {
		return nil, nil
	}
	if err := checkFields(rp, "retry_policy"); err != nil {
		return nil, err
	}
	on, err := ParseRetryOn(rp.GetRetryOn())
	if err != nil {
		return nil, err
	}
	out := &RetryPolicy{
		NumRetries:               1,
		RetryOn:                  on,
		PerTryTimeout:            rp.GetPerTryTimeout().AsDuration(),
		PerTryIdleTimeout:        rp.GetPerTryIdleTimeout().AsDuration(),
		HostSelectionMaxAttempts: rp.GetHostSelectionRetryMaxAttempts(),
		BackoffBase:              defaultRetryBackoff,
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = n.GetValue()
	}
	for _, c := range rp.GetRetriableStatusCodes() {
		out.RetriableStatusCodes = append(out.RetriableStatusCodes, int(c))
	}
	if b := rp.GetRetryBackOff(); b != nil {
		if err := checkFields(b, "retry_back_off"); err != nil {
			return nil, err
		}
		if b.GetBaseInterval() == nil || b.GetBaseInterval().AsDuration() <= 0 {
			return nil, errors.New("retry_back_off.base_interval must be positive")
		}
		out.BackoffBase = b.GetBaseInterval().AsDuration()
		out.BackoffMax = b.GetMaxInterval().AsDuration()
		if out.BackoffMax != 0 && out.BackoffMax < out.BackoffBase {
			return nil, errors.New("retry_back_off.max_interval is below base_interval")
		}
	}
	if out.BackoffMax == 0 {
		out.BackoffMax = 10 * out.BackoffBase
	}
	if p := rp.GetRetryPriority(); p != nil {
		if p.GetName() != previousPriorities && p.GetTypedConfig().GetTypeUrl() != previousPrioType {
			return nil, fmt.Errorf("retry_priority %s: %w", p.GetName(), ErrUnsupported)
		}
	}
	for _, hp := range rp.GetRetryHostPredicate() {
		if hp.GetName() != previousHosts && hp.GetTypedConfig().GetTypeUrl() != previousHostsType {
			return nil, fmt.Errorf("retry_host_predicate %s: %w", hp.GetName(), ErrUnsupported)
		}
		out.AvoidPreviousHosts = true
	}
	return out, nil
}

// Fault is the fault filter's per-route configuration.
type Fault struct {
	// Delay is injected before forwarding, for DelayFraction of requests.
	Delay         time.Duration
	DelayFraction Fraction
	// AbortStatus (an HTTP status) or AbortGRPC (a gRPC status, -1 when
	// unset) answers AbortFraction of requests; AbortBody is the body.
	AbortStatus   int
	AbortGRPC     int
	AbortFraction Fraction
	AbortBody     string
}

// Decide draws the faults for one request with rnd (uniform random): the
// delay to inject (0: none), and the HTTP status (0: none) or gRPC status
// (-1: none) to abort with. The delay draw uses rnd, the abort draw a
// scrambled rnd, so the two are independent over uniform rnd.
func (f *Fault) Decide(rnd uint32) (delay time.Duration, abortStatus int, abortGRPC int) {
	abortGRPC = -1
	if f == nil {
		return 0, 0, -1
	}
	if f.Delay > 0 && f.DelayFraction.Hit(rnd) {
		delay = f.Delay
	}
	if (f.AbortStatus != 0 || f.AbortGRPC >= 0) && f.AbortFraction.Hit(scramble(rnd)) {
		if f.AbortGRPC >= 0 {
			return delay, 0, f.AbortGRPC
		}
		return delay, f.AbortStatus, -1
	}
	return delay, 0, -1
}

// scramble is murmur3's 32-bit finalizer: a bijection that decorrelates
// a second draw from the first.
func scramble(x uint32) uint32 {
	x ^= x >> 16
	x *= 0x85ebca6b
	x ^= x >> 13
	x *= 0xc2b2ae35
	x ^= x >> 16
	return x
}

// compileFault compiles an HTTPFault; one with neither delay nor abort
// gives nil (no fault), which still overrides a less specific level.
func compileFault(in *faultv3.HTTPFault) (*Fault, error) {
	if err := checkFields(in, "fault"); err != nil {
		return nil, err
	}
	if in.GetDelay() == nil && in.GetAbort() == nil {
		return nil, nil
	}
	out := &Fault{AbortGRPC: -1}
	var err error
	if d := in.GetDelay(); d != nil {
		if err := checkFields(d, "fault.delay"); err != nil {
			return nil, err
		}
		if d.GetFixedDelay() == nil {
			return nil, errors.New("fault.delay: fixed_delay is required")
		}
		out.Delay = d.GetFixedDelay().AsDuration()
		if out.DelayFraction, err = compileFraction(d.GetPercentage()); err != nil {
			return nil, fmt.Errorf("fault.delay.percentage: %w", err)
		}
	}
	if a := in.GetAbort(); a != nil {
		if err := checkFields(a, "fault.abort"); err != nil {
			return nil, err
		}
		switch t := a.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			if t.HttpStatus < 200 || t.HttpStatus >= 600 {
				return nil, fmt.Errorf("fault.abort.http_status %d is not in [200, 600)", t.HttpStatus)
			}
			out.AbortStatus = int(t.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			out.AbortGRPC = int(t.GrpcStatus)
		default:
			return nil, errors.New("fault.abort: http_status or grpc_status is required")
		}
		out.AbortBody = a.GetResponseBody()
		if out.AbortFraction, err = compileFraction(a.GetPercentage()); err != nil {
			return nil, fmt.Errorf("fault.abort.percentage: %w", err)
		}
	}
	return out, nil
}

// CORS is the CORS filter's per-route policy.
type CORS struct {
	// AllowMethods, AllowHeaders, ExposeHeaders and MaxAge are sent as
	// configured (comma-separated lists; seconds).
	AllowMethods, AllowHeaders, ExposeHeaders, MaxAge string
	AllowCredentials                                  bool
	// AllowPrivateNetworkAccess: answer a preflight that carries
	// Access-Control-Request-Private-Network: true with
	// Access-Control-Allow-Private-Network: true (the caller adds it).
	AllowPrivateNetworkAccess bool
	// ForwardNotMatchingPreflights: a preflight from an origin that is not
	// allowed goes upstream (true, the default) or is answered 200 with no
	// CORS headers.
	ForwardNotMatchingPreflights bool
	// Enabled is the share of requests the policy is enforced on.
	Enabled Fraction

	origins []stringMatcher
}

// AllowsOrigin reports whether origin is allowed.
func (c *CORS) AllowsOrigin(origin string) bool {
	if origin == "" {
		return false
	}
	for i := range c.origins {
		if c.origins[i].match(origin) {
			return true
		}
	}
	return false
}

// IsPreflight reports whether r is a CORS preflight (OPTIONS with Origin
// and Access-Control-Request-Method).
func IsPreflight(r *Request) bool {
	return r.Method == http.MethodOptions && r.Headers.Get("Origin") != "" &&
		r.Headers.Get("Access-Control-Request-Method") != ""
}

// Preflight answers a preflight from origin: the headers of the 200
// response and ok, or ok false when the origin is not allowed (see
// ForwardNotMatchingPreflights). As Envoy, it does not check the requested
// method and headers against the policy; it states the policy.
func (c *CORS) Preflight(origin, method, reqHeaders string) (http.Header, bool) {
	if !c.AllowsOrigin(origin) {
		return nil, false
	}
	h := http.Header{"Access-Control-Allow-Origin": {origin}}
	if c.AllowCredentials {
		h["Access-Control-Allow-Credentials"] = []string{"true"}
	}
	if c.AllowMethods != "" {
		h["Access-Control-Allow-Methods"] = []string{c.AllowMethods}
	}
	if c.AllowHeaders != "" {
		h["Access-Control-Allow-Headers"] = []string{c.AllowHeaders}
	}
	if c.MaxAge != "" {
		h["Access-Control-Max-Age"] = []string{c.MaxAge}
	}
	return h, true
}

// ResponseHeaders returns the headers to add to the response of a simple
// (non-preflight) request from origin, or ok false when origin is not
// allowed (the response then gets none).
func (c *CORS) ResponseHeaders(origin string) (http.Header, bool) {
	if !c.AllowsOrigin(origin) {
		return nil, false
	}
	h := http.Header{"Access-Control-Allow-Origin": {origin}}
	if c.AllowCredentials {
		h["Access-Control-Allow-Credentials"] = []string{"true"}
	}
	if c.ExposeHeaders != "" {
		h["Access-Control-Expose-Headers"] = []string{c.ExposeHeaders}
	}
	return h, true
}

// compileCORS compiles the CORS filter's per-route policy.
func compileCORS(in *corsv3.CorsPolicy) (*CORS, error) {
	if err := checkFields(in, "cors"); err != nil {
		return nil, err
	}
	out := &CORS{
		AllowMethods: in.GetAllowMethods(), AllowHeaders: in.GetAllowHeaders(),
		ExposeHeaders: in.GetExposeHeaders(), MaxAge: in.GetMaxAge(),
		AllowCredentials:             in.GetAllowCredentials().GetValue(),
		AllowPrivateNetworkAccess:    in.GetAllowPrivateNetworkAccess().GetValue(),
		ForwardNotMatchingPreflights: in.GetForwardNotMatchingPreflights() == nil || in.GetForwardNotMatchingPreflights().GetValue(),
	}
	var err error
	if out.Enabled, err = runtimeFraction(in.GetFilterEnabled(), All); err != nil {
		return nil, fmt.Errorf("cors.filter_enabled: %w", err)
	}
	for i, o := range in.GetAllowOriginStringMatch() {
		sm, err := compileStringMatcher(o)
		if err != nil {
			return nil, fmt.Errorf("cors.allow_origin_string_match[%d]: %w", i, err)
		}
		out.origins = append(out.origins, sm)
	}
	return out, nil
}

// Mirror shadows a share of requests to another cluster.
type Mirror struct {
	Cluster  string
	Fraction Fraction
	// KeepHost: do not append "-shadow" to the mirrored request's Host.
	KeepHost bool
}

// compileMirrors compiles request mirror policies (no fraction: 100%).
func compileMirrors(in []*routev3.RouteAction_RequestMirrorPolicy) ([]Mirror, error) {
	var out []Mirror
	for i, mp := range in {
		if err := checkFields(mp, "request mirror policy"); err != nil {
			return nil, fmt.Errorf("request_mirror_policies[%d]: %w", i, err)
		}
		if mp.GetCluster() == "" {
			return nil, fmt.Errorf("request_mirror_policies[%d]: cluster is required", i)
		}
		f, err := runtimeFraction(mp.GetRuntimeFraction(), All)
		if err != nil {
			return nil, fmt.Errorf("request_mirror_policies[%d]: %w", i, err)
		}
		out = append(out, Mirror{Cluster: mp.GetCluster(), Fraction: f, KeepHost: mp.GetDisableShadowHostSuffixAppend()})
	}
	return out, nil
}

// Per-route filter configuration: filter names and config type URLs.
const (
	faultFilter = "envoy.filters.http.fault"
	corsFilter  = "envoy.filters.http.cors"
	faultType   = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	corsType    = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
	filterType  = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
)

// filterConfigs are the per-filter configs in force at one level.
type filterConfigs struct {
	fault *Fault
	cors  *CORS
}

// compileFilterConfigs compiles typed_per_filter_config on top of parent's
// (nil: none): a level's config replaces the less specific one; a
// FilterConfig with disabled turns the filter off for the level.
func compileFilterConfigs(m map[string]*anypb.Any, parent *filterConfigs) (filterConfigs, error) {
	var out filterConfigs
	if parent != nil {
		out = *parent
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		a, optional := m[name], false
		if a.GetTypeUrl() == filterType {
			fc := &routev3.FilterConfig{}
			if err := a.UnmarshalTo(fc); err != nil {
				return out, fmt.Errorf("%s: %w", name, err)
			}
			if err := checkFields(fc, name); err != nil {
				return out, err
			}
			if fc.GetDisabled() {
				switch {
				case name == faultFilter || fc.GetConfig().GetTypeUrl() == faultType:
					out.fault = nil
				case name == corsFilter || fc.GetConfig().GetTypeUrl() == corsType:
					out.cors = nil
				case !fc.GetIsOptional():
					return out, fmt.Errorf("%s: filter: %w", name, ErrUnsupported)
				}
				continue
			}
			a, optional = fc.GetConfig(), fc.GetIsOptional()
		}
		var err error
		switch a.GetTypeUrl() {
		case faultType:
			msg := &faultv3.HTTPFault{}
			if err = unmarshalAny(a, msg); err == nil {
				out.fault, err = compileFault(msg)
			}
		case corsType:
			msg := &corsv3.CorsPolicy{}
			if err = unmarshalAny(a, msg); err == nil {
				out.cors, err = compileCORS(msg)
			}
		default:
			if !optional {
				err = fmt.Errorf("config %s: %w", a.GetTypeUrl(), ErrUnsupported)
			}
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
	}
	return out, nil
}

// unmarshalAny decodes a into msg.
func unmarshalAny(a *anypb.Any, msg proto.Message) error {
	return anypb.UnmarshalTo(a, msg, proto.UnmarshalOptions{})
}
