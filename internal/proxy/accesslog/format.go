package accesslog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/textproto"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/weftmesh/weft/internal/proxy/httpfilter"
	"google.golang.org/protobuf/types/known/structpb"
)

// EnvoyDefaultFormat is Envoy's default text format (what a file access
// log without log_format writes).
const EnvoyDefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% ` +
	`"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// IstioTextFormat is Istio's default TEXT access log format
// (MeshConfig accessLogEncoding TEXT without accessLogFormat, and the
// built-in "envoy" provider).
const IstioTextFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ` +
	`"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% ` +
	`"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" ` +
	`%UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ` +
	`%REQUESTED_SERVER_NAME% %ROUTE_NAME%` + "\n"

// IstioJSONFormat is Istio's default JSON access log object
// (accessLogEncoding JSON without accessLogFormat): key → command
// operator.
var IstioJSONFormat = map[string]string{
	"authority": "%REQ(:AUTHORITY)%", "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%",
	"connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
	"downstream_local_address":       "%DOWNSTREAM_LOCAL_ADDRESS%", "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
	"duration": "%DURATION%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
	"protocol": "%PROTOCOL%", "request_id": "%REQ(X-REQUEST-ID)%", "requested_server_name": "%REQUESTED_SERVER_NAME%",
	"response_code": "%RESPONSE_CODE%", "response_code_details": "%RESPONSE_CODE_DETAILS%",
	"response_flags": "%RESPONSE_FLAGS%", "route_name": "%ROUTE_NAME%", "start_time": "%START_TIME%",
	"upstream_cluster": "%UPSTREAM_CLUSTER%", "upstream_host": "%UPSTREAM_HOST%",
	"upstream_local_address":            "%UPSTREAM_LOCAL_ADDRESS%",
	"upstream_service_time":             "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
	"upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
	"user_agent":                        "%REQ(USER-AGENT)%", "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
}

// Header is one request or response header a format needs beyond the
// fields of Entry, captured when the entry is made.
type Header struct {
	Response bool
	// Name is canonical (textproto.CanonicalMIMEHeaderKey).
	Name  string
	Value string
}

// HeaderRef names a header a format reads (see Formatter.Headers).
type HeaderRef struct {
	Response bool
	Name     string // canonical
}

// Formatter turns entries into lines: an Envoy command-operator text
// format or a JSON object template. Immutable; build with ParseText or
// ParseJSON.
type Formatter struct {
	text []segment // text format
	json []field   // JSON format (sorted by key)
	// headers are the headers Entry.Headers must carry.
	headers []HeaderRef
}

// Headers lists the headers the format reads that Entry has no field
// for; the caller captures them into Entry.Headers.
func (f *Formatter) Headers() []HeaderRef { return f.headers }

// field is one key of a JSON format: a nested object, a constant, or a
// format string (typed when it is one operator alone).
type field struct {
	key    string
	nested []field
	konst  []byte // JSON of a non-string value
	value  []segment
}

// segment is literal text or one command operator.
type segment struct {
	lit string
	op  opKind
	// arg is the operator's argument: header names (canonical), or the
	// START_TIME layout (Go form).
	hdr, alt string
	// maxLen truncates the value (0: no limit).
	maxLen int
	layout []timePart
	// metaNS and metaPath name a DYNAMIC_METADATA value.
	metaNS   string
	metaPath []string
}

type opKind int

const (
	opLiteral opKind = iota
	opStartTime
	opProtocol
	opResponseCode
	opResponseFlags
	opResponseCodeDetails
	opConnTermDetails
	opUpstreamFailure
	opBytesReceived
	opBytesSent
	opDuration
	opReq
	opResp
	opUpstreamHost
	opUpstreamCluster
	opUpstreamLocal
	opDownstreamLocal
	opDownstreamLocalNoPort
	opDownstreamRemote
	opDownstreamRemoteNoPort
	opServerName
	opRouteName
	opHostname
	opTLSVersion
	opPeerURISAN
	opPeerDNSSAN
	opPeerSubject
	opPeerIssuer
	opPeerFingerprint256
	opGRPCStatusNumber
	opUpstreamAttempts
	opTraceID
	opDynamicMetadata
)

