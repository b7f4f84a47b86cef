package accesslog

import (
	"strings"
	"testing"
)

// TestCheckRemembers: CheckFilter and CheckValue give ParseFilter's and
// ParseValue's verdicts, the same on a second call (from the memo).
func TestCheckRemembers(t *testing.T) {
	for range 2 {
		if err := CheckFilter(`response.code >= 500`); err != nil {
			t.Fatal(err)
		}
		_, want := ParseFilter(`response.code +`)
		if err := CheckFilter(`response.code +`); err == nil || want == nil || err.Error() != want.Error() {
			t.Fatalf("CheckFilter of a broken expression: %v, ParseFilter's: %v", err, want)
		}
		// A value need not be a bool; a filter must.
		if err := CheckValue(`size("abc")`); err != nil {
			t.Fatal(err)
		}
		if err := CheckFilter(`size("abc")`); err == nil || !strings.Contains(err.Error(), "not a bool") {
			t.Fatalf("CheckFilter(size): %v", err)
		}
	}
}

func BenchmarkCheckFilter(b *testing.B) {
	for b.Loop() {
		if err := CheckFilter(`response.code >= 400 && request.headers["x-debug"] == "1"`); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseFilter(b *testing.B) {
	for b.Loop() {
		if _, err := ParseFilter(`response.code >= 400 && request.headers["x-debug"] == "1"`); err != nil {
			b.Fatal(err)
		}
	}
}
