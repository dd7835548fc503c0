package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"sigs.k8s.io/yaml"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/envoy/gateway"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/helmtest"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/test/wsdial"
	"github.com/wsgate/wsgate/tracker"
)

// chartFleets are the fleets of testdata/chart_routes.yaml and their caps
// there; each gets two backends of its own.
var chartFleets = map[string]int{"chat": 7, "feed-v2": 5}

// chartDNS is what the STRICT_DNS clusters' names resolve to: the override
// host route's upstream.address, a headless Service of fleet feed-v2's pods.
var chartDNS = map[string]string{"feed-headless.edge.svc.cluster.local": "feed-v2"}

// TestChartStandaloneRoutes is the standalone profile end to end: the
// chart renders testdata/chart_routes.yaml (two fleets, one renamed, a
// plaintext and a TLS listener, routes by host, by path and by both, one
// pinned by override host); its envoy.yaml passes Envoy's config checks;
// two Envoy pods (the stand-in serving each rendered listener's route
// table with the rendered wsgate.lua, and a tracker on the rendered fleets
// file) send every route's upgrades to its own fleet's pods, as the pods
// count them; each fleet's cap holds; what no route takes gets the
// rendered config's answer and reaches no pod.
func TestChartStandaloneRoutes(t *testing.T) {
	pods := map[string][]*backend{}
	fleetOf := map[*backend]string{}
	for _, f := range slices.Sorted(maps.Keys(chartFleets)) {
		for range 2 {
			b := startBackend(t)
			pods[f] = append(pods[f], b)
			fleetOf[b] = f
		}
	}
	ch := renderChartRoutes(t, pods)
	// The same with routes by host only: no route's virtual host is "*".
	hostsOnly := renderChartRoutes(t, pods, "--set-json",
		`dataPlane.standalone.routes=[{"fleet":"chat","hosts":["chat.example.com"]},{"fleet":"feed-v2","hosts":["feed.example.com"]}]`)

	// The tracker side: one Redis, two Envoy pods' trackers on the
	// rendered fleets file.
	redis := redistest.Start(t)
	rdb, err := store.NewRedisClient(store.RedisConfig{Addrs: []string{redis.Addr()}, DialTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	store := store.NewStore(rdb, "wsgate")
	cfg := tracker.Config{
		Fleets:    ch.fleets,
		Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second, LeaseTTL: 2 * time.Second,
		EstablishTimeout: 2 * time.Second, RedisTimeout: time.Second,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var listeners []*routeListener
	var nodes []*node
	for _, id := range []string{"envoy-a", "envoy-b"} {
		// startNode's own gateway (envoy/envoy.yaml's one route) goes
		// unused: the pod's Envoy is the rendered one below.
		n := startNode(t, store, id, nodeOptions{cfg: cfg, flush: 300 * time.Millisecond})
		nodes = append(nodes, n)
		for _, l := range ch.listeners {
			listeners = append(listeners, serveListener(t, n, ch, l))
		}
	}
	// Envoy runs the filter also for a request that matches no virtual
	// host: the chart's own "*" catch-all keeps it from running there.
	other := serveListener(t, nodes[0], hostsOnly, hostsOnly.listeners[0])
	for f := range chartFleets {
		if err := store.AwaitRecovery(ctx, f); err != nil {
			t.Fatal(err)
		}
	}

	// Every route, on every listener of both pods: one upgrade each, held,
	// on a pod of the route's fleet; what matches no upgrade route gets
	// the virtual host's 426 and reaches no pod.
	cases := []struct {
		host, path, fleet string
		why               string
	}{
		{"chat.example.com", "/", "chat", "chat's host route"},
		{"chat.example.com", "/feed", "chat", "a host's virtual host before the \"*\" one's path routes"},
		{"feed.example.com", "/live/1", "feed-v2", "the renamed fleet by host and path, pinned by override host"},
		{"other.example.net", "/feed/x", "feed-v2", "the renamed fleet by path"},
		{"CHAT.example.com", "/chat/room", "chat", "chat by path on another host (domains match case-insensitively)"},
		{"feed.example.com", "/", "", "feed's host, outside its path: its own 426, not the \"*\" host's routes"},
		{"other.example.net", "/", "", "no route of any host: the \"*\" host's 426"},
	}
	held := map[string]int{}
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.CloseNow()
		}
	}()
	for _, l := range listeners {
		for _, c := range cases {
			where := fmt.Sprintf("%s %s %s%s (%s)", l.name, l.node, c.host, c.path, c.why)
			before := seen(fleetOf)
			r := l.dial(ctx, c.host, c.path)
			if c.fleet == "" {
				if r.Err == nil {
					r.Conn.CloseNow()
				}
				if r.Status != http.StatusUpgradeRequired {
					t.Errorf("%s: status %d (%v), want the route table's 426", where, r.Status, r.Err)
				}
				if got := seen(fleetOf); !maps.Equal(got, before) {
					t.Errorf("%s: a pod accepted a connection", where)
				}
				continue
			}
			if r.Err == nil {
				r.Err = wsdial.Ping(ctx, r.Conn) // the pod has counted it
			}
			if r.Err != nil {
				t.Fatalf("%s: status %d reason %q: %v", where, r.Status, r.Reason, r.Err)
			}
			open = append(open, r.Conn)
			held[c.fleet]++
			after := seen(fleetOf)
			var on []string
			for b, n := range after {
				if n != before[b] {
					on = append(on, fmt.Sprintf("%s of %s", b.Addr, fleetOf[b]))
					if fleetOf[b] != c.fleet {
						t.Errorf("%s: connection on %s, a pod of fleet %s, want fleet %s", where, b.Addr, fleetOf[b], c.fleet)
					}
				}
			}
			if len(on) != 1 {
				t.Errorf("%s: connections on %v, want one on a pod of %s", where, on, c.fleet)
			}
		}
		// A request that is no upgrade has no pod to go to.
		if st := l.plainGet(t, "chat.example.com"); st != http.StatusUpgradeRequired {
			t.Errorf("%s %s: plain GET: status %d, want 426", l.name, l.node, st)
		}
	}

	before := seen(fleetOf)
	if r := other.dial(ctx, "other.example.net", "/"); r.Status != http.StatusUpgradeRequired || r.Err == nil {
		t.Errorf("routes by host only: an upgrade for another host: status %d reason %q (%v), want the 426", r.Status, r.Reason, r.Err)
	}
	if !maps.Equal(seen(fleetOf), before) {
		t.Error("routes by host only: a pod accepted an upgrade for another host")
	}

	// Each fleet's cap: more clients than its slots left, at once, over all
	// its routes on all listeners; every pod ends at exactly its fleet's
	// cap and never held more, the rest are refused for capacity.
	routesTo := map[string][][2]string{}
	for _, c := range cases {
		if c.fleet != "" {
			routesTo[c.fleet] = append(routesTo[c.fleet], [2]string{c.host, c.path})
		}
	}
	for _, f := range slices.Sorted(maps.Keys(chartFleets)) {
		slots := chartFleets[f] * len(pods[f])
		clients := 2 * slots
		results := make([]wsdial.Result, clients)
		var wg sync.WaitGroup
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rt := routesTo[f][i%len(routesTo[f])]
				results[i] = listeners[i%len(listeners)].dial(ctx, rt[0], rt[1])
				if results[i].Err == nil {
					results[i].Err = wsdial.Ping(ctx, results[i].Conn)
				}
			}()
		}
		wg.Wait()
		admitted := 0
		for i, r := range results {
			switch {
			case r.Conn != nil && r.Err == nil:
				open = append(open, r.Conn)
				admitted++
			case r.Status == http.StatusServiceUnavailable && r.Reason == "capacity":
			default:
				t.Errorf("fleet %s client %d: status %d reason %q err %v", f, i, r.Status, r.Reason, r.Err)
			}
		}
		if want := slots - held[f]; admitted != want {
			t.Errorf("fleet %s: admitted %d more, want %d (%d pods x cap %d, %d held)", f, admitted, want, len(pods[f]), chartFleets[f], held[f])
		}
		for _, b := range pods[f] {
			if m, l := b.Max.Load(), b.Live.Load(); m > int64(chartFleets[f]) || l != int64(chartFleets[f]) {
				t.Errorf("fleet %s pod %s: max %d live %d, want at most its cap %d ever and %d now", f, b.Addr, m, l, chartFleets[f], chartFleets[f])
			}
		}
	}

	// Closing everything gives every slot back, through both listeners'
	// access logs.
	for _, c := range open {
		c.Close(websocket.StatusNormalClosure, "")
	}
	open = nil
	await.Until(t, "every slot free", 20*time.Second, func() (bool, string) {
		var state []string
		free := true
		for f := range chartFleets {
			s, err := store.Summary(ctx, f, time.Now())
			free = free && err == nil && s.Live == 0
			state = append(state, fmt.Sprintf("%s %d (%v)", f, s.Live, err))
		}
		for b := range fleetOf {
			free = free && b.Live.Load() == 0
		}
		return free, fmt.Sprint(state)
	})
}

