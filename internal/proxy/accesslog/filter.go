package accesslog

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"
)

// Filter decides whether an entry is logged: a CEL expression over
// Envoy's attributes, as Istio's Telemetry accessLogging filters and
// Envoy's CEL access log filter (envoy.access_loggers.extension_filters.cel)
// evaluate it, e.g. "response.code >= 400",
// "request.headers['x-debug'] == 'true'", "response.flags != 0u" or
// "xds.cluster_name.startsWith('outbound|9080')". An expression whose
// evaluation fails, such as one reading an attribute the entry does not
// have (response.code of a TCP connection), does not log, as in Envoy.
// A nil Filter logs everything. See Attributes for the names.
type Filter struct {
	expr string
	prg  cel.Program
	// headers are the headers the expression reads, with the key it reads
	// each by (request.headers['X-Debug'] and request.headers['x-debug']
	// are the same header, as in Envoy).
	headers []filterHeader
}

type filterHeader struct {
	key string
	ref HeaderRef
}

// Attributes lists the attributes a Filter can read (Envoy's names).
const Attributes = "request.{path, url_path, query, host, scheme, method, protocol, headers, referer, useragent, id, time, duration, size}, " +
	"response.{code, code_details, flags, grpc_status, size, headers}, source.{address, port}, destination.{address, port}, " +
	"connection.{mtls, requested_server_name, tls_version, subject_peer_certificate, uri_san_peer_certificate, dns_san_peer_certificate, " +
	"sha256_peer_certificate_digest, termination_details}, upstream.{address, port, local_address, transport_failure_reason}, " +
	"xds.{cluster_name, route_name}"

// filterVars are the top-level names, each a map from attribute to value.
var filterVars = []string{"request", "response", "source", "destination", "connection", "upstream", "xds"}

var filterEnv = sync.OnceValues(func() (*cel.Env, error) {
	opts := make([]cel.EnvOption, 0, len(filterVars))
	for _, v := range filterVars {
		opts = append(opts, cel.Variable(v, cel.MapType(cel.StringType, cel.DynType)))
	}
	return cel.NewEnv(opts...)
})

// String is the expression.
func (f *Filter) String() string { return f.expr }

// Headers lists the headers the filter reads that Entry has no field
// for; the caller captures them into Entry.Headers.
func (f *Filter) Headers() []HeaderRef {
	if f == nil {
		return nil
	}
	var out []HeaderRef
	for _, h := range f.headers {
		if !fieldHeaders[h.ref.Name] && !strings.HasPrefix(h.ref.Name, ":") {
			out = append(out, h.ref)
		}
	}
	return out
}

// Match reports whether e passes the filter.
func (f *Filter) Match(e *Entry) bool {
	if f == nil {
		return true
	}
	out, _, err := f.prg.Eval(&filterActivation{f: f, e: e})
	return err == nil && out == types.True
}

// ParseFilter compiles a CEL expression; one that does not parse, is not
// a boolean, or reads headers other than by a constant name is an error
// naming the problem.
func ParseFilter(expr string) (*Filter, error) { return compileExpr(expr, "access log filter", true) }

// CheckFilter is ParseFilter's verdict on expr, without the program.
// Verdicts are remembered (up to checkMemoSize expressions): the control
// plane checks the same few expressions for every proxy it builds config
// for, and a compile costs about 70 µs.
func CheckFilter(expr string) error { return check(expr, true) }

// CheckValue is ParseValue's verdict on expr, remembered as CheckFilter's.
func CheckValue(expr string) error { return check(expr, false) }

const checkMemoSize = 4096

var (
	checkMemo  sync.Map // checkKey → error (nil: accepted)
	checkCount atomic.Int64
)

type checkKey struct {
	expr     string
	wantBool bool
}

func check(expr string, wantBool bool) error {
	k := checkKey{expr, wantBool}
	if v, ok := checkMemo.Load(k); ok {
		err, _ := v.(error)
		return err
	}
	what := "expression"
	if wantBool {
		what = "access log filter"
	}
	_, err := compileExpr(expr, what, wantBool)
	if checkCount.Load() < checkMemoSize {
		if _, loaded := checkMemo.LoadOrStore(k, err); !loaded {
			checkCount.Add(1)
		}
	}
	return err
}

// compileExpr compiles expr (what names its use in errors), a boolean one
// when wantBool.
func compileExpr(expr, what string, wantBool bool) (*Filter, error) {
	env, err := filterEnv()
	if err != nil {
		return nil, err
	}
	checked, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("%s %q: %v (the attributes are %s)", what, expr, iss.Err(), Attributes)
	}
	if t := checked.OutputType(); wantBool && !t.IsExactType(types.BoolType) && !t.IsExactType(types.DynType) {
		return nil, fmt.Errorf("%s %q: the expression is a %s, not a bool", what, expr, t)
	}
	f := &Filter{expr: expr}
	if err := f.collectHeaders(checked.NativeRep().Expr()); err != nil {
		return nil, fmt.Errorf("%s %q: %v", what, expr, err)
	}
	if f.prg, err = env.Program(checked, cel.CostLimit(filterCostLimit)); err != nil {
		return nil, fmt.Errorf("%s %q: %v", what, expr, err)
	}
	return f, nil
}

