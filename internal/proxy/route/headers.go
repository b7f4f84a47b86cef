package route

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// AppendAction is what a header operation does when the header exists, as
// Envoy's HeaderValueOption.HeaderAppendAction.
type AppendAction uint8

const (
	// AppendIfExistsOrAdd adds one more value (Envoy's default).
	AppendIfExistsOrAdd AppendAction = iota
	// AddIfAbsent adds the header only when it is not there.
	AddIfAbsent
	// OverwriteIfExistsOrAdd replaces all values, or adds the header.
	OverwriteIfExistsOrAdd
	// OverwriteIfExists replaces all values only when the header is there.
	OverwriteIfExists
)

// HeaderOp sets, appends or adds one header value.
type HeaderOp struct {
	// Key is the canonical header key.
	Key string
	// Value is the literal value ("%%" in the configuration is already
	// unescaped to "%").
	Value  string
	Action AppendAction
}

// HeaderOps are one level's header operations: Remove first, then Add in
// order, as Envoy evaluates them.
type HeaderOps struct {
	// Remove lists canonical keys to delete.
	Remove []string
	// Add lists the values to add or set, in configuration order.
	Add []HeaderOp
}

// Empty reports whether o does nothing.
func (o *HeaderOps) Empty() bool { return o == nil || (len(o.Remove) == 0 && len(o.Add) == 0) }

// Apply performs o on h.
func (o *HeaderOps) Apply(h http.Header) {
	if o.Empty() {
		return
	}
	for _, k := range o.Remove {
		delete(h, k)
	}
	for _, op := range o.Add {
		_, exists := h[op.Key]
		switch op.Action {
		case AppendIfExistsOrAdd:
			h[op.Key] = append(h[op.Key], op.Value)
		case AddIfAbsent:
			if !exists {
				h[op.Key] = []string{op.Value}
			}
		case OverwriteIfExistsOrAdd:
			h[op.Key] = []string{op.Value}
		case OverwriteIfExists:
			if exists {
				h[op.Key] = []string{op.Value}
			}
		}
	}
}

// compileHeaderOps compiles one level's headers_to_add/headers_to_remove.
// Pseudo-headers and (for requests) Host cannot be changed this way; header
// values must be literals (Envoy's %COMMAND% formatters are not supported;
// "%%" is a literal "%").
func compileHeaderOps(add []*corev3.HeaderValueOption, remove []string, request bool) (HeaderOps, error) {
	var out HeaderOps
	for _, k := range remove {
		if err := modifiable(k, request); err != nil {
			return out, fmt.Errorf("headers_to_remove: %w", err)
		}
		out.Remove = append(out.Remove, http.CanonicalHeaderKey(k))
	}
	for i, hv := range add {
		op, keep, err := compileHeaderOp(hv, request)
		if err != nil {
			return out, fmt.Errorf("headers_to_add[%d] (%s): %w", i, hv.GetHeader().GetKey(), err)
		}
		if keep {
			out.Add = append(out.Add, op)
		}
	}
	return out, nil
}

// compileHeaderOp compiles one HeaderValueOption; keep is false for an
// empty value without keep_empty_value (Envoy drops it).
func compileHeaderOp(hv *corev3.HeaderValueOption, request bool) (op HeaderOp, keep bool, err error) {
	if err := checkFields(hv, "header value option"); err != nil {
		return op, false, err
	}
	h := hv.GetHeader()
	if h == nil {
		return op, false, errors.New("header is required")
	}
	if err := checkFields(h, "header"); err != nil {
		return op, false, err
	}
	if err := modifiable(h.GetKey(), request); err != nil {
		return op, false, err
	}
	value := h.GetValue()
	if len(h.GetRawValue()) > 0 {
		value = string(h.GetRawValue())
	}
	if value, err = literal(value); err != nil {
		return op, false, err
	}
	op = HeaderOp{Key: http.CanonicalHeaderKey(h.GetKey()), Value: value}
	legacyAppend := legacyAppend(hv)
	switch hv.GetAppendAction() {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		op.Action = AppendIfExistsOrAdd
		if a := legacyAppend; a != nil && !a.GetValue() {
			op.Action = OverwriteIfExistsOrAdd // deprecated append: false
		}
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		op.Action = AddIfAbsent
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		op.Action = OverwriteIfExistsOrAdd
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		op.Action = OverwriteIfExists
	default:
		return op, false, fmt.Errorf("append_action %v: %w", hv.GetAppendAction(), ErrUnsupported)
	}
	if legacyAppend != nil && hv.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
		return op, false, errors.New("append and append_action are exclusive")
	}
	return op, value != "" || hv.GetKeepEmptyValue(), nil
}

// legacyAppend reads the deprecated append field, still honoured as Envoy
// does (false means overwrite).
func legacyAppend(hv *corev3.HeaderValueOption) *wrapperspb.BoolValue {
	//lint:ignore SA1019 deprecated but still honoured
	return hv.GetAppend()
}

// modifiable rejects header names Envoy does not let routes change.
func modifiable(key string, request bool) error {
	k := strings.ToLower(key)
	switch {
	case k == "":
		return errors.New("empty header name")
	case strings.HasPrefix(k, ":"):
		return fmt.Errorf("pseudo-header %s cannot be modified", key)
	case request && k == "host":
		return errors.New("host cannot be modified here (use host_rewrite_literal)")
	case strings.ContainsAny(k, " \t\r\n:"):
		return fmt.Errorf("invalid header name %q", key)
	}
	return nil
}

// literal unescapes "%%" and rejects formatter commands (%NAME%), which
// need request data this package does not interpret.
func literal(v string) (string, error) {
	if strings.IndexByte(v, '%') < 0 {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("header value %q: formatter commands: %w (use %%%% for a literal %%)", v, ErrUnsupported)
	}
	return b.String(), nil
}
