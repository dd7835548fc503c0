package chart_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/fleets"
)

// TestSchemaRejects: a wrong value fails at install with the path of the
// value and what is wrong with it, before anything renders.
func TestSchemaRejects(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want []string // all must appear in helm's error
	}{
		{"unknown redis mode", []string{"--set", "redis.bundled.enabled=false", "--set", "redis.addrs[0]=r:6379", "--set", "redis.mode=replicated"},
			[]string{"/redis/mode", "'standalone', 'sentinel', 'cluster'"}},
		{"external redis without addrs", []string{"--set", "redis.bundled.enabled=false"},
			[]string{"/redis/addrs", "minItems"}},
		{"sentinel without master name", []string{"--set", "redis.bundled.enabled=false", "--set", "redis.addrs[0]=s:26379", "--set", "redis.mode=sentinel"},
			[]string{"/redis/masterName"}},
		{"bundled redis as a cluster", []string{"--set", "redis.mode=cluster"},
			[]string{"/redis/mode", "'standalone'"}},
		{"placement policy", []string{"--set-json", `fleets=[{"name":"default","policy":"fastest"}]`},
			[]string{"/fleets/0/policy", "'pack', 'spread'"}},
		{"fleet name", []string{"--set-json", `fleets=[{"name":"no spaces"}]`},
			[]string{"/fleets/0/name"}},
		{"shards above 64", []string{"--set-json", `fleets=[{"name":"default","shards":65}]`},
			[]string{"/fleets/0/shards", "maximum"}},
		{"no fleets", []string{"--set-json", `fleets=[]`},
			[]string{"/fleets", "minItems"}},
		{"duration without unit", []string{"--set", "tracker.heartbeat=2"},
			[]string{"/tracker/heartbeat", "want string"}},
		{"fallback mode", []string{"--set", "tracker.fallback=maybe"},
			[]string{"/tracker/fallback", "'share', 'closed', 'open'"}},
		{"expired instances mode", []string{"--set", "tracker.expiredInstances=forget"},
			[]string{"/tracker/expiredInstances", "'reap', 'keep', 'kube'"}},
		{"trigger type", []string{"--set", "keda.triggerType=pull"},
			[]string{"/keda/triggerType", "'external', 'external-push'"}},
		{"metric", []string{"--set-json", `keda.backends=[{"name":"b","kind":"Deployment","fleet":"default","metric":"cpu","minReplicaCount":1,"maxReplicaCount":2}]`},
			[]string{"/keda/backends/0/metric"}},
		{"scaler TLS without a Secret", []string{"--set", "scaler.tls.enabled=true"},
			[]string{"/scaler/tls/existingSecret"}},
		{"misspelt key", []string{"--set", "envoy.replica=3"},
			[]string{"/envoy", "'replica' not allowed"}},
		{"readiness ratio above 1", []string{"--set-json", "scaler.readinessRatio=1.5"},
			[]string{"/scaler/readinessRatio", "maximum"}},
		{"data plane mode", []string{"--set", "dataPlane.mode=linkerd"},
			[]string{"/dataPlane/mode", "'standalone', 'envoyGateway', 'istio'"}},
		{"pin mode", []string{"--set-json", `dataPlane.standalone.routes=[{"fleet":"default","pin":"header"}]`},
			[]string{"/dataPlane/standalone/routes/0/pin", "'original_dst', 'override_host'"}},
		{"listener named like the metrics port", []string{"--set-json", `dataPlane.standalone.listeners=[{"name":"metrics","port":8080}]`},
			[]string{"/dataPlane/standalone/listeners/0/name"}},
		{"no listener", []string{"--set-json", `dataPlane.standalone.listeners=[]`},
			[]string{"/dataPlane/standalone/listeners", "minItems"}},
		{"istio filter kind", []string{"--set", "dataPlane.istio.filter=WasmPlugin"},
			[]string{"/dataPlane/istio/filter", "'TrafficExtension', 'EnvoyFilter'"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"template", "wsg", chartDir, "--kube-version", kubeVersion}, tc.args...)
			_, errOut, err := runHelm(t, args...)
			if err == nil {
				t.Fatalf("helm template %v succeeded, want a schema error", tc.args)
			}
			msg := string(errOut)
			if !strings.Contains(msg, "values don't meet the specifications of the schema") {
				t.Fatalf("not a schema error:\n%s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%s", w, msg)
				}
			}
		})
	}
}

