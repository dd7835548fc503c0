package chart_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// helmVersion is built from its Go module, never taken from PATH, so every
// machine renders the chart with the same helm.
const helmVersion = "v3.22.0"

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
	helmBin, err = buildHelm()
	return err
}

// buildHelm installs helm into the user cache once; later runs reuse it.
// The first build takes minutes on a small machine.
func buildHelm() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "wsgate", "helm-"+helmVersion)
	bin := filepath.Join(dir, "helm")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build helm: %w", err)
	}
	// Install into a fresh directory and rename, so an interrupted build
	// never leaves a half-written binary that later runs would trust.
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("build helm: %w", err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "install", "helm.sh/helm/v3/cmd/helm@"+helmVersion)
	cmd.Dir = tmp // outside this module: helm's own go.mod decides its dependencies
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build helm %s (go install): %w\n%s", helmVersion, err, out.Bytes())
	}
	if err := os.Rename(filepath.Join(tmp, "helm"), bin); err != nil {
		return "", fmt.Errorf("build helm: %w", err)
	}
	return bin, nil
}

// runHelm runs helm with a private home, so no user repositories or
// plugins change the outcome, and returns stdout and stderr.
func runHelm(t *testing.T, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
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
