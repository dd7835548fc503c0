// Package chart_test renders charts/wsgate with the real helm and checks what
// it would apply: every object decodes strictly into its Go type, the Envoy
// config passes the same validation as envoy/envoy.yaml, the fleets file
// parses like the tracker parses it, and the schema rejects wrong values.
package chart_test

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/fleets"
)

// Names of a release "wsg" of chart wsgate in namespace "edge".
const (
	envoyName  = "wsg-wsgate-envoy"
	scalerName = "wsg-wsgate-scaler"
	redisName  = "wsg-wsgate-redis"
	configName = "wsg-wsgate-config"
	fleetsName = "wsg-wsgate-fleets"
	namespace  = "edge"
)

// valueSets are the configurations every structural check runs on, each
// with the checks specific to it.
var valueSets = []struct {
	file  string // testdata file; "" is the chart's defaults
	check func(t *testing.T, r rendered)
}{
	{"", checkDefaults},
	{"external-redis.yaml", checkExternalRedis},
	{"sentinel.yaml", checkSentinel},
	{"cluster.yaml", checkCluster},
	{"tls.yaml", checkTLS},
	{"push.yaml", checkPush},
	{"fleets.yaml", checkStandaloneFleets},
}

func TestLint(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(name(vs.file), func(t *testing.T) {
			t.Parallel()
			args := append([]string{"lint", "--strict", "--kube-version", kubeVersion, chartDir}, valuesArgs(vs.file)...)
			out, errOut, err := runHelm(t, args...)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s%s", err, out, errOut)
			}
		})
	}
}

func TestRender(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(name(vs.file), func(t *testing.T) {
			t.Parallel()
			r := decodeStrict(t, template(t, vs.file))
			checkPods(t, r)
			checkConfigMap(t, r)
			checkRole(t, r)
			checkRedisEnvShared(t, r)
			checkScaledObjects(t, r)
			if vs.file != "fleets.yaml" {
				checkEnvoyStats(t, r, 9902)
			}
			vs.check(t, r)
		})
	}
}

func name(file string) string {
	if file == "" {
		return "defaults"
	}
	return strings.TrimSuffix(file, ".yaml")
}

