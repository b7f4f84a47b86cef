package httpfilter

import "testing"

// TestMetadataValue: a namespace, then nested keys; absent at any step
// (including through a value that is not a map) is false, a present nil
// is found, and an empty path is the namespace itself.
func TestMetadataValue(t *testing.T) {
	md := map[string]map[string]any{"ns": {"a": map[string]any{"b": "x", "n": nil}, "s": "v"}}
	for _, tc := range []struct {
		ns   string
		path []string
		want any
		ok   bool
	}{
		{"ns", []string{"a", "b"}, "x", true},
		{"ns", []string{"s"}, "v", true},
		{"ns", []string{"a", "n"}, nil, true},
		{"ns", []string{"a", "c"}, nil, false},
		{"ns", []string{"s", "x"}, nil, false},
		{"other", []string{"s"}, nil, false},
	} {
		if v, ok := MetadataValue(md, tc.ns, tc.path); v != tc.want || ok != tc.ok {
			t.Errorf("%s %v: %v %v, want %v %v", tc.ns, tc.path, v, ok, tc.want, tc.ok)
		}
	}
	if v, ok := MetadataValue(md, "ns", nil); !ok || v.(map[string]any)["s"] != "v" {
		t.Errorf("empty path: %v %v, want the namespace", v, ok)
	}
}