// simpleOps are the operators without arguments.
var simpleOps = map[string]opKind{
	"PROTOCOL": opProtocol, "RESPONSE_CODE": opResponseCode, "RESPONSE_FLAGS": opResponseFlags,
	"RESPONSE_CODE_DETAILS": opResponseCodeDetails, "CONNECTION_TERMINATION_DETAILS": opConnTermDetails,
	"UPSTREAM_TRANSPORT_FAILURE_REASON": opUpstreamFailure, "BYTES_RECEIVED": opBytesReceived,
	"BYTES_SENT": opBytesSent, "DURATION": opDuration, "UPSTREAM_HOST": opUpstreamHost,
	"UPSTREAM_CLUSTER": opUpstreamCluster, "UPSTREAM_CLUSTER_RAW": opUpstreamCluster,
	"UPSTREAM_LOCAL_ADDRESS": opUpstreamLocal, "DOWNSTREAM_LOCAL_ADDRESS": opDownstreamLocal,
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": opDownstreamLocalNoPort, "DOWNSTREAM_REMOTE_ADDRESS": opDownstreamRemote,
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": opDownstreamRemoteNoPort, "REQUESTED_SERVER_NAME": opServerName,
	"ROUTE_NAME": opRouteName, "HOSTNAME": opHostname, "START_TIME": opStartTime,
	"DOWNSTREAM_TLS_VERSION": opTLSVersion, "DOWNSTREAM_PEER_URI_SAN": opPeerURISAN,
	"DOWNSTREAM_PEER_DNS_SAN": opPeerDNSSAN, "DOWNSTREAM_PEER_SUBJECT": opPeerSubject,
	"DOWNSTREAM_PEER_ISSUER": opPeerIssuer, "DOWNSTREAM_PEER_FINGERPRINT_256": opPeerFingerprint256,
	"GRPC_STATUS_NUMBER": opGRPCStatusNumber, "UPSTREAM_REQUEST_ATTEMPT_COUNT": opUpstreamAttempts,
	"TRACE_ID": opTraceID,
}

// SupportedOperators lists the command operators formats may use.
func SupportedOperators() []string {
	out := []string{"REQ(header?alt):max", "RESP(header?alt):max", "START_TIME(strftime)", "DYNAMIC_METADATA(namespace:key...):max"}
	for k := range simpleOps {
		out = append(out, k)
	}
	sort.Strings(out[4:])
	return out
}

// ParseText compiles an Envoy text format ("%REQ(:METHOD)% %PROTOCOL%").
// An empty format is Envoy's default. Unknown operators are errors.
func ParseText(format string) (*Formatter, error) {
	if format == "" {
		format = EnvoyDefaultFormat
	}
	f := &Formatter{}
	segs, err := f.parseSegments(format)
	if err != nil {
		return nil, err
	}
	f.text = segs
	return f, nil
}

// ParseJSON compiles an Envoy json_format object: string values are
// format strings (a value that is one operator alone keeps its type:
// numbers for RESPONSE_CODE, BYTES_*, DURATION; null when unset), other
// values are written as they are, objects nest.
func ParseJSON(s *structpb.Struct) (*Formatter, error) {
	f := &Formatter{}
	fs, err := f.parseObject(s)
	if err != nil {
		return nil, err
	}
	f.json = fs
	return f, nil
}

// ParseJSONMap is ParseJSON for a flat map of key → format string.
func ParseJSONMap(m map[string]string) (*Formatter, error) {
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for k, v := range m {
		s.Fields[k] = structpb.NewStringValue(v)
	}
	return ParseJSON(s)
}

func (f *Formatter) parseObject(s *structpb.Struct) ([]field, error) {
	keys := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]field, 0, len(keys))
	for _, k := range keys {
		v := s.GetFields()[k]
		fl := field{key: k}
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			segs, err := f.parseSegments(x.StringValue)
			if err != nil {
				return nil, fmt.Errorf("json_format %q: %w", k, err)
			}
			fl.value = segs
		case *structpb.Value_StructValue:
			n, err := f.parseObject(x.StructValue)
			if err != nil {
				return nil, err
			}
			fl.nested = n
		default:
			b, err := v.MarshalJSON()
			if err != nil {
				return nil, fmt.Errorf("json_format %q: %w", k, err)
			}
			fl.konst = b
		}
		out = append(out, fl)
	}
	return out, nil
}