// checkPods holds every workload to the production defaults: non-root,
// read-only root, no capabilities, requests, and probes on real endpoints.
func checkPods(t *testing.T, r rendered) {
	t.Helper()
	specs := r.podSpecs()
	if len(specs) == 0 {
		t.Fatal("no workloads rendered")
	}
	for key, spec := range specs {
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Errorf("%s: pod runAsNonRoot is not true", key)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod seccompProfile is not RuntimeDefault", key)
		}
		for _, c := range append(slices.Clone(spec.Containers), spec.InitContainers...) {
			where := key + " container " + c.Name
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem is not true", where)
			}
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation is not false", where)
			}
			if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
				t.Errorf("%s: capabilities are not drop [ALL], add none", where)
			}
			if sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
				t.Errorf("%s: runs as root", where)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s: no cpu and memory requests", where)
			}
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("%s: readiness and liveness probes are required", where)
			}
		}
	}
	// The wsgate processes are probed on the endpoints they serve.
	for _, wc := range []struct{ deploy, container string }{{envoyName, "tracker"}, {scalerName, "scaler"}} {
		d := get[*appsv1.Deployment](t, r, "Deployment", wc.deploy)
		c := container(t, &d.Spec.Template.Spec, wc.container)
		if got := httpProbe(c.ReadinessProbe); got != "/readyz metrics" {
			t.Errorf("%s readiness probe: %q, want GET /readyz on port metrics", wc.container, got)
		}
		if got := httpProbe(c.LivenessProbe); got != "/healthz metrics" {
			t.Errorf("%s liveness probe: %q, want GET /healthz on port metrics", wc.container, got)
		}
		if !hasPort(c, "metrics", 9102) {
			t.Errorf("%s: no container port metrics 9102", wc.container)
		}
	}
	envoyPods := get[*appsv1.Deployment](t, r, "Deployment", envoyName).Spec.Template
	if envoyPods.Annotations["checksum/config"] == "" {
		t.Errorf("%s: no checksum/config annotation: a change of envoy.yaml or the filter would not roll its pods", envoyName)
	}
	// Trackers and scaler re-read the fleets file: mounted as the
	// ConfigMap's directory, which the kubelet updates (a subPath never is).
	for _, wc := range []struct{ deploy, container string }{{envoyName, "tracker"}, {scalerName, "scaler"}} {
		spec := get[*appsv1.Deployment](t, r, "Deployment", wc.deploy).Spec.Template.Spec
		c := container(t, &spec, wc.container)
		if !slices.Contains(c.Args, "--config=/etc/wsgate/fleets/fleets.yaml") {
			t.Errorf("%s args %q: want --config=/etc/wsgate/fleets/fleets.yaml", wc.container, c.Args)
		}
		found := false
		for _, m := range c.VolumeMounts {
			if m.MountPath == "/etc/wsgate/fleets" {
				found = true
				if m.SubPath != "" {
					t.Errorf("%s: fleets mounted with subPath %q: the kubelet never updates it", wc.container, m.SubPath)
				}
				for _, v := range spec.Volumes {
					if v.Name == m.Name && (v.ConfigMap == nil || v.ConfigMap.Name != fleetsName) {
						t.Errorf("%s: /etc/wsgate/fleets is volume %s, not ConfigMap %s", wc.container, v.Name, fleetsName)
					}
				}
			}
		}
		if !found {
			t.Errorf("%s: nothing mounted at /etc/wsgate/fleets", wc.container)
		}
	}
	d := get[*appsv1.Deployment](t, r, "Deployment", envoyName)
	tr := container(t, &d.Spec.Template.Spec, "tracker")
	for _, want := range []string{"tracker", "--listen=127.0.0.1:9090", "--access-log-listen=127.0.0.1:9091", "--instance-id=$(POD_NAME)"} {
		if !slices.Contains(tr.Args, want) {
			t.Errorf("tracker args %q lack %q", tr.Args, want)
		}
	}
	// The protocol needs every tracker and the scaler to agree on the
	// instance TTL and what an expired instance is (tracker/PROTOCOL.md):
	// the fleets file, which both read, sets them, and no command line
	// overrides them with the deprecated flags.
	sc := container(t, &get[*appsv1.Deployment](t, r, "Deployment", scalerName).Spec.Template.Spec, "scaler")
	for _, flag := range []string{"--instance-ttl", "--expired-instances"} {
		for _, c := range []*corev1.Container{tr, sc} {
			if v := argWith(c.Args, flag); v != "" {
				t.Errorf("%s passes %q: the deprecated flag overrides the fleets file's setting", c.Name, v)
			}
		}
	}
	file, err := fleets.Decode("fleets.yaml", []byte(get[*corev1.ConfigMap](t, r, "ConfigMap", fleetsName).Data["fleets.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if file.Line("instanceTTL") == 0 || file.Line("expiredInstances") == 0 {
		t.Errorf("the fleets file leaves a fleet-wide setting to the binaries' defaults: %+v", file.Settings)
	}
	ev := container(t, &d.Spec.Template.Spec, "envoy")
	if !hasPort(ev, "http", 8080) {
		t.Error("envoy: no container port http 8080 (the listener of envoy.yaml)")
	}
	mounted := false
	for _, m := range ev.VolumeMounts {
		if m.MountPath+"/wsgate.lua" == envoy.LuaPath {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("envoy: nothing mounted where envoy.yaml reads the filter (%s)", envoy.LuaPath)
	}
}

func httpProbe(p *corev1.Probe) string {
	if p == nil || p.HTTPGet == nil {
		return ""
	}
	return p.HTTPGet.Path + " " + p.HTTPGet.Port.String()
}

func hasPort(c *corev1.Container, name string, port int32) bool {
	for _, p := range c.Ports {
		if p.Name == name && p.ContainerPort == port {
			return true
		}
	}
	return false
}

// checkConfigMap parses the rendered config the way the processes will:
// the fleets file with fleets.Parse, the Envoy bootstrap (rendered
// from the values) with envoy.LoadBootstrap, and it requires every fleet a
// route names to exist.
func checkConfigMap(t *testing.T, r rendered) {
	t.Helper()
	fleets, err := fleets.Parse([]byte(get[*corev1.ConfigMap](t, r, "ConfigMap", fleetsName).Data["fleets.yaml"]))
	if err != nil {
		t.Fatalf("fleets.yaml: %v", err)
	}
	defined := map[string]bool{}
	for _, f := range fleets {
		defined[f.Name] = true
		if f.EnvoyService != envoyName {
			t.Errorf("fleet %s: envoyService %q, want the chart's Envoy Service %q", f.Name, f.EnvoyService, envoyName)
		}
	}
	cm := get[*corev1.ConfigMap](t, r, "ConfigMap", configName)
	boot, err := envoy.LoadBootstrap([]byte(cm.Data["envoy.yaml"]))
	if err != nil {
		t.Fatalf("envoy.yaml in the ConfigMap: %v", err)
	}
	if !bytes.Equal([]byte(cm.Data["wsgate.lua"]), envoy.FilterLua) {
		t.Errorf("wsgate.lua in the ConfigMap differs from envoy/wsgate.lua (%d vs %d bytes)", len(cm.Data["wsgate.lua"]), len(envoy.FilterLua))
	}
	routeFleets := 0
	for _, l := range boot.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
					continue
				}
				for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
					for _, rt := range vh.GetRoutes() {
						md := rt.GetMetadata().GetFilterMetadata()["envoy.filters.http.lua"]
						fleet := md.GetFields()["fleet"].GetStringValue()
						if fleet == "" {
							continue
						}
						routeFleets++
						if !defined[fleet] {
							t.Errorf("envoy route %s admits into fleet %q, which the fleets values do not define", vh.GetName(), fleet)
						}
					}
				}
			}
		}
	}
	if routeFleets == 0 {
		t.Error("no route of envoy.yaml names a fleet")
	}
}