// Value is a CEL expression over an entry's attributes whose result is
// text: a metric label's value (the istio.stats filter's dimensions).
type Value struct{ f *Filter }

// ParseValue compiles a CEL expression of any type, with ParseFilter's
// attributes and rules.
func ParseValue(expr string) (*Value, error) {
	f, err := compileExpr(expr, "expression", false)
	if err != nil {
		return nil, err
	}
	return &Value{f}, nil
}

// Headers lists the headers the expression reads that Entry has no field
// for.
func (v *Value) Headers() []HeaderRef { return v.f.Headers() }

// Eval is the expression's value for e as text — strings as they are,
// other values in CEL's string conversion — and "unknown" when it cannot
// be evaluated (an attribute e does not have), as Istio's stats filter
// writes it.
func (v *Value) Eval(e *Entry) string {
	out, _, err := v.f.prg.Eval(&filterActivation{f: v.f, e: e})
	if err != nil || types.IsError(out) || types.IsUnknown(out) {
		return "unknown"
	}
	if s, ok := out.(types.String); ok {
		return string(s)
	}
	if s, ok := out.ConvertToType(types.StringType).(types.String); ok {
		return string(s)
	}
	return "unknown"
}

// filterCostLimit bounds one evaluation (CEL's cost units, about one per
// operation): an expression that would run longer, such as nested
// comprehensions over long lists, stops and does not log.
const filterCostLimit = 10_000

var errHeaderUse = errors.New("request.headers and response.headers can only be read by a constant name " +
	"(request.headers['x-debug'], 'x-debug' in request.headers)")

// collectHeaders records every header e reads, and refuses any other use
// of a headers map: the entry captures only the headers named.
func (f *Filter) collectHeaders(e ast.Expr) error {
	switch e.Kind() {
	case ast.SelectKind:
		s := e.AsSelect()
		if headersMap(e) != 0 {
			return errHeaderUse
		}
		if resp := headersMap(s.Operand()); resp != 0 {
			return f.addHeader(resp, s.FieldName())
		}
		if op := s.Operand(); op.Kind() == ast.IdentKind && op.AsIdent() == "request" && s.FieldName() == "referer" {
			return f.addHeader(1, "referer")
		}
		return f.collectHeaders(s.Operand())
	case ast.CallKind:
		c := e.AsCall()
		args := c.Args()
		switch {
		case c.FunctionName() == operators.Index && len(args) == 2 && headersMap(args[0]) != 0:
			return f.addHeaderLiteral(args[0], args[1])
		case c.FunctionName() == operators.In && len(args) == 2 && headersMap(args[1]) != 0:
			return f.addHeaderLiteral(args[1], args[0])
		}
		if c.IsMemberFunction() {
			args = append([]ast.Expr{c.Target()}, args...)
		}
		return f.collectAll(args...)
	case ast.ListKind:
		return f.collectAll(e.AsList().Elements()...)
	case ast.MapKind:
		for _, en := range e.AsMap().Entries() {
			me := en.AsMapEntry()
			if err := f.collectAll(me.Key(), me.Value()); err != nil {
				return err
			}
		}
	case ast.StructKind:
		for _, fl := range e.AsStruct().Fields() {
			if err := f.collectHeaders(fl.AsStructField().Value()); err != nil {
				return err
			}
		}
	case ast.ComprehensionKind:
		c := e.AsComprehension()
		return f.collectAll(c.IterRange(), c.AccuInit(), c.LoopCondition(), c.LoopStep(), c.Result())
	}
	return nil
}

func (f *Filter) collectAll(es ...ast.Expr) error {
	for _, e := range es {
		if err := f.collectHeaders(e); err != nil {
			return err
		}
	}
	return nil
}

// headersMap is 1 when e is request.headers, 2 for response.headers and
// 0 otherwise.
func headersMap(e ast.Expr) int {
	if e.Kind() != ast.SelectKind || e.AsSelect().IsTestOnly() || e.AsSelect().FieldName() != "headers" {
		return 0
	}
	op := e.AsSelect().Operand()
	if op.Kind() != ast.IdentKind {
		return 0
	}
	switch op.AsIdent() {
	case "request":
		return 1
	case "response":
		return 2
	}
	return 0
}

// addHeaderLiteral records the header that key, which must be a string
// literal, names in the headers map m.
func (f *Filter) addHeaderLiteral(m, key ast.Expr) error {
	if key.Kind() != ast.LiteralKind || key.AsLiteral().Type() != types.StringType {
		return errHeaderUse
	}
	return f.addHeader(headersMap(m), string(key.AsLiteral().(types.String)))
}

