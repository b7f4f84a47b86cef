// Package conventions checks by machine the rules STYLE.md and DESIGN.md
// state: every package has a doc comment, and the dependency rules between
// packages hold.
package conventions

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Name       string
	Imports    []string
	GoFiles    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "github.com/weftmesh/weft/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) > 0 && strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// TestDependencyRules: registry sources never import each other, and
// nothing under internal/ but the CLI and the server assembly imports the
// store backends directly.
func TestDependencyRules(t *testing.T) {
	const mod = "github.com/weftmesh/weft/"
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			if strings.HasPrefix(p.ImportPath, mod+"internal/registry/") && p.ImportPath != mod+"internal/registry/all" &&
				strings.HasPrefix(imp, mod+"internal/registry/") && imp != mod+"internal/registry" {
				t.Errorf("%s imports %s: registry sources must not import each other", p.ImportPath, imp)
			}
			if strings.HasPrefix(p.ImportPath, mod+"internal/pilot/translate") && (imp == "net" || strings.HasPrefix(imp, "net/http") || strings.HasPrefix(imp, "os") || imp == "io/ioutil") {
				t.Errorf("%s imports %s: translate is pure", p.ImportPath, imp)
			}
			if (imp == mod+"internal/store/bolt" || imp == mod+"internal/store/etcd") &&
				!strings.HasPrefix(p.ImportPath, mod+"internal/store/") && !strings.HasPrefix(p.ImportPath, mod+"bench/") {
				t.Errorf("%s imports the backend %s directly: use store.Open (backends register themselves)", p.ImportPath, imp)
			}
		}
	}
}
