package gateway

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/envoy/luahost"
)

func request(host, path string, kv ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.Host = host
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header.Add(kv[i], kv[i+1])
	}
	return r
}

// Virtual hosts are chosen as Envoy's RouteMatcher does: exact, then the
// longest suffix wildcard, then the longest prefix wildcard, then "*".
func TestVirtualHostDomainOrder(t *testing.T) {
	rt := &RouteTable{VirtualHosts: []VirtualHost{
		{Name: "star", Domains: []string{"*"}},
		{Name: "suffix", Domains: []string{"*.example.com"}},
		{Name: "longer-suffix", Domains: []string{"*.chat.example.com"}},
		{Name: "prefix", Domains: []string{"chat.*"}},
		{Name: "exact", Domains: []string{"chat.example.com", "chat.example.com:8443"}},
	}}
	cases := map[string]string{
		"chat.example.com":       "exact",
		"CHAT.example.com":       "exact",
		"chat.example.com:8443":  "exact",
		"a.chat.example.com":     "longer-suffix",
		"b.example.com":          "suffix",
		"chat.example.org":       "prefix",
		".example.com":           "star", // a wildcard never matches an empty remainder
		"other.org":              "star",
		"b.example.com:8443":     "star", // the port takes part unless ignored
		"chat.example.com:12345": "prefix",
	}
	for host, want := range cases {
		if got := rt.virtualHost(host); got == nil || got.Name != want {
			t.Errorf("host %q: virtual host %v, want %s", host, got, want)
		}
	}
	rt.IgnorePortInHostMatching = true
	if got := rt.virtualHost("b.example.com:8443"); got.Name != "suffix" {
		t.Errorf("ignore_port_in_host_matching: %s, want suffix", got.Name)
	}
}

