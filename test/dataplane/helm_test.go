// Package dataplane_test renders the chart's envoyGateway and istio profiles
// with the real helm and decodes every object strictly into its project's
// Go types (Envoy Gateway's api/v1alpha1, Istio's API, Kubernetes'), and
// every Envoy fragment they carry into go-control-plane with ValidateAll.
// It is a module of its own so that those projects' dependencies stay out
// of wsgate's go.mod.
package dataplane_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/wsgate/wsgate/test/helmtest"
)

const (
	kubeVersion = "1.31.0" // a helm built with go install assumes 1.20
	release     = "wsg"
	namespace   = "edge"
	fullname    = "wsg-wsgate"
	// installLine is the filter's line that these profiles replace with the
	// filter's settings (charts/wsgate/templates/_dataplane.tpl).
	installLine = "local INSTALL = {}"
)

var (
	helmBin  string
	chartDir string
	// filterLua is the chart's copy of the filter, as the chart reads it.
	filterLua []byte
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "..", "..", "charts", "wsgate")
	var err error
	chartDir = src
	filterLua, err = os.ReadFile(filepath.Join(chartDir, "files", "wsgate.lua"))
	if err == nil {
		helmBin, err = helmtest.Build()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/dataplane:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// template renders the chart with a testdata values file and extra helm
// arguments, failing the test when helm does.
func template(t *testing.T, file string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion,
		"--values", filepath.Join("testdata", file)}, extra...)
	out, errOut, err := helmtest.Run(t, helmBin, args...)
	if err != nil {
		t.Fatalf("helm template %s %v: %v\n%s", file, extra, err, errOut)
	}
	return out
}

// TestLint: helm's own checks, strict, on every profile's values.
func TestLint(t *testing.T) {
	for _, args := range [][]string{
		{"--values", filepath.Join("testdata", "envoygateway.yaml")},
		{"--values", filepath.Join("testdata", "envoygateway.yaml"), "--set", "dataPlane.envoyGateway.luaSource=ValueRef"},
		{"--values", filepath.Join("testdata", "istio.yaml")},
		{"--values", filepath.Join("testdata", "istio.yaml"), "--set", "dataPlane.istio.filter=EnvoyFilter", "--set", "dataPlane.istio.trackerCluster=serviceEntry"},
	} {
		out, errOut, err := helmtest.Run(t, helmBin, append([]string{"lint", "--strict", "--kube-version", kubeVersion, chartDir}, args...)...)
		if err != nil {
			t.Errorf("helm lint %v: %v\n%s%s", args, err, out, errOut)
		}
	}
}