func (f *Filter) addHeader(which int, key string) error {
	name, err := headerName(key, which == 1)
	if err != nil {
		return err
	}
	for _, h := range f.headers {
		if h.key == key && h.ref.Response == (which == 2) {
			return nil
		}
	}
	f.headers = append(f.headers, filterHeader{key: key, ref: HeaderRef{Response: which == 2, Name: name}})
	return nil
}

// filterActivation resolves the attributes of one entry, building each
// top-level map only when the expression reads it.
type filterActivation struct {
	f *Filter
	e *Entry
}

func (a *filterActivation) Parent() interpreter.Activation { return nil }

func (a *filterActivation) ResolveName(name string) (any, bool) {
	e := a.e
	m := map[string]any{}
	switch name {
	case "request":
		if e.Method == "" {
			return m, true // a TCP connection: no request attributes
		}
		path, query, _ := strings.Cut(e.Path, "?")
		m["scheme"] = "http"
		if e.TLSVersion != "" {
			m["scheme"] = "https"
		}
		m["path"], m["url_path"], m["query"] = e.Path, path, query
		m["host"], m["method"], m["protocol"] = e.Authority, e.Method, e.Protocol
		m["useragent"], m["id"] = e.UserAgent, e.RequestID
		m["referer"] = e.header(false, "Referer")
		m["time"], m["duration"], m["size"] = e.Start, e.Duration, e.BytesReceived
		m["headers"] = a.headers(false)
	case "response":
		if e.Method != "" { // HTTP; a TCP connection has flags and bytes only
			if e.Code != 0 {
				m["code"] = int64(e.Code)
			}
			m["headers"] = a.headers(true)
			m["code_details"] = e.details()
			if n, err := strconv.ParseInt(e.GRPCStatus, 10, 64); err == nil {
				m["grpc_status"] = n
			}
		}
		m["flags"], m["size"] = responseFlagBits(e.Flags), e.BytesSent
	case "source":
		addressAttrs(m, e.DownstreamRemote)
	case "destination":
		addressAttrs(m, e.DownstreamLocal)
	case "upstream":
		addressAttrs(m, e.UpstreamHost)
		if e.UpstreamLocal != "" {
			m["local_address"] = e.UpstreamLocal
		}
		if e.UpstreamFailure != "" {
			m["transport_failure_reason"] = e.UpstreamFailure
		}
	case "connection":
		m["mtls"] = e.PeerCert != nil
		if e.TLSVersion != "" {
			m["tls_version"] = e.TLSVersion
		}
		if e.PeerCert != nil {
			m["subject_peer_certificate"] = e.peerSubject()
			m["sha256_peer_certificate_digest"] = e.peerFingerprint()
			if len(e.PeerCert.URIs) > 0 {
				m["uri_san_peer_certificate"] = e.PeerCert.URIs[0].String()
			}
			if len(e.PeerCert.DNSNames) > 0 {
				m["dns_san_peer_certificate"] = e.PeerCert.DNSNames[0]
			}
		}
		if e.ServerName != "" {
			m["requested_server_name"] = e.ServerName
		}
		if e.ConnectionTerminationDetails != "" {
			m["termination_details"] = e.ConnectionTerminationDetails
		}
	case "xds":
		if e.UpstreamCluster != "" {
			m["cluster_name"] = e.UpstreamCluster
		}
		if e.RouteName != "" {
			m["route_name"] = e.RouteName
		}
	default:
		return nil, false
	}
	return m, true
}

// headers is the request's or response's headers the filter reads, by
// the keys it reads them with; absent headers are left out.
func (a *filterActivation) headers(resp bool) map[string]string {
	m := map[string]string{}
	for _, h := range a.f.headers {
		if h.ref.Response == resp {
			if v := a.e.header(resp, h.ref.Name); v != "" {
				m[h.key] = v
			}
		}
	}
	return m
}

// addressAttrs sets address (ip:port, as Envoy writes it) and port.
func addressAttrs(m map[string]any, hostPort string) {
	if hostPort == "" {
		return
	}
	m["address"] = hostPort
	if _, p, err := net.SplitHostPort(hostPort); err == nil {
		if n, err := strconv.ParseInt(p, 10, 64); err == nil {
			m["port"] = n
		}
	}
}

// responseFlagBits are Envoy's response flags as the bit field CEL's
// response.flags reads (StreamInfo::ResponseFlag).
var responseFlagBits = func() func(string) uint64 {
	bits := map[string]uint64{}
	for i, f := range []string{"LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
		"DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR"} {
		bits[f] = 1 << i
	}
	return func(flags string) uint64 {
		var out uint64
		for f := range strings.SplitSeq(flags, ",") {
			out |= bits[f]
		}
		return out
	}
}()