// parseSegments splits a format string into literals and operators.
func (f *Formatter) parseSegments(s string) ([]segment, error) {
	var out []segment
	lit := strings.Builder{}
	for i := 0; i < len(s); {
		if s[i] != '%' {
			lit.WriteByte(s[i])
			i++
			continue
		}
		seg, n, err := parseOperator(s[i:])
		if err != nil {
			return nil, err
		}
		if lit.Len() > 0 {
			out = append(out, segment{lit: lit.String()})
			lit.Reset()
		}
		switch seg.op {
		case opReq, opResp:
			for _, h := range []string{seg.hdr, seg.alt} {
				if h != "" && !fieldHeaders[h] {
					f.addHeader(HeaderRef{Response: seg.op == opResp, Name: h})
				}
			}
		}
		out = append(out, seg)
		i += n
	}
	if lit.Len() > 0 {
		out = append(out, segment{lit: lit.String()})
	}
	return out, nil
}

func (f *Formatter) addHeader(h HeaderRef) {
	for _, x := range f.headers {
		if x == h {
			return
		}
	}
	f.headers = append(f.headers, h)
}

// fieldHeaders are the request headers Entry has fields for (and the
// response header X-Envoy-Upstream-Service-Time, from UpstreamTime).
var fieldHeaders = map[string]bool{":method": true, ":path": true, ":authority": true, "Host": true,
	"X-Forwarded-For": true, "User-Agent": true, "X-Request-Id": true, "X-Envoy-Original-Path": true,
	"X-Envoy-Upstream-Service-Time": true}

// parseOperator reads one "%NAME%", "%NAME(arg)%" or "%NAME(arg):N%" at
// the start of s, returning it and its length.
func parseOperator(s string) (segment, int, error) {
	i := 1
	for i < len(s) && (s[i] >= 'A' && s[i] <= 'Z' || s[i] == '_' || s[i] >= '0' && s[i] <= '9') {
		i++
	}
	name := s[1:i]
	if name == "" {
		return segment{}, 0, fmt.Errorf("format %q: '%%' does not start a command operator (%%NAME%%)", abbrev(s))
	}
	var arg string
	hasArg := false
	if i < len(s) && s[i] == '(' {
		end := strings.IndexByte(s[i:], ')')
		if name == "START_TIME" {
			// The strftime layout holds '%'s and may hold ')': the
			// argument ends at the first ")%" or "):".
			end = -1
			for j := i; j+1 < len(s); j++ {
				if s[j] == ')' && (s[j+1] == '%' || s[j+1] == ':') {
					end = j - i
					break
				}
			}
		}
		if end < 0 {
			return segment{}, 0, fmt.Errorf("format %q: operator %s: missing ')'", abbrev(s), name)
		}
		arg, hasArg = s[i+1:i+end], true
		i += end + 1
	}
	maxLen := 0
	if i < len(s) && s[i] == ':' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		n, err := strconv.Atoi(s[i+1 : j])
		if err != nil || n <= 0 {
			return segment{}, 0, fmt.Errorf("format %q: operator %s: bad length %q", abbrev(s), name, s[i+1:j])
		}
		maxLen, i = n, j
	}
	if i >= len(s) || s[i] != '%' {
		return segment{}, 0, fmt.Errorf("format %q: operator %s is not closed by '%%'", abbrev(s), name)
	}
	seg := segment{maxLen: maxLen}
	switch name {
	case "REQ", "RESP":
		if !hasArg || arg == "" {
			return segment{}, 0, fmt.Errorf("operator %%%s%%: needs a header name, as in %%%s(user-agent)%%", name, name)
		}
		seg.op = opReq
		if name == "RESP" {
			seg.op = opResp
		}
		main, alt, _ := strings.Cut(arg, "?")
		var err error
		if seg.hdr, err = headerName(main, name == "REQ"); err == nil && alt != "" {
			seg.alt, err = headerName(alt, name == "REQ")
		}
		if err != nil {
			return segment{}, 0, fmt.Errorf("operator %%%s(%s)%%: %w", name, arg, err)
		}
	case "DYNAMIC_METADATA":
		parts := strings.Split(arg, ":")
		if !hasArg || parts[0] == "" || slices.Contains(parts[1:], "") {
			return segment{}, 0, fmt.Errorf("operator %%DYNAMIC_METADATA%%: needs a namespace and keys, as in %%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%%")
		}
		seg.op, seg.metaNS, seg.metaPath = opDynamicMetadata, parts[0], parts[1:]
	default:
		op, ok := simpleOps[name]
		if !ok {
			return segment{}, 0, fmt.Errorf("command operator %%%s%% is not supported (weft supports %s)", name, strings.Join(SupportedOperators(), ", "))
		}
		seg.op = op
		if hasArg {
			if op != opStartTime {
				return segment{}, 0, fmt.Errorf("operator %%%s%% takes no argument", name)
			}
			layout, err := parseStrftime(arg)
			if err != nil {
				return segment{}, 0, fmt.Errorf("operator %%START_TIME(%s)%%: %w", arg, err)
			}
			seg.layout = layout
		}
	}
	return seg, i + 1, nil
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// headerName canonicalises a header name; pseudo-headers (request only)
// are :method, :path and :authority.
func headerName(h string, request bool) (string, error) {
	if strings.HasPrefix(h, ":") {
		switch l := strings.ToLower(h); {
		case request && (l == ":method" || l == ":path" || l == ":authority"):
			return l, nil
		}
		return "", fmt.Errorf("pseudo-header %s is not supported (:method, :path and :authority in REQ)", h)
	}
	if h == "" || strings.ContainsAny(h, " %()?:") {
		return "", fmt.Errorf("bad header name %q", h)
	}
	return textproto.CanonicalMIMEHeaderKey(h), nil
}

