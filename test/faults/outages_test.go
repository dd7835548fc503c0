package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/kedatest"
	"github.com/wsgate/wsgate/test/wsdial"
)

// The tests below came from test/e2e (faults_test.go), where they ran the
// trackers in the test process: outages of Redis, of a whole pod, of the
// access-log stream, a slow Redis and bad input. Here, as every fault test,
// they run `wsgate tracker` (and `wsgate scaler`) processes. Three backends
// and the timings of the e2e harness (heartbeat 200ms, instance TTL 1s,
// lease 2s, flush 300ms, Redis timeout 1s, the filter's admit timeout 5s:
// what a loaded machine meets; the production defaults, 100ms and 250ms,
// are kept by the tests about them).
func outageOptions(cap int) options {
	return options{backends: 3, cap: cap, heartbeat: 200 * time.Millisecond, instanceTTL: time.Second,
		lease: 2 * time.Second, flush: 300 * time.Millisecond, redisTimeout: time.Second, admitTimeout: 5 * time.Second}
}

// openN opens n connections through the gateways in turn (A, B, A, ...),
// failing the test on any refusal.
func (h *harness) openN(n int) []*websocket.Conn {
	h.t.Helper()
	var out []*websocket.Conn
	for i := range n {
		r := h.dial(h.trackers[i%2])
		if r.Err != nil {
			h.t.Fatalf("dial %d: status %d reason %q: %v", i, r.Status, r.Reason, r.Err)
		}
		out = append(out, r.Conn)
	}
	return out
}

// connMeta is the filter metadata Envoy's access log carries for conn.
func connMeta(t *testing.T, conn string) *corev3.Metadata {
	t.Helper()
	s, err := structpb.NewStruct(map[string]any{"conn": conn})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"wsgate": s}}
}

// TestRedisKilledAndRestartedEmpty: Redis dies under load; the gateways go
// on from the trackers' fallback without exceeding the cap; Redis comes
// back empty and the counts are exact within a heartbeat; the scaler holds
// its metric until the instances have re-synced and the settle time passed.
func TestRedisKilledAndRestartedEmpty(t *testing.T) {
	t.Parallel()
	o := outageOptions(4)
	o.settle = time.Second
	h := newHarness(t, o)
	h.awaitRecovery()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conns := h.openN(6)
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	await.Until(t, "6 live in Redis", 20*time.Second, func() (bool, string) { n := h.live(); return n == 6, fmt.Sprint(n) })
	// Let both trackers' heartbeats see the six before the crash.
	await.Until(t, "scaler reports 6", 20*time.Second, func() (bool, string) {
		v, err := kedatest.Metric(ctx, h.keda, fleet, "connections")
		return err == nil && v == 6, fmt.Sprint(v, err)
	})

	h.redis.Kill()
	var mu sync.Mutex
	var wg sync.WaitGroup
	reasons := map[string]int{}
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := h.dial(h.trackers[i%2])
			mu.Lock()
			defer mu.Unlock()
			if r.Err == nil {
				conns = append(conns, r.Conn)
				reasons["admitted"]++
				return
			}
			reasons[fmt.Sprint(r.Status, " ", r.Reason)]++
		}()
	}
	wg.Wait()
	t.Logf("dials while Redis is down: %v", reasons)
	for k := range reasons {
		if k != "admitted" && k != "503 redis_down" && k != "503 capacity" {
			t.Errorf("unexpected outcome while Redis is down: %q", k)
		}
	}
	for _, b := range h.backends {
		if m := b.Max.Load(); m > 4 {
			t.Fatalf("backend %s held %d connections, cap 4, during the outage", b.Addr, m)
		}
	}
	if _, err := kedatest.Metric(ctx, h.keda, fleet, "connections"); err == nil {
		t.Error("scaler reported a metric while Redis was down")
	}

	// Stamped before the restart: Restart returns once Redis answers, and
	// a tracker's heartbeat may already have made the new epoch (from
	// which the scaler counts the settle time) by then.
	restarted := time.Now()
	h.redis.Restart()
	if _, err := kedatest.Metric(ctx, h.keda, fleet, "connections"); status.Code(err) != codes.Unavailable {
		t.Errorf("scaler right after an empty restart: %v, want Unavailable (held)", err)
	}
	await.Until(t, "Redis live = backends' own count after restart", 20*time.Second, func() (bool, string) {
		b := h.backendLive()
		n := h.live()
		return n == b, fmt.Sprintf("redis %d backends %d", n, b)
	})
	t.Logf("counts exact %s after restart", time.Since(restarted).Round(time.Millisecond))
	want := h.backendLive()
	await.Until(t, "scaler resumes with the exact count", 50*time.Second, func() (bool, string) {
		v, err := kedatest.Metric(ctx, h.keda, fleet, "connections")
		return err == nil && int64(v) == want, fmt.Sprint(v, err)
	})
	if held := time.Since(restarted); held < time.Second {
		t.Errorf("scaler resumed %s after restart, before the 1s settle time", held)
	}
}