// TestTemplateRejects: what the schema cannot express, the templates check,
// failing the install with the value's path.
func TestTemplateRejects(t *testing.T) {
	backend := func(fleet string, lo, hi int) string {
		return fmt.Sprintf(`keda.backends=[{"name":"b","kind":"Deployment","fleet":%q,"metric":"connections","minReplicaCount":%d,"maxReplicaCount":%d}]`, fleet, lo, hi)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"min above max", []string{"--set-json", backend("default", 5, 2)}, "keda.backends[0] (b): minReplicaCount 5 is above maxReplicaCount 2"},
		{"unknown backend fleet", []string{"--set-json", backend("chat", 1, 2)}, `keda.backends[0] (b): fleet "chat" is not one of fleets[].name`},
		{"unknown envoy fleet", []string{"--set", "keda.envoy.enabled=true", "--set", "keda.envoy.fleet=chat"}, `keda.envoy.fleet "chat" is not one of fleets[].name`},

		// The standalone profile's routes and listeners.
		{"route into an unknown fleet", []string{"--set-json", `dataPlane.standalone.routes=[{"fleet":"chat"}]`},
			`dataPlane.standalone.routes[0]: fleet "chat" is not one of fleets[].name [default]`},
		{"two fleets without routes", []string{"--set-json", `fleets=[{"name":"default"},{"name":"games"}]`},
			"dataPlane.standalone.routes: with 2 fleets, say which upgrades go to which fleet"},
		{"TLS without a Secret", []string{"--set-json", `dataPlane.standalone.listeners=[{"name":"https","port":8443,"tls":{"enabled":true}}]`},
			"dataPlane.standalone.listeners[0] (https): tls.enabled needs tls.secretName"},
		{"override host without upstream", []string{"--set-json", `dataPlane.standalone.routes=[{"fleet":"default","pin":"override_host"}]`},
			"dataPlane.standalone.routes[0] (fleet default): pin override_host needs upstream.address and upstream.port"},
		{"listener on the stats port", []string{"--set-json", `dataPlane.standalone.listeners=[{"name":"http","port":9902}]`},
			"dataPlane.standalone.listeners[0]: 9902 is already taken by dataPlane.standalone.statsPort"},
		{"two listeners of one name", []string{"--set-json", `dataPlane.standalone.listeners=[{"name":"http","port":8080},{"name":"http","port":8081}]`},
			"dataPlane.standalone.listeners[1]: http is already taken by listeners[0]"},
		{"host in two host lists", []string{"--set-json", `dataPlane.standalone.routes=[{"fleet":"default","hosts":["a.example"]},{"fleet":"default","hosts":["a.example","b.example"]}]`},
			`dataPlane.standalone.routes[1]: host "a.example" is also in another route's hosts "a.example"`},

		// The envoyGateway profile's required values.
		{"envoy gateway without a gateway", []string{"--set", "dataPlane.mode=envoyGateway", "--set", "dataPlane.envoyGateway.envoyService=gw-envoy"},
			"dataPlane.envoyGateway.gateway: name the Gateway"},
		{"envoy gateway without routes", []string{"--set", "dataPlane.mode=envoyGateway", "--set", "dataPlane.envoyGateway.gateway=gw", "--set", "dataPlane.envoyGateway.envoyService=gw-envoy"},
			"dataPlane.envoyGateway.routes: list at least one {fleet, httpRoutes}"},
		{"envoy gateway route into an unknown fleet", append(egArgs("chat"), "--set", "dataPlane.envoyGateway.envoyService=gw-envoy"),
			`dataPlane.envoyGateway.routes[0]: fleet "chat" is not one of fleets[].name`},
		{"envoy gateway without listeners", []string{"--set", "dataPlane.mode=envoyGateway", "--set", "dataPlane.envoyGateway.gateway=gw", "--set", "dataPlane.envoyGateway.envoyService=gw-envoy",
			"--set-json", `dataPlane.envoyGateway.routes=[{"fleet":"default","httpRoutes":["ws"]}]`},
			"dataPlane.envoyGateway.listeners: name the Gateway's listeners"},
		{"envoy gateway without the Envoy Service", egArgs("default"),
			"dataPlane.envoyGateway.envoyService: name the Service of the gateway's Envoy pods (in namespace edge)"},
		{"envoy gateway scaling Envoy", append(egArgs("default"), "--set", "dataPlane.envoyGateway.envoyService=gw-envoy", "--set", "keda.envoy.enabled=true"),
			"keda.envoy.enabled scales the chart's own Envoy, which dataPlane.mode envoyGateway does not run"},

		// The istio profile's required values.
		{"istio with two fleets and none chosen", []string{"--set", "dataPlane.mode=istio", "--set", "dataPlane.istio.envoyService=ingress", "--set-json", `fleets=[{"name":"default"},{"name":"games"}]`},
			"dataPlane.istio.fleet: with 2 fleets, name the one this gateway admits into"},
		{"istio into an unknown fleet", []string{"--set", "dataPlane.mode=istio", "--set", "dataPlane.istio.fleet=chat", "--set", "dataPlane.istio.envoyService=ingress"},
			`dataPlane.istio.fleet: fleet "chat" is not one of fleets[].name`},
		{"istio without the Envoy Service", []string{"--set", "dataPlane.mode=istio"},
			"dataPlane.istio.envoyService: name the Service of the gateway's Envoy pods"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"template", "wsg", chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, tc.args...)
			_, errOut, err := runHelm(t, args...)
			if err == nil {
				t.Fatalf("helm template %v succeeded, want an error", tc.args)
			}
			if !strings.Contains(string(errOut), tc.want) {
				t.Errorf("error lacks %q:\n%s", tc.want, errOut)
			}
		})
	}
}

