package translate

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	previousprioritiesv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/priority/previous_priorities/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
)

// Istio's default retry policy, applied to every route whose rule sets no
// retries: 2 retries on connection failures, refused streams, gRPC
// unavailable/cancelled and HTTP 503, each on a host not tried before.
const (
	defaultRetryOn      = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
	defaultRetries      = 2
	retriableStatusCode = "retriable-status-codes"
)

// anyMessage is a message that goes into an Any.
type anyMessage = proto.Message

// ldsAny packs m deterministically (the same config always gives the same
// bytes, so unchanged resources hash the same). Packing a valid message
// cannot fail, so a failure is a programming error.
func ldsAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("translate: packing %T: %v", m, err))
	}
	return a
}

// ldsBool, ldsUint32 and ldsDuration wrap scalars for optional proto fields.
func ldsBool(b bool) *wrapperspb.BoolValue             { return wrapperspb.Bool(b) }
func ldsUint32(n uint32) *wrapperspb.UInt32Value       { return wrapperspb.UInt32(n) }
func ldsDuration(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// rdsRetryPolicy converts Istio retries as Istio does: unset gives the default
// policy, attempts 0 disables retries. retryOn mixes Envoy conditions
// ("5xx", "gateway-error", gRPC codes like "deadline-exceeded") with HTTP
// status codes, which become retriable_status_codes. A route with a
// consistent hash does not avoid previously tried hosts (it would defeat
// the affinity).
func rdsRetryPolicy(in *networking.HTTPRetry, hashed bool) *routev3.RetryPolicy {
	out := &routev3.RetryPolicy{
		RetryOn:              defaultRetryOn,
		NumRetries:           ldsUint32(defaultRetries),
		RetriableStatusCodes: []uint32{503},
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: ldsAny(&previoushostsv3.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: 5,
	}
	if in != nil {
		if in.GetAttempts() <= 0 {
			return nil
		}
		out.NumRetries = ldsUint32(uint32(in.GetAttempts()))
		if in.GetRetryOn() != "" {
			out.RetryOn, out.RetriableStatusCodes = parseRetryOn(in.GetRetryOn())
		}
		if t := in.GetPerTryTimeout(); t != nil {
			out.PerTryTimeout = ldsDuration(t.AsDuration())
		}
		if b := in.GetBackoff(); b != nil && b.AsDuration() > 0 {
			out.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: ldsDuration(b.AsDuration())}
		}
		if in.GetRetryRemoteLocalities().GetValue() {
			out.RetryPriority = &routev3.RetryPolicy_RetryPriority{
				Name: "envoy.retry_priorities.previous_priorities",
				ConfigType: &routev3.RetryPolicy_RetryPriority_TypedConfig{
					TypedConfig: ldsAny(&previousprioritiesv3.PreviousPrioritiesConfig{UpdateFrequency: 2})},
			}
		}
		if p := in.GetRetryIgnorePreviousHosts(); p != nil && !p.GetValue() {
			out.RetryHostPredicate, out.HostSelectionRetryMaxAttempts = nil, 0
		}
	}
	if hashed {
		out.RetryHostPredicate, out.HostSelectionRetryMaxAttempts = nil, 0
	}
	return out
}

// parseRetryOn splits Istio's retryOn into Envoy conditions and status
// codes, adding "retriable-status-codes" when codes are given without it.
func parseRetryOn(s string) (string, []uint32) {
	var conds []string
	var codes []uint32
	seen := map[string]bool{}
	for _, tok := range strings.Split(s, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" || seen[tok] {
			continue
		}
		seen[tok] = true
		if n, err := strconv.ParseUint(tok, 10, 32); err == nil {
			codes = append(codes, uint32(n))
			continue
		}
		conds = append(conds, tok)
	}
	if len(codes) > 0 && !seen[retriableStatusCode] {
		conds = append(conds, retriableStatusCode)
	}
	return strings.Join(conds, ","), codes
}

// fractionOf converts an Istio percentage (0–100, fractions allowed) to
// Envoy's fraction per million.
func fractionOf(p *networking.Percent) *typev3.FractionalPercent {
	v := math.Min(math.Max(p.GetValue(), 0), 100)
	return &typev3.FractionalPercent{Numerator: uint32(math.Round(v * 10000)), Denominator: typev3.FractionalPercent_MILLION}
}

