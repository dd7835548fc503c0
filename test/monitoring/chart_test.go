package monitoring

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/test/helmtest"
)

// TestChartCopiesMatch: the chart carries the dashboards as copies (helm
// reads no file outside the chart); scripts/chart-sync.sh makes them.
func TestChartCopiesMatch(t *testing.T) {
	src := filepath.Join(repoRoot, "monitoring", "dashboards")
	dst := filepath.Join(repoRoot, "charts", "wsgate", "files", "dashboards")
	names := func(dir string) map[string]bool {
		m := map[string]bool{}
		for _, f := range dashboardFiles(t, dir) {
			m[filepath.Base(f)] = true
		}
		return m
	}
	want, got := names(src), names(dst)
	for n := range want {
		a, _ := os.ReadFile(filepath.Join(src, n))
		b, err := os.ReadFile(filepath.Join(dst, n))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("charts/wsgate/files/dashboards/%s differs from monitoring/dashboards/%s: run scripts/chart-sync.sh", n, n)
		}
	}
	for n := range got {
		if !want[n] {
			t.Errorf("charts/wsgate/files/dashboards/%s has no source in monitoring/dashboards: remove it", n)
		}
	}
}

// TestChartRendersDashboards renders the chart with the real helm: one
// ConfigMap per dashboard, labelled and annotated as values say, holding
// the dashboard byte for byte; none by default.
func TestChartRendersDashboards(t *testing.T) {
	helm, err := helmtest.Build()
	if err != nil {
		t.Fatal(err)
	}
	chart := filepath.Join(repoRoot, "charts", "wsgate")
	render := func(t *testing.T, set ...string) map[string]corev1.ConfigMap {
		t.Helper()
		args := []string{"template", "wsg", chart, "--namespace", "edge", "--kube-version", "1.31.0"}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		out, errOut, err := helmtest.Run(t, helm, args...)
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", set, err, errOut)
		}
		cms := map[string]corev1.ConfigMap{}
		for _, doc := range strings.Split(string(out), "\n---\n") {
			doc += "\n" // the separator took the document's last newline
			var cm corev1.ConfigMap
			if err := yaml.Unmarshal([]byte(doc), &cm); err != nil || cm.Kind != "ConfigMap" || !strings.Contains(cm.Name, "-dashboard-") {
				continue
			}
			if err := yaml.UnmarshalStrict([]byte(doc), &cm); err != nil {
				t.Fatalf("ConfigMap %s does not decode strictly: %v", cm.Name, err)
			}
			cms[cm.Name] = cm
		}
		return cms
	}
	files := dashboardFiles(t, filepath.Join(repoRoot, "monitoring", "dashboards"))

	t.Run("off by default", func(t *testing.T) {
		if cms := render(t); len(cms) != 0 {
			t.Errorf("dashboards rendered without monitoring.dashboards.enabled: %v", keys(cms))
		}
	})
	t.Run("defaults", func(t *testing.T) {
		cms := render(t, "monitoring.dashboards.enabled=true")
		if len(cms) != len(files) {
			t.Fatalf("%d dashboard ConfigMaps %v, want one per file of monitoring/dashboards (%d)", len(cms), keys(cms), len(files))
		}
		for _, f := range files {
			base := filepath.Base(f)
			name := "wsg-wsgate-dashboard-" + strings.TrimSuffix(base, ".json")
			cm, ok := cms[name]
			if !ok {
				t.Errorf("no ConfigMap %s for %s", name, base)
				continue
			}
			if cm.Namespace != "edge" || cm.Labels["grafana_dashboard"] != "1" || cm.Annotations["grafana_folder"] != "wsgate" {
				t.Errorf("%s: namespace %q labels %v annotations %v; want edge, grafana_dashboard=1, grafana_folder=wsgate", name, cm.Namespace, cm.Labels, cm.Annotations)
			}
			want, _ := os.ReadFile(f)
			if got := cm.Data[base]; got != string(want) {
				t.Errorf("%s: data[%s] is not the dashboard file byte for byte (%d bytes, want %d)", name, base, len(got), len(want))
			}
		}
	})
	t.Run("configured", func(t *testing.T) {
		cms := render(t, "monitoring.dashboards.enabled=true", "monitoring.dashboards.label=example.com/dashboard",
			"monitoring.dashboards.labelValue=yes", "monitoring.dashboards.folder=", "monitoring.dashboards.namespace=monitoring")
		for name, cm := range cms {
			if cm.Namespace != "monitoring" || cm.Labels["example.com/dashboard"] != "yes" || cm.Labels["grafana_dashboard"] != "" || len(cm.Annotations) != 0 {
				t.Errorf("%s: namespace %q labels %v annotations %v; want monitoring, example.com/dashboard=yes, no folder annotation", name, cm.Namespace, cm.Labels, cm.Annotations)
			}
		}
	})
	t.Run("schema rejects a bad label", func(t *testing.T) {
		_, errOut, err := helmtest.Run(t, helm, "template", "wsg", chart, "--set", "monitoring.dashboards.label=not a label")
		if err == nil || !strings.Contains(string(errOut), "monitoring/dashboards/label") {
			t.Errorf("label %q: err %v, stderr %s; want the schema to name /monitoring/dashboards/label", "not a label", err, errOut)
		}
	})
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
