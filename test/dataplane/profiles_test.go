package dataplane_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/yuin/gopher-lua/parse"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istionetworking "istio.io/api/networking/v1alpha3"
	extensionsv1alpha1 "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/fleets"
)

// checkStandaloneGone: a profile that uses the user's Envoy renders none
// of the chart's own Envoy.
func checkStandaloneGone(t *testing.T, r rendered) {
	t.Helper()
	for _, k := range r.keys {
		if strings.HasPrefix(k, "Deployment/"+fullname+"-envoy") || k == "Service/"+fullname+"-envoy" ||
			k == "ConfigMap/"+fullname+"-config" || k == "ServiceAccount/"+fullname+"-envoy" ||
			k == "PodDisruptionBudget/"+fullname+"-envoy" || k == "NetworkPolicy/"+fullname+"-envoy" {
			t.Errorf("%s rendered, yet the user's gateway is the data plane", k)
		}
	}
}

// checkTracker: the tracker joins the user's Envoy pod as a native sidecar
// that reads the fleets file and knows where that Envoy's admin is.
func checkTracker(t *testing.T, c corev1.Container, volumes []corev1.Volume, admin string) {
	t.Helper()
	if c.Name != "tracker" || c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("init container %s restartPolicy %v: want the tracker as a native sidecar", c.Name, c.RestartPolicy)
	}
	for _, want := range []string{"--listen=127.0.0.1:9090", "--access-log-listen=127.0.0.1:9091", "--envoy-admin=" + admin, "--config=/etc/wsgate/fleets/fleets.yaml"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("tracker args %q lack %q", c.Args, want)
		}
	}
	if !slices.ContainsFunc(volumes, func(v corev1.Volume) bool {
		return v.ConfigMap != nil && v.ConfigMap.Name == fullname+"-fleets"
	}) {
		t.Errorf("pod volumes %v lack the fleets ConfigMap", volumes)
	}
}

// checkFleets: the scaler and trackers expect the gateway's Envoy pods.
func checkFleets(t *testing.T, r rendered, envoyService string) {
	t.Helper()
	fleets, err := fleets.Parse([]byte(get[*corev1.ConfigMap](t, r, "ConfigMap", fullname+"-fleets").Data["fleets.yaml"]))
	if err != nil {
		t.Fatalf("fleets.yaml: %v", err)
	}
	for _, f := range fleets {
		if f.EnvoyService != envoyService {
			t.Errorf("fleet %s: envoyService %q, want the gateway's %q", f.Name, f.EnvoyService, envoyService)
		}
	}
}

// checkMetricsService: Prometheus reaches the trackers and Envoy's stats
// on the gateway's pods.
func checkMetricsService(t *testing.T, r rendered, selector map[string]string, statsPort int32) {
	t.Helper()
	svc := get[*corev1.Service](t, r, "Service", fullname+"-envoy-metrics")
	for k, v := range selector {
		if svc.Spec.Selector[k] != v {
			t.Errorf("metrics Service selector %v lacks %s=%s", svc.Spec.Selector, k, v)
		}
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "envoy-stats" && p.Port == statsPort }) {
		t.Errorf("metrics Service ports %v lack envoy-stats %d", svc.Spec.Ports, statsPort)
	}
}

// checkRedisReachable: the bundled Redis admits the trackers in the
// gateway's pods.
func checkRedisReachable(t *testing.T, r rendered, selector map[string]string) {
	t.Helper()
	np := get[*networkingv1.NetworkPolicy](t, r, "NetworkPolicy", fullname+"-redis")
	for _, rule := range np.Spec.Ingress {
		for _, from := range rule.From {
			if from.PodSelector != nil && maps(from.PodSelector.MatchLabels, selector) {
				return
			}
		}
	}
	t.Errorf("the Redis NetworkPolicy %+v does not admit the gateway's pods %v", np.Spec.Ingress, selector)
}

// checkFilter: the script is the chart's filter with only the install line
// replaced by these settings, and still parses as Lua.
func checkFilter(t *testing.T, script, settings string) {
	t.Helper()
	want := "local INSTALL = { " + settings + " }"
	if strings.Count(script, want) != 1 {
		t.Errorf("filter lacks its settings %q", want)
	}
	if back := strings.Replace(script, want, installLine, 1); strings.TrimSuffix(back, "\n") != strings.TrimSuffix(string(filterLua), "\n") {
		t.Error("the rendered filter differs from files/wsgate.lua beyond its install line")
	}
	if _, err := parse.Parse(strings.NewReader(script), "wsgate.lua"); err != nil {
		t.Errorf("the rendered filter is no Lua: %v", err)
	}
}