// TestGatewayKilledWithoutAccessLog: a gateway and its tracker die at once,
// so no DownstreamEnd ever reaches a tracker; the other instance reaps the
// dead one's slots after its lease, and its own connections are untouched.
// Reaping is expiredInstances reap, chosen here: the default, keep, keeps a
// dead instance's slots until an operator forgets it.
func TestGatewayKilledWithoutAccessLog(t *testing.T) {
	t.Parallel()
	o := outageOptions(4)
	o.expired = "reap"
	h := newHarness(t, o)
	h.awaitRecovery()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conns := h.openN(6) // 3 through each gateway
	await.Until(t, "6 live", 20*time.Second, func() (bool, string) { n := h.live(); return n == 6, fmt.Sprint(n) })
	killed := time.Now()
	// A crash: the tracker first, so no access-log entry of the pod's
	// connections is ever applied and no heartbeat runs any more.
	a := h.trackers[0]
	a.kill()
	a.closeGateway()
	await.Until(t, "dead instance reaped", 30*time.Second, func() (bool, string) { n := h.live(); return n == 3, fmt.Sprint(n) })
	t.Logf("slots of the dead instance back %s after the kill (instance TTL 1s)", time.Since(killed).Round(time.Millisecond))
	for i := 1; i < 6; i += 2 {
		if err := wsdial.Ping(ctx, conns[i]); err != nil {
			t.Fatalf("connection %d through the surviving gateway: %v", i, err)
		}
	}
	if b := h.backendLive(); b != 3 {
		t.Errorf("backends hold %d connections, want the survivor's 3", b)
	}
	for _, c := range conns {
		c.CloseNow()
	}
}

// TestAccessLogStreamCutAndResumed: the tracker's access-log listener goes
// away and comes back (a proxy in front of it drops every connection and
// refuses new ones, then forwards again). A connection opened during the
// cut is kept by its periodic entries once the stream is back; one closed
// during the cut is released by its lease.
func TestAccessLogStreamCutAndResumed(t *testing.T) {
	t.Parallel()
	o := outageOptions(10)
	o.lease, o.flush, o.accessLogProxy = 1500*time.Millisecond, 200*time.Millisecond, true
	h := newHarness(t, o)
	h.awaitRecovery()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tp := h.trackers[0]
	before := h.dial(tp)
	if before.Err != nil {
		t.Fatal(before.Err)
	}
	await.Until(t, "1 live", 20*time.Second, func() (bool, string) { l := h.live(); return l == 1, fmt.Sprint(l) })

	tp.alProxy.drop()
	during := h.dial(tp)
	if during.Err != nil {
		t.Fatalf("admission does not depend on the access log: %v", during.Err)
	}
	defer during.Conn.CloseNow()
	before.Conn.Close(websocket.StatusNormalClosure, "") // its DownstreamEnd is lost
	await.Until(t, "backend sees the close", 20*time.Second, func() (bool, string) { b := h.backendLive(); return b == 1, fmt.Sprint(b) })

	tp.alProxy.heal()

	await.Until(t, "lost release repaired by the lease", 40*time.Second, func() (bool, string) { l := h.live(); return l == 1, fmt.Sprint(l) })
	// The connection opened in the cut outlives several leases: its
	// periodic entries over the resumed stream renew it.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if l := h.live(); l != 1 {
			t.Fatalf("live %d while one connection is open (renewed over the resumed stream)", l)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := wsdial.Ping(ctx, during.Conn); err != nil {
		t.Fatal(err)
	}
}

// goroutines is what the processes of one system run: the test process
// (its gateways) and each tracker (go_goroutines on its /metrics).
func (h *harness) goroutines() map[string]int {
	h.t.Helper()
	out := map[string]int{"test process": runtime.NumGoroutine()}
	for _, tp := range h.trackers {
		v, ok := tp.metric("go_goroutines")
		if !ok {
			h.t.Fatalf("tracker %s: no go_goroutines on /metrics", tp.id)
		}
		out["tracker "+tp.id] = int(v)
	}
	return out
}

