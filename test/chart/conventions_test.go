package chart_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestServiceAccounts: each component's ServiceAccount can be created with
// annotations (a cloud identity), renamed, or taken from the namespace.
func TestServiceAccounts(t *testing.T) {
	r := decodeStrict(t, template(t, "",
		"--set-json", `envoy.serviceAccount={"create":true,"name":"edge-proxy","annotations":{"iam.gke.io/gcp-service-account":"edge@p.iam.gserviceaccount.com"}}`,
		"--set-json", `scaler.serviceAccount={"create":false,"name":"wsgate-scaler-irsa"}`))
	sa := get[*corev1.ServiceAccount](t, r, "ServiceAccount", "edge-proxy")
	if sa.Annotations["iam.gke.io/gcp-service-account"] != "edge@p.iam.gserviceaccount.com" {
		t.Errorf("envoy ServiceAccount annotations %v", sa.Annotations)
	}
	if r.has("ServiceAccount", scalerName) || r.has("ServiceAccount", "wsgate-scaler-irsa") {
		t.Errorf("scaler.serviceAccount.create false, yet a scaler ServiceAccount is rendered: %v", r.keys)
	}
	if got := get[*appsv1.Deployment](t, r, "Deployment", envoyName).Spec.Template.Spec.ServiceAccountName; got != "edge-proxy" {
		t.Errorf("Envoy pods run as %q, want edge-proxy", got)
	}
	if got := get[*appsv1.Deployment](t, r, "Deployment", scalerName).Spec.Template.Spec.ServiceAccountName; got != "wsgate-scaler-irsa" {
		t.Errorf("scaler pods run as %q, want wsgate-scaler-irsa", got)
	}
	rb := get[*rbacv1.RoleBinding](t, r, "RoleBinding", scalerName)
	if len(rb.Subjects) != 1 || rb.Subjects[0].Name != "wsgate-scaler-irsa" {
		t.Errorf("the scaler's Role is bound to %+v, want the ServiceAccount its pods run as", rb.Subjects)
	}

	r = decodeStrict(t, template(t, "", "--set", "scaler.serviceAccount.create=false"))
	if got := get[*appsv1.Deployment](t, r, "Deployment", scalerName).Spec.Template.Spec.ServiceAccountName; got != "default" {
		t.Errorf("scaler without a created or named ServiceAccount runs as %q, want default", got)
	}
}

// TestPodExtras: podLabels, priorityClassName and the extra args, env,
// volumes and mounts reach the pods and containers they name, and nothing
// else moves (the chart's own args come first, its selector stays).
func TestPodExtras(t *testing.T) {
	env := `[{"name":"GODEBUG","value":"madvdontneed=1"}]`
	vol := `[{"name":"ca","configMap":{"name":"corp-ca"}}]`
	mnt := `[{"name":"ca","mountPath":"/etc/corp-ca","readOnly":true}]`
	base := decodeStrict(t, template(t, ""))
	r := decodeStrict(t, template(t, "",
		"--set", "envoy.podLabels.team=edge", "--set", "scaler.podLabels.team=platform",
		"--set", "envoy.priorityClassName=edge-critical", "--set", "scaler.priorityClassName=system-cluster-critical",
		"--set-json", `envoy.extraArgs=["--component-log-level","lua:debug"]`,
		"--set-json", `tracker.extraArgs=["--metrics-per-pod"]`,
		"--set-json", `scaler.extraArgs=["--reap-interval=10s"]`,
		"--set-json", "envoy.extraEnv="+env, "--set-json", "tracker.extraEnv="+env, "--set-json", "scaler.extraEnv="+env,
		"--set-json", "envoy.extraVolumes="+vol, "--set-json", "scaler.extraVolumes="+vol,
		"--set-json", "envoy.extraVolumeMounts="+mnt, "--set-json", "tracker.extraVolumeMounts="+mnt, "--set-json", "scaler.extraVolumeMounts="+mnt))
	for _, tc := range []struct {
		deploy, team, priority string
		containers             map[string][]string // container -> its extra args
	}{
		{envoyName, "edge", "edge-critical", map[string][]string{"envoy": {"--component-log-level", "lua:debug"}, "tracker": {"--metrics-per-pod"}}},
		{scalerName, "platform", "system-cluster-critical", map[string][]string{"scaler": {"--reap-interval=10s"}}},
	} {
		d := get[*appsv1.Deployment](t, r, "Deployment", tc.deploy)
		was := get[*appsv1.Deployment](t, base, "Deployment", tc.deploy)
		spec := &d.Spec.Template.Spec
		if d.Spec.Template.Labels["team"] != tc.team {
			t.Errorf("%s: pod labels %v lack team=%s", tc.deploy, d.Spec.Template.Labels, tc.team)
		}
		if !maps.Equal(d.Spec.Selector.MatchLabels, was.Spec.Selector.MatchLabels) {
			t.Errorf("%s: selector moved to %v", tc.deploy, d.Spec.Selector.MatchLabels)
		}
		if spec.PriorityClassName != tc.priority {
			t.Errorf("%s: priorityClassName %q, want %q", tc.deploy, spec.PriorityClassName, tc.priority)
		}
		if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool {
			return v.Name == "ca" && v.ConfigMap != nil && v.ConfigMap.Name == "corp-ca"
		}) {
			t.Errorf("%s: volumes lack the extra volume ca", tc.deploy)
		}
		for name, extra := range tc.containers {
			c := container(t, spec, name)
			old := container(t, &was.Spec.Template.Spec, name)
			if want := append(slices.Clone(old.Args), extra...); !slices.Equal(c.Args, want) {
				t.Errorf("%s/%s: args %q, want the chart's then %q", tc.deploy, name, c.Args, extra)
			}
			if envOf(c)["GODEBUG"].Value != "madvdontneed=1" {
				t.Errorf("%s/%s: env lacks GODEBUG", tc.deploy, name)
			}
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "ca" && m.MountPath == "/etc/corp-ca" }) {
				t.Errorf("%s/%s: mounts lack /etc/corp-ca", tc.deploy, name)
			}
		}
	}

	_, errOut, err := runHelm(t, "template", "wsg", chartDir, "--kube-version", kubeVersion, "--set", "envoy.podLabels.app\\.kubernetes\\.io/component=proxy")
	if err == nil || !strings.Contains(string(errOut), "envoy.podLabels.app.kubernetes.io/component: the chart sets the app.kubernetes.io/*") {
		t.Errorf("podLabels overriding a selector label: want the chart's refusal, got %v\n%s", err, errOut)
	}
}

