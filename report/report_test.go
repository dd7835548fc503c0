package report_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/tracker"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// t0 is the moment the scenario's main traffic happens; T is 10 min earlier.
var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// clock is the controlled time of every tracker in a scenario; the tests
// drive it from one goroutine.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// redisClock is what a scenario can do about Redis' own clock, by which the
// scripts set and judge leases and recovery waits (tracker/PROTOCOL.md).
type redisClock interface {
	// at follows the scenario's clock to t, where Redis' clock can be set.
	at(t time.Time)
	// recovering checks that fleet's epoch grants nothing yet, for want
	// (at most want where Redis' clock runs on its own).
	recovering(t *testing.T, s *store.Store, fleet string, want time.Duration)
	// recovered is where the scenario has waited out fleet's recovery wait.
	recovered(t *testing.T, s *store.Store, fleet string)
	// expired is where the scenario has outlived instance id's lease.
	expired(t *testing.T, s *store.Store, fleet, id string)
}

// miniClock is miniredis' clock, frozen at the scenario's time: the
// scenario's minutes pass for Redis too.
type miniClock struct{ mr *miniredis.Miniredis }

func (c miniClock) at(t time.Time) { c.mr.SetTime(t) }

func (c miniClock) recovering(t *testing.T, s *store.Store, fleet string, want time.Duration) {
	t.Helper()
	left, err := s.Recovery(context.Background(), fleet)
	must(t, err)
	if left != want {
		t.Fatalf("%s: recovery wait %s left, want %s", fleet, left, want)
	}
}

func (c miniClock) recovered(t *testing.T, s *store.Store, fleet string) {
	t.Helper()
	left, err := s.Recovery(context.Background(), fleet)
	must(t, err)
	if left != 0 {
		t.Fatalf("%s: recovery wait still %s left where the scenario expects it over", fleet, left)
	}
}

func (c miniClock) expired(t *testing.T, s *store.Store, fleet, id string) {
	t.Helper()
	if !leaseEnded(t, s, fleet, id) {
		t.Fatalf("%s: the lease of %s has not ended by Redis' clock where the scenario expects it", fleet, id)
	}
}

// serverClock is a real server's clock, which runs on its own: the
// scenario's minutes do not pass for it. A recovery wait the scenario has
// waited out is ended by moving the epoch's `until` to Redis' now (what
// those minutes would have done), and an expected expiry is waited for
// (the scenario gives such an instance a 1s lease).
// serverClock runs on a real server; rdb is the client the store runs on.
type serverClock struct{ rdb redis.UniversalClient }

func (serverClock) at(time.Time) {}

func (serverClock) recovering(t *testing.T, s *store.Store, fleet string, want time.Duration) {
	t.Helper()
	left, err := s.Recovery(context.Background(), fleet)
	must(t, err)
	if left <= 0 || left > want {
		t.Fatalf("%s: recovery wait %s left, want in (0, %s]", fleet, left, want)
	}
}

func (c serverClock) recovered(t *testing.T, s *store.Store, fleet string) {
	t.Helper()
	ctx := context.Background()
	// In a script, so that it runs on the fleet's shard, by its clock.
	must(t, endRecovery.Run(ctx, c.rdb, []string{s.Keys(fleet).Epoch()}).Err())
	left, err := s.Recovery(ctx, fleet)
	must(t, err)
	if left != 0 {
		t.Fatalf("%s: recovery wait %s left after ending it", fleet, left)
	}
}

func (serverClock) expired(t *testing.T, s *store.Store, fleet, id string) {
	t.Helper()
	await.True(t, fmt.Sprintf("%s: Redis' clock passes the lease of %s", fleet, id), 10*time.Second, func() bool { return leaseEnded(t, s, fleet, id) })
}

var endRecovery = redis.NewScript(`
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'until', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return 1`)

// leaseEnded says whether instance id's lease has ended by Redis' clock.
func leaseEnded(t *testing.T, s *store.Store, fleet, id string) bool {
	t.Helper()
	snap, err := s.Snapshot(context.Background(), fleet, time.Now())
	must(t, err)
	for _, in := range snap.Instances {
		if in.ID == id {
			return in.LeaseUntil.Before(snap.RedisNow)
		}
	}
	t.Fatalf("%s: no instance %s", fleet, id)
	return false
}