// TestChartFilesMatchEnvoy: Helm reads files only inside the chart, so the
// chart keeps a copy of the filter; scripts/chart-sync.sh refreshes it. (The
// chart's Envoy bootstrap is a template of its own, rendered from the values.)
func TestChartFilesMatchEnvoy(t *testing.T) {
	got, err := os.ReadFile(filepath.Join(chartDir, "files", "wsgate.lua"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, envoy.FilterLua) {
		t.Error("charts/wsgate/files/wsgate.lua differs from envoy/wsgate.lua: run scripts/chart-sync.sh")
	}
}

// TestFleetsChangeRollsNoPod: `helm upgrade` with other fleet values
// changes the fleets ConfigMap only. Neither the Envoy pods (a roll would
// cut their WebSockets) nor the scaler's change: both re-read the file.
func TestFleetsChangeRollsNoPod(t *testing.T) {
	before := decodeStrict(t, template(t, ""))
	after := decodeStrict(t, template(t, "", "--set-json", `fleets=[{"name":"default","maxConnectionsPerPod":7,"service":"backend","port":"http"}]`))
	for _, name := range []string{envoyName, scalerName} {
		a := get[*appsv1.Deployment](t, before, "Deployment", name).Spec.Template
		b := get[*appsv1.Deployment](t, after, "Deployment", name).Spec.Template
		if !equality.Semantic.DeepEqual(a, b) {
			t.Errorf("%s: a fleets change alters the pod template, so its pods would roll:\n%s", name, cmp.Diff(a, b))
		}
	}
	fa := get[*corev1.ConfigMap](t, before, "ConfigMap", fleetsName).Data["fleets.yaml"]
	fb := get[*corev1.ConfigMap](t, after, "ConfigMap", fleetsName).Data["fleets.yaml"]
	if fa == fb || !strings.Contains(fb, "maxConnectionsPerPod: 7") {
		t.Errorf("the fleets ConfigMap does not carry the change:\n%s", fb)
	}
}

// TestFleetSettingsRollThePods: the fleet-wide settings are written into
// the fleets file from the tracker values, and a change of them rolls the
// trackers' and the scaler's pods (they take them at start only, and a
// running one refuses the changed file until it restarts).
func TestFleetSettingsRollThePods(t *testing.T) {
	before := decodeStrict(t, template(t, ""))
	after := decodeStrict(t, template(t, "", "--set", "tracker.instanceTTL=20s", "--set", "tracker.expiredInstances=keep"))
	settings := func(r rendered) fleets.Settings {
		t.Helper()
		f, err := fleets.Decode("fleets.yaml", []byte(get[*corev1.ConfigMap](t, r, "ConfigMap", fleetsName).Data["fleets.yaml"]))
		if err != nil {
			t.Fatal(err)
		}
		return f.Settings
	}
	if got := settings(before); time.Duration(got.InstanceTTL) != 10*time.Second || got.ExpiredInstances != fleets.ExpiredKube {
		t.Errorf("defaults: the fleets file sets %+v, want the values' 10s and kube", got)
	}
	if got := settings(after); time.Duration(got.InstanceTTL) != 20*time.Second || got.ExpiredInstances != fleets.ExpiredKeep {
		t.Errorf("changed: the fleets file sets %+v, want 20s and keep", got)
	}
	for _, name := range []string{envoyName, scalerName} {
		a := get[*appsv1.Deployment](t, before, "Deployment", name).Spec.Template.Annotations["checksum/fleet-settings"]
		b := get[*appsv1.Deployment](t, after, "Deployment", name).Spec.Template.Annotations["checksum/fleet-settings"]
		if a == "" || a == b {
			t.Errorf("%s: checksum/fleet-settings %q before, %q after: a settings change would not roll its pods", name, a, b)
		}
	}
}

// TestTerminationDrainsEnvoy: on Kubernetes 1.29+ the tracker is a native
// sidecar (it stops after Envoy), Envoy's preStop calls the tracker's
// /shutdown, and the tracker's shutdown timeout ends before the pod's grace
// period. On older clusters the tracker is an ordinary container (it then
// waits for Envoy's connections on SIGTERM).
func TestTerminationDrainsEnvoy(t *testing.T) {
	for _, v := range []struct {
		kube    string
		sidecar bool
	}{{kubeVersion, true}, {"1.28.0", false}} {
		args := []string{"template", "wsg", chartDir, "--namespace", "edge", "--kube-version", v.kube}
		out, errOut, err := runHelm(t, args...)
		if err != nil {
			t.Fatalf("helm template --kube-version %s: %v\n%s", v.kube, err, errOut)
		}
		spec := get[*appsv1.Deployment](t, decodeStrict(t, out), "Deployment", envoyName).Spec.Template.Spec
		tr := container(t, &spec, "tracker")
		isInit := slices.ContainsFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "tracker" })
		if isInit != v.sidecar || (v.sidecar && (tr.RestartPolicy == nil || *tr.RestartPolicy != corev1.ContainerRestartPolicyAlways)) {
			t.Errorf("kube %s: tracker an init container %v (restartPolicy %v), want native sidecar %v", v.kube, isInit, tr.RestartPolicy, v.sidecar)
		}
		for _, want := range []string{"--shutdown-listen=127.0.0.1:9103", "--envoy-admin=127.0.0.1:9901"} {
			if !slices.Contains(tr.Args, want) {
				t.Errorf("kube %s: tracker args %q lack %s", v.kube, tr.Args, want)
			}
		}
		timeout, err := time.ParseDuration(strings.TrimPrefix(argWith(tr.Args, "--shutdown-timeout="), "--shutdown-timeout="))
		if err != nil || spec.TerminationGracePeriodSeconds == nil || timeout <= 0 || timeout >= time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second {
			t.Errorf("kube %s: --shutdown-timeout %v (%v) not within the grace period %v", v.kube, timeout, err, spec.TerminationGracePeriodSeconds)
		}
		ev := container(t, &spec, "envoy")
		pre := ev.Lifecycle
		if pre == nil || pre.PreStop == nil || pre.PreStop.Exec == nil {
			t.Fatalf("kube %s: envoy preStop %+v, want an exec hook on the pod's loopback", v.kube, pre)
		}
		preStopCallsShutdown(t, pre.PreStop.Exec.Command)
	}
}