// checkRole requires exactly the scaler's needs, namespaced.
func checkRole(t *testing.T, r rendered) {
	t.Helper()
	role := get[*rbacv1.Role](t, r, "Role", scalerName)
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
		// Read-only: a fleet's minReplicaCount and stabilization window.
		{APIGroups: []string{"keda.sh"}, Resources: []string{"scaledobjects"}, Verbs: []string{"get", "list"}},
	}
	if !reflect.DeepEqual(role.Rules, want) {
		t.Errorf("Role rules:\n got %+v\nwant %+v", role.Rules, want)
	}
	for _, k := range r.keys {
		if strings.HasPrefix(k, "ClusterRole") {
			t.Errorf("%s rendered: the scaler needs no cluster-wide access", k)
		}
	}
	rb := get[*rbacv1.RoleBinding](t, r, "RoleBinding", scalerName)
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != scalerName || len(rb.Subjects) != 1 ||
		rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Name != scalerName || rb.Subjects[0].Namespace != namespace {
		t.Errorf("RoleBinding: %+v %+v", rb.RoleRef, rb.Subjects)
	}
	d := get[*appsv1.Deployment](t, r, "Deployment", scalerName)
	if d.Spec.Template.Spec.ServiceAccountName != scalerName {
		t.Errorf("scaler runs as %q, want %q", d.Spec.Template.Spec.ServiceAccountName, scalerName)
	}
	e := get[*appsv1.Deployment](t, r, "Deployment", envoyName)
	if am := e.Spec.Template.Spec.AutomountServiceAccountToken; am == nil || *am {
		t.Error("Envoy pods mount a service account token they never use")
	}
}

// checkRedisEnvShared requires the tracker and the scaler to reach the same
// Redis, and no password to appear in a manifest.
func checkRedisEnvShared(t *testing.T, r rendered) {
	t.Helper()
	tr := redisEnv(t, r, envoyName, "tracker")
	sc := redisEnv(t, r, scalerName, "scaler")
	if !reflect.DeepEqual(tr, sc) {
		t.Errorf("tracker and scaler Redis settings differ:\ntracker %+v\nscaler  %+v", tr, sc)
	}
	for _, n := range []string{"WSGATE_REDIS_PASSWORD", "WSGATE_REDIS_SENTINEL_PASSWORD"} {
		if e, ok := tr[n]; ok && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("%s is not taken from a Secret", n)
		}
	}
}