// loadEnvoy assembles what the fragments add to a gateway's Envoy into one
// bootstrap and loads it as Envoy would: strict decoding, ValidateAll, and
// every typed_config resolved and validated.
func loadEnvoy(t *testing.T, what string, hcm map[string]any, httpFilters, clusters []any) *bootstrapv3.Bootstrap {
	t.Helper()
	base := map[string]any{
		"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"stat_prefix": "gateway",
		"route_config": map[string]any{"name": "gateway", "virtual_hosts": []any{
			map[string]any{"name": "ws", "domains": []any{"*"}, "routes": []any{
				map[string]any{"match": map[string]any{"prefix": "/"}, "route": map[string]any{"cluster": "backend"}},
			}},
		}},
		"http_filters": append(httpFilters, map[string]any{"name": "envoy.filters.http.router", "typed_config": map[string]any{
			"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
	}
	for k, v := range hcm {
		base[k] = v
	}
	boot := map[string]any{"static_resources": map[string]any{
		"listeners": []any{map[string]any{
			"name":          "gateway",
			"address":       map[string]any{"socket_address": map[string]any{"address": "0.0.0.0", "port_value": 10080}},
			"filter_chains": []any{map[string]any{"filters": []any{map[string]any{"name": "envoy.filters.network.http_connection_manager", "typed_config": base}}}},
		}},
		"clusters": append(clusters, map[string]any{"name": "backend", "type": "EDS", "eds_cluster_config": map[string]any{"eds_config": map[string]any{"ads": map[string]any{}}}}),
	}}
	js, err := json.Marshal(boot)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoy.LoadBootstrap(js)
	if err != nil {
		t.Fatalf("%s: %v\n%s", what, err, js)
	}
	return b
}

func asAny(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	var v map[string]any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func clusterNames(b *bootstrapv3.Bootstrap) []string {
	var names []string
	for _, c := range b.GetStaticResources().GetClusters() {
		names = append(names, c.GetName())
	}
	return names
}

func TestEnvoyGateway(t *testing.T) {
	for _, source := range []string{"Inline", "ValueRef"} {
		t.Run(source, func(t *testing.T) {
			t.Parallel()
			r := decodeStrict(t, template(t, "envoygateway.yaml", "--set", "dataPlane.envoyGateway.luaSource="+source))
			checkStandaloneGone(t, r)
			checkFleets(t, r, "envoy-edge-public")
			selector := map[string]string{
				"app.kubernetes.io/name":                         "envoy",
				"app.kubernetes.io/component":                    "proxy",
				"app.kubernetes.io/managed-by":                   "envoy-gateway",
				"gateway.envoyproxy.io/owning-gateway-name":      "public",
				"gateway.envoyproxy.io/owning-gateway-namespace": namespace,
			}
			checkMetricsService(t, r, selector, 19001)
			checkRedisReachable(t, r, selector)

			// The EnvoyProxy: the tracker as a native sidecar, and its two
			// clusters merged into Envoy Gateway's bootstrap.
			ep := get[*egv1a1.EnvoyProxy](t, r, "EnvoyProxy", fullname)
			dep := ep.Spec.Provider.Kubernetes.EnvoyDeployment
			if len(dep.InitContainers) != 1 || dep.Pod == nil {
				t.Fatalf("EnvoyProxy deployment %+v: want the tracker and its volumes", dep)
			}
			checkTracker(t, dep.InitContainers[0], dep.Pod.Volumes, "127.0.0.1:19000")
			bs := ep.Spec.Bootstrap
			if bs == nil || bs.Type == nil || *bs.Type != egv1a1.BootstrapTypeMerge || bs.Value == nil {
				t.Fatalf("EnvoyProxy bootstrap %+v: want a Merge", bs)
			}
			merge, err := envoy.LoadBootstrap([]byte(*bs.Value))
			if err != nil {
				t.Fatalf("EnvoyProxy bootstrap merge: %v", err)
			}
			if got := clusterNames(merge); !slices.Equal(got, []string{"wsgate_tracker", "wsgate_accesslog"}) {
				t.Errorf("bootstrap merge adds clusters %v, want the tracker's two", got)
			}
			if len(merge.GetStaticResources().GetListeners()) != 0 || merge.GetAdmin() != nil {
				t.Error("the bootstrap merge changes more of the user's Envoy than the tracker's clusters")
			}

			// One EnvoyExtensionPolicy per route, with the filter set to its
			// fleet and to pinning by override host.
			for i, want := range []struct {
				routes   []string
				settings string
			}{
				{[]string{"chat-ws", "chat-ws-v2"}, `fleet = "chat", pin = "override_host", admit_timeout_ms = 400, tracker_cluster = "wsgate_tracker"`},
				{[]string{"feed-ws"}, `fleet = "feed", pin = "override_host", tracker_cluster = "wsgate_tracker"`},
			} {
				p := get[*egv1a1.EnvoyExtensionPolicy](t, r, "EnvoyExtensionPolicy", fmt.Sprintf("%s-%d", fullname, i))
				var targets []string
				for _, ref := range p.Spec.TargetRefs {
					if ref.Group != "gateway.networking.k8s.io" || ref.Kind != "HTTPRoute" {
						t.Errorf("policy %d targets %s/%s", i, ref.Group, ref.Kind)
					}
					targets = append(targets, string(ref.Name))
				}
				if !slices.Equal(targets, want.routes) {
					t.Errorf("policy %d targets %v, want %v", i, targets, want.routes)
				}
				if len(p.Spec.Lua) != 1 || string(p.Spec.Lua[0].Type) != source {
					t.Fatalf("policy %d lua %+v, want one %s", i, p.Spec.Lua, source)
				}
				script := ""
				if source == "Inline" {
					script = *p.Spec.Lua[0].Inline
				} else {
					ref := p.Spec.Lua[0].ValueRef
					if ref.Kind != "ConfigMap" || ref.Group != "" {
						t.Fatalf("policy %d valueRef %+v, want a ConfigMap", i, ref)
					}
					script = get[*corev1.ConfigMap](t, r, "ConfigMap", string(ref.Name)).Data["lua"]
				}
				checkFilter(t, script, want.settings)
			}

			// The EnvoyPatchPolicy: the access log into the tracker and its
			// flush settings on both listeners' connection managers.
			pp := get[*egv1a1.EnvoyPatchPolicy](t, r, "EnvoyPatchPolicy", fullname)
			if pp.Spec.Type != egv1a1.JSONPatchEnvoyPatchType || pp.Spec.TargetRef.Kind != "Gateway" || pp.Spec.TargetRef.Name != "public" {
				t.Errorf("EnvoyPatchPolicy %+v", pp.Spec)
			}
			hcm := map[string]any{}
			patched := map[string][]string{}
			for _, jp := range pp.Spec.JSONPatches {
				op := jp.Operation
				if jp.Type != egv1a1.ListenerEnvoyResourceType || op.Op != egv1a1.JSONPatchOperationType("add") {
					t.Errorf("patch %+v: want an add to a Listener", jp)
				}
				if op.JSONPath == nil || *op.JSONPath != "$..filters[?(@.name=='envoy.filters.network.http_connection_manager')].typed_config" {
					t.Errorf("patch jsonPath %v does not select the HTTP connection managers", op.JSONPath)
				}
				value := asAny(t, op.Value.Raw)
				switch *op.Path {
				case "/access_log_options":
					hcm["access_log_options"] = value
				case "/access_log/-":
					hcm["access_log"] = []any{value}
				default:
					t.Errorf("patch path %s", *op.Path)
				}
				patched[jp.Name] = append(patched[jp.Name], *op.Path)
			}
			for _, l := range []string{"edge/public/http", "edge/public/https"} {
				if !slices.Equal(patched[l], []string{"/access_log_options", "/access_log/-"}) {
					t.Errorf("listener %s patched at %v", l, patched[l])
				}
			}
			boot := loadEnvoy(t, "the patched connection manager", hcm, nil, toAnys(t, merge))
			checkAccessLog(t, boot, "wsgate_accesslog")
		})
	}
}

func toAnys(t *testing.T, b *bootstrapv3.Bootstrap) []any {
	t.Helper()
	var out []any
	for _, c := range b.GetStaticResources().GetClusters() {
		out = append(out, protoToAny(t, c))
	}
	return out
}

// checkAccessLog: the connection manager flushes the access log when the
// tunnel is established and while it lives, into a cluster that exists.
func checkAccessLog(t *testing.T, boot *bootstrapv3.Bootstrap, cluster string) {
	t.Helper()
	var hcm hcmv3.HttpConnectionManager
	if err := boot.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	o := hcm.GetAccessLogOptions()
	if !o.GetFlushLogOnTunnelSuccessfullyEstablished() || o.GetAccessLogFlushInterval().AsDuration().Seconds() != 30 {
		t.Errorf("access log options %v: want a flush on establishment and every 30s", o)
	}
	if cluster == "" {
		return
	}
	if len(hcm.GetAccessLog()) != 1 || !strings.Contains(hcm.GetAccessLog()[0].String(), cluster) {
		t.Errorf("access log %v does not go to %s", hcm.GetAccessLog(), cluster)
	}
	if !slices.Contains(clusterNames(boot), cluster) {
		t.Errorf("access log cluster %s is not among %v", cluster, clusterNames(boot))
	}
}

func TestIstio(t *testing.T) {
	for _, tc := range []struct {
		filter, trackerCluster string
		clusterName            string // the filter's tracker_cluster
	}{
		{"TrafficExtension", "envoyFilter", "wsgate_tracker"},
		{"EnvoyFilter", "serviceEntry", "outbound|9090||" + fullname + "-tracker.wsgate.internal"},
	} {
		t.Run(tc.filter+"-"+tc.trackerCluster, func(t *testing.T) {
			t.Parallel()
			r := decodeStrict(t, template(t, "istio.yaml", "--set", "dataPlane.istio.filter="+tc.filter,
				"--set", "dataPlane.istio.trackerCluster="+tc.trackerCluster))
			checkStandaloneGone(t, r)
			checkFleets(t, r, "istio-ingressgateway")
			selector := map[string]string{"istio": "ingressgateway", "app": "edge-gateway"}
			checkMetricsService(t, r, selector, 15090)
			checkRedisReachable(t, r, selector)
			settings := fmt.Sprintf(`fleet = "chat", pin = "override_host", admit_timeout_ms = 300, tracker_cluster = %q`, tc.clusterName)

			ef := get[*networkingv1alpha3.EnvoyFilter](t, r, "EnvoyFilter", fullname)
			if !maps(ef.Spec.GetWorkloadSelector().GetLabels(), selector) {
				t.Errorf("EnvoyFilter selects %v, want the gateway %v", ef.Spec.GetWorkloadSelector().GetLabels(), selector)
			}
			hcm := map[string]any{}
			var httpFilters, clusters []any
			for _, p := range ef.Spec.GetConfigPatches() {
				if p.GetMatch().GetContext() != istionetworking.EnvoyFilter_GATEWAY {
					t.Errorf("patch %v applies beyond the gateway", p.GetApplyTo())
				}
				value := protoToAny(t, p.GetPatch().GetValue())
				switch p.GetApplyTo() {
				case istionetworking.EnvoyFilter_NETWORK_FILTER:
					if p.GetPatch().GetOperation() != istionetworking.EnvoyFilter_Patch_MERGE {
						t.Errorf("connection manager patch %v, want MERGE", p.GetPatch().GetOperation())
					}
					for k, v := range value["typed_config"].(map[string]any) {
						hcm[k] = v
					}
				case istionetworking.EnvoyFilter_HTTP_FILTER:
					if p.GetPatch().GetOperation() != istionetworking.EnvoyFilter_Patch_INSERT_BEFORE ||
						p.GetMatch().GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName() != "envoy.filters.http.router" {
						t.Errorf("filter patch %v, want INSERT_BEFORE the router", p)
					}
					httpFilters = append(httpFilters, value)
					src := value["typed_config"].(map[string]any)["default_source_code"].(map[string]any)["inline_string"].(string)
					checkFilter(t, src, settings)
				case istionetworking.EnvoyFilter_CLUSTER:
					if p.GetPatch().GetOperation() != istionetworking.EnvoyFilter_Patch_ADD {
						t.Errorf("cluster patch %v, want ADD", p.GetPatch().GetOperation())
					}
					clusters = append(clusters, value)
				default:
					t.Errorf("unexpected patch of %v", p.GetApplyTo())
				}
			}
			boot := loadEnvoy(t, "the EnvoyFilter's patches", hcm, httpFilters, clusters)
			checkAccessLog(t, boot, "")
			hasLua := len(httpFilters) == 1
			if _, te := r.objs["TrafficExtension/"+fullname]; te == hasLua || (tc.filter == "EnvoyFilter") != hasLua {
				t.Errorf("filter %s: TrafficExtension rendered %v, EnvoyFilter HTTP_FILTER %v", tc.filter, te, hasLua)
			}
			if tc.filter == "TrafficExtension" {
				te := get[*extensionsv1alpha1.TrafficExtension](t, r, "TrafficExtension", fullname)
				if !maps(te.Spec.GetSelector().GetMatchLabels(), selector) {
					t.Errorf("TrafficExtension selects %v", te.Spec.GetSelector().GetMatchLabels())
				}
				checkFilter(t, te.Spec.GetLua().GetInlineCode(), settings)
			}

			// The tracker's admission cluster: added by the EnvoyFilter, or
			// Istio's own cluster of a ServiceEntry on loopback, whose name
			// the filter calls.
			addsTracker := slices.Contains(clusterNames(boot), "wsgate_tracker")
			if addsTracker != (tc.trackerCluster == "envoyFilter") {
				t.Errorf("trackerCluster %s: EnvoyFilter adds wsgate_tracker: %v", tc.trackerCluster, addsTracker)
			}
			if tc.trackerCluster == "serviceEntry" {
				checkLoopbackEntry(t, r, fullname+"-tracker", tc.clusterName)
			} else if r.objs["ServiceEntry/"+fullname+"-tracker"] != nil {
				t.Error("tracker ServiceEntry rendered beside the EnvoyFilter's cluster")
			}
			checkLoopbackEntry(t, r, fullname+"-accesslog", "outbound|9091||"+fullname+"-accesslog.wsgate.internal")

			tel := get[*telemetryv1.Telemetry](t, r, "Telemetry", fullname)
			al := tel.Spec.GetAccessLogging()
			if len(al) != 1 || len(al[0].GetProviders()) != 1 || al[0].GetProviders()[0].GetName() != "wsgate-accesslog" ||
				!strings.Contains(al[0].GetFilter().GetExpression(), `"wsgate"`) || !maps(tel.Spec.GetSelector().GetMatchLabels(), selector) {
				t.Errorf("Telemetry %v: want the gateway's access log to provider wsgate-accesslog, admitted connections only", tel.Spec.String())
			}

			// The patch of the user's gateway Deployment decodes strictly.
			patch := get[*corev1.ConfigMap](t, r, "ConfigMap", fullname+"-istio-gateway").Data["patch.yaml"]
			var d appsv1.Deployment
			if err := yaml.UnmarshalStrict([]byte(patch), &d); err != nil {
				t.Fatalf("gateway Deployment patch: %v\n%s", err, patch)
			}
			spec := d.Spec.Template.Spec
			if len(spec.InitContainers) != 1 || len(spec.Containers) != 0 {
				t.Fatalf("gateway patch adds %d init containers and %d containers, want the tracker alone", len(spec.InitContainers), len(spec.Containers))
			}
			checkTracker(t, spec.InitContainers[0], spec.Volumes, "127.0.0.1:15000")
		})
	}
}

// checkLoopbackEntry: a ServiceEntry of one port on 127.0.0.1, whose Istio
// cluster is named cluster.
func checkLoopbackEntry(t *testing.T, r rendered, name, cluster string) {
	t.Helper()
	se := get[*istionetworkingv1.ServiceEntry](t, r, "ServiceEntry", name)
	s := &se.Spec
	if len(s.GetHosts()) != 1 || len(s.GetPorts()) != 1 || len(s.GetEndpoints()) != 1 || s.GetEndpoints()[0].GetAddress() != "127.0.0.1" {
		t.Fatalf("ServiceEntry %s: %v, want one host and port on 127.0.0.1", name, s.String())
	}
	if got := fmt.Sprintf("outbound|%d||%s", s.GetPorts()[0].GetNumber(), s.GetHosts()[0]); got != cluster {
		t.Errorf("ServiceEntry %s makes cluster %s, want %s", name, got, cluster)
	}
	if !slices.Equal(s.GetExportTo(), []string{"."}) {
		t.Errorf("ServiceEntry %s exported to %v, want its namespace only", name, s.GetExportTo())
	}
}

func maps(got, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// protoToAny turns a message into the generic JSON value that Envoy's
// config names (proto field names).
func protoToAny(t *testing.T, m proto.Message) map[string]any {
	t.Helper()
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return asAny(t, js)
}