// TestSecurityContextsOverridable: OpenShift assigns each namespace a UID
// range and refuses pods that ask for another: with runAsUser, runAsGroup
// and fsGroup set to null every pod and container leaves them to the
// platform, and whatever else the chart hardens stays.
func TestSecurityContextsOverridable(t *testing.T) {
	var args []string
	for _, pod := range []string{"envoy", "scaler", "redis.bundled"} {
		for _, k := range []string{"runAsUser", "runAsGroup", "fsGroup"} {
			args = append(args, "--set", pod+".podSecurityContext."+k+"=null")
		}
	}
	args = append(args, "--set", "tracker.securityContext.runAsUser=null", "--set", "tracker.securityContext.runAsGroup=null",
		"--set", "envoy.securityContext.readOnlyRootFilesystem=false")
	r := decodeStrict(t, template(t, "", args...))
	for name, spec := range r.podSpecs() {
		if sc := spec.SecurityContext; sc == nil || sc.RunAsUser != nil || sc.RunAsGroup != nil || sc.FSGroup != nil {
			t.Errorf("%s: pod securityContext %+v still asks for IDs", name, sc)
		} else if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.SeccompProfile == nil {
			t.Errorf("%s: pod securityContext %+v lost runAsNonRoot or seccompProfile", name, sc)
		}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			sc := c.SecurityContext
			if sc == nil || sc.RunAsUser != nil || sc.RunAsGroup != nil {
				t.Errorf("%s/%s: securityContext %+v still asks for IDs", name, c.Name, sc)
				continue
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 {
				t.Errorf("%s/%s: securityContext %+v lost its hardening", name, c.Name, sc)
			}
			if want := c.Name != "envoy"; sc.ReadOnlyRootFilesystem == nil || *sc.ReadOnlyRootFilesystem != want {
				t.Errorf("%s/%s: readOnlyRootFilesystem %v, want %v", name, c.Name, sc.ReadOnlyRootFilesystem, want)
			}
		}
	}
}

// TestProbeTuning: each container's probe timing comes from its values, and
// an enabled startup probe uses the liveness handler.
func TestProbeTuning(t *testing.T) {
	r := decodeStrict(t, template(t, "",
		"--set-json", `tracker.probes.startup={"enabled":true,"periodSeconds":1,"failureThreshold":60}`,
		"--set", "tracker.probes.liveness.periodSeconds=20", "--set", "envoy.probes.readiness.timeoutSeconds=3",
		"--set", "scaler.probes.startup.enabled=true"))
	spec := &get[*appsv1.Deployment](t, r, "Deployment", envoyName).Spec.Template.Spec
	tr := container(t, spec, "tracker")
	if p := tr.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.PeriodSeconds != 1 || p.FailureThreshold != 60 {
		t.Errorf("tracker startupProbe %+v, want /healthz every 1s, 60 times", p)
	}
	if p := tr.LivenessProbe; p.PeriodSeconds != 20 || p.FailureThreshold != 3 || p.HTTPGet == nil {
		t.Errorf("tracker livenessProbe %+v, want periodSeconds 20 and the chart's failureThreshold 3", p)
	}
	if p := container(t, spec, "envoy").ReadinessProbe; p.TimeoutSeconds != 3 || p.TCPSocket == nil || p.PeriodSeconds != 5 {
		t.Errorf("envoy readinessProbe %+v, want timeoutSeconds 3 on the chart's TCP check", p)
	}
	if p := container(t, spec, "envoy").StartupProbe; p != nil {
		t.Errorf("envoy has a startupProbe %+v, none enabled", p)
	}
	sc := container(t, &get[*appsv1.Deployment](t, r, "Deployment", scalerName).Spec.Template.Spec, "scaler")
	if p := sc.StartupProbe; p == nil || p.HTTPGet == nil || p.FailureThreshold != 30 {
		t.Errorf("scaler startupProbe %+v, want the defaults' 30 tries of /healthz", p)
	}
}