func redisEnv(t *testing.T, r rendered, deploy, name string) map[string]corev1.EnvVar {
	t.Helper()
	d := get[*appsv1.Deployment](t, r, "Deployment", deploy)
	env := envOf(container(t, &d.Spec.Template.Spec, name))
	for k := range env {
		if !strings.HasPrefix(k, "WSGATE_REDIS_") {
			delete(env, k)
		}
	}
	return env
}

// checkScaledObjects requires every trigger to reach the scaler's Service
// and the HPA to scale down calmly, so the deletion-cost hook can act first.
func checkScaledObjects(t *testing.T, r rendered) {
	t.Helper()
	svc := get[*corev1.Service](t, r, "Service", scalerName)
	var grpcPort int32
	for _, p := range svc.Spec.Ports {
		if p.Name == "grpc" {
			grpcPort = p.Port
		}
	}
	wantAddr := fmt.Sprintf("%s.%s.svc.cluster.local:%d", scalerName, namespace, grpcPort)
	fcs, err := fleets.Parse([]byte(get[*corev1.ConfigMap](t, r, "ConfigMap", fleetsName).Data["fleets.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range r.keys {
		so, ok := r.objs[k].(*kedav1alpha1.ScaledObject)
		if !ok {
			continue
		}
		// The checks KEDA's admission webhook runs on a ScaledObject.
		if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
			t.Errorf("%s: %v", k, err)
		}
		if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(so); err != nil {
			t.Errorf("%s: %v", k, err)
		}
		if err := kedav1alpha1.CheckFallbackValid(so); err != nil {
			t.Errorf("%s: %v", k, err)
		}
		for _, trg := range so.Spec.Triggers {
			if trg.Metadata["scalerAddress"] != wantAddr {
				t.Errorf("%s: scalerAddress %q, want %q", k, trg.Metadata["scalerAddress"], wantAddr)
			}
			if !slices.ContainsFunc(fcs, func(f fleets.Fleet) bool { return f.Name == trg.Metadata["fleet"] }) {
				t.Errorf("%s: fleet %q is not defined", k, trg.Metadata["fleet"])
			}
		}
		adv := so.Spec.Advanced
		if adv == nil || adv.HorizontalPodAutoscalerConfig == nil || adv.HorizontalPodAutoscalerConfig.Behavior == nil ||
			adv.HorizontalPodAutoscalerConfig.Behavior.ScaleDown == nil {
			t.Errorf("%s: no HPA scale-down behavior", k)
			continue
		}
		down := adv.HorizontalPodAutoscalerConfig.Behavior.ScaleDown
		if down.StabilizationWindowSeconds == nil || *down.StabilizationWindowSeconds < 60 {
			t.Errorf("%s: scale-down stabilization window under 60s", k)
		}
		for _, p := range down.Policies {
			if p.Type == "Pods" && p.Value > 2 || p.Type == "Percent" && p.Value > 25 {
				t.Errorf("%s: scale-down policy %+v removes too many pods at once", k, p)
			}
		}
	}
}

func checkDefaults(t *testing.T, r rendered) {
	get[*appsv1.Deployment](t, r, "Deployment", redisName)
	get[*corev1.Service](t, r, "Service", redisName)
	env := redisEnv(t, r, envoyName, "tracker")
	if got := env["WSGATE_REDIS_ADDR"].Value; got != redisName+":6379" {
		t.Errorf("WSGATE_REDIS_ADDR %q, want the bundled Redis", got)
	}
	if _, ok := env["WSGATE_REDIS_PASSWORD"]; ok {
		t.Error("bundled Redis has no password, yet one is configured")
	}
	so := get[*kedav1alpha1.ScaledObject](t, r, "ScaledObject", "wsg-wsgate-backend")
	if so.Spec.ScaleTargetRef.Name != "backend" || so.Spec.Triggers[0].Type != "external" ||
		so.Spec.Triggers[0].Metadata["metric"] != "desiredReplicas" || so.Spec.Triggers[0].AuthenticationRef != nil {
		t.Errorf("backend ScaledObject: %+v %+v", so.Spec.ScaleTargetRef, so.Spec.Triggers)
	}
	if r.has("TriggerAuthentication", scalerName) || r.has("ScaledObject", envoyName) {
		t.Error("TLS and Envoy scaling are off by default")
	}
	if d := get[*appsv1.Deployment](t, r, "Deployment", envoyName); d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Error("Envoy replicas are not the configured 2")
	}
	// Only KEDA reaches the scaler's gRPC port; only wsgate pods the Redis.
	np := get[*networkingv1.NetworkPolicy](t, r, "NetworkPolicy", scalerName)
	var grpcFrom []string
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port.String() == "grpc" {
				for _, f := range rule.From {
					if f.NamespaceSelector == nil || f.PodSelector != nil {
						t.Errorf("scaler gRPC admits %+v, want only a namespace", f)
						continue
					}
					grpcFrom = append(grpcFrom, f.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"])
				}
			}
		}
	}
	if !slices.Equal(grpcFrom, []string{"keda"}) {
		t.Errorf("scaler gRPC reachable from %q, want only the keda namespace", grpcFrom)
	}
	rp := get[*networkingv1.NetworkPolicy](t, r, "NetworkPolicy", redisName)
	if len(rp.Spec.Ingress) != 1 || len(rp.Spec.Ingress[0].From) != 2 {
		t.Fatalf("redis NetworkPolicy ingress: %+v", rp.Spec.Ingress)
	}
	for i, comp := range []string{"envoy", "scaler"} {
		if got := rp.Spec.Ingress[0].From[i].PodSelector.MatchLabels["app.kubernetes.io/component"]; got != comp {
			t.Errorf("redis admits component %q, want %q", got, comp)
		}
	}
}

