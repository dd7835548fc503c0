// Package wsgatebin builds the wsgate binary that process-level tests run
// (test/faults, test/alerts, test/chart, test/monitoring): once per test
// binary, from the checkout this file is in, whichever module imports it.
package wsgatebin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once sync.Once
	dir  string
	path string
	err  error
)

// Build builds ./cmd/wsgate into a temporary directory on its first call
// and returns the binary's path; later calls return the same one. Remove
// deletes it.
func Build() (string, error) {
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		if dir, err = os.MkdirTemp("", "wsgate-bin-"); err != nil {
			return
		}
		path = filepath.Join(dir, "wsgate")
		cmd := exec.Command("go", "build", "-o", path, "./cmd/wsgate")
		cmd.Dir = root
		if out, e := cmd.CombinedOutput(); e != nil {
			err = fmt.Errorf("go build ./cmd/wsgate in %s: %v\n%s", root, e, out)
		}
	})
	return path, err
}

// Path is Build for a test: it fails t when the build fails.
func Path(t testing.TB) string {
	t.Helper()
	p, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Remove deletes what Build built; call it from TestMain after m.Run.
func Remove() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}
