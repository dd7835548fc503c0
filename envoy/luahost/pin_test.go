package luahost_test

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/envoy/luahost"
)

// setUpstreamOverrideHost checks its arguments as Envoy's
// luaSetUpstreamOverrideHost does; the last call wins.
func TestSetUpstreamOverrideHostChecksLikeEnvoy(t *testing.T) {
	cases := []struct {
		call string
		want *luahost.OverrideHost
		err  string
	}{
		{`h:setUpstreamOverrideHost("10.0.0.1:8080", true)`, &luahost.OverrideHost{Host: "10.0.0.1:8080", Strict: true}, ""},
		{`h:setUpstreamOverrideHost("10.0.0.1:8080")`, &luahost.OverrideHost{Host: "10.0.0.1:8080"}, ""},
		{`h:setUpstreamOverrideHost("10.0.0.1")`, &luahost.OverrideHost{Host: "10.0.0.1"}, ""},
		{`h:setUpstreamOverrideHost("[2001:db8::1]:80", true)`, &luahost.OverrideHost{Host: "[2001:db8::1]:80", Strict: true}, ""},
		{`h:setUpstreamOverrideHost("pod-1.chat:8080", true)`, nil, "host is not a valid IP address"},
		{`h:setUpstreamOverrideHost("10.0.0.1:8080", nil)`, nil, "boolean expected"},
		{`h:setUpstreamOverrideHost("10.0.0.1:8080", "true")`, nil, "boolean expected"},
		{`h:setUpstreamOverrideHost()`, nil, "string expected"},
		{`h:setUpstreamOverrideHost("10.0.0.1:1", false) h:setUpstreamOverrideHost("10.0.0.2:2", true)`, &luahost.OverrideHost{Host: "10.0.0.2:2", Strict: true}, ""},
	}
	for _, c := range cases {
		t.Run(c.call, func(t *testing.T) {
			f, err := luahost.Load([]byte("function envoy_on_request(h) "+c.call+" end"), luahost.Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			d, err := f.OnRequest(context.Background(), luahost.Request{})
			if err != nil {
				t.Fatal(err)
			}
			if c.err != "" {
				if d.ScriptError == nil || !strings.Contains(d.ScriptError.Error(), c.err) || d.OverrideHost != nil {
					t.Fatalf("script error %v, override %+v; want %q and no override", d.ScriptError, d.OverrideHost, c.err)
				}
				return
			}
			if d.ScriptError != nil || d.OverrideHost == nil || *d.OverrideHost != *c.want {
				t.Fatalf("override %+v, error %v; want %+v", d.OverrideHost, d.ScriptError, c.want)
			}
		})
	}
}

// pin = "override_host" pins the request strictly to the tracker's pod and
// still writes the metadata the access log needs; original_dst does not
// call the override at all.
func TestPinModes(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	for _, pin := range []string{"", "original_dst", "override_host"} {
		req := upgrade("chat", "x-wsgate-upstream", "6.6.6.6:1", "x-envoy-original-dst-host", "6.6.6.6:1")
		if pin != "" {
			req.RouteMetadata[luahost.DefaultFilterName]["pin"] = pin
		}
		d := mustRun(t, f, req)
		md := d.Metadata["wsgate"]
		pod, _ := md["upstream"].(string)
		if d.Local != nil || !slices.Contains(chatPods, pod) || md["conn"] == nil || md["fleet"] != "chat" {
			t.Fatalf("pin %q: local %+v, metadata %v", pin, d.Local, md)
		}
		switch {
		case pin == "override_host" && (d.OverrideHost == nil || d.OverrideHost.Host != pod || !d.OverrideHost.Strict):
			t.Errorf("pin override_host: override %+v, want %s strict", d.OverrideHost, pod)
		case pin != "override_host" && d.OverrideHost != nil:
			t.Errorf("pin %q: override host %+v set", pin, d.OverrideHost)
		}
	}
}

func loadInstalled(t *testing.T, table string, clusters map[string]string) *luahost.Filter {
	t.Helper()
	code, err := envoy.WithInstall(envoy.FilterLua, table)
	if err != nil {
		t.Fatal(err)
	}
	f, err := luahost.Load(code, luahost.Options{Clusters: clusters, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("load installed wsgate.lua: %v", err)
	}
	return f
}

// The install table sets what the route's metadata does not; the route
// wins per key; tracker_cluster names the cluster of httpCall.
func TestInstallTableUnderRouteMetadata(t *testing.T) {
	e := newEnv(t)
	f := loadInstalled(t, `{ fleet = "chat", pin = "override_host", admit_timeout_ms = 10000, tracker_cluster = "outbound|9090||wsgate-tracker.wsgate.local" }`,
		map[string]string{"outbound|9090||wsgate-tracker.wsgate.local": e.url})
	d := mustRun(t, f, withRoute(upgrade(""), "", 0))
	if d.Local != nil || d.Metadata["wsgate"]["fleet"] != "chat" || d.OverrideHost == nil || !d.OverrideHost.Strict {
		t.Fatalf("install table: local %+v, metadata %v, override %+v; want fleet chat pinned strictly", d.Local, d.Metadata, d.OverrideHost)
	}
	req := withRoute(upgrade(""), "small", 0)
	req.RouteMetadata[luahost.DefaultFilterName]["pin"] = "original_dst"
	d = mustRun(t, f, req)
	if d.Local != nil || d.Metadata["wsgate"]["fleet"] != "small" || d.OverrideHost != nil {
		t.Fatalf("route over install: local %+v, metadata %v, override %+v; want fleet small, not pinned by override", d.Local, d.Metadata, d.OverrideHost)
	}
}

// A broken install table refuses every upgrade with filter_error and logs
// the key; plain requests pass as before.
func TestBadInstallTableFailsClosed(t *testing.T) {
	e := newEnv(t)
	cases := map[string]string{
		`{ pin = "strict" }`:             "install setting pin",
		`{ pin = "override_host " }`:     "install setting pin",
		`{ fleet = "" }`:                 "install setting fleet",
		`{ fleet = 7 }`:                  "install setting fleet",
		`{ admit_timeout_ms = 0 }`:       "install setting admit_timeout_ms",
		`{ admit_timeout_ms = 2.5 }`:     "install setting admit_timeout_ms",
		`{ admit_timeout_ms = "250" }`:   "install setting admit_timeout_ms",
		`{ tracker_cluster = "" }`:       "install setting tracker_cluster",
		`{ admit_timeout = 250 }`:        "install setting admit_timeout is unknown",
		`{ "chat" }`:                     "install setting 1 is unknown",
		`{ tracker_cluster = "other" }`:  "cluster invalid",
		`{ fleet = "chat", pin = true }`: "install setting pin",
	}
	// The valid table first: newEnv's tracker has no heartbeat loop, its
	// lease lapses within a second.
	if d := mustRun(t, loadInstalled(t, `{ fleet = "chat", pin = nil }`, map[string]string{"wsgate_tracker": e.url}), upgrade("chat")); d.Local != nil {
		t.Fatalf("valid table refused: %+v %v", d.Local, d.Logs)
	}
	for table, want := range cases {
		t.Run(table, func(t *testing.T) {
			f := loadInstalled(t, table, map[string]string{"wsgate_tracker": e.url})
			d := mustRun(t, f, upgrade("chat"))
			if d.Local == nil || d.Local.Status != http.StatusServiceUnavailable || d.Local.Headers.Get("x-wsgate-reason") != "filter_error" {
				t.Fatalf("decision %+v, want 503 filter_error", d.Local)
			}
			logged := false
			for _, l := range d.Logs {
				logged = logged || (l.Level == "err" && strings.Contains(l.Message, want))
			}
			if !logged {
				t.Errorf("logs %v: want one naming %q", d.Logs, want)
			}
			plain := mustRun(t, f, luahost.Request{Headers: luahost.HeadersOf(":method", "GET", ":path", "/"), RemoteAddr: "203.0.113.7:1"})
			if plain.Local != nil {
				t.Errorf("plain request refused: %+v", plain.Local)
			}
		})
	}
	if n := e.calls.Load(); n != 1 {
		t.Errorf("tracker asked %d times, want once (the valid table only)", n)
	}
}

func TestWithInstallKeepsTheContract(t *testing.T) {
	if n := strings.Count(string(envoy.FilterLua), envoy.InstallLine); n != 1 {
		t.Fatalf("wsgate.lua holds %q %d times, want once", envoy.InstallLine, n)
	}
	if _, err := envoy.WithInstall(envoy.FilterLua, "{ fleet = \"a\" }\nos.exit()"); err == nil {
		t.Error("a table over two lines accepted")
	}
	twice := append(append([]byte{}, envoy.FilterLua...), "\n"+envoy.InstallLine+"\n"...)
	if _, err := envoy.WithInstall(twice, "{}"); err == nil {
		t.Error("a file with two install lines accepted")
	}
}