// TestSlowRedisFailsFast: Redis answering after three seconds; every
// admission is decided within the tracker's Redis timeout (plus the
// fallback), with a clear reason, and no goroutines pile up, in the
// trackers or in the gateways.
//
// Not parallel: it counts the test process' goroutines and times dials
// against this machine's pace, which other tests would move.
func TestSlowRedisFailsFast(t *testing.T) {
	o := outageOptions(4)
	o.redisTimeout = 100 * time.Millisecond
	h2 := newHarness(t, o)
	h2.awaitRecovery()
	// Warm up with the same burst while Redis is fast, so the keep-alive
	// pools (gateway -> tracker) already have their size: what is counted
	// after the slow phase is a pile-up, not a pool.
	var warmWG sync.WaitGroup
	var warmMu sync.Mutex
	var warmSlowest time.Duration // the same burst with Redis fast: this machine's pace
	for i := range 30 {
		warmWG.Add(1)
		go func() {
			defer warmWG.Done()
			start := time.Now()
			r := h2.dial(h2.trackers[i%2])
			warmMu.Lock()
			warmSlowest = max(warmSlowest, time.Since(start))
			warmMu.Unlock()
			if r.Err == nil {
				r.Conn.Close(websocket.StatusNormalClosure, "")
			}
		}()
	}
	warmWG.Wait()
	await.Until(t, "warm connections released", 20*time.Second, func() (bool, string) { l := h2.live(); return l == 0, fmt.Sprint(l) })
	before := h2.goroutines()

	const delay = 3 * time.Second
	for _, tp := range h2.trackers {
		tp.proxy.slowDown(delay)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	var conns []*websocket.Conn
	var slowest time.Duration
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			r := h2.dial(h2.trackers[i%2])
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			if r.Err == nil {
				conns = append(conns, r.Conn)
				outcomes["admitted (fallback)"]++
				return
			}
			outcomes[fmt.Sprint(r.Status, " ", r.Reason)]++
		}()
	}
	wg.Wait()
	t.Logf("30 dials with Redis %s slow: %v; slowest %s (%s with Redis fast)", delay, outcomes, slowest.Round(time.Millisecond), warmSlowest.Round(time.Millisecond))
	// Relative to this machine's pace, not to a quiet machine's: the
	// Redis timeout (100ms) and the fallback may add a little, never
	// the Redis delay.
	if limit := min(delay/2, warmSlowest+time.Second); slowest > limit {
		t.Errorf("slowest dial %s (limit %s): admissions must not wait for a slow Redis (timeout 100ms)", slowest, limit)
	}
	for k := range outcomes {
		if k != "admitted (fallback)" && k != "503 redis_down" && k != "503 capacity" {
			t.Errorf("outcome %q: want admitted, redis_down or capacity", k)
		}
	}
	// Redis slow right after the second tracker joined: the first one's
	// last heartbeat did not know it yet, so the newcomer must take no
	// share of the fallback (it once did, and backends held 6 at cap 4).
	for _, b := range h2.backends {
		if m := b.Max.Load(); m > 4 {
			t.Errorf("backend %s held %d connections with Redis slow, cap 4", b.Addr, m)
		}
	}
	for _, c := range conns {
		c.Close(websocket.StatusNormalClosure, "")
	}
	for _, tp := range h2.trackers {
		tp.proxy.slowDown(0)
	}
	piledUp := func() (bool, string) {
		now := h2.goroutines()
		for k, n := range now {
			if n > before[k]+5 {
				return true, fmt.Sprintf("%v before the slow phase, %v after it ended", before, now)
			}
		}
		return false, ""
	}
	deadline := time.Now().Add(30 * time.Second)
	for up, _ := piledUp(); up && time.Now().Before(deadline); up, _ = piledUp() {
		time.Sleep(50 * time.Millisecond)
	}
	if up, counts := piledUp(); up {
		var buf strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Errorf("goroutines: %s; the test process':\n%s", counts, buf.String())
	}
}