// scenario is state produced by the tracker's own code on a store.
type scenario struct {
	store *store.Store
	now   time.Time // when the report reads
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ttl is the trackers' instance TTL: their lease, and the recovery wait of
// an epoch they create. Longer than the scenario's steps: the connections
// of an instance stay until it ends.
const ttl = 5 * time.Minute

func newTracker(t *testing.T, s *store.Store, c *clock, id string, ttl time.Duration, burst int, fcs ...string) *tracker.Tracker {
	t.Helper()
	cfg := tracker.Config{InstanceID: id, Heartbeat: min(2*time.Second, ttl/2), InstanceTTL: ttl, EstablishTimeout: time.Hour, LeaseTTL: time.Hour}
	for _, f := range fcs {
		cfg.Fleets = append(cfg.Fleets, fleets.Fleet{Name: f, MaxConnectionsPerPod: 2, RatePerSecond: 0.001, Burst: burst})
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

// buildScenario runs four trackers against rdb, Redis' clock following the
// scenario's where rc can set it (every lease is ttl, but envoy-4's):
//
//	t0-10m   e1 syncs: new epochs of chat and video, which grant nothing
//	         for ttl (the recovery wait)
//	t0-5m    e1 syncs, confirming the waits on its clock; they are over,
//	         e1 admits 3 on chat and is rate-limited once
//	t0-4m50s e1 syncs, e4 (a 1s lease) syncs once and goes silent: expired
//	         when the report reads, not yet reaped (nobody watched it stand
//	         still for a lease)
//	t0-2m    e2 and e3 sync; e2 admits 2, e3 admits 1 (chat is full: 3
//	         placeable pods x 2), e2 is rejected for capacity; chat's epoch
//	         is lost (as when Redis restarts) and e1 syncs in a new one,
//	         whose recovery wait lasts until t0+3m (and a tracker's
//	         confirmation)
//	t0       e1 and e2 sync; e3 never syncs in the new epoch
//	t0+30s   the report reads: chat is in its recovery wait, e3 alive but
//	         not synced
func buildScenario(t *testing.T, rdb redis.UniversalClient, rc redisClock, s *store.Store) scenario {
	t.Helper()
	ctx := context.Background()
	c := &clock{}
	step := func(at time.Time) { c.now = at; rc.at(at) }

	step(t0.Add(-10 * time.Minute))
	e1 := newTracker(t, s, c, "envoy-1", ttl, 3, "chat", "video")
	must(t, e1.Heartbeat(ctx))
	rc.recovering(t, s, "chat", ttl)
	rc.recovering(t, s, "video", ttl)
	must(t, s.SetPods(ctx, "chat", []fleets.Pod{
		{Addr: "10.0.0.1:8080", Name: "chat-0", Node: "node-a", Ready: true},
		{Addr: "10.0.0.2:8080", Name: "chat-1", Node: "node-b", Ready: true},
		{Addr: "10.0.0.3:8080", Name: "chat-2", Node: "node-a", Ready: true},
		{Addr: "10.0.0.4:8080", Name: "chat-3", Node: "node-b", Ready: true, Draining: true},
	}))
	must(t, s.SetPods(ctx, "video", []fleets.Pod{{Addr: "10.0.1.1:9000", Name: "video-0", Node: "node-c", Ready: true}}))

	// e1 has watched a TTL of its own clock pass since it saw the epochs
	// begin: its heartbeat confirms their waits, which Redis' clock ends.
	step(t0.Add(-5 * time.Minute))
	must(t, e1.Heartbeat(ctx))
	rc.recovered(t, s, "chat")
	rc.recovered(t, s, "video")
	var conns []string
	for range 3 {
		conns = append(conns, admit(t, e1, "chat", true).Conn)
	}
	if r := admit(t, e1, "chat", false); r.Reason != store.ReasonRateLimit {
		t.Fatalf("4th admission of envoy-1: reason %s, want rate_limit", r.Reason)
	}
	must(t, e1.Establish(conns[0]))
	must(t, e1.Establish(conns[1]))
	must(t, e1.Heartbeat(ctx))

	step(t0.Add(-4*time.Minute - 50*time.Second))
	must(t, e1.Heartbeat(ctx))
	e4 := newTracker(t, s, c, "envoy-4", time.Second, 1, "chat")
	must(t, e4.Heartbeat(ctx))

	step(t0.Add(-2 * time.Minute))
	e2 := newTracker(t, s, c, "envoy-2", ttl, 3, "chat")
	e3 := newTracker(t, s, c, "envoy-3", ttl, 3, "chat")
	must(t, e2.Heartbeat(ctx))
	must(t, e3.Heartbeat(ctx))
	must(t, e2.Establish(admit(t, e2, "chat", true).Conn))
	admit(t, e2, "chat", true)
	admit(t, e3, "chat", true)
	// Not established: Redis counts it pending once e3's heartbeat says so.
	must(t, e3.Heartbeat(ctx))
	if r := admit(t, e2, "chat", false); r.Reason != store.ReasonCapacity {
		t.Fatalf("admission into a full fleet: reason %s, want capacity", r.Reason)
	}
	must(t, rdb.Del(ctx, s.Keys("chat").Epoch()).Err())
	must(t, e1.Heartbeat(ctx))
	rc.recovering(t, s, "chat", ttl)

	step(t0)
	must(t, e1.Heartbeat(ctx))
	must(t, e2.Heartbeat(ctx))

	step(t0.Add(30 * time.Second))
	rc.expired(t, s, "chat", "envoy-4")
	return scenario{store: s, now: c.now}
}

func miniScenario(t *testing.T) (scenario, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	// miniredis cannot say its run_id (INFO server).
	s := store.NewStore(rdb, "wsgate").WithoutRestartDetection()
	return buildScenario(t, rdb, miniClock{mr}, s), mr
}

func (sc scenario) report(t *testing.T, views ...report.View) report.Report {
	t.Helper()
	return sc.reportSettle(t, time.Minute, views...)
}

// reportSettle is report with the readiness settle time given.
func (sc scenario) reportSettle(t *testing.T, settle time.Duration, views ...report.View) report.Report {
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
		Views: views, Caps: map[string]int{"chat": 2}, Settle: settle, ReadinessRatio: 0.95, Now: sc.now,
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

// decision writes trigger id's hash and indexes it as the scaler does
// (scaler/decision.go): the hash scaler:<id> {scaledObject, params,
// recommended, reported, drainFloor, drivenBy, ready, readyPods,
// updatedMs, reason}, the zset scalers (id -> updatedMs).
func decision(mr *miniredis.Miniredis, keys store.Keys, id string, fields ...string) {
	mr.ZAdd(keys.Scalers(), 1795608025000, id)
	mr.HSet(keys.Scaler(id), fields...)
}

// The zset scaledown is pod -> priority, first candidate lowest. While the
// scaler holds a trigger's metric it writes no recommendation for it.
func TestTableScalingWhileTheScalerHolds(t *testing.T) {
	sc, mr := miniScenario(t)
	decision(mr, sc.store.Keys("chat"), "ns/chat@0123abcd", "ready", "0", "readyPods", "4", "updatedMs", "1795608025000", "reason", "metrics held: epoch 5s old, settle 1m0s")
	got := table(t, sc.report(t, report.ViewScaling))
	if !strings.Contains(got, "ns/chat@0123abcd  held (not ready)") || strings.Contains(got, "reporting") {
		t.Errorf("scaling view while held:\n%s", got)
	}
}

func TestTableScalingWithScalerState(t *testing.T) {
	sc, mr := miniScenario(t)
	p := sc.store.Keys("chat")
	// Two triggers, each its own row; an expired one (indexed, no hash) none.
	decision(mr, p, "ns/chat@0123abcd", "scaledObject", "ns/chat", "params", "targetUtilization=0.8", "recommended", "3", "reported", "4",
		"drainFloor", "4", "drivenBy", "ns/probe@4567cdef", "ready", "1", "readyPods", "4", "updatedMs", "1795608025000",
		"reason", "capacity target; scale-down held at 4: trigger ns/probe@4567cdef recommends 4")
	decision(mr, p, "ns/probe@4567cdef", "scaledObject", "ns/probe", "params", "targetUtilization=0.5", "recommended", "4", "reported", "4",
		"drainFloor", "4", "drivenBy", "ns/probe@4567cdef", "ready", "1", "readyPods", "4", "updatedMs", "1795608024000", "reason", "capacity target")
	mr.ZAdd(p.Scalers(), 1795607000000, "ns/gone@89abcdef")
	mr.ZAdd(p.ScaleDown(), 1, "10.0.0.3:8080")
	mr.ZAdd(p.ScaleDown(), 0, "10.0.0.4:8080")
	got := table(t, sc.report(t, report.ViewScaling))
	golden(t, "scaling_scaler", got)
}
