package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/wsdial"
)

// pinGateway is a second gateway on a node's tracker, with its own routes
// and clusters: Envoy as Envoy Gateway or Istio configure it (a normal
// cluster of the backend's endpoints) or as envoy/envoy.yaml does.
type pinGateway struct {
	gw  *gateway.Gateway
	url string
}

func startPinGateway(t *testing.T, n *node, cfg gateway.Config) *pinGateway {
	t.Helper()
	cfg.TrackerURL, cfg.AccessLogAddr, cfg.NodeID = n.admit.URL, n.alAddr, n.id+"-pin"
	cfg.FlushInterval, cfg.Logger = 300*time.Millisecond, quiet
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gw.Serve(ln) }()
	// Registered after the harness: closed before the node's tracker, so
	// its tunnels' last entries still reach it.
	t.Cleanup(func() { _ = gw.Close() })
	return &pinGateway{gw: gw, url: "ws://" + ln.Addr().String() + "/"}
}

// upgradeRoute is a route of WebSocket upgrades into cluster with the
// given Lua filter metadata.
func upgradeRoute(cluster string, md map[string]any) *gateway.RouteTable {
	return &gateway.RouteTable{VirtualHosts: []gateway.VirtualHost{{Name: "chat", Domains: []string{"*"}, Routes: []gateway.Route{
		{Prefix: "/", Headers: []gateway.HeaderMatcher{{Name: "upgrade", Exact: "websocket", IgnoreCase: true}}, Cluster: cluster, FilterMetadata: gateway.LuaRoute(md)},
	}}}}
}

// installed is wsgate.lua as the chart installs it where routes cannot
// carry filter metadata: fleet and pin from the install table.
func installed(t *testing.T, table string) []byte {
	t.Helper()
	code, err := envoy.WithInstall(envoy.FilterLua, table)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// endpoints is a cluster of the backends, all HEALTHY.
func (h *harness) endpoints() *gateway.Cluster {
	c := gateway.NewCluster()
	for _, b := range h.backends {
		c.SetEndpoint(b.Addr, corev3.HealthStatus_HEALTHY)
	}
	return c
}

// TestBothPinModesHoldTheCap: through each pin mode, more clients than
// slots dial at once, every one asking for the first pod with both
// spoofable headers; each pod holds exactly its cap (counted by the pod
// itself, never more at any moment), the rest are refused, and closing
// everything gives every slot back.
func TestBothPinModesHoldTheCap(t *testing.T) {
	modes := map[string]func(h *harness, n *node) gateway.Config{
		// envoy/envoy.yaml: the route's metadata, the ORIGINAL_DST cluster.
		"original_dst": func(h *harness, n *node) gateway.Config {
			return gateway.Config{Routes: upgradeRoute("wsgate_backend", map[string]any{"fleet": "chat", "admit_timeout_ms": 5000.0})}
		},
		// Envoy Gateway / Istio: a normal cluster, the install table.
		"override_host": func(h *harness, n *node) gateway.Config {
			return gateway.Config{
				Lua:      installed(t, `{ fleet = "chat", pin = "override_host", admit_timeout_ms = 5000 }`),
				Clusters: map[string]*gateway.Cluster{"chat-backend": h.endpoints()},
				Routes:   upgradeRoute("chat-backend", nil),
			}
		},
	}
	for mode, cfg := range modes {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t, harnessOptions{cap: 3})
			gws := []*pinGateway{startPinGateway(t, h.nodes[0], cfg(h, h.nodes[0])), startPinGateway(t, h.nodes[1], cfg(h, h.nodes[1]))}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			const clients = 24 // 9 slots
			results := make([]wsdial.Result, clients)
			var wg sync.WaitGroup
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i] = wsdial.Dial(ctx, gws[i%2].url, spoofed(h.backends[0].Addr))
					if results[i].Err == nil {
						results[i].Err = wsdial.Ping(ctx, results[i].Conn)
					}
				}()
			}
			wg.Wait()
			var admitted []*websocket.Conn
			for i, r := range results {
				switch {
				case r.Conn != nil && r.Err == nil:
					admitted = append(admitted, r.Conn)
				case r.Status == 503 && r.Reason == "capacity":
				default:
					t.Errorf("client %d: status %d reason %q err %v", i, r.Status, r.Reason, r.Err)
				}
			}
			if len(admitted) != 9 {
				t.Fatalf("admitted %d, want 3 pods x cap 3", len(admitted))
			}
			for _, b := range h.backends {
				if m, l := b.Max.Load(), b.Live.Load(); m > 3 || l != 3 {
					t.Errorf("backend %s: max %d live %d, want at most 3 ever and 3 now", b.Addr, m, l)
				}
			}
			for _, c := range admitted {
				c.Close(websocket.StatusNormalClosure, "")
			}
			await.Until(t, "all slots free", 20*time.Second, func() (bool, string) {
				n, _ := h.backendLive()
				l := h.live(t)
				return n == 0 && l == 0, fmt.Sprintf("backends %d redis %d", n, l)
			})
		})
	}
}

