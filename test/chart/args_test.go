package chart_test

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/wsgate/wsgate/test/wsgatebin"
)

// TestArgsMatchBinary hands the rendered command lines to the real wsgate
// binary, so a flag the chart passes but the binary lacks (or a value it
// cannot parse) fails here instead of in a crash-looping pod. A trailing -h
// makes the binary stop after parsing every flag before it. Every WSGATE_*
// variable the chart sets must name one of the flags the binary lists.
func TestArgsMatchBinary(t *testing.T) {
	bin := wsgatebin.Path(t)
	for _, vs := range valueSets {
		r := decodeStrict(t, template(t, vs.file))
		for _, wc := range []struct{ deploy, container string }{{envoyName, "tracker"}, {scalerName, "scaler"}} {
			t.Run(name(vs.file)+"/"+wc.container, func(t *testing.T) {
				d := get[*appsv1.Deployment](t, r, "Deployment", wc.deploy)
				c := container(t, &d.Spec.Template.Spec, wc.container)
				flags := runHelp(t, bin, c)
				for _, e := range c.Env {
					if !strings.HasPrefix(e.Name, "WSGATE_") {
						continue
					}
					flag := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.Name, "WSGATE_")), "_", "-")
					if !flags[flag] {
						t.Errorf("env %s: wsgate %s has no flag --%s", e.Name, c.Args[0], flag)
					}
				}
			})
		}
	}
}

var usageFlag = regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`)

// runHelp runs the container's command line with -h appended, with
// Kubernetes' $(VAR) references expanded from fixed pod fields, and returns
// the flags the binary lists.
func runHelp(t *testing.T, bin string, c *corev1.Container) map[string]bool {
	t.Helper()
	if len(c.Args) == 0 {
		t.Fatal("container has no args")
	}
	fields := map[string]string{"POD_NAME": "wsg-wsgate-envoy-7d9f-abcde", "POD_NAMESPACE": namespace}
	args := make([]string, 0, len(c.Args)+1)
	for _, a := range c.Args {
		for k, v := range fields {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		if strings.Contains(a, "$(") {
			t.Fatalf("arg %q references a variable the pod does not define", a)
		}
		args = append(args, a)
	}
	cmd := exec.Command(bin, append(args, "-h")...)
	cmd.Env = []string{"HOME=" + os.TempDir()} // no WSGATE_* of this machine
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if strings.Contains(out.String(), "unknown command") {
		t.Skipf("wsgate %s is not wired into cmd/wsgate yet", c.Args[0])
	}
	if err != nil {
		t.Fatalf("wsgate %s: %v\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	flags := map[string]bool{}
	for _, m := range usageFlag.FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("wsgate %s -h listed no flags:\n%s", c.Args[0], out.Bytes())
	}
	return flags
}
