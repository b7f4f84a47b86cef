package consul

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoOtherSources: registry sources never import each other, not even in
// tests (the conventions test checks non-test imports module-wide).
func TestNoOtherSources(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "github.com/weftmesh/weft/internal/registry/"
	for _, f := range files {
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, prefix) {
				t.Errorf("%s imports %s: registry sources must not import each other", f, p)
			}
		}
	}
}