func wantEnv(t *testing.T, env map[string]corev1.EnvVar, want map[string]string, absent ...string) {
	t.Helper()
	for k, v := range want {
		if got, ok := env[k]; !ok || got.Value != v {
			t.Errorf("%s = %q, want %q", k, got.Value, v)
		}
	}
	for _, k := range absent {
		if _, ok := env[k]; ok {
			t.Errorf("%s set, want it absent", k)
		}
	}
}

func wantSecretRef(t *testing.T, env map[string]corev1.EnvVar, name, secret, key string) {
	t.Helper()
	e, ok := env[name]
	if !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("%s not from a Secret", name)
		return
	}
	if ref := e.ValueFrom.SecretKeyRef; ref.Name != secret || ref.Key != key {
		t.Errorf("%s from %s/%s, want %s/%s", name, ref.Name, ref.Key, secret, key)
	}
}

func checkNoBundledRedis(t *testing.T, r rendered) {
	t.Helper()
	if r.has("Deployment", redisName) || r.has("Service", redisName) || r.has("NetworkPolicy", redisName) {
		t.Error("bundled Redis rendered although an external one is configured")
	}
}

func checkExternalRedis(t *testing.T, r rendered) {
	checkNoBundledRedis(t, r)
	env := redisEnv(t, r, envoyName, "tracker")
	wantEnv(t, env, map[string]string{
		"WSGATE_REDIS_ADDR":     "redis.data.svc.cluster.local:6379",
		"WSGATE_REDIS_USERNAME": "wsgate",
		"WSGATE_REDIS_DB":       "2",
	}, "WSGATE_REDIS_CLUSTER", "WSGATE_REDIS_MASTER_NAME", "WSGATE_REDIS_TLS")
	wantSecretRef(t, env, "WSGATE_REDIS_PASSWORD", "redis-auth", "password")
}

