package luahost_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsgate/wsgate/envoy"
	"github.com/wsgate/wsgate/envoy/luahost"
	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

var (
	chatPods  = []string{"10.0.0.1:8080", "10.0.0.2:8080"}
	smallPods = []string{"10.0.1.1:8080"}
)

// env is the real wsgate.lua in the host, calling a real tracker HTTP
// server over a real redis-server.
type env struct {
	tr     *tracker.Tracker
	calls  atomic.Int64
	bodies chan []byte
	url    string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	rs := redistest.Start(t)
	rdb := rs.Client()
	t.Cleanup(func() { rdb.Close() })
	// A short instance TTL: a new epoch grants nothing for one of them
	// (the recovery wait), which awaitGranting waits out.
	// RedisTimeout well above the default 100ms: forty admissions at once
	// on a busy machine must not become redis_down (the requests carry
	// generousTimeout, so the filter waits for them).
	cfg := tracker.Config{InstanceID: "envoy-0", Heartbeat: 200 * time.Millisecond, InstanceTTL: time.Second, RedisTimeout: time.Second, Fleets: []fleets.Fleet{
		{Name: "default", MaxConnectionsPerPod: 100, RatePerSecond: 1000, Burst: 1000, Pods: chatPods},
		{Name: "chat", MaxConnectionsPerPod: 100, RatePerSecond: 1000, Burst: 1000, Pods: chatPods},
		{Name: "tight", MaxConnectionsPerPod: 100, RatePerSecond: 0.001, Burst: 1, Pods: chatPods},
		{Name: "small", MaxConnectionsPerPod: 1, RatePerSecond: 1000, Burst: 1000, Pods: smallPods, RetryAfter: fleets.Duration(7 * time.Second)},
	}}
	tr, err := tracker.New(cfg, store.NewStore(rdb, "wsgate"))
	if err != nil {
		t.Fatal(err)
	}
	await.Granting(t, "tracker", tr, 10*time.Second)
	e := &env{tr: tr, bodies: make(chan []byte, 100)}
	h := tr.Handler(nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		select {
		case e.bodies <- b:
		default:
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

func mustLoad(t *testing.T, trackerURL string) *luahost.Filter {
	t.Helper()
	f, err := luahost.Load(envoy.FilterLua, luahost.Options{Clusters: map[string]string{"wsgate_tracker": trackerURL}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("load wsgate.lua: %v", err)
	}
	return f
}

// generousTimeout is the route's admit_timeout_ms in tests that are not
// about the timeout: a busy machine must not turn an admission into a
// refusal.
const generousTimeout = 10000

func upgrade(fleet string, extra ...string) luahost.Request {
	h := luahost.HeadersOf(append([]string{
		":method", "GET", ":path", "/ws", ":authority", "chat.example", ":scheme", "http",
		"Connection", "Upgrade", "Upgrade", "websocket", "x-request-id", "req-1",
	}, extra...)...)
	return withRoute(luahost.Request{Headers: h, RemoteAddr: "203.0.113.7:51234"}, fleet, generousTimeout)
}

// withRoute sets the route metadata the filter reads: fleet ("" for none)
// and admit_timeout_ms (0 for none).
func withRoute(req luahost.Request, fleet string, timeoutMS float64) luahost.Request {
	md := map[string]any{}
	if fleet != "" {
		md["fleet"] = fleet
	}
	if timeoutMS != 0 {
		md["admit_timeout_ms"] = timeoutMS
	}
	req.RouteMetadata = map[string]map[string]any{luahost.DefaultFilterName: md}
	return req
}

// mustRun runs the filter and fails on a script error: in Envoy an error
// continues the request unadmitted, so the filter must never raise one.
func mustRun(t *testing.T, f *luahost.Filter, req luahost.Request) luahost.Decision {
	t.Helper()
	d, err := f.OnRequest(context.Background(), req)
	if err != nil {
		t.Fatalf("host: %v", err)
	}
	if d.ScriptError != nil {
		t.Fatalf("wsgate.lua raised (Envoy would continue the request): %v", d.ScriptError)
	}
	return d
}

func TestNonUpgradePassesWithoutAskingTheTracker(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	req := luahost.Request{Headers: luahost.HeadersOf(":method", "GET", ":path", "/", "x-wsgate-upstream", "10.9.9.9:1"), RemoteAddr: "203.0.113.7:1"}
	d := mustRun(t, f, req)
	if d.Local != nil || len(d.Metadata) != 0 {
		t.Fatalf("plain request: local reply %+v, metadata %v; want it untouched", d.Local, d.Metadata)
	}
	if !slices.Equal(d.Headers, req.Headers) {
		t.Errorf("headers changed: %v -> %v", req.Headers, d.Headers)
	}
	if n := e.calls.Load(); n != 0 {
		t.Errorf("tracker called %d times for a plain request", n)
	}
}

func TestUpgradeIsAdmittedAndSpoofedHeadersAreGone(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	d := mustRun(t, f, upgrade("chat",
		"X-Wsgate-Upstream", "6.6.6.6:22", "x-wsgate-conn", "forged", "X-WSGATE-Fleet", "other",
		"x-envoy-original-dst-host", "6.6.6.6:22", "x-keep", "yes"))
	if d.Local != nil {
		t.Fatalf("rejected: %d %q", d.Local.Status, d.Local.Body)
	}
	md := d.Metadata["wsgate"]
	pod, _ := md["upstream"].(string)
	conn, _ := md["conn"].(string)
	if !slices.Contains(chatPods, pod) || conn == "" || md["fleet"] != "chat" {
		t.Fatalf("dynamic metadata wsgate = %v: want upstream among %v, a conn id, fleet chat", md, chatPods)
	}
	for _, h := range d.Headers {
		if strings.HasPrefix(h.Name, "x-wsgate") || h.Name == "x-envoy-original-dst-host" {
			t.Errorf("client header %s: %s reached the backend", h.Name, h.Value)
		}
	}
	if d.Headers.Get("x-keep") != "yes" || d.Headers.Get("upgrade") != "websocket" {
		t.Errorf("other headers lost: %v", d.Headers)
	}
	counts, err := e.tr.LocalCounts("chat")
	if err != nil || counts[pod] != 1 {
		t.Errorf("tracker counts %v (%v), want 1 on %s", counts, err, pod)
	}
	snap, err := e.tr.Store().Snapshot(context.Background(), "chat", time.Now())
	if err != nil || snap.Load[pod] != 1 {
		t.Errorf("Redis load %v (%v), want 1 on %s", snap.Load, err, pod)
	}
	// The id written to metadata is the one the access log releases by.
	if err := e.tr.Release(context.Background(), conn); err != nil {
		t.Errorf("release %s: %v", conn, err)
	}
}

func TestFleetDefaultsAndTheAdmitBodyIsValidJSON(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	weird := "id \"quoted\" \\ back\nnew\x01line"
	d := mustRun(t, f, withRoute(upgrade("", "x-request-id", weird), "", generousTimeout))
	if d.Local != nil || d.Metadata["wsgate"]["fleet"] != "default" {
		t.Fatalf("no route fleet: local %+v, metadata %v; want admitted into default", d.Local, d.Metadata)
	}
	body := <-e.bodies
	var got tracker.AdmitRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("admit body %s: %v", body, err)
	}
	want := tracker.AdmitRequest{Fleet: "default", Client: "203.0.113.7:51234", RequestID: "req-1," + weird}
	if got != want {
		t.Errorf("admit body = %+v, want %+v", got, want)
	}
}

func TestRejectionsKeepStatusRetryAfterAndReason(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	cases := []struct {
		fleet, reason, retryAfter string
		status                    int
	}{
		{"tight", "rate_limit", "", http.StatusTooManyRequests},
		{"small", "capacity", "7", http.StatusServiceUnavailable},
	}
	for _, c := range cases {
		t.Run(c.reason, func(t *testing.T) {
			if d := mustRun(t, f, upgrade(c.fleet)); d.Local != nil {
				t.Fatalf("first connection rejected: %+v", d.Local)
			}
			d := mustRun(t, f, upgrade(c.fleet))
			if d.Local == nil {
				t.Fatalf("second connection admitted: %v", d.Metadata)
			}
			if d.Local.Status != c.status || !strings.Contains(d.Local.Body, c.reason) || d.Local.Headers.Get("x-wsgate-reason") != c.reason {
				t.Errorf("reply %d %q %v, want %d naming %s", d.Local.Status, d.Local.Body, d.Local.Headers, c.status, c.reason)
			}
			ra := d.Local.Headers.Get("retry-after")
			if ra == "" || (c.retryAfter != "" && ra != c.retryAfter) {
				t.Errorf("Retry-After %q, want %q", ra, c.retryAfter)
			}
			if len(d.Metadata) != 0 {
				t.Errorf("rejected request carries metadata %v", d.Metadata)
			}
		})
	}
}

func TestTrackerDownRefusesAndLogs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	d := mustRun(t, mustLoad(t, url), upgrade("chat"))
	assertTrackerUnavailable(t, d)
}

func TestTrackerSlowerThanTheTimeoutRefuses(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Header().Set(tracker.HeaderUpstream, "10.0.0.1:8080")
		w.Header().Set(tracker.HeaderConn, "late")
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	// The route's admit_timeout_ms sets the wait: never shorter than it
	// (a lower bound, so a busy machine cannot break it).
	start := time.Now()
	d := mustRun(t, mustLoad(t, srv.URL), withRoute(upgrade("chat"), "chat", 1000))
	if took := time.Since(start); took < time.Second || took > 5*time.Second {
		t.Errorf("filter waited %s for a hung tracker, want the route's 1s", took)
	}
	assertTrackerUnavailable(t, d)
	// Without it, the filter's 250ms default.
	start = time.Now()
	d = mustRun(t, mustLoad(t, srv.URL), withRoute(upgrade("chat"), "chat", 0))
	if took := time.Since(start); took < 250*time.Millisecond || took >= time.Second {
		t.Errorf("default admission timeout over after %s, want 250ms", took)
	}
	assertTrackerUnavailable(t, d)
}

func TestBadAdmitTimeoutFailsClosed(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	for _, bad := range []any{2.5, 0.0, -1.0, 60001.0, "100", true} {
		req := upgrade("chat")
		req.RouteMetadata[luahost.DefaultFilterName]["admit_timeout_ms"] = bad
		d := mustRun(t, f, req)
		if d.Local == nil || d.Local.Status != http.StatusServiceUnavailable || d.Local.Headers.Get("x-wsgate-reason") != "filter_error" || d.Local.Headers.Get("retry-after") == "" {
			t.Errorf("admit_timeout_ms %v: decision %+v, want 503 filter_error with Retry-After", bad, d.Local)
		}
		if len(d.Metadata) != 0 {
			t.Errorf("admit_timeout_ms %v: metadata %v", bad, d.Metadata)
		}
	}
	if n := e.calls.Load(); n != 0 {
		t.Errorf("tracker asked %d times with a broken route config", n)
	}
}

// Any error inside the filter must end in its own 503: in Envoy the request
// would otherwise continue unadmitted.
func TestFilterErrorsFailClosed(t *testing.T) {
	e := newEnv(t)
	// A tracker cluster the Envoy config lacks: httpCall raises.
	f, err := luahost.Load(envoy.FilterLua, luahost.Options{Clusters: map[string]string{"other": e.url}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	d := mustRun(t, f, upgrade("chat"))
	if d.Local == nil || d.Local.Status != http.StatusServiceUnavailable || d.Local.Headers.Get("x-wsgate-reason") != "filter_error" || d.Local.Headers.Get("retry-after") == "" {
		t.Fatalf("decision %+v, want 503 filter_error with Retry-After", d.Local)
	}
	logged := false
	for _, l := range d.Logs {
		logged = logged || (l.Level == "err" && strings.Contains(l.Message, "cluster invalid"))
	}
	if !logged {
		t.Errorf("logs %v: want the error named", d.Logs)
	}
}

// The filter admits exactly what the route sends to the backend: the
// upgrade header equal to "websocket", ignoring case. Anything else goes to
// the 426 route and must not take a slot.
func TestUpgradeTokenIsEnvoysRule(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	for _, v := range []string{"websocket, h2c", "foo-websocket", "websockets", "h2c"} {
		req := upgrade("chat")
		req.Headers.Del("upgrade")
		req.Headers = append(req.Headers, luahost.Header{Name: "upgrade", Value: v})
		d := mustRun(t, f, req)
		if d.Local != nil || len(d.Metadata) != 0 {
			t.Errorf("upgrade %q: decision %+v %v, want it passed to the route untouched", v, d.Local, d.Metadata)
		}
	}
	if n := e.calls.Load(); n != 0 {
		t.Errorf("tracker asked %d times for upgrades the route does not take", n)
	}
	req := upgrade("chat")
	req.Headers.Del("upgrade")
	req.Headers = append(req.Headers, luahost.Header{Name: "upgrade", Value: "WebSocket"})
	if d := mustRun(t, f, req); d.Metadata["wsgate"]["upstream"] == nil {
		t.Errorf("upgrade WebSocket not admitted: %+v", d.Local)
	}
}

// An RFC 8441 WebSocket over HTTP/2 (extended CONNECT, :protocol
// websocket) reaches Envoy's filters as its H2 codec rewrites it
// (Utility::transformUpgradeRequestFromH2toH1): :method GET, upgrade set
// from :protocol, connection: upgrade, :protocol removed.
func TestHTTP2ExtendedConnectIsAdmitted(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	req := withRoute(luahost.Request{Headers: luahost.HeadersOf(
		":method", "GET", ":path", "/ws", ":authority", "chat.example", ":scheme", "https",
		"sec-websocket-version", "13", "upgrade", "websocket", "connection", "upgrade",
		"x-wsgate-upstream", "6.6.6.6:1",
	), RemoteAddr: "203.0.113.7:1"}, "chat", generousTimeout)
	d := mustRun(t, f, req)
	if pod, _ := d.Metadata["wsgate"]["upstream"].(string); !slices.Contains(chatPods, pod) || d.Headers.Has("x-wsgate-upstream") {
		t.Fatalf("extended CONNECT: decision %+v, metadata %v, headers %v", d.Local, d.Metadata, d.Headers)
	}
}

func assertTrackerUnavailable(t *testing.T, d luahost.Decision) {
	t.Helper()
	if d.Local == nil || d.Local.Status != http.StatusServiceUnavailable || d.Local.Headers.Get("retry-after") == "" {
		t.Fatalf("decision %+v: want a local 503 with Retry-After", d)
	}
	if len(d.Metadata) != 0 {
		t.Errorf("metadata %v set without an admission", d.Metadata)
	}
	if got := d.Local.Headers.Get("x-wsgate-reason"); got != "tracker_unavailable" {
		t.Errorf("reason %q, want tracker_unavailable", got)
	}
	logged := false
	for _, l := range d.Logs {
		logged = logged || (l.Level == "err" && strings.Contains(l.Message, "admission failed"))
	}
	if !logged {
		t.Errorf("logs %v: want an error naming the failure", d.Logs)
	}
}

func TestConcurrentRequestsShareNothing(t *testing.T) {
	e := newEnv(t)
	f := mustLoad(t, e.url)
	const n = 40
	conns := make(chan string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := f.OnRequest(context.Background(), upgrade("chat"))
			if err != nil || d.ScriptError != nil || d.Local != nil {
				t.Errorf("request: %v %v %+v", err, d.ScriptError, d.Local)
				return
			}
			conns <- d.Metadata["wsgate"]["conn"].(string)
		}()
	}
	wg.Wait()
	close(conns)
	seen := map[string]bool{}
	for c := range conns {
		if seen[c] {
			t.Errorf("conn id %s handed to two requests", c)
		}
		seen[c] = true
	}
	counts, _ := e.tr.LocalCounts("chat")
	if counts[chatPods[0]]+counts[chatPods[1]] != n {
		t.Errorf("tracker counts %v, want %d in all", counts, n)
	}
}
