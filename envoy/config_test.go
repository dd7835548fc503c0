package envoy_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/httplimit"
)

func mustHCM(t *testing.T) (*hcmv3.HttpConnectionManager, map[string]*clusterv3.Cluster) {
	t.Helper()
	b, err := envoy.LoadBootstrap(envoy.BootstrapYAML)
	if err != nil {
		t.Fatalf("envoy.yaml: %v", err)
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); got != "127.0.0.1" {
		t.Errorf("admin listens on %q, want 127.0.0.1 only", got)
	}
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || ls[0].GetAddress().GetSocketAddress().GetPortValue() != 8080 {
		t.Fatalf("want one listener on :8080, got %v", ls)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatalf("http connection manager: %v", err)
	}
	return &hcm, clusters
}

func TestBootstrapIsValidForEnvoy(t *testing.T) {
	hcm, clusters := mustHCM(t)

	if u := hcm.GetUpgradeConfigs(); len(u) != 1 || u[0].GetUpgradeType() != "websocket" {
		t.Errorf("upgrade_configs = %v, want websocket", u)
	}
	r := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
	if to := r.GetRoute().GetTimeout(); to == nil || to.AsDuration() != 0 {
		t.Errorf("route timeout = %v, want 0s (WebSockets live long)", to)
	}
	if r.GetRoute().GetCluster() != "wsgate_backend" {
		t.Errorf("route goes to %q, want wsgate_backend", r.GetRoute().GetCluster())
	}
	// The Lua filter reads route metadata under its own filter name.
	lua := hcm.GetHttpFilters()[0]
	if _, ok := r.GetMetadata().GetFilterMetadata()[lua.GetName()].GetFields()["fleet"]; !ok {
		t.Errorf("route metadata has no %s.fleet", lua.GetName())
	}

	var lc luav3.Lua
	if err := lua.GetTypedConfig().UnmarshalTo(&lc); err != nil {
		t.Fatalf("lua filter: %v", err)
	}
	if got := lc.GetDefaultSourceCode().GetFilename(); got != envoy.LuaPath {
		t.Errorf("lua filter loads %q, want %q (one source: envoy/wsgate.lua)", got, envoy.LuaPath)
	}
	if n := hcm.GetHttpFilters()[len(hcm.GetHttpFilters())-1].GetName(); n != "envoy.filters.http.router" {
		t.Errorf("last http filter %q, want the router", n)
	}

	opts := hcm.GetAccessLogOptions()
	if !opts.GetFlushLogOnTunnelSuccessfullyEstablished() {
		t.Error("flush_log_on_tunnel_successfully_established is off: the tracker never hears of establishment")
	}
	if d := opts.GetAccessLogFlushInterval().AsDuration(); d <= 0 || d.Seconds() >= 90 {
		t.Errorf("access_log_flush_interval %s: want a period well under the 90s lease", d)
	}
	if len(hcm.GetAccessLog()) != 1 {
		t.Fatalf("want one access log, got %d", len(hcm.GetAccessLog()))
	}
	al := hcm.GetAccessLog()[0]
	mf := al.GetFilter().GetMetadataFilter()
	if mf.GetMatcher().GetFilter() != "wsgate" || mf.GetMatcher().GetPath()[0].GetKey() != "conn" || !mf.GetMatcher().GetValue().GetPresentMatch() {
		t.Errorf("access log filter %v: want entries carrying wsgate.conn only", mf)
	}
	if mf.GetMatchIfKeyNotFound().GetValue() {
		t.Error("access log filter matches entries without wsgate.conn")
	}
	var als grpcalsv3.HttpGrpcAccessLogConfig
	if err := al.GetTypedConfig().UnmarshalTo(&als); err != nil {
		t.Fatalf("grpc access log: %v", err)
	}
	if c := als.GetCommonConfig().GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != "wsgate_accesslog" {
		t.Errorf("access log goes to cluster %q, want wsgate_accesslog", c)
	}

	be := clusters["wsgate_backend"]
	if be.GetType() != clusterv3.Cluster_ORIGINAL_DST || be.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("backend cluster %v/%v, want ORIGINAL_DST/CLUSTER_PROVIDED", be.GetType(), be.GetLbPolicy())
	}
	od := be.GetOriginalDstLbConfig()
	if od.GetUseHttpHeader() {
		t.Error("backend honours x-envoy-original-dst-host: a client could pick the pod")
	}
	if mk := od.GetMetadataKey(); mk.GetKey() != "wsgate" || len(mk.GetPath()) != 1 || mk.GetPath()[0].GetKey() != "upstream" {
		t.Errorf("metadata_key %v, want wsgate.upstream", mk)
	}
	if th := be.GetCircuitBreakers().GetThresholds(); len(th) == 0 || th[0].GetMaxConnections().GetValue() <= 1024 || th[0].GetMaxRequests().GetValue() <= 1024 {
		t.Errorf("backend circuit breakers %v: want limits above the 1024 default", th)
	}
	for name, port := range map[string]uint32{"wsgate_tracker": 9090, "wsgate_accesslog": 9091} {
		sa := clusters[name].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != port {
			t.Errorf("cluster %s at %s:%d, want 127.0.0.1:%d", name, sa.GetAddress(), sa.GetPortValue(), port)
		}
	}
	if _, ok := clusters["wsgate_accesslog"].GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; !ok {
		t.Error("access-log cluster does not speak HTTP/2: gRPC would fail")
	}
	// Envoy must drop an idle connection to the tracker before the tracker
	// does, or an admission can meet a connection being closed.
	var po httpv3.HttpProtocolOptions
	if err := clusters["wsgate_tracker"].GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil {
		t.Fatalf("tracker cluster protocol options: %v", err)
	}
	if idle := po.GetCommonHttpProtocolOptions().GetIdleTimeout(); idle == nil || idle.AsDuration() >= httplimit.Default.Idle {
		t.Errorf("tracker cluster idle timeout %v, want below the tracker's %s", idle.AsDuration(), httplimit.Default.Idle)
	}
}

