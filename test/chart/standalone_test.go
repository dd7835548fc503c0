package chart_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wsgate/wsgate/envoy"
)

// bootstrapOf loads the standalone Envoy's rendered bootstrap as Envoy would.
func bootstrapOf(t *testing.T, r rendered) *bootstrapv3.Bootstrap {
	t.Helper()
	boot, err := envoy.LoadBootstrap([]byte(get[*corev1.ConfigMap](t, r, "ConfigMap", configName).Data["envoy.yaml"]))
	if err != nil {
		t.Fatalf("envoy.yaml in the ConfigMap: %v", err)
	}
	return boot
}

func listenerNamed(t *testing.T, boot *bootstrapv3.Bootstrap, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range boot.GetStaticResources().GetListeners() {
		if l.GetName() == name {
			return l
		}
	}
	t.Fatalf("no Envoy listener %q", name)
	return nil
}

func clusterNamed(boot *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, c := range boot.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func hcmOf(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatalf("listener %s: %v", l.GetName(), err)
	}
	return &hcm
}

// upgradeRoutes lists a listener's WebSocket routes as
// "domains prefix -> fleet pin [admit_timeout_ms] cluster", in Envoy's order.
func upgradeRoutes(t *testing.T, l *listenerv3.Listener) []string {
	t.Helper()
	var out []string
	for _, vh := range hcmOf(t, l).GetRouteConfig().GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			md := rt.GetMetadata().GetFilterMetadata()["envoy.filters.http.lua"].GetFields()
			if md == nil {
				continue
			}
			s := fmt.Sprintf("%s %s -> %s %s", strings.Join(vh.GetDomains(), ","), rt.GetMatch().GetPrefix(),
				md["fleet"].GetStringValue(), md["pin"].GetStringValue())
			if v, ok := md["admit_timeout_ms"]; ok {
				s += fmt.Sprintf(" %gms", v.GetNumberValue())
			}
			out = append(out, s+" "+rt.GetRoute().GetCluster())
		}
		// The last route of every host answers what is no upgrade.
		last := vh.GetRoutes()[len(vh.GetRoutes())-1]
		if last.GetDirectResponse().GetStatus() != 426 || last.GetMatch().GetPrefix() != "/" {
			t.Errorf("listener %s host %v: last route %v, want the 426 for anything but an upgrade", l.GetName(), vh.GetDomains(), last)
		}
	}
	return out
}

// checkEnvoyStats: every standalone Envoy serves its stats for Prometheus
// on a listener of its own, and only /stats/prometheus of its admin API
// (the admin's other endpoints can drain or stop Envoy).
func checkEnvoyStats(t *testing.T, r rendered, port uint32) {
	t.Helper()
	boot := bootstrapOf(t, r)
	l := listenerNamed(t, boot, "stats")
	if got := l.GetAddress().GetSocketAddress().GetPortValue(); got != port {
		t.Errorf("stats listener on port %d, want %d", got, port)
	}
	vhs := hcmOf(t, l).GetRouteConfig().GetVirtualHosts()
	if len(vhs) != 1 || len(vhs[0].GetRoutes()) != 2 {
		t.Fatalf("stats listener routes: %v", vhs)
	}
	toAdmin, rest := vhs[0].GetRoutes()[0], vhs[0].GetRoutes()[1]
	if toAdmin.GetMatch().GetPath() != "/stats/prometheus" || toAdmin.GetRoute().GetCluster() != "wsgate_admin" {
		t.Errorf("stats listener's first route %v, want exactly /stats/prometheus to wsgate_admin", toAdmin)
	}
	if rest.GetRoute() != nil {
		t.Errorf("stats listener routes more than /stats/prometheus: %v", rest)
	}
	admin := clusterNamed(boot, "wsgate_admin").GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if boot.GetAdmin().GetAddress().GetSocketAddress().GetPortValue() != admin.GetPortValue() || admin.GetAddress() != "127.0.0.1" {
		t.Errorf("wsgate_admin goes to %v, not Envoy's admin %v", admin, boot.GetAdmin().GetAddress())
	}
	ev := container(t, &get[*appsv1.Deployment](t, r, "Deployment", envoyName).Spec.Template.Spec, "envoy")
	if !hasPort(ev, "envoy-stats", int32(port)) {
		t.Errorf("envoy container ports %v lack envoy-stats %d", ev.Ports, port)
	}
	// Prometheus finds it: by the metrics Service's annotations, and by
	// the ServiceMonitor when there is one.
	svc := get[*corev1.Service](t, r, "Service", envoyName+"-metrics")
	if svc.Annotations["prometheus.io/port"] != fmt.Sprint(port) || svc.Annotations["prometheus.io/path"] != "/stats/prometheus" {
		t.Errorf("metrics Service annotations %v do not point at Envoy's stats", svc.Annotations)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "envoy-stats" && p.Port == int32(port) }) {
		t.Errorf("metrics Service ports %v lack envoy-stats %d", svc.Spec.Ports, port)
	}
	if sm, ok := r.objs["ServiceMonitor/wsg-wsgate"].(*unstructured.Unstructured); ok {
		eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		if !slices.ContainsFunc(eps, func(e any) bool {
			m := e.(map[string]any)
			return m["port"] == "envoy-stats" && m["path"] == "/stats/prometheus"
		}) {
			t.Errorf("ServiceMonitor endpoints %v do not scrape envoy-stats", eps)
		}
	}
}

