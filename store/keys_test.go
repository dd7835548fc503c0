package store

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Only package store spells a Redis key: every other package, tests
// included, names keys through Keys. The scan looks at every Go file of
// the module outside store/ for the string literals a key is built from:
// one holding "}:<name>" (a whole key spelled out), one that is a
// parametrised suffix ("inst:", "scaler:", ...) wherever it appears, and
// one that is any other suffix ("stats", "scalers", ...) joined to
// something with +. A plain word used for something else ("pods" as a JSON
// field, "scaler" as a command) is not a key and passes.
func TestNoKeyIsSpelledOutsideTheStore(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found above store/: %v", err)
	}
	var param, whole []string
	for _, k := range keyNames {
		if strings.HasSuffix(k, ":") {
			param = append(param, k)
		} else {
			whole = append(whole, k)
		}
	}
	isKey := func(lit string, joined bool) bool {
		if i := strings.Index(lit, "}:"); i >= 0 {
			rest := lit[i+2:]
			for _, k := range keyNames {
				if strings.HasPrefix(rest, k) {
					return true
				}
			}
		}
		for _, k := range param {
			if lit == k || (joined && strings.HasPrefix(lit, k)) {
				return true
			}
		}
		return joined && slices.Contains(whole, lit)
	}
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "store" || strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "vendor" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		files++
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		joined := map[*ast.BasicLit]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			if b, ok := n.(*ast.BinaryExpr); ok && b.Op == token.ADD {
				for _, e := range []ast.Expr{b.X, b.Y} {
					if l, ok := e.(*ast.BasicLit); ok {
						joined[l] = true
					}
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			l, ok := n.(*ast.BasicLit)
			if !ok || l.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(l.Value)
			if err == nil && isKey(s, joined[l]) {
				t.Errorf("%s: the key name %q is spelled outside package store: use store.Keys", fset.Position(l.Pos()), s)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("scanned %d Go files: the walk missed the module", files)
	}
}

// The scripts build some keys from the fleet's prefix (lib.lua says why):
// only with the suffixes keys.go names.
func TestScriptsBuildOnlyNamedKeys(t *testing.T) {
	built := regexp.MustCompile(`\bprefix \.\. '([^']*)'`)
	entries, err := scriptFS.ReadDir("scripts")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, e := range entries {
		src, err := scriptFS.ReadFile("scripts/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range built.FindAllStringSubmatch(string(src), -1) {
			seen++
			if !slices.Contains(keyNames, m[1]) {
				t.Errorf("%s builds the key <prefix>%s, which keys.go does not name", e.Name(), m[1])
			}
		}
		if strings.Contains(string(src), "ARGV[1] ..") {
			t.Errorf("%s builds a key from ARGV[1]: name the prefix first (local prefix = ARGV[1])", e.Name())
		}
	}
	if seen == 0 {
		t.Fatal("no key built in the scripts: the pattern is stale")
	}
}

// Every script names its KEYS and ARGV once, at its top: a fixed position
// appears nowhere else in its body.
func TestScriptsNameTheirKeysAndArguments(t *testing.T) {
	fixed := regexp.MustCompile(`\b(KEYS|ARGV)\[\d+\]`)
	entries, err := scriptFS.ReadDir("scripts")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		src, err := scriptFS.ReadFile("scripts/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		top := true // in the comments and local declarations that open the script
		for i, line := range strings.Split(string(src), "\n") {
			code, _, _ := strings.Cut(line, "--")
			if strings.TrimSpace(code) == "" {
				continue
			}
			named := strings.HasPrefix(code, "local ") || strings.HasPrefix(code, "  KEYS[")
			top = top && named
			if fixed.MatchString(code) && !top {
				t.Errorf("%s:%d: %s: a fixed KEYS/ARGV position outside the names at the top", e.Name(), i+1, strings.TrimSpace(line))
			}
		}
	}
}
