package chart_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/wsgate/wsgate/test/helmtest"
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
	os.Exit(m.Run())
}

func setup() error {
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Join(filepath.Dir(file), "..", "..")
	chartDir = filepath.Join(repoRoot, "charts", "wsgate")
	var err error
	helmBin, err = helmtest.Build()
	return err
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