func TestEmbeddedFilesAreTheSourceFiles(t *testing.T) {
	for name, embedded := range map[string][]byte{"wsgate.lua": envoy.FilterLua, "envoy.yaml": envoy.BootstrapYAML} {
		disk, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(disk, embedded) {
			t.Errorf("%s: embedded copy differs from the file", name)
		}
	}
}

func TestLoadBootstrapRejectsBrokenConfigs(t *testing.T) {
	cases := map[string]struct {
		old, new, want string
	}{
		"unknown field": {"stat_prefix: wsgate", "stat_prefix: wsgate\n                statprefix: typo", "statprefix"},
		"unresolvable typed_config": {
			"envoy.extensions.filters.http.router.v3.Router", "envoy.extensions.filters.http.router.v3.Routr", "Routr"},
		"validation rule":    {"port_value: 8080", "port_value: 70000", "PortValue"},
		"unknown enum value": {"lb_policy: CLUSTER_PROVIDED", "lb_policy: NOT_A_POLICY", "NOT_A_POLICY"},
		"empty log name":     {"log_name: wsgate", `log_name: ""`, "LogName"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			src := string(envoy.BootstrapYAML)
			if !strings.Contains(src, c.old) {
				t.Fatalf("envoy.yaml no longer contains %q: update the test", c.old)
			}
			_, err := envoy.LoadBootstrap([]byte(strings.Replace(src, c.old, c.new, 1)))
			if err == nil {
				t.Fatal("broken config accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name %q", err, c.want)
			}
		})
	}
}

// HTTP/2 WebSockets (RFC 8441) need the codec to offer extended CONNECT.
func TestBootstrapAcceptsHTTP2WebSockets(t *testing.T) {
	hcm, _ := mustHCM(t)
	if !hcm.GetHttp2ProtocolOptions().GetAllowConnect() {
		t.Error("http2_protocol_options.allow_connect is off: browsers' HTTP/2 WebSockets are refused")
	}
}

// Without wsgate.upstream no request may reach a backend: ORIGINAL_DST
// must have no other source of a host (lb chooseHost: filter state, the
// metadata key, the HTTP header, a restored original destination), and no
// route may skip the Lua filter.
func TestNoPathToABackendWithoutAdmission(t *testing.T) {
	b, err := envoy.LoadBootstrap(envoy.BootstrapYAML)
	if err != nil {
		t.Fatal(err)
	}
	l := b.GetStaticResources().GetListeners()[0]
	if l.GetUseOriginalDst().GetValue() || len(l.GetListenerFilters()) != 0 {
		t.Errorf("listener restores an original destination (use_original_dst %v, listener filters %v)", l.GetUseOriginalDst(), l.GetListenerFilters())
	}
	hcm, clusters := mustHCM(t)
	od := clusters["wsgate_backend"].GetOriginalDstLbConfig()
	if od.GetUseHttpHeader() || od.GetHttpHeaderName() != "" {
		t.Error("ORIGINAL_DST honours a request header")
	}
	filters := hcm.GetHttpFilters()
	if len(filters) != 2 || filters[0].GetName() != "envoy.filters.http.lua" {
		t.Errorf("http filters %v: want the Lua filter, then the router, nothing that sets filter state", filters)
	}
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if len(r.GetTypedPerFilterConfig()) != 0 || len(vh.GetTypedPerFilterConfig()) != 0 {
				t.Errorf("route %v: per-filter config could disable the Lua filter", r.GetMatch())
			}
			if c := r.GetRoute().GetCluster(); r.GetRoute() != nil && c != "wsgate_backend" {
				t.Errorf("route to %q: only wsgate_backend, which needs wsgate.upstream", c)
			}
		}
	}
}
