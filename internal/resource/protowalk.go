package resource

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkMessage walks a decoded JSON value alongside a protobuf message
// descriptor and reports unknown fields, wrong types and bad enum values with
// the full path of the offending field. protojson would catch most of these
// too, but names a byte offset rather than the field.
func checkMessage(es *FieldErrors, path string, v any, md protoreflect.MessageDescriptor) {
	if v == nil {
		return
	}
	switch md.FullName() {
	case "google.protobuf.Duration":
		s, ok := v.(string)
		if !ok {
			es.add(path, "Invalid value: a duration must be a string such as \"1.5s\"")
			return
		}
		if _, err := time.ParseDuration(s); err != nil {
			secs, ok := strings.CutSuffix(s, "s")
			if _, ferr := strconv.ParseFloat(secs, 64); !ok || ferr != nil {
				es.add(path, "Invalid value: %q: not a duration; write it like \"10s\", \"300ms\" or \"1m30s\"", s)
			}
		}
		return
	case "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any":
		return
	case "google.protobuf.Timestamp", "google.protobuf.FieldMask":
		if _, ok := v.(string); !ok {
			es.add(path, "Invalid value: must be a string")
		}
		return
	case "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
		"google.protobuf.Int32Value", "google.protobuf.UInt32Value", "google.protobuf.Int64Value",
		"google.protobuf.UInt64Value", "google.protobuf.FloatValue", "google.protobuf.DoubleValue":
		checkScalar(es, path, v, md.Fields().ByName("value"))
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		es.add(path, "Invalid value: expected an object, got %s", jsonType(v))
		return
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	oneofs := map[protoreflect.FullName]string{}
	for _, key := range keys {
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		sub := path + "." + key
		if fd == nil {
			es.add(sub, "unknown field %q%s", key, suggest(key, md))
			continue
		}
		val := obj[key]
		if val == nil {
			continue
		}
		if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() {
			if prev, dup := oneofs[o.FullName()]; dup {
				es.add(sub, "Forbidden: only one of %q and %q may be set", prev, key)
			}
			oneofs[o.FullName()] = key
		}
		switch {
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				es.add(sub, "Invalid value: expected a map, got %s", jsonType(val))
				continue
			}
			mk := make([]string, 0, len(m))
			for k := range m {
				mk = append(mk, k)
			}
			sort.Strings(mk)
			for _, k := range mk {
				checkField(es, sub+"["+strconv.Quote(k)+"]", m[k], fd.MapValue())
			}
		case fd.IsList():
			l, ok := val.([]any)
			if !ok {
				es.add(sub, "Invalid value: expected a list, got %s", jsonType(val))
				continue
			}
			for i, e := range l {
				checkField(es, fmt.Sprintf("%s[%d]", sub, i), e, fd)
			}
		default:
			checkField(es, sub, val, fd)
		}
	}
}

func checkField(es *FieldErrors, path string, v any, fd protoreflect.FieldDescriptor) {
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		checkMessage(es, path, v, fd.Message())
		return
	}
	checkScalar(es, path, v, fd)
}

func checkScalar(es *FieldErrors, path string, v any, fd protoreflect.FieldDescriptor) {
	if v == nil {
		return
	}
	switch fd.Kind() {
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		switch x := v.(type) {
		case string:
			if values.ByName(protoreflect.Name(x)) != nil {
				return
			}
		case float64:
			if x == math.Trunc(x) && values.ByNumber(protoreflect.EnumNumber(int32(x))) != nil {
				return
			}
		}
		names := make([]string, values.Len())
		for i := range names {
			names[i] = strconv.Quote(string(values.Get(i).Name()))
		}
		es.add(path, "Unsupported value: %v: supported values: %s", quoteIfString(v), strings.Join(names, ", "))
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			es.add(path, "Invalid value: expected a string, got %s", jsonType(v))
		}
	case protoreflect.BytesKind:
		if _, ok := v.(string); !ok {
			es.add(path, "Invalid value: expected a base64 string, got %s", jsonType(v))
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			es.add(path, "Invalid value: expected true or false, got %s", jsonType(v))
		}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		switch x := v.(type) {
		case float64:
		case string:
			if _, err := strconv.ParseFloat(x, 64); err != nil {
				es.add(path, "Invalid value: %q: expected a number", x)
			}
		default:
			es.add(path, "Invalid value: expected a number, got %s", jsonType(v))
		}
	default: // integers
		checkInteger(es, path, v, fd.Kind())
	}
}

func checkInteger(es *FieldErrors, path string, v any, kind protoreflect.Kind) {
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case string:
		p, err := strconv.ParseFloat(x, 64)
		if err != nil {
			es.add(path, "Invalid value: %q: expected an integer", x)
			return
		}
		f = p
	default:
		es.add(path, "Invalid value: expected an integer, got %s", jsonType(v))
		return
	}
	if f != math.Trunc(f) {
		es.add(path, "Invalid value: %v: expected an integer", f)
		return
	}
	lo, hi := float64(math.MinInt64), float64(math.MaxInt64)
	switch kind {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		lo, hi = math.MinInt32, math.MaxInt32
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		lo, hi = 0, math.MaxUint32
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		lo, hi = 0, math.MaxUint64
	}
	if f < lo || f > hi {
		es.add(path, "Invalid value: %v: must be between %v and %v", v, lo, hi)
	}
}

func suggest(key string, md protoreflect.MessageDescriptor) string {
	lk := strings.ToLower(key)
	var names []string
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		jn := fields.Get(i).JSONName()
		if strings.ToLower(jn) == lk || editDistance(strings.ToLower(jn), lk) <= 2 {
			return fmt.Sprintf(" (did you mean %q?)", jn)
		}
		names = append(names, jn)
	}
	if len(names) > 12 {
		return ""
	}
	sort.Strings(names)
	return " (known fields: " + strings.Join(names, ", ") + ")"
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func jsonType(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case float64:
		return fmt.Sprintf("number %v", x)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func quoteIfString(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}