// timePart is one piece of a START_TIME layout: literal text, a Go time
// layout, or a special (seconds since the epoch, fractional seconds).
type timePart struct {
	lit, layout string
	epoch       bool
	frac        int // digits of fractional seconds
}

// parseStrftime converts the strftime subset Envoy users write.
func parseStrftime(s string) ([]timePart, error) {
	var out []timePart
	add := func(p timePart) { out = append(out, p) }
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			add(timePart{lit: s[i : i+1]})
			continue
		}
		i++
		if i >= len(s) {
			return nil, fmt.Errorf("trailing '%%'")
		}
		c := s[i]
		if c >= '1' && c <= '9' && i+1 < len(s) && s[i+1] == 'f' {
			add(timePart{frac: int(c - '0')})
			i++
			continue
		}
		if c == 'E' && i+2 < len(s) && s[i+1] >= '1' && s[i+1] <= '9' && s[i+2] == 'S' {
			add(timePart{layout: "05"})
			add(timePart{lit: "."})
			add(timePart{frac: int(s[i+1] - '0')})
			i += 2
			continue
		}
		switch c {
		case 'Y':
			add(timePart{layout: "2006"})
		case 'm':
			add(timePart{layout: "01"})
		case 'd':
			add(timePart{layout: "02"})
		case 'H':
			add(timePart{layout: "15"})
		case 'M':
			add(timePart{layout: "04"})
		case 'S':
			add(timePart{layout: "05"})
		case 'z':
			add(timePart{layout: "-0700"})
		case 'Z':
			add(timePart{layout: "MST"})
		case 'F':
			add(timePart{layout: "2006-01-02"})
		case 'T':
			add(timePart{layout: "15:04:05"})
		case 'b':
			add(timePart{layout: "Jan"})
		case 'a':
			add(timePart{layout: "Mon"})
		case 'y':
			add(timePart{layout: "06"})
		case 'f':
			add(timePart{frac: 9})
		case 's':
			add(timePart{epoch: true})
		case '%':
			add(timePart{lit: "%"})
		default:
			return nil, fmt.Errorf("%%%c is not supported (use %%Y %%m %%d %%H %%M %%S %%z %%Z %%F %%T %%b %%a %%y %%s %%f %%Nf %%ENS)", c)
		}
	}
	return out, nil
}

const timeLayoutDefault = "2006-01-02T15:04:05.000Z"

func appendTime(b []byte, t time.Time, layout []timePart) []byte {
	t = t.UTC()
	if layout == nil {
		return t.AppendFormat(b, timeLayoutDefault)
	}
	for _, p := range layout {
		switch {
		case p.lit != "":
			b = append(b, p.lit...)
		case p.layout != "":
			b = t.AppendFormat(b, p.layout)
		case p.epoch:
			b = strconv.AppendInt(b, t.Unix(), 10)
		case p.frac > 0:
			ns := strconv.Itoa(t.Nanosecond() + 1e9)[1:]
			b = append(b, ns[:p.frac]...)
		}
	}
	return b
}