func checkSentinel(t *testing.T, r rendered) {
	checkNoBundledRedis(t, r)
	env := redisEnv(t, r, scalerName, "scaler")
	wantEnv(t, env, map[string]string{
		"WSGATE_REDIS_ADDR":        "sentinel-0.sentinel:26379,sentinel-1.sentinel:26379,sentinel-2.sentinel:26379",
		"WSGATE_REDIS_MASTER_NAME": "wsgate-master",
	}, "WSGATE_REDIS_CLUSTER")
	wantSecretRef(t, env, "WSGATE_REDIS_PASSWORD", "redis-auth", "password")
	wantSecretRef(t, env, "WSGATE_REDIS_SENTINEL_PASSWORD", "redis-auth", "sentinel-password")
}

func checkCluster(t *testing.T, r rendered) {
	checkNoBundledRedis(t, r)
	env := redisEnv(t, r, envoyName, "tracker")
	wantEnv(t, env, map[string]string{
		"WSGATE_REDIS_ADDR":            "redis-cluster-0.redis:6379,redis-cluster-1.redis:6379",
		"WSGATE_REDIS_CLUSTER":         "true",
		"WSGATE_REDIS_TLS":             "true",
		"WSGATE_REDIS_TLS_CA":          "/etc/wsgate/redis-tls/ca.crt",
		"WSGATE_REDIS_TLS_SERVER_NAME": "redis.internal",
	}, "WSGATE_REDIS_DB", "WSGATE_REDIS_MASTER_NAME", "WSGATE_REDIS_TLS_CERT")
	for _, d := range []string{envoyName, scalerName} {
		checkSecretMounted(t, get[*appsv1.Deployment](t, r, "Deployment", d), "redis-ca", "/etc/wsgate/redis-tls")
	}
}

// checkSecretMounted requires a Secret volume mounted at dir in some container.
func checkSecretMounted(t *testing.T, d *appsv1.Deployment, secret, dir string) {
	t.Helper()
	vol := ""
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			vol = v.Name
		}
	}
	if vol == "" {
		t.Errorf("%s: no volume of Secret %s", d.Name, secret)
		return
	}
	spec := d.Spec.Template.Spec
	for _, c := range append(slices.Clone(spec.Containers), spec.InitContainers...) {
		for _, m := range c.VolumeMounts {
			if m.Name == vol && m.MountPath == dir {
				return
			}
		}
	}
	t.Errorf("%s: Secret %s not mounted at %s", d.Name, secret, dir)
}

func checkTLS(t *testing.T, r rendered) {
	d := get[*appsv1.Deployment](t, r, "Deployment", scalerName)
	args := container(t, &d.Spec.Template.Spec, "scaler").Args
	for _, want := range []string{"--tls-cert=/etc/wsgate/tls/tls.crt", "--tls-key=/etc/wsgate/tls/tls.key", "--tls-client-ca=/etc/wsgate/tls/ca.crt"} {
		if !slices.Contains(args, want) {
			t.Errorf("scaler args %q lack %q", args, want)
		}
	}
	checkSecretMounted(t, d, "wsgate-scaler-tls", "/etc/wsgate/tls")
	ta := get[*kedav1alpha1.TriggerAuthentication](t, r, "TriggerAuthentication", scalerName)
	got := map[string]string{}
	for _, s := range ta.Spec.SecretTargetRef {
		got[s.Parameter] = s.Name + "/" + s.Key
	}
	want := map[string]string{"caCert": "keda-wsgate-client/ca.crt", "tlsClientCert": "keda-wsgate-client/tls.crt", "tlsClientKey": "keda-wsgate-client/tls.key"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("TriggerAuthentication parameters %v, want %v", got, want)
	}
	for _, so := range []string{"wsg-wsgate-backend", envoyName} {
		for _, trg := range get[*kedav1alpha1.ScaledObject](t, r, "ScaledObject", so).Spec.Triggers {
			if trg.AuthenticationRef == nil || trg.AuthenticationRef.Name != scalerName {
				t.Errorf("ScaledObject %s: trigger does not use the TriggerAuthentication", so)
			}
		}
	}
	// KEDA owns Envoy's replica count: a replicas field would fight it on upgrades.
	if e := get[*appsv1.Deployment](t, r, "Deployment", envoyName); e.Spec.Replicas != nil {
		t.Errorf("Envoy Deployment sets replicas %d while KEDA scales it", *e.Spec.Replicas)
	}
	env := redisEnv(t, r, envoyName, "tracker")
	wantEnv(t, env, map[string]string{
		"WSGATE_REDIS_TLS":      "true",
		"WSGATE_REDIS_TLS_CERT": "/etc/wsgate/redis-tls/tls.crt",
		"WSGATE_REDIS_TLS_KEY":  "/etc/wsgate/redis-tls/tls.key",
	})
}