func seen(pods map[*backend]string) map[*backend]int64 {
	out := map[*backend]int64{}
	for b := range pods {
		out[b] = b.Seen.Load()
	}
	return out
}

// chartRender is what the standalone Envoy pods of the rendered chart run.
type chartRender struct {
	boot      *bootstrapv3.Bootstrap
	lua       []byte
	fleets    []fleets.Fleet
	listeners []chartListener
	// originalDst names the ORIGINAL_DST cluster; strictDNS maps each
	// STRICT_DNS cluster to the fleet its DNS name resolves to.
	originalDst string
	strictDNS   map[string]string
}

type chartListener struct {
	name   string
	tls    bool
	routes *gateway.RouteTable
}

// renderChartRoutes renders the chart with testdata/chart_routes.yaml,
// each fleet's pods and the extra helm arguments, and reads the standalone Envoy's bootstrap, filter
// and fleets file as the pods would.
func renderChartRoutes(t *testing.T, pods map[string][]*backend, extra ...string) *chartRender {
	t.Helper()
	bin, err := helmtest.Build()
	if err != nil {
		t.Fatal(err)
	}
	_, file, _, _ := runtime.Caller(0)
	chart := filepath.Join(filepath.Dir(file), "..", "..", "charts", "wsgate")
	args := []string{"template", "wsg", chart, "--namespace", "edge", "--kube-version", "1.31.0",
		"--values", filepath.Join("testdata", "chart_routes.yaml")}
	for i, f := range []string{"chat", "feed-v2"} {
		var addrs []string
		for _, b := range pods[f] {
			addrs = append(addrs, b.Addr)
		}
		js, _ := json.Marshal(addrs)
		args = append(args, "--set-json", fmt.Sprintf("fleets[%d].pods=%s", i, js))
	}
	out, errOut, err := helmtest.Run(t, bin, append(args, extra...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	cms := map[string]map[string]string{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(out), -1) {
		var o struct {
			Kind     string
			Metadata struct{ Name string }
			Data     map[string]string
		}
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("rendered object: %v\n%s", err, doc)
		}
		if o.Kind == "ConfigMap" {
			cms[o.Metadata.Name] = o.Data
		}
	}
	cfg, fl := cms["wsg-wsgate-config"], cms["wsg-wsgate-fleets"]
	if cfg["envoy.yaml"] == "" || cfg["wsgate.lua"] == "" || fl["fleets.yaml"] == "" {
		t.Fatalf("rendered ConfigMaps %v lack envoy.yaml, wsgate.lua or fleets.yaml", slices.Sorted(maps.Keys(cms)))
	}
	ch := &chartRender{lua: []byte(cfg["wsgate.lua"]), strictDNS: map[string]string{}}
	if ch.boot, err = envoy.LoadBootstrap([]byte(cfg["envoy.yaml"])); err != nil {
		t.Fatalf("rendered envoy.yaml: %v", err)
	}
	if ch.fleets, err = fleets.Parse([]byte(fl["fleets.yaml"])); err != nil {
		t.Fatalf("rendered fleets.yaml: %v", err)
	}
	names := map[string]bool{}
	for _, c := range ch.boot.GetStaticResources().GetClusters() {
		if names[c.GetName()] {
			t.Fatalf("rendered envoy.yaml: two clusters named %s (Envoy refuses the bootstrap)", c.GetName())
		}
		names[c.GetName()] = true
		switch c.GetType() {
		case clusterv3.Cluster_ORIGINAL_DST:
			ch.originalDst = c.GetName()
		case clusterv3.Cluster_STRICT_DNS:
			addr := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
			f, ok := chartDNS[addr]
			if !ok {
				t.Fatalf("cluster %s resolves %q, which the test's DNS does not know", c.GetName(), addr)
			}
			ch.strictDNS[c.GetName()] = f
		}
	}
	for _, l := range ch.boot.GetStaticResources().GetListeners() {
		fc := l.GetFilterChains()[0]
		var hcm hcmv3.HttpConnectionManager
		if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
			t.Fatalf("listener %s: %v", l.GetName(), err)
		}
		i := slices.IndexFunc(hcm.GetHttpFilters(), func(f *hcmv3.HttpFilter) bool { return f.GetName() == "envoy.filters.http.lua" })
		if i < 0 {
			continue // the stats listener
		}
		var lua luav3.Lua
		if err := hcm.GetHttpFilters()[i].GetTypedConfig().UnmarshalTo(&lua); err != nil {
			t.Fatalf("listener %s: %v", l.GetName(), err)
		}
		if got := lua.GetDefaultSourceCode().GetFilename(); got != envoy.LuaPath {
			t.Fatalf("listener %s runs %q, not the ConfigMap's wsgate.lua at %s", l.GetName(), got, envoy.LuaPath)
		}
		rt, err := gateway.RoutesFromConfig(hcm.GetRouteConfig())
		if err != nil {
			t.Fatalf("listener %s: %v", l.GetName(), err)
		}
		ch.listeners = append(ch.listeners, chartListener{name: l.GetName(), tls: fc.GetTransportSocket() != nil, routes: rt})
	}
	var kinds []string
	for _, l := range ch.listeners {
		kinds = append(kinds, fmt.Sprintf("%s tls=%t", l.name, l.tls))
	}
	if want := []string{"http tls=false", "https tls=true"}; !slices.Equal(kinds, want) {
		t.Fatalf("upgrade listeners %v, want %v", kinds, want)
	}
	return ch
}

