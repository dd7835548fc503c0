package chart_test

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// images is every container image the chart renders with args.
func images(t *testing.T, args ...string) []string {
	t.Helper()
	set := map[string]bool{}
	for _, spec := range decodeStrict(t, template(t, "", args...)).podSpecs() {
		for _, c := range append(spec.InitContainers, spec.Containers...) {
			set[c.Image] = true
		}
	}
	var out []string
	for i := range set {
		out = append(out, i)
	}
	sort.Strings(out)
	return out
}

func appVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^appVersion: *"?([^"\n]+)"?$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Chart.yaml has no appVersion")
	}
	return string(m[1])
}

// TestImageReferences: the wsgate image defaults to the chart's appVersion;
// a digest pins it (the tag unused); image.registry moves the wsgate image,
// global.imageRegistry every image (a mirror), and wins.
func TestImageReferences(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	def := images(t)
	var envoy, redis string // the defaults' other images, e.g. envoyproxy/envoy:v1.x, redis:7.x
	for _, i := range def {
		switch {
		case strings.HasPrefix(i, "envoyproxy/envoy:"):
			envoy = strings.TrimPrefix(i, "envoyproxy/")
		case strings.HasPrefix(i, "redis:"):
			redis = i
		}
	}
	if envoy == "" || redis == "" {
		t.Fatalf("defaults render %v: no envoyproxy/envoy or redis image", def)
	}
	wsgate := "ghcr.io/wsgate/wsgate:" + appVersion(t)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"defaults", nil, []string{"envoyproxy/" + envoy, wsgate, redis}},
		{"tag", []string{"--set", "image.tag=0.2.0-dev.abc"}, []string{"envoyproxy/" + envoy, "ghcr.io/wsgate/wsgate:0.2.0-dev.abc", redis}},
		{"digest", []string{"--set", "image.tag=0.2.0", "--set", "image.digest=" + digest}, []string{"envoyproxy/" + envoy, "ghcr.io/wsgate/wsgate@" + digest, redis}},
		{"image.registry", []string{"--set", "image.registry=registry.example.com:5000"},
			[]string{"envoyproxy/" + envoy, redis, "registry.example.com:5000/wsgate/wsgate:" + appVersion(t)}},
		{"global.imageRegistry", []string{"--set", "global.imageRegistry=mirror.example.com/hub", "--set", "image.registry=registry.example.com"},
			[]string{"mirror.example.com/hub/envoyproxy/" + envoy, "mirror.example.com/hub/library/" + redis, "mirror.example.com/hub/wsgate/wsgate:" + appVersion(t)}},
		{"own repository", []string{"--set", "image.repository=localhost:5000/me/wsgate", "--set", "global.imageRegistry=mirror.example.com"},
			[]string{"mirror.example.com/envoyproxy/" + envoy, "mirror.example.com/library/" + redis, "mirror.example.com/me/wsgate:" + appVersion(t)}},
	}
	for _, c := range cases {
		sort.Strings(c.want)
		got := def
		if c.args != nil {
			got = images(t, c.args...)
		}
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%s: images\n  %v\nwant\n  %v", c.name, got, c.want)
		}
	}
}

// TestImageSchemaRejects: a digest that is not one, or a registry with a
// stray slash, fails at install naming the value.
func TestImageSchemaRejects(t *testing.T) {
	for _, c := range []struct{ set, path string }{
		{"image.digest=latest", "/image/digest"},
		{"image.digest=sha256:abc", "/image/digest"},
		{"image.registry=registry.example.com/", "/image/registry"},
		{"global.imageRegistry=https://mirror.example.com", "/global/imageRegistry"},
	} {
		_, errOut, err := runHelm(t, "template", "wsg", chartDir, "--kube-version", kubeVersion, "--set", c.set)
		if err == nil || !strings.Contains(string(errOut), c.path) {
			t.Errorf("--set %s: %v\n%s\nwant a schema error naming %s", c.set, err, errOut, c.path)
		}
	}
}