// strictHarness is a fleet whose tracker knows one pod, backends[0], and
// a cluster that always holds backends[1] too: a healthy pod the load
// balancer could fall back to, which the tracker never counts.
func strictHarness(t *testing.T, lua []byte) (*harness, *gateway.Cluster, *pinGateway) {
	t.Helper()
	// A lease (and establish timeout) longer than any wait here: a slot
	// that comes back came back through the access log's end entry.
	h := newHarness(t, harnessOptions{backends: 2, cap: 5, lease: time.Minute, fleet: func(f *fleets.Fleet) { f.Pods = f.Pods[:1] }})
	c := h.endpoints()
	gw := startPinGateway(t, h.nodes[0], gateway.Config{
		Lua:      lua,
		Clusters: map[string]*gateway.Cluster{"chat-backend": c},
		Routes:   upgradeRoute("chat-backend", map[string]any{"fleet": "chat", "pin": "override_host", "admit_timeout_ms": 5000.0}),
	})
	return h, c, gw
}

// refused dials once and asserts Envoy's 503 "no healthy upstream": no
// backend saw a connection, and the slot taken at admission comes back
// (the fleet's live count is live again).
func (h *harness) refused(t *testing.T, ctx context.Context, url, why string, live int64) {
	t.Helper()
	seen := []int64{h.backends[0].Seen.Load(), h.backends[1].Seen.Load()}
	r := wsdial.Dial(ctx, url, nil)
	if r.Err == nil {
		r.Conn.CloseNow()
		t.Errorf("%s: connected", why)
		return
	}
	if r.Status != 503 || r.Reason != "" {
		t.Errorf("%s: status %d reason %q, want the router's 503 (no x-wsgate-reason)", why, r.Status, r.Reason)
	}
	for i, b := range h.backends[:2] {
		if got := b.Seen.Load(); got != seen[i] {
			t.Errorf("%s: backend %d accepted %d connections", why, i, got-seen[i])
		}
	}
	await.Until(t, why+": slot released", 20*time.Second, func() (bool, string) {
		l := h.counted(t)
		return l == live, strconv.FormatInt(l, 10)
	})
}