// checkStandaloneFleets: two fleets, one renamed, routed by host and by
// path over a plaintext and a TLS listener, one of them pinned by override
// host to a cluster of the fleet's pods.
func checkStandaloneFleets(t *testing.T, r rendered) {
	boot := bootstrapOf(t, r)
	want := []string{
		"chat.example.com,chat.example.org / -> chat original_dst wsgate_backend",
		"feed.example.com /live -> feed-v2 override_host 500ms wsgate_upstream_1",
		"* /chat -> chat original_dst wsgate_backend",
	}
	for _, name := range []string{"http", "https"} {
		if got := upgradeRoutes(t, listenerNamed(t, boot, name)); !sameElements(got, want) {
			t.Errorf("listener %s routes:\n%s\nwant:\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if ts := listenerNamed(t, boot, "http").GetFilterChains()[0].GetTransportSocket(); ts != nil {
		t.Errorf("plaintext listener has a transport socket %v", ts)
	}
	ts := listenerNamed(t, boot, "https").GetFilterChains()[0].GetTransportSocket()
	var tlsCtx tlsv3.DownstreamTlsContext
	if ts == nil || ts.GetTypedConfig().UnmarshalTo(&tlsCtx) != nil {
		t.Fatalf("TLS listener's transport socket %v is no DownstreamTlsContext", ts)
	}
	certs := tlsCtx.GetCommonTlsContext().GetTlsCertificates()
	if len(certs) != 1 || certs[0].GetCertificateChain().GetFilename() != "/etc/envoy/tls/https/tls.crt" ||
		certs[0].GetPrivateKey().GetFilename() != "/etc/envoy/tls/https/tls.key" {
		t.Errorf("TLS certificates %v, want tls.crt and tls.key from /etc/envoy/tls/https", certs)
	}
	if !slices.Contains(tlsCtx.GetCommonTlsContext().GetAlpnProtocols(), "h2") {
		t.Error("TLS listener offers no h2: browsers could not use WebSockets over HTTP/2")
	}
	// The pinned route's cluster holds the fleet's pods, found by DNS.
	up := clusterNamed(boot, "wsgate_upstream_1")
	if up == nil || up.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Fatalf("override_host cluster %v, want STRICT_DNS", up)
	}
	sa := up.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa.GetAddress() != "feed-headless.edge.svc.cluster.local" || sa.GetPortValue() != 8080 {
		t.Errorf("override_host cluster resolves %v", sa)
	}
	if c := clusterNamed(boot, "wsgate_backend"); c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetOriginalDstLbConfig().GetUseHttpHeader() {
		t.Errorf("original_dst cluster %v", c)
	}

	// The Secret is mounted where the TLS context reads it.
	d := get[*appsv1.Deployment](t, r, "Deployment", envoyName)
	checkSecretMounted(t, d, "wsgate-tls", "/etc/envoy/tls/https")
	ev := container(t, &d.Spec.Template.Spec, "envoy")
	if !hasPort(ev, "https", 8443) {
		t.Errorf("envoy container ports %v lack https 8443", ev.Ports)
	}
	svc := get[*corev1.Service](t, r, "Service", envoyName)
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprintf("%d->%s", p.Port, p.TargetPort.String()))
	}
	if !slices.Equal(ports, []string{"80->http", "443->https"}) {
		t.Errorf("Envoy Service ports %v, want 80->http 443->https", ports)
	}
	np := get[*networkingv1.NetworkPolicy](t, r, "NetworkPolicy", envoyName)
	var open []string
	for _, p := range np.Spec.Ingress[0].Ports {
		open = append(open, p.Port.String())
	}
	if !slices.Equal(open, []string{"http", "https"}) {
		t.Errorf("Envoy NetworkPolicy opens %v to clients, want its listeners http, https", open)
	}
	checkEnvoyStats(t, r, 9911)
	// A backend without targetUtilization leaves it to the scaler's default
	// (it once rendered the string "<nil>", which the scaler refuses).
	feed := get[*kedav1alpha1.ScaledObject](t, r, "ScaledObject", "wsg-wsgate-feed")
	if v, ok := feed.Spec.Triggers[0].Metadata["targetUtilization"]; ok {
		t.Errorf("feed ScaledObject: targetUtilization %q rendered, though the values give none", v)
	}
}

func sameElements(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestRenamedFleetRoutes: the trap of old: renaming the one fleet used to
// leave Envoy's route in fleet "default", and every upgrade failed. Now the
// route follows the fleet.
func TestRenamedFleetRoutes(t *testing.T) {
	r := decodeStrict(t, template(t, "",
		"--set-json", `fleets=[{"name":"chat","service":"backend","port":"http"}]`,
		"--set", "keda.backends[0].fleet=chat",
		"--set", "keda.backends[0].name=backend", "--set", "keda.backends[0].kind=Deployment",
		"--set", "keda.backends[0].metric=desiredReplicas", "--set", "keda.backends[0].minReplicaCount=1",
		"--set", "keda.backends[0].maxReplicaCount=2"))
	got := upgradeRoutes(t, listenerNamed(t, bootstrapOf(t, r), "http"))
	if want := []string{"* / -> chat original_dst wsgate_backend"}; !slices.Equal(got, want) {
		t.Errorf("routes %v, want %v", got, want)
	}
}