// routeListener is one rendered listener served by the stand-in beside
// one pod's tracker.
type routeListener struct {
	name, node string
	base       string // ws://ip:port or wss://ip:port
	client     *http.Client
}

// serveListener serves l's routes with the rendered filter, the ORIGINAL_DST
// cluster, and each STRICT_DNS cluster as the endpoints its name resolves
// to (the fleet's pods, HEALTHY), over TLS where the listener has a
// transport socket.
func serveListener(t *testing.T, n *node, ch *chartRender, l chartListener) *routeListener {
	t.Helper()
	clusters := map[string]*gateway.Cluster{}
	for name, fleet := range ch.strictDNS {
		c := gateway.NewCluster()
		for _, f := range ch.fleets {
			if f.Name == fleet {
				for _, p := range f.Pods {
					c.SetEndpoint(p, corev3.HealthStatus_HEALTHY)
				}
			}
		}
		clusters[name] = c
	}
	gw, err := gateway.New(gateway.Config{
		TrackerURL: n.admit.URL, AccessLogAddr: n.alAddr, NodeID: n.id + "-" + l.name,
		Routes: l.routes, Clusters: clusters, OriginalDst: ch.originalDst, Lua: ch.lua,
		FlushInterval: 300 * time.Millisecond, Logger: quiet,
	})
	if err != nil {
		t.Fatalf("listener %s: %v", l.name, err)
	}
	var ln net.Listener
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &routeListener{name: l.name, node: n.id, base: "ws://" + ln.Addr().String()}
	tr := &http.Transport{}
	if l.tls {
		cert, pool := selfSigned(t)
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		rl.base = "wss://" + ln.Addr().String()
	}
	rl.client = &http.Client{Transport: tr}
	go func() { _ = gw.Serve(ln) }()
	// Registered after the node: closed before its tracker, so its
	// tunnels' last entries still reach it.
	t.Cleanup(func() { _ = gw.Close(); tr.CloseIdleConnections() })
	return rl
}

// dial upgrades to host and path through the listener.
func (l *routeListener) dial(ctx context.Context, host, path string) wsdial.Result {
	return wsdial.Dial(ctx, l.base+path, &websocket.DialOptions{Host: host, HTTPClient: l.client})
}

// plainGet sends a request that is no upgrade and returns its status.
func (l *routeListener) plainGet(t *testing.T, host string) int {
	t.Helper()
	base := "http" + l.base[2:]
	req, err := http.NewRequest(http.MethodGet, base+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := l.client.Do(req)
	if err != nil {
		t.Fatalf("%s: GET: %v", l.name, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// selfSigned is the TLS listener's certificate (the Secret's tls.crt and
// tls.key), for 127.0.0.1, and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