func checkPush(t *testing.T, r rendered) {
	for _, k := range r.keys {
		if so, ok := r.objs[k].(*kedav1alpha1.ScaledObject); ok {
			for _, trg := range so.Spec.Triggers {
				if trg.Type != "external-push" {
					t.Errorf("%s: trigger type %q, want external-push", k, trg.Type)
				}
			}
		}
	}
	games := get[*kedav1alpha1.ScaledObject](t, r, "ScaledObject", "wsg-wsgate-games")
	// While the scaler holds its metric (incomplete data) KEDA must not
	// scale down to the fallback's replicas.
	if games.Spec.Fallback == nil || games.Spec.Fallback.Behavior != "currentReplicasIfHigher" {
		t.Errorf("games ScaledObject fallback %+v, want behavior currentReplicasIfHigher", games.Spec.Fallback)
	}
	if games.Spec.ScaleTargetRef.Kind != "StatefulSet" || games.Spec.Triggers[0].Metadata["metric"] != "saturation" ||
		games.Spec.Triggers[0].MetricType != "Value" ||
		games.Spec.Triggers[0].Metadata["targetUtilization"] != "0.9" || *games.Spec.MaxReplicaCount != 8 {
		t.Errorf("games ScaledObject: %+v %+v", games.Spec.ScaleTargetRef, games.Spec.Triggers)
	}
	ev := get[*kedav1alpha1.ScaledObject](t, r, "ScaledObject", envoyName)
	if ev.Spec.ScaleTargetRef.Name != envoyName || ev.Spec.Triggers[0].Metadata["metric"] != "rateLimitPressure" ||
		ev.Spec.Triggers[0].Metadata["fleet"] != "games" || ev.Spec.Triggers[0].MetricType != "Value" ||
		ev.Spec.Triggers[0].Metadata["rateLimitTarget"] != "0.1" {
		t.Errorf("Envoy ScaledObject: %+v %+v", ev.Spec.ScaleTargetRef, ev.Spec.Triggers)
	}
	// The ServiceMonitor selects both metrics Services by a label they carry.
	sm := get[*unstructured.Unstructured](t, r, "ServiceMonitor", "wsg-wsgate")
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	if sm.GetLabels()["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack release=prometheus", sm.GetLabels())
	}
	for _, svc := range []string{envoyName + "-metrics", scalerName} {
		s := get[*corev1.Service](t, r, "Service", svc)
		for k, v := range sel {
			if s.Labels[k] != v {
				t.Errorf("ServiceMonitor selector %s=%s misses Service %s", k, v, svc)
			}
		}
		if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "metrics" }) {
			t.Errorf("Service %s has no metrics port for the ServiceMonitor", svc)
		}
	}
	fcs, err := fleets.Parse([]byte(get[*corev1.ConfigMap](t, r, "ConfigMap", fleetsName).Data["fleets.yaml"]))
	if err != nil || len(fcs) != 2 || fcs[1].Policy != fleets.PolicySpread || fcs[1].RatePerSecond != 2.5 {
		t.Errorf("fleets: %+v, %v", fcs, err)
	}
	np := get[*networkingv1.NetworkPolicy](t, r, "NetworkPolicy", envoyName)
	from := np.Spec.Ingress[0].From
	if len(from) != 1 || from[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "ingress" {
		t.Errorf("Envoy listener reachable from %+v, want the ingress namespace only", from)
	}
}

// argWith is the argument of args that starts with prefix ("" if none).
func argWith(args []string, prefix string) string {
	for _, a := range args {
		if strings.HasPrefix(a, prefix) {
			return a
		}
	}
	return ""
}
