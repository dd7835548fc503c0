// Package alerts tests wsgate's alert rules (monitoring/rules): promtool's
// check and unit tests, the chart's copy, the runbooks, and the rules in a
// real Prometheus scraping a real tracker and scaler (alerts_test.go).
// Prometheus and promtool come from Debian's prometheus package (make deps);
// without them the tests are skipped, and under CI=true they fail.
package alerts

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// root is the repository's root directory.
func root(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// rulesFile is the one source of the rules; chartRules its copy in the chart.
const (
	rulesFile  = "monitoring/rules/wsgate.rules.yaml"
	rulesTests = "monitoring/rules/wsgate.rules_test.yaml"
	chartRules = "charts/wsgate/files/wsgate.rules.yaml"
	runbooks   = "monitoring/runbooks"
	runbookURL = "https://github.com/wsgate/wsgate/blob/main/monitoring/runbooks/"
)

// tool returns the path of a binary of Debian's prometheus package.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found on PATH: CI requires it (make deps installs Debian's prometheus package)", name)
	}
	t.Skipf("%s not found on PATH; run `make deps` (or apt-get install prometheus)", name)
	return ""
}

func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(tool(t, "promtool"), args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestRulesCheck(t *testing.T) {
	promtool(t, root(t), "check", "rules", rulesFile)
}

// TestRulesUnit runs promtool's unit tests: each alert firing on its input
// series and not on the ones that must not fire it.
func TestRulesUnit(t *testing.T) {
	promtool(t, filepath.Join(root(t), filepath.Dir(rulesTests)), "test", "rules", filepath.Base(rulesTests))
}

// TestChartCopyOfRules: Helm cannot read outside the chart, so the chart
// holds a copy; scripts/chart-sync.sh makes it.
func TestChartCopyOfRules(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(root(t), rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := os.ReadFile(filepath.Join(root(t), chartRules))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, cp) {
		t.Fatalf("%s differs from %s: run scripts/chart-sync.sh", chartRules, rulesFile)
	}
}

// ruleFile is the part of a Prometheus rules file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root(t), rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// TestRunbooks: every alert names its runbook, the file exists and says
// what the alert means and what to do, and every runbook has its alert.
func TestRunbooks(t *testing.T) {
	alerts := map[string]bool{}
	for _, r := range readRules(t) {
		alerts[r.Alert] = true
		want := runbookURL + r.Alert + ".md"
		if got := r.Annotations["runbook_url"]; got != want {
			t.Errorf("%s: runbook_url %q, want %q", r.Alert, got, want)
		}
		doc, err := os.ReadFile(filepath.Join(root(t), runbooks, r.Alert+".md"))
		if err != nil {
			t.Errorf("%s: %v", r.Alert, err)
			continue
		}
		for _, part := range []string{"# " + r.Alert + "\n", "**What it means.**", "**Do.**"} {
			if !bytes.Contains(doc, []byte(part)) {
				t.Errorf("%s.md: no %q", r.Alert, part)
			}
		}
		if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
		}
	}
	files, err := filepath.Glob(filepath.Join(root(t), runbooks, "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".md"); !alerts[name] {
			t.Errorf("runbook %s has no alert in %s", filepath.Base(f), rulesFile)
		}
	}
	if len(alerts) != 9 {
		t.Errorf("%d alerts, want the 8 of issue 24 (cap, Redis unreachable, recovery wait, fallback, scaler holding, fleets file, heartbeat, Redis errors) and issue 26's split-brain risk", len(alerts))
	}
}
