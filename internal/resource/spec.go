package resource

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// UnmarshalSpec decodes an Istio spec (JSON) into m the way Istio reads it:
// durations may be written Go-style ("300ms", "1m30s", "3m"), as Istio's
// own documentation does, not only as protobuf's seconds ("0.300s").
// Unknown fields are errors unless discardUnknown is set.
func UnmarshalSpec(raw []byte, m proto.Message, discardUnknown bool) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	v = canonicalDurations(v, m.ProtoReflect().Descriptor())
	canon, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.UnmarshalOptions{DiscardUnknown: discardUnknown}.Unmarshal(canon, m)
}

// canonicalDuration turns a Go duration into protobuf's JSON form; other
// strings are returned unchanged (protojson then reports them).
func canonicalDuration(s string) string {
	if strings.HasSuffix(s, "s") {
		if _, err := strconv.ParseFloat(strings.TrimSuffix(s, "s"), 64); err == nil {
			return s // already "1.5s"
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	return fmt.Sprintf("%d.%09ds", int64(d/time.Second), int64(d%time.Second))
}

// canonicalDurations walks a decoded JSON value alongside a message
// descriptor and rewrites every google.protobuf.Duration it finds.
func canonicalDurations(v any, md protoreflect.MessageDescriptor) any {
	if md.FullName() == "google.protobuf.Duration" {
		if s, ok := v.(string); ok {
			return canonicalDuration(s)
		}
		return v
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return v
	}
	for key, val := range obj {
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		if fd == nil || val == nil {
			continue
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				continue
			}
			if m, ok := val.(map[string]any); ok {
				for k, e := range m {
					m[k] = canonicalDurations(e, fd.MapValue().Message())
				}
			}
		case fd.Kind() != protoreflect.MessageKind:
		case fd.IsList():
			if l, ok := val.([]any); ok {
				for i, e := range l {
					l[i] = canonicalDurations(e, fd.Message())
				}
			}
		default:
			obj[key] = canonicalDurations(val, fd.Message())
		}
	}
	return obj
}
