// Package helmtest builds the helm that the chart's tests run, from its Go
// module at one pinned version (never the one on PATH, so every machine
// renders and installs the chart with the same helm), and runs it with a
// private home, so no user repositories or plugins change the outcome.
package helmtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Version is the helm release the tests build: the newest approved v3
// release (v3.22.0 is served but not approved).
const Version = "v3.21.4"

// Build installs helm into the user cache once and returns its path; later
// calls (and runs) reuse it. The first build takes minutes on a small
// machine.
func Build() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "wsgate", "helm-"+Version)
	bin := filepath.Join(dir, "helm")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build helm: %w", err)
	}
	// Install into a fresh directory and rename, so an interrupted build
	// (or two test packages building at once) never leaves a half-written
	// binary that later runs would trust.
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("build helm: %w", err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "install", "helm.sh/helm/v3/cmd/helm@"+Version)
	cmd.Dir = tmp // outside this module: helm's own go.mod decides its dependencies
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build helm %s (go install): %w\n%s", Version, err, out.Bytes())
	}
	if err := os.Rename(filepath.Join(tmp, "helm"), bin); err != nil {
		return "", fmt.Errorf("build helm: %w", err)
	}
	return bin, nil
}

// Run runs the helm at bin with a private home and returns its stdout and
// stderr.
func Run(t testing.TB, bin string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
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