// preStopCallsShutdown runs the Envoy container's preStop command, as the
// kubelet would in that container, against a listener standing in for the
// tracker's loopback /shutdown (the port moved to a free one): it must
// send GET /shutdown there and succeed once the answer came.
func preStopCallsShutdown(t *testing.T, command []string) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatalf("bash, the Envoy image's shell the hook runs with: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- strings.TrimSpace(line)
		_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\ndrained\n")
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cmd := slices.Clone(command)
	for i := range cmd {
		cmd[i] = strings.ReplaceAll(cmd[i], "127.0.0.1/9103", "127.0.0.1/"+port)
	}
	if cmd[0] == "/bin/bash" {
		cmd[0] = "bash"
	}
	out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "drained") {
		t.Errorf("preStop %q: %v\n%s", command, err, out)
	}
	if line := <-got; line != "GET /shutdown HTTP/1.0" {
		t.Errorf("preStop %q sent %q; want GET /shutdown on the tracker's loopback port", command, line)
	}
}

// egArgs are the values of an envoyGateway install with a route into fleet.
func egArgs(fleet string) []string {
	return []string{"--set", "dataPlane.mode=envoyGateway", "--set", "dataPlane.envoyGateway.gateway=gw",
		"--set-json", `dataPlane.envoyGateway.listeners=["http"]`,
		"--set-json", fmt.Sprintf(`dataPlane.envoyGateway.routes=[{"fleet":%q,"httpRoutes":["ws"]}]`, fleet)}
}

// TestFilterWithoutInstallLine: the profiles that give the filter its
// settings in the filter's text refuse to render a filter that lacks the
// line they replace, instead of installing a filter without its fleet.
func TestFilterWithoutInstallLine(t *testing.T) {
	dir, err := copyChart(chartDir, func(lua []byte) []byte {
		return bytes.ReplaceAll(lua, []byte(installLine), []byte("local INSTALL = nil"))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, args := range [][]string{
		append(egArgs("default"), "--set", "dataPlane.envoyGateway.envoyService=gw-envoy"),
		{"--set", "dataPlane.mode=istio", "--set", "dataPlane.istio.envoyService=ingress"},
	} {
		_, errOut, err := runHelm(t, append([]string{"template", "wsg", dir, "--kube-version", kubeVersion}, args...)...)
		want := `charts/wsgate/files/wsgate.lua: dataPlane.mode`
		if err == nil || !strings.Contains(string(errOut), want) || !strings.Contains(string(errOut), installLine) {
			t.Errorf("helm template %v: %v, want an error naming the missing line:\n%s", args, err, errOut)
		}
	}
}
