package report_test

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/tracker"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// t0 is the moment the scenario's main traffic happens; T is 10 min earlier.
var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// clock is the controlled time of every tracker in a scenario; the tests
// drive it from one goroutine.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// scenario is state produced by the tracker's own code on a store.
type scenario struct {
	store *tracker.Store
	now   time.Time // when the report reads
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newTracker(t *testing.T, s *tracker.Store, c *clock, id string, burst int, fleets ...string) *tracker.Tracker {
	t.Helper()
	// Leases longer than the scenario: its connections stay until it ends.
	cfg := tracker.Config{InstanceID: id, Heartbeat: 2 * time.Second, InstanceTTL: 5 * time.Minute, EstablishTimeout: time.Hour, LeaseTTL: time.Hour}
	for _, f := range fleets {
		cfg.Fleets = append(cfg.Fleets, tracker.FleetConfig{Name: f, MaxConnectionsPerPod: 2, RatePerSecond: 0.001, Burst: burst})
	}
	tr, err := tracker.New(cfg, s, tracker.WithClock(c.Now), tracker.WithLogger(slog.New(slog.DiscardHandler)))
	must(t, err)
	return tr
}

func admit(t *testing.T, tr *tracker.Tracker, fleet string, want bool) tracker.Result {
	t.Helper()
	res, err := tr.Admit(context.Background(), fleet)
	must(t, err)
	if res.Admitted != want {
		t.Fatalf("admit %s: admitted=%v (reason %s), want %v", fleet, res.Admitted, res.Reason, want)
	}
	return res
}

// buildScenario runs three trackers against rdb:
//
//	T = t0-10m   e1 syncs (new epoch), admits 3 on chat and is rate-limited once
//	t0-4m50s     e1 syncs, e4 syncs once and goes silent (expired when the report reads)
//	t0-2m        e2 and e3 sync; chat's epoch is lost (as when Redis
//	             restarts) and e1 syncs in a new one
//	t0           e2 admits 2, e3 admits 1 (chat is full: 3 placeable pods
//	             x 2), e2 is rejected for capacity; e1 and e2 sync, e3 never
//	             syncs in the new epoch
//	t0+30s       the report reads
func buildScenario(t *testing.T, rdb redis.UniversalClient) scenario {
	t.Helper()
	ctx := context.Background()
	s := tracker.NewStore(rdb, "wsgate")
	c := &clock{now: t0.Add(-10 * time.Minute)}
	e1 := newTracker(t, s, c, "envoy-1", 3, "chat", "video")
	must(t, e1.Heartbeat(ctx))
	must(t, s.SetPods(ctx, "chat", []tracker.Pod{
		{Addr: "10.0.0.1:8080", Name: "chat-0", Node: "node-a", Ready: true},
		{Addr: "10.0.0.2:8080", Name: "chat-1", Node: "node-b", Ready: true},
		{Addr: "10.0.0.3:8080", Name: "chat-2", Node: "node-a", Ready: true},
		{Addr: "10.0.0.4:8080", Name: "chat-3", Node: "node-b", Ready: true, Draining: true},
	}))
	must(t, s.SetPods(ctx, "video", []tracker.Pod{{Addr: "10.0.1.1:9000", Name: "video-0", Node: "node-c", Ready: true}}))
	var conns []string
	for range 3 {
		conns = append(conns, admit(t, e1, "chat", true).Conn)
	}
	if r := admit(t, e1, "chat", false); r.Reason != tracker.ReasonRateLimit {
		t.Fatalf("4th admission of envoy-1: reason %s, want rate_limit", r.Reason)
	}
	must(t, e1.Establish(conns[0]))
	must(t, e1.Establish(conns[1]))
	must(t, e1.Heartbeat(ctx))

	c.now = t0.Add(-4*time.Minute - 50*time.Second)
	must(t, e1.Heartbeat(ctx))
	e4 := newTracker(t, s, c, "envoy-4", 1, "chat")
	must(t, e4.Heartbeat(ctx))

	c.now = t0.Add(-2 * time.Minute)
	e2 := newTracker(t, s, c, "envoy-2", 3, "chat")
	e3 := newTracker(t, s, c, "envoy-3", 3, "chat")
	must(t, e2.Heartbeat(ctx))
	must(t, e3.Heartbeat(ctx))
	must(t, rdb.Del(ctx, s.KeyPrefix("chat")+"epoch").Err())
	must(t, e1.Heartbeat(ctx))

	c.now = t0
	must(t, e2.Establish(admit(t, e2, "chat", true).Conn))
	admit(t, e2, "chat", true)
	admit(t, e3, "chat", true)
	if r := admit(t, e2, "chat", false); r.Reason != tracker.ReasonCapacity {
		t.Fatalf("admission into a full fleet: reason %s, want capacity", r.Reason)
	}
	must(t, e1.Heartbeat(ctx))
	must(t, e2.Heartbeat(ctx))
	return scenario{store: s, now: t0.Add(30 * time.Second)}
}

func miniScenario(t *testing.T) (scenario, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return buildScenario(t, rdb), mr
}

func (sc scenario) report(t *testing.T, views ...report.View) report.Report {
	t.Helper()
	ctx := context.Background()
	r := report.NewReader(sc.store)
	fleets, err := r.Fleets(ctx)
	must(t, err)
	var states []report.FleetState
	for _, f := range fleets {
		st, err := r.Read(ctx, f, sc.now)
		must(t, err)
		states = append(states, st)
	}
	return report.Build(states, report.Options{
		Views: views, Caps: map[string]int{"chat": 2}, Settle: time.Minute, ReadinessRatio: 0.95, Now: sc.now,
	})
}

// stableEpoch replaces the epoch's random part, which differs every run,
// by a constant of the same width, so the tables keep their alignment.
func stableEpoch(t *testing.T, sc scenario, out string) string {
	t.Helper()
	snap, err := sc.store.Snapshot(context.Background(), "chat", sc.now)
	must(t, err)
	ms, _, ok := strings.Cut(snap.Epoch, "-")
	if !ok {
		t.Fatalf("epoch %q: want <ms>-<hex>", snap.Epoch)
	}
	out = strings.ReplaceAll(out, snap.Epoch, ms+"-0000beef")
	snap, err = sc.store.Snapshot(context.Background(), "video", sc.now)
	must(t, err)
	ms, _, _ = strings.Cut(snap.Epoch, "-")
	return strings.ReplaceAll(out, snap.Epoch, ms+"-0000cafe")
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		must(t, os.MkdirAll("testdata", 0o755))
		must(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./report -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (go test ./report -update rewrites it)\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}

func table(t *testing.T, rep report.Report) string {
	t.Helper()
	var b bytes.Buffer
	must(t, report.WriteTable(&b, rep))
	return b.String()
}

func TestTableAllViews(t *testing.T) {
	sc, _ := miniScenario(t)
	golden(t, "all_views", stableEpoch(t, sc, table(t, sc.report(t))))
}

func TestTableOneView(t *testing.T) {
	sc, _ := miniScenario(t)
	got := table(t, sc.report(t, report.ViewConnections))
	golden(t, "connections", got)
	for _, other := range []string{"REJECTIONS", "SCALING", "DETAILED", "READINESS"} {
		if strings.Contains(got, other) {
			t.Errorf("connections view shows %s", other)
		}
	}
}

// The scaler's keys are written as the scaler documents them: the hash
// scaler {recommended, reported, ready, readyPods, updatedMs, reason} and
// the zset scaledown (pod -> priority, first candidate lowest).
// While the scaler holds its metric it writes no recommendation.
func TestTableScalingWhileTheScalerHolds(t *testing.T) {
	sc, mr := miniScenario(t)
	mr.HSet(sc.store.KeyPrefix("chat")+"scaler", "ready", "0", "readyPods", "4", "updatedMs", "1795608025000", "reason", "metrics held: epoch 5s old, settle 1m0s")
	got := table(t, sc.report(t, report.ViewScaling))
	if !strings.Contains(got, "scaler: holding its metric (not ready), 4 ready pods") || strings.Contains(got, "recommends") {
		t.Errorf("scaling view while held:\n%s", got)
	}
}

func TestTableScalingWithScalerState(t *testing.T) {
	sc, mr := miniScenario(t)
	p := sc.store.KeyPrefix("chat")
	mr.HSet(p+"scaler", "recommended", "3", "reported", "4", "ready", "1", "readyPods", "4",
		"updatedMs", "1795608025000", "reason", "capacity target")
	mr.ZAdd(p+"scaledown", 1, "10.0.0.3:8080")
	mr.ZAdd(p+"scaledown", 0, "10.0.0.4:8080")
	got := table(t, sc.report(t, report.ViewScaling))
	golden(t, "scaling_scaler", got)
}
