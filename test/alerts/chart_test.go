package alerts

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/test/helmtest"
)

// kubeVersion is the Kubernetes version the chart is rendered for (the
// chart needs 1.27 or later; test/chart renders for the same).
const kubeVersion = "1.31.0"

// TestChartPrometheusRule renders the chart's opt-in PrometheusRule and
// holds it to the rules file: the same groups, the runbook links under the
// configured base, and valid for promtool. Off by default.
func TestChartPrometheusRule(t *testing.T) {
	bin, err := helmtest.Build()
	if err != nil {
		t.Fatal(err)
	}
	chart := filepath.Join(root(t), "charts", "wsgate")
	render := func(args ...string) []byte {
		t.Helper()
		out, errOut, err := helmtest.Run(t, bin, append([]string{"template", "wsg", chart, "--namespace", "edge",
			"--kube-version", kubeVersion, "--show-only", "templates/prometheusrule.yaml"}, args...)...)
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", args, err, errOut)
		}
		return out
	}
	if _, errOut, err := helmtest.Run(t, bin, "template", "wsg", chart, "--kube-version", kubeVersion, "--show-only", "templates/prometheusrule.yaml"); err == nil {
		t.Error("PrometheusRule rendered with the defaults: it must be opt-in")
	} else if !strings.Contains(string(errOut), "could not find template") {
		t.Fatalf("helm template with the defaults: %v\n%s", err, errOut)
	}

	base := "https://runbooks.example.com/wsgate/"
	out := render("--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.prometheusRule.runbookBaseURL="+base,
		"--set", "monitoring.prometheusRule.labels.release=kube-prometheus-stack")
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec ruleFile `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(out, &pr); err != nil {
		t.Fatalf("PrometheusRule: %v\n%s", err, out)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" || pr.Metadata.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule header: %s %s labels %v", pr.APIVersion, pr.Kind, pr.Metadata.Labels)
	}

	src, err := os.ReadFile(filepath.Join(root(t), rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var want ruleFile
	if err := yaml.UnmarshalStrict([]byte(strings.ReplaceAll(string(src), runbookURL, base)), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pr.Spec, want) {
		t.Errorf("the PrometheusRule's groups differ from %s with runbooks under %s:\n%s", rulesFile, base, out)
	}

	// What the Prometheus Operator hands Prometheus is spec as a rules file.
	spec, err := yaml.Marshal(pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), spec, 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, dir, "check", "rules", "rules.yaml")
}