// TestEnvoyTopologySpread: by default Envoy replicas spread over zones and
// nodes without ever blocking scheduling; the user's constraints replace it.
func TestEnvoyTopologySpread(t *testing.T) {
	spec := get[*appsv1.Deployment](t, decodeStrict(t, template(t, "")), "Deployment", envoyName).Spec.Template.Spec
	var keys []string
	for _, c := range spec.TopologySpreadConstraints {
		keys = append(keys, c.TopologyKey)
		if c.WhenUnsatisfiable != corev1.ScheduleAnyway || c.MaxSkew != 1 || c.LabelSelector == nil ||
			c.LabelSelector.MatchLabels["app.kubernetes.io/component"] != "envoy" || !slices.Equal(c.MatchLabelKeys, []string{"pod-template-hash"}) {
			t.Errorf("default spread %+v: want maxSkew 1, ScheduleAnyway, Envoy's selector, this rollout's pods", c)
		}
	}
	if !slices.Equal(keys, []string{"topology.kubernetes.io/zone", "kubernetes.io/hostname"}) {
		t.Errorf("default spread over %v, want zones then nodes", keys)
	}
	own := `[{"maxSkew":2,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app.kubernetes.io/component":"envoy"}}}]`
	spec = get[*appsv1.Deployment](t, decodeStrict(t, template(t, "", "--set-json", "envoy.topologySpreadConstraints="+own)), "Deployment", envoyName).Spec.Template.Spec
	if len(spec.TopologySpreadConstraints) != 1 || spec.TopologySpreadConstraints[0].MaxSkew != 2 {
		t.Errorf("user's constraints: rendered %+v", spec.TopologySpreadConstraints)
	}
	spec = get[*appsv1.Deployment](t, decodeStrict(t, template(t, "", "--set", "envoy.defaultTopologySpread=false")), "Deployment", envoyName).Spec.Template.Spec
	if len(spec.TopologySpreadConstraints) != 0 {
		t.Errorf("defaultTopologySpread false: rendered %+v", spec.TopologySpreadConstraints)
	}
}

// TestServiceMonitorTuning: scrapeTimeout and both relabeling lists reach
// every endpoint; a timeout above the interval is refused.
func TestServiceMonitorTuning(t *testing.T) {
	drop := `[{"sourceLabels":["__name__"],"regex":"envoy_cluster_.*","action":"drop"}]`
	pod := `[{"sourceLabels":["__meta_kubernetes_pod_node_name"],"targetLabel":"node"}]`
	r := decodeStrict(t, template(t, "", "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.scrapeTimeout=10s",
		"--set-json", "metrics.serviceMonitor.relabelings="+pod, "--set-json", "metrics.serviceMonitor.metricRelabelings="+drop))
	sm := get[*unstructured.Unstructured](t, r, "ServiceMonitor", "wsg-wsgate")
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 2 {
		t.Fatalf("ServiceMonitor endpoints %v, want metrics and envoy-stats", eps)
	}
	for _, e := range eps {
		m := e.(map[string]any)
		rl, _ := m["relabelings"].([]any)
		mrl, _ := m["metricRelabelings"].([]any)
		if m["scrapeTimeout"] != "10s" || len(rl) != 1 || len(mrl) != 1 || mrl[0].(map[string]any)["action"] != "drop" {
			t.Errorf("endpoint %v: want scrapeTimeout 10s and the relabelings", m["port"])
		}
	}
	_, errOut, err := runHelm(t, "template", "wsg", chartDir, "--kube-version", kubeVersion,
		"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.scrapeTimeout=1m")
	if err == nil || !strings.Contains(string(errOut), "metrics.serviceMonitor.scrapeTimeout 1m: must not exceed metrics.serviceMonitor.interval 30s") {
		t.Errorf("scrapeTimeout above the interval: want the chart's refusal, got %v\n%s", err, errOut)
	}
}