// rdsGrpcCodes are the gRPC status names Istio accepts in abort.grpcStatus.
var rdsGrpcCodes = map[string]uint32{
	"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
	"NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
	"FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
	"INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

// fault converts fault injection into the fault filter's per-route config.
// Delay honours the deprecated integer percent when percentage is unset;
// with neither, as Istio documents, no request is delayed or aborted (the
// config is kept, with a warning, so the intent stays visible). The
// deprecated abort.percent no longer exists in the API: resource.Normalize
// converts it to percentage when config is read.
func (g *netBuilder) fault(vs *boundVS, f *networking.HTTPFaultInjection) *faultv3.HTTPFault {
	if f == nil {
		return nil
	}
	out := &faultv3.HTTPFault{}
	if d := f.GetDelay(); d != nil {
		var pct *typev3.FractionalPercent
		switch {
		case d.GetPercentage() != nil:
			pct = fractionOf(d.GetPercentage())
		case legacyDelayPercent(d) != 0:
			pct = &typev3.FractionalPercent{Numerator: uint32(min(max(legacyDelayPercent(d), 0), 100)), Denominator: typev3.FractionalPercent_HUNDRED}
		default:
			g.warnOnce("%s: fault delay without percentage delays no request", vs.cfg.Key())
			pct = &typev3.FractionalPercent{}
		}
		switch t := d.GetHttpDelayType().(type) {
		case *networking.HTTPFaultInjection_Delay_FixedDelay:
			out.Delay = &commonfaultv3.FaultDelay{
				FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: ldsDuration(t.FixedDelay.AsDuration())},
				Percentage:         pct,
			}
		default:
			g.warnOnce("%s: fault delay needs fixedDelay (exponentialDelay is not supported); ignored", vs.cfg.Key())
		}
	}
	if a := f.GetAbort(); a != nil {
		fa := &faultv3.FaultAbort{Percentage: &typev3.FractionalPercent{}}
		if a.GetPercentage() != nil {
			fa.Percentage = fractionOf(a.GetPercentage())
		} else {
			g.warnOnce("%s: fault abort without percentage aborts no request", vs.cfg.Key())
		}
		switch t := a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if t.HttpStatus >= 200 && t.HttpStatus < 600 {
				fa.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(t.HttpStatus)}
			}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			code, ok := rdsGrpcCodes[strings.ToUpper(t.GrpcStatus)]
			if n, err := strconv.ParseUint(t.GrpcStatus, 10, 32); err == nil && n <= 16 {
				code, ok = uint32(n), true
			}
			if ok {
				fa.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: code}
			}
		}
		if fa.ErrorType != nil {
			out.Abort = fa
		} else {
			g.warnOnce("%s: fault abort needs httpStatus (200-599) or a gRPC status name; ignored", vs.cfg.Key())
		}
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// corsPolicy converts a CORS policy into the CORS filter's per-route config.
func corsPolicy(c *networking.CorsPolicy) *corsv3.CorsPolicy {
	out := &corsv3.CorsPolicy{
		AllowMethods:  strings.Join(c.GetAllowMethods(), ","),
		AllowHeaders:  strings.Join(c.GetAllowHeaders(), ","),
		ExposeHeaders: strings.Join(c.GetExposeHeaders(), ","),
		FilterEnabled: &corev3.RuntimeFractionalPercent{
			DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}},
	}
	if m := c.GetMaxAge(); m != nil {
		out.MaxAge = strconv.FormatInt(int64(m.AsDuration()/time.Second), 10)
	}
	if ac := c.GetAllowCredentials(); ac != nil {
		out.AllowCredentials = ldsBool(ac.GetValue())
	}
	anyOrigin := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}}
	for _, o := range c.GetAllowOrigins() {
		if sm := rdsStringMatcher(o); sm != nil {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, sm)
		} else {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, anyOrigin)
		}
	}
	for _, o := range legacyAllowOrigin(c) {
		if o == "*" {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, anyOrigin)
			continue
		}
		out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o}})
	}
	switch c.GetUnmatchedPreflights() {
	case networking.CorsPolicy_FORWARD:
		out.ForwardNotMatchingPreflights = ldsBool(true)
	case networking.CorsPolicy_IGNORE:
		out.ForwardNotMatchingPreflights = ldsBool(false)
	}
	return out
}

// mirrors converts mirror (with mirrorPercentage or the deprecated
// mirrorPercent; 100% when neither is set) and mirrors into request mirror
// policies, in that order.
func (g *netBuilder) mirrors(vs *boundVS, rule *networking.HTTPRoute, listenerPort uint32) []*routev3.RouteAction_RequestMirrorPolicy {
	var out []*routev3.RouteAction_RequestMirrorPolicy
	add := func(d *networking.Destination, pct *networking.Percent) {
		out = append(out, &routev3.RouteAction_RequestMirrorPolicy{
			Cluster:         g.resolveDestination(vs, d, listenerPort).cluster,
			RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: fractionOf(pct)},
			TraceSampled:    ldsBool(false),
		})
	}
	if m := rule.GetMirror(); m != nil {
		pct := &networking.Percent{Value: 100}
		switch {
		case rule.GetMirrorPercentage() != nil:
			pct = rule.GetMirrorPercentage()
		case legacyMirrorPercent(rule) != nil:
			pct = &networking.Percent{Value: float64(legacyMirrorPercent(rule).GetValue())}
		}
		add(m, pct)
	}
	for _, mp := range rule.GetMirrors() {
		pct := mp.GetPercentage()
		if pct == nil {
			pct = &networking.Percent{Value: 100}
		}
		add(mp.GetDestination(), pct)
	}
	return out
}

// legacyDelayPercent, legacyAllowOrigin and legacyMirrorPercent read
// deprecated Istio fields weft still honours, as Istio does.
func legacyDelayPercent(d *networking.HTTPFaultInjection_Delay) int32 {
	//lint:ignore SA1019 deprecated but still honoured
	return d.GetPercent()
}

// legacyAllowOrigin: see legacyDelayPercent.
func legacyAllowOrigin(c *networking.CorsPolicy) []string {
	//lint:ignore SA1019 deprecated but still honoured
	return c.GetAllowOrigin()
}

// legacyMirrorPercent: see legacyDelayPercent.
func legacyMirrorPercent(r *networking.HTTPRoute) *wrapperspb.UInt32Value {
	//lint:ignore SA1019 deprecated but still honoured
	return r.GetMirrorPercent()
}
