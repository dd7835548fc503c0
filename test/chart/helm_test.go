package chart_test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/wsgate/wsgate/test/helmtest"
	"github.com/wsgate/wsgate/test/wsgatebin"
)

// kubeVersion is passed to helm explicitly: a helm built with go install
// lacks the release build's ldflags and would assume Kubernetes 1.20.
const kubeVersion = "1.31.0"

var (
	helmBin  string
	chartDir string
	repoRoot string
)

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "test/chart:", err)
		os.Exit(1)
	}
	code := m.Run()
	wsgatebin.Remove()
	os.Exit(code)
}

func setup() error {
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Join(filepath.Dir(file), "..", "..")
	chartDir = filepath.Join(repoRoot, "charts", "wsgate")
	var err error
	helmBin, err = helmtest.Build()
	return err
}

// installLine is the line of the filter that the envoyGateway and istio
// profiles replace with the filter's settings (templates/_dataplane.tpl).
const installLine = "local INSTALL = {}"

// copyChart copies the chart at dir into a new temporary directory, with
// files/wsgate.lua passed through edit.
func copyChart(dir string, edit func([]byte) []byte) (string, error) {
	dst, err := os.MkdirTemp("", "wsgate-chart-")
	if err != nil {
		return "", err
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == filepath.Join("files", "wsgate.lua") {
			b = edit(b)
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	return dst, err
}

// runHelm runs the pinned helm and returns stdout and stderr.
func runHelm(t *testing.T, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	return helmtest.Run(t, helmBin, args...)
}

// valuesArgs turns a value set's testdata file (empty: the chart's defaults)
// and extra helm arguments (--set, --set-json) into helm arguments.
func valuesArgs(file string, extra ...string) []string {
	var args []string
	if file != "" {
		args = append(args, "--values", filepath.Join("testdata", file))
	}
	return append(args, extra...)
}

// template renders the chart and fails the test when helm does.
func template(t *testing.T, file string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"template", "wsg", chartDir, "--namespace", "edge", "--kube-version", kubeVersion}, valuesArgs(file, extra...)...)
	out, errOut, err := runHelm(t, args...)
	if err != nil {
		t.Fatalf("helm template %s: %v\n%s", file, err, errOut)
	}
	return out
}