// TestStrictOverrideHostRefusesWhatTheClusterWillNotTake: the tracker's pod
// (backends[0]) out of the cluster, UNHEALTHY, DRAINING, TIMEOUT: each time
// the upgrade is refused and reaches no backend, though a healthy pod
// (backends[1]) is right there; HEALTHY, DEGRADED and UNKNOWN (Envoy's
// default override_host_status) are taken. The endpoint changes at
// runtime, as EDS would change it, under an open connection, which lives on.
func TestStrictOverrideHostRefusesWhatTheClusterWillNotTake(t *testing.T) {
	h, c, gw := strictHarness(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pod := h.backends[0].Addr

	r := wsdial.Dial(ctx, gw.url, nil)
	if r.Err != nil {
		t.Fatalf("healthy pod: status %d reason %q: %v", r.Status, r.Reason, r.Err)
	}
	open := r.Conn
	defer open.CloseNow()
	// The backend counts a connection after its upgrade answer is sent: an
	// echo proves it has, before refused reads the counts.
	if err := wsdial.Ping(ctx, open); err != nil {
		t.Fatalf("healthy pod: %v", err)
	}

	c.RemoveEndpoint(pod)
	h.refused(t, ctx, gw.url, "pod not in the cluster", 1)
	for _, s := range []corev3.HealthStatus{corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT} {
		c.SetEndpoint(pod, s)
		h.refused(t, ctx, gw.url, "pod "+s.String(), 1)
	}
	if err := wsdial.Ping(ctx, open); err != nil {
		t.Errorf("the open connection ended with its pod's status: %v", err)
	}
	for _, s := range []corev3.HealthStatus{corev3.HealthStatus_DEGRADED, corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY} {
		c.SetEndpoint(pod, s)
		r := wsdial.Dial(ctx, gw.url, spoofed(h.backends[1].Addr))
		if r.Err == nil {
			r.Err = wsdial.Ping(ctx, r.Conn) // the pod has counted it
		}
		if r.Err != nil {
			t.Fatalf("pod %s: status %d reason %q: %v", s, r.Status, r.Reason, r.Err)
		}
		r.Conn.CloseNow()
	}
	if n := h.backends[1].Seen.Load(); n != 0 {
		t.Errorf("the pod the tracker does not know accepted %d connections", n)
	}
}

// TestNonStrictOverrideWouldBreakTheCap is why wsgate.lua never uses the
// non-strict form: with strict = false, an upgrade whose pod is not a
// usable endpoint falls back to the load balancer and lands on a pod the
// tracker did not count.
func TestNonStrictOverrideWouldBreakTheCap(t *testing.T) {
	lua := bytes.Replace(envoy.FilterLua, []byte("setUpstreamOverrideHost(upstream, true)"), []byte("setUpstreamOverrideHost(upstream, false)"), 1)
	if bytes.Equal(lua, envoy.FilterLua) {
		t.Fatal("wsgate.lua no longer calls setUpstreamOverrideHost(upstream, true): update the test")
	}
	h, c, gw := strictHarness(t, lua)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.SetEndpoint(h.backends[0].Addr, corev3.HealthStatus_DRAINING)
	r := wsdial.Dial(ctx, gw.url, nil)
	if r.Err != nil {
		t.Fatalf("non-strict: status %d: %v (the stand-in should fall back as Envoy does)", r.Status, r.Err)
	}
	defer r.Conn.CloseNow()
	// The echo proves the pod's handler has counted the connection.
	if err := wsdial.Ping(ctx, r.Conn); err != nil {
		t.Fatal(err)
	}
	if n := h.backends[1].Live.Load(); n != 1 {
		t.Fatalf("backend 1 holds %d, want the fallback connection", n)
	}
	counts, err := h.nodes[0].tr.LocalCounts("chat")
	if err != nil || counts[h.backends[1].Addr] != 0 {
		t.Fatalf("tracker counts %v (%v)", counts, err)
	}
	t.Logf("non-strict: connection on %s, which the tracker counts %v", h.backends[1].Addr, counts)
}

// TestSpoofedHeadersCannotChooseThePod: in both modes, a client naming a
// healthy pod of the cluster in x-wsgate-upstream and
// x-envoy-original-dst-host still lands on the tracker's pod.
func TestSpoofedHeadersCannotChooseThePod(t *testing.T) {
	for _, pin := range []string{"original_dst", "override_host"} {
		t.Run(pin, func(t *testing.T) {
			h := newHarness(t, harnessOptions{backends: 2, cap: 5, fleet: func(f *fleets.Fleet) { f.Pods = f.Pods[:1] }})
			cluster := "chat-backend"
			if pin == "original_dst" {
				cluster = "wsgate_backend"
			}
			gw := startPinGateway(t, h.nodes[1], gateway.Config{
				Clusters: map[string]*gateway.Cluster{"chat-backend": h.endpoints()},
				Routes:   upgradeRoute(cluster, map[string]any{"fleet": "chat", "pin": pin, "admit_timeout_ms": 5000.0}),
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for range 3 {
				r := wsdial.Dial(ctx, gw.url, spoofed(h.backends[1].Addr))
				if r.Err == nil {
					r.Err = wsdial.Ping(ctx, r.Conn)
				}
				if r.Err != nil {
					t.Fatalf("status %d reason %q: %v", r.Status, r.Reason, r.Err)
				}
				defer r.Conn.CloseNow()
			}
			if a, b := h.backends[0].Live.Load(), h.backends[1].Live.Load(); a != 3 || b != 0 {
				t.Errorf("pods hold %d and %d, want 3 on the tracker's pod and none on the spoofed one", a, b)
			}
		})
	}
}