// metadataValue is the dynamic metadata value at ns and path as text
// ("" when absent): strings as they are, other values as JSON.
func (e *Entry) metadataValue(ns string, path []string) string {
	v, ok := httpfilter.MetadataValue(e.Metadata, ns, path)
	if !ok {
		return ""
	}
	if str, ok := v.(string); ok {
		return str
	}
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// hostname is %HOSTNAME%.
var hostname = func() string { h, _ := os.Hostname(); return h }()

// value is the string of one operator for e ("" when unset) and, for
// numeric operators, the number.
func (s *segment) value(e *Entry) (string, int64, bool) {
	switch s.op {
	case opProtocol:
		return e.Protocol, 0, false
	case opResponseCode:
		return "", int64(e.Code), true
	case opResponseFlags:
		return e.Flags, 0, false
	case opResponseCodeDetails:
		return e.details(), 0, false
	case opConnTermDetails:
		return e.ConnectionTerminationDetails, 0, false
	case opUpstreamFailure:
		return e.UpstreamFailure, 0, false
	case opBytesReceived:
		return "", max(e.BytesReceived, 0), true
	case opBytesSent:
		return "", max(e.BytesSent, 0), true
	case opDuration:
		return "", e.Duration.Milliseconds(), true
	case opUpstreamAttempts:
		return "", int64(e.Attempts), true
	case opReq, opResp:
		v := e.header(s.op == opResp, s.hdr)
		if v == "" && s.alt != "" {
			v = e.header(s.op == opResp, s.alt)
		}
		return v, 0, false
	case opUpstreamHost:
		return e.UpstreamHost, 0, false
	case opUpstreamCluster:
		return e.UpstreamCluster, 0, false
	case opUpstreamLocal:
		return e.UpstreamLocal, 0, false
	case opDownstreamLocal:
		return e.DownstreamLocal, 0, false
	case opDownstreamLocalNoPort:
		return withoutPort(e.DownstreamLocal), 0, false
	case opDownstreamRemote:
		return e.DownstreamRemote, 0, false
	case opDownstreamRemoteNoPort:
		return withoutPort(e.DownstreamRemote), 0, false
	case opServerName:
		return e.ServerName, 0, false
	case opRouteName:
		return e.RouteName, 0, false
	case opTraceID:
		return e.TraceID, 0, false
	case opDynamicMetadata:
		return e.metadataValue(s.metaNS, s.metaPath), 0, false
	case opHostname:
		return hostname, 0, false
	case opTLSVersion:
		return e.TLSVersion, 0, false
	case opPeerURISAN:
		return e.peerURISANs(), 0, false
	case opPeerDNSSAN:
		return e.peerDNSSANs(), 0, false
	case opPeerSubject:
		return e.peerSubject(), 0, false
	case opPeerIssuer:
		if e.PeerCert == nil {
			return "", 0, false
		}
		return e.PeerCert.Issuer.String(), 0, false
	case opPeerFingerprint256:
		return e.peerFingerprint(), 0, false
	case opGRPCStatusNumber:
		return e.GRPCStatus, 0, false
	}
	return "", 0, false
}

// The client certificate's attributes as Envoy writes them ("" without
// one): URI and DNS SANs comma-separated, the subject in RFC 2253 form,
// the SHA-256 fingerprint in hex.

func (e *Entry) peerURISANs() string {
	if e.PeerCert == nil {
		return ""
	}
	out := make([]string, len(e.PeerCert.URIs))
	for i, u := range e.PeerCert.URIs {
		out[i] = u.String()
	}
	return strings.Join(out, ",")
}

func (e *Entry) peerDNSSANs() string {
	if e.PeerCert == nil {
		return ""
	}
	return strings.Join(e.PeerCert.DNSNames, ",")
}

func (e *Entry) peerSubject() string {
	if e.PeerCert == nil {
		return ""
	}
	return e.PeerCert.Subject.String()
}

func (e *Entry) peerFingerprint() string {
	if e.PeerCert == nil {
		return ""
	}
	sum := sha256.Sum256(e.PeerCert.Raw)
	return hex.EncodeToString(sum[:])
}

func withoutPort(hp string) string {
	if i := strings.LastIndexByte(hp, ':'); i >= 0 {
		h := hp[:i]
		return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	}
	return hp
}

// header reads one header of e ("" when absent).
func (e *Entry) header(resp bool, name string) string {
	if !resp {
		switch name {
		case ":method":
			return e.Method
		case ":path":
			return e.Path
		case ":authority", "Host":
			return e.Authority
		case "X-Forwarded-For":
			return e.ForwardedFor
		case "User-Agent":
			return e.UserAgent
		case "X-Request-Id":
			return e.RequestID
		case "X-Envoy-Original-Path":
			return "" // Path is already the path as received
		}
	} else if name == "X-Envoy-Upstream-Service-Time" {
		if e.UpstreamTime < 0 || e.Method == "" {
			return ""
		}
		return strconv.FormatInt(e.UpstreamTime.Milliseconds(), 10)
	}
	for i := range e.Headers {
		if h := &e.Headers[i]; h.Response == resp && h.Name == name {
			return h.Value
		}
	}
	return ""
}

// details is RESPONSE_CODE_DETAILS: the entry's, else derived from the
// response flags as Envoy names them.
func (e *Entry) details() string {
	if e.Details != "" || e.Method == "" {
		return e.Details
	}
	switch e.Flags {
	case "":
		if e.UpstreamHost != "" {
			return "via_upstream"
		}
		if e.Code != 0 {
			return "direct_response"
		}
	case "NR":
		return "route_not_found"
	case "UH":
		return "no_healthy_upstream"
	case "UF":
		return "upstream_reset_before_response_started{connection_failure}"
	case "UO":
		return "upstream_reset_before_response_started{overflow}"
	case "UT":
		return "upstream_response_timeout"
	case "FI":
		return "fault_filter_abort"
	case "NC":
		return "cluster_not_found"
	case "RL":
		return "request_rate_limited"
	case "UAEX": // weft's JWT authentication denials
		return "jwt_authn_access_denied"
	case "RBAC":
		return "rbac_access_denied_matched_policy[none]"
	}
	return ""
}

// appendSegment writes one segment's text ("-" when unset).
func appendSegment(b []byte, s *segment, e *Entry) []byte {
	switch s.op {
	case opLiteral:
		return append(b, s.lit...)
	case opStartTime:
		return appendTime(b, e.Start, s.layout)
	}
	v, n, num := s.value(e)
	if num {
		return strconv.AppendInt(b, n, 10)
	}
	if v == "" {
		return append(b, '-')
	}
	if s.maxLen > 0 && len(v) > s.maxLen {
		v = v[:s.maxLen]
		for len(v) > 0 && !utf8.ValidString(v) {
			v = v[:len(v)-1]
		}
	}
	return append(b, v...)
}

// Append writes e's line (with its newline for JSON; text formats
// carry their own, and one is added when they end without).
func (f *Formatter) Append(b []byte, e *Entry) []byte {
	if f.json != nil || f.text == nil {
		b = appendObject(b, f.json, e)
		return append(b, '\n')
	}
	for i := range f.text {
		b = appendSegment(b, &f.text[i], e)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return b
}

func appendObject(b []byte, fs []field, e *Entry) []byte {
	b = append(b, '{')
	for i := range fs {
		fl := &fs[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, fl.key)
		b = append(b, ':')
		switch {
		case fl.nested != nil:
			b = appendObject(b, fl.nested, e)
		case fl.konst != nil:
			b = append(b, fl.konst...)
		case len(fl.value) == 1 && fl.value[0].op != opLiteral:
			s := &fl.value[0]
			if s.op == opStartTime {
				b = append(b, '"')
				b = appendTime(b, e.Start, s.layout)
				b = append(b, '"')
				break
			}
			if s.op == opDynamicMetadata {
				b = appendMetadataJSON(b, s, e)
				break
			}
			v, n, num := s.value(e)
			switch {
			case num:
				b = strconv.AppendInt(b, n, 10)
			case v == "":
				b = append(b, "null"...)
			default:
				if s.maxLen > 0 && len(v) > s.maxLen {
					v = v[:s.maxLen]
				}
				b = appendJSONString(b, v)
			}
		default:
			var tmp []byte
			for j := range fl.value {
				tmp = appendSegment(tmp, &fl.value[j], e)
			}
			b = appendJSONString(b, string(tmp))
		}
	}
	return append(b, '}')
}

// appendMetadataJSON writes a %DYNAMIC_METADATA% value that is a JSON
// field's whole value as Envoy's JSON format does: the value itself — a
// number, a boolean, an object or a list — or a string (cut to the
// operator's length), null when absent.
func appendMetadataJSON(b []byte, s *segment, e *Entry) []byte {
	v, ok := httpfilter.MetadataValue(e.Metadata, s.metaNS, s.metaPath)
	if !ok || v == nil {
		return append(b, "null"...)
	}
	if str, ok := v.(string); ok {
		if s.maxLen > 0 && len(str) > s.maxLen {
			str = str[:s.maxLen]
		}
		return appendJSONString(b, str)
	}
	js, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, js...)
}

// appendJSONString appends s as a JSON string (invalid UTF-8 becomes
// U+FFFD, as encoding/json writes it).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