// TestBadInputToEveryListener sends malformed, oversized, unknown-fleet
// and incomplete requests to the admission API, the access-log service and
// the scaler; each answers with a clear error, nothing panics, and the
// system still admits, counts and releases afterwards.
func TestBadInputToEveryListener(t *testing.T) {
	t.Parallel()
	o := outageOptions(4)
	o.settle = time.Millisecond
	h := newHarness(t, o)
	h.awaitRecovery()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := h.trackers[0]

	// Admission API.
	for _, c := range []struct {
		name, method, body string
		status             int
		says               string
	}{
		{"malformed", "POST", `{"fleet":`, 400, ""},
		{"oversized", "POST", `{"fleet":"chat","client":"` + strings.Repeat("x", 64<<10) + `"}`, 400, ""},
		{"unknown fleet", "POST", `{"fleet":"nope"}`, 400, "nope"},
		{"missing fleet", "POST", `{}`, 400, ""},
		{"wrong method", "GET", ``, 405, "POST"},
	} {
		req, _ := http.NewRequestWithContext(ctx, c.method, "http://"+n.listen+"/v1/admit", strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("admission %s: %v", c.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status && !(c.name == "oversized" && resp.StatusCode == 413) {
			t.Errorf("admission %s: status %d (%s), want %d", c.name, resp.StatusCode, b, c.status)
		}
		if len(strings.TrimSpace(string(b))) == 0 || !strings.Contains(string(b), c.says) {
			t.Errorf("admission %s: body %q does not say what is wrong", c.name, b)
		}
	}

	// Access-log service: entries Envoy would never send, then a good one on
	// the same stream.
	good := h.dial(n)
	if good.Err != nil {
		t.Fatal(good.Err)
	}
	cc, err := grpc.NewClient(n.alAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bad := []*datav3.HTTPAccessLogEntry{
		{}, // no common properties
		{CommonProperties: &datav3.AccessLogCommon{}},                                                                                   // type not set
		{CommonProperties: &datav3.AccessLogCommon{AccessLogType: datav3.AccessLogType_DownstreamEnd}},                                  // no conn
		{CommonProperties: &datav3.AccessLogCommon{AccessLogType: datav3.AccessLogType_DownstreamEnd, Metadata: connMeta(t, "forged")}}, // unknown conn
	}
	for _, msg := range []*accesslogv3.StreamAccessLogsMessage{
		{},
		{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: bad}}},
		{LogEntries: &accesslogv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &accesslogv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*datav3.TCPAccessLogEntry{{}}}}},
	} {
		if err := stream.Send(msg); err != nil {
			t.Fatalf("access-log stream broke on bad input: %v", err)
		}
	}
	// The stream ends cleanly, with the one response of a client stream.
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatalf("access-log stream ended with %v after bad entries", err)
	}
	if err := wsdial.Ping(ctx, good.Conn); err != nil {
		t.Fatal(err)
	}
	// counted in the pods and, once a heartbeat published it, in the
	// summary the scaler reads below
	await.Until(t, "good connection still counted", 20*time.Second, func() (bool, string) {
		pods, live := h.redisCount()
		return pods == 1 && live == 1, fmt.Sprintf("pods %d, summary %d", pods, live)
	})

	// Scaler.
	for _, c := range []struct {
		name string
		md   map[string]string
		code codes.Code
	}{
		{"missing fleet", map[string]string{}, codes.InvalidArgument},
		{"unknown fleet", map[string]string{"fleet": "nope"}, codes.NotFound},
		{"bad metric", map[string]string{"fleet": "chat", "metric": "vibes"}, codes.InvalidArgument},
		{"bad number", map[string]string{"fleet": "chat", "targetUtilization": "lots"}, codes.InvalidArgument},
	} {
		r := &externalscaler.ScaledObjectRef{Name: "x", Namespace: "y", ScalerMetadata: c.md}
		_, err1 := h.keda.GetMetricSpec(ctx, r)
		_, err2 := h.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: r})
		_, err3 := h.keda.IsActive(ctx, r)
		for _, err := range []error{err1, err2, err3} {
			if status.Code(err) != c.code || status.Convert(err).Message() == "" {
				t.Errorf("scaler %s: %v, want %s with a message", c.name, err, c.code)
			}
		}
	}
	if _, err := h.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("scaler with no ScaledObjectRef: %v, want InvalidArgument", err)
	}
	if _, err := h.keda.GetMetrics(ctx, &externalscaler.GetMetricsRequest{ScaledObjectRef: kedatest.Ref(fleet, ""), MetricName: "other"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("scaler with a foreign metric name: %v, want InvalidArgument", err)
	}

	// Everything still works: count, release.
	if v, err := kedatest.Metric(ctx, h.keda, fleet, "connections"); err != nil || v != 1 {
		t.Fatalf("connections after bad input: %v %v, want 1", v, err)
	}
	good.Conn.Close(websocket.StatusNormalClosure, "")
	await.Until(t, "released after bad input", 20*time.Second, func() (bool, string) { l := h.live(); return l == 0, fmt.Sprint(l) })
}