// envoyYAMLRoutes is the route configuration of envoy/envoy.yaml.
func envoyYAMLRoutes(t *testing.T) *routev3.RouteConfiguration {
	t.Helper()
	b, err := envoy.LoadBootstrap(envoy.BootstrapYAML)
	if err != nil {
		t.Fatal(err)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	return hcm.GetRouteConfig()
}

// envoy/envoy.yaml's routes, served through RoutesFromConfig, behave as the
// default route table: upgrades (any case) to the ORIGINAL_DST cluster with
// the fleet's metadata, everything else 426.
func TestRoutesFromEnvoyYAML(t *testing.T) {
	rt, err := RoutesFromConfig(envoyYAMLRoutes(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.check(func(c string) bool { return c == "wsgate_backend" }); err != nil {
		t.Fatal(err)
	}
	up := rt.match(request("chat.example", "/ws?x=1", "Upgrade", "WebSocket"))
	if up == nil || up.Cluster != "wsgate_backend" || up.FilterMetadata[luahost.DefaultFilterName]["fleet"] != "default" {
		t.Fatalf("upgrade: route %+v, want wsgate_backend with fleet default", up)
	}
	for _, r := range []*http.Request{request("chat.example", "/"), request("x", "/ws", "Upgrade", "h2c"), request("x", "/", "Upgrade", "websocket, h2c")} {
		got := rt.match(r)
		if got == nil || got.DirectResponse == nil || got.DirectResponse.Status != http.StatusUpgradeRequired || got.DirectResponse.Headers.Get("Upgrade") != "websocket" {
			t.Errorf("%s %v: route %+v, want the 426", r.URL, r.Header, got)
		}
	}
}

func TestRoutesFromConfigRefusesWhatItDoesNotModel(t *testing.T) {
	rc := envoyYAMLRoutes(t)
	rc.GetVirtualHosts()[0].GetRoutes()[0].GetMatch().GetHeaders()[0].GetStringMatch().MatchPattern = nil
	if _, err := RoutesFromConfig(rc); err == nil {
		t.Error("a header matcher without exact accepted")
	}
}

func TestRouteTableCheck(t *testing.T) {
	known := func(c string) bool { return c == "known" }
	bad := map[string]*RouteTable{
		"unknown cluster": {VirtualHosts: []VirtualHost{{Domains: []string{"*"}, Routes: []Route{{Prefix: "/", Cluster: "nope"}}}}},
		"no match":        {VirtualHosts: []VirtualHost{{Domains: []string{"*"}, Routes: []Route{{Cluster: "known"}}}}},
		"no action":       {VirtualHosts: []VirtualHost{{Domains: []string{"*"}, Routes: []Route{{Prefix: "/"}}}}},
		"two stars":       {VirtualHosts: []VirtualHost{{Domains: []string{"*"}}, {Domains: []string{"*"}}}},
	}
	for name, rt := range bad {
		if err := rt.check(known); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Envoy refuses two clusters of one name; the stand-in would send the
	// ORIGINAL_DST cluster's upgrades to the endpoint cluster's balancer.
	if _, err := New(Config{TrackerURL: "http://127.0.0.1:1", AccessLogAddr: "127.0.0.1:1", Clusters: map[string]*Cluster{"wsgate_backend": NewCluster()}}); err == nil {
		t.Error("an endpoint cluster named as the ORIGINAL_DST cluster accepted")
	}
}

// The endpoint cluster selects as Envoy's ClusterEntry::chooseHost: a host
// in the override status set, strict -> nothing, else the load balancer.
func TestClusterOverrideHost(t *testing.T) {
	c := NewCluster()
	c.SetEndpoint("10.0.0.1:80", corev3.HealthStatus_HEALTHY)
	c.SetEndpoint("10.0.0.2:80", corev3.HealthStatus_HEALTHY)
	pin := func(host string, strict bool) *luahost.OverrideHost {
		return &luahost.OverrideHost{Host: host, Strict: strict}
	}
	for status, taken := range map[corev3.HealthStatus]bool{
		corev3.HealthStatus_HEALTHY: true, corev3.HealthStatus_UNKNOWN: true, corev3.HealthStatus_DEGRADED: true,
		corev3.HealthStatus_UNHEALTHY: false, corev3.HealthStatus_DRAINING: false, corev3.HealthStatus_TIMEOUT: false,
	} {
		c.SetEndpoint("10.0.0.1:80", status)
		got := c.chooseHost(pin("10.0.0.1:80", true))
		if (got == "10.0.0.1:80") != taken || (!taken && got != "") {
			t.Errorf("strict to a %s endpoint: %q", status, got)
		}
		if got := c.chooseHost(pin("10.0.0.1:80", false)); !taken && got != "10.0.0.2:80" {
			t.Errorf("non-strict to a %s endpoint: %q, want the load balancer's healthy 10.0.0.2:80", status, got)
		}
	}
	for _, host := range []string{"10.0.0.9:80", "10.0.0.2", "10.0.0.2:81"} {
		if got := c.chooseHost(pin(host, true)); got != "" {
			t.Errorf("strict to %s, not an endpoint: %q", host, got)
		}
	}
	c.RemoveEndpoint("10.0.0.2:80")
	if got := c.chooseHost(pin("10.0.0.2:80", true)); got != "" {
		t.Errorf("strict to a removed endpoint: %q", got)
	}
	d := NewCluster(corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DRAINING)
	d.SetEndpoint("10.0.0.1:80", corev3.HealthStatus_DRAINING)
	if got := d.chooseHost(pin("10.0.0.1:80", true)); got != "10.0.0.1:80" {
		t.Errorf("override_host_status with DRAINING: %q", got)
	}
}

// A route whose typed_per_filter_config disables the Lua filter
// (LuaPerRoute{disabled: true}) is served without it, as Envoy skips the
// filter there: an upgrade on it asks the tracker nothing and gets the
// route's own answer. Any other per-filter config is refused.
func TestRouteLuaDisabled(t *testing.T) {
	disabled, err := anypb.New(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_Disabled{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	rc := envoyYAMLRoutes(t)
	vh := rc.GetVirtualHosts()[0]
	// Upgrades on /ws only; any other upgrade falls to the 426 with the
	// filter disabled.
	vh.GetRoutes()[0].GetMatch().PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/ws"}
	vh.GetRoutes()[1].TypedPerFilterConfig = map[string]*anypb.Any{luahost.DefaultFilterName: disabled}
	rt, err := RoutesFromConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if rt.VirtualHosts[0].Routes[0].LuaDisabled || !rt.VirtualHosts[0].Routes[1].LuaDisabled {
		t.Fatalf("LuaDisabled: %+v", rt.VirtualHosts[0].Routes)
	}
	var admissions atomic.Int64
	tracker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admissions.Add(1)
		http.Error(w, `unknown fleet "default"`, http.StatusBadRequest)
	}))
	defer tracker.Close()
	g, err := New(Config{TrackerURL: tracker.URL, AccessLogAddr: "127.0.0.1:1", Routes: rt, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	serve := func(path string) int {
		w := httptest.NewRecorder()
		g.ServeHTTP(w, request("chat.example", path, "Connection", "Upgrade", "Upgrade", "websocket"))
		return w.Code
	}
	if got := serve("/other"); got != http.StatusUpgradeRequired || admissions.Load() != 0 {
		t.Errorf("upgrade on the disabled route: status %d after %d admissions, want 426 after none", got, admissions.Load())
	}
	if got := serve("/ws"); got != http.StatusServiceUnavailable || admissions.Load() != 1 {
		t.Errorf("upgrade on the filter's route: status %d after %d admissions, want the filter's 503 after one", got, admissions.Load())
	}

	named, err := anypb.New(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_Name{Name: "other"}})
	if err != nil {
		t.Fatal(err)
	}
	for what, cfg := range map[string]map[string]*anypb.Any{
		"LuaPerRoute name":        {luahost.DefaultFilterName: named},
		"another filter's config": {"envoy.filters.http.router": disabled},
	} {
		vh.GetRoutes()[1].TypedPerFilterConfig = cfg
		if _, err := RoutesFromConfig(rc); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}
