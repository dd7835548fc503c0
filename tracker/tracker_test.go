package tracker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/tracker"
)

// clock is a controlled time source shared by the trackers of a test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: storetest.T0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func fleetCfg(name string, cap int, pods ...string) fleets.Fleet {
	return fleets.Fleet{Name: name, MaxConnectionsPerPod: cap, RatePerSecond: 1e6, Burst: 1e6, Pods: pods}
}

func newTracker(t *testing.T, rdb redis.UniversalClient, id string, clk *clock, fallback tracker.FallbackMode, fleets ...fleets.Fleet) *tracker.Tracker {
	t.Helper()
	return newTrackerCfg(t, rdb, clk, tracker.Config{
		InstanceID: id, Fleets: fleets, Heartbeat: time.Second, InstanceTTL: 5 * time.Second,
		EstablishTimeout: 10 * time.Second, LeaseTTL: 30 * time.Second, RedisTimeout: time.Second, Fallback: fallback,
	})
}

// newReapingTracker is newTracker in expiredInstances reap: its heartbeats
// reap the instances they watched expire (the default, keep, reaps none).
func newReapingTracker(t *testing.T, rdb redis.UniversalClient, id string, clk *clock, fc fleets.Fleet) *tracker.Tracker {
	t.Helper()
	return newTrackerCfg(t, rdb, clk, tracker.Config{
		InstanceID: id, Fleets: []fleets.Fleet{fc}, Heartbeat: time.Second, InstanceTTL: 5 * time.Second,
		EstablishTimeout: 10 * time.Second, LeaseTTL: 30 * time.Second, RedisTimeout: time.Second,
		Fallback: tracker.FallbackShare, ExpiredInstances: fleets.ExpiredReap,
	})
}

func newTrackerCfg(t *testing.T, rdb redis.UniversalClient, clk *clock, cfg tracker.Config) *tracker.Tracker {
	t.Helper()
	tr, err := tracker.New(cfg, storeOn(rdb), tracker.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// minis are the clients of miniClient: miniredis reports no run_id.
var minis sync.Map

func storeOn(rdb redis.UniversalClient) *store.Store {
	s := store.NewStore(rdb, "wsgate")
	if _, ok := minis.Load(rdb); ok {
		s = s.WithoutRestartDetection()
	}
	return s
}

func miniClient(t *testing.T) (*redis.Client, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	minis.Store(rdb, true)
	t.Cleanup(func() { rdb.Close(); minis.Delete(rdb) })
	return rdb, mr
}

// start is the trackers' first heartbeat, then the new epoch's recovery
// wait passes (an empty Redis may have lost its data: it grants nothing for
// an instance TTL) and they heartbeat again.
//
// The wait passes on both clocks: Redis' (its `until`) and the trackers'
// (one of them confirms it after a TTL of its own clock).
func start(t *testing.T, mr *miniredis.Miniredis, clk *clock, trs ...*tracker.Tracker) {
	t.Helper()
	base := time.Now()
	mr.SetTime(base)
	heartbeat(t, trs...)
	mr.SetTime(base.Add(5 * time.Second))
	clk.Advance(5 * time.Second)
	heartbeat(t, trs...)
}

func heartbeat(t *testing.T, trs ...*tracker.Tracker) {
	t.Helper()
	for _, tr := range trs {
		if err := tr.Heartbeat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// release ends connection id and waits until its release call returned.
func release(t *testing.T, tr *tracker.Tracker, id string) {
	t.Helper()
	if err := tr.Release(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func admit(t *testing.T, tr *tracker.Tracker, fleet string) tracker.Result {
	t.Helper()
	res, err := tr.Admit(context.Background(), fleet)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestRateLimitIsLocalAndRecorded(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 100, "10.0.0.1:80")
	fc.RatePerSecond, fc.Burst = 1, 1
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc)
	start(t, mr, clk, tr)
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("first admission = %+v", r)
	}
	r := admit(t, tr, "chat")
	if r.Admitted || r.Reason != store.ReasonRateLimit || r.RetryAfter != time.Second {
		t.Fatalf("second admission in the same instant = %+v, want rate_limit with Retry-After 1s", r)
	}
	clk.Advance(time.Second)
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("admission after a second = %+v, want admitted", r)
	}
	heartbeat(t, tr) // flushes the buffered rate_limit rejection
	snap, err := tr.Store().Snapshot(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Rejections[store.ReasonRateLimit].M5; got != 1 {
		t.Errorf("fleet rate_limit rejections = %d, want 1", got)
	}
	if len(snap.Instances) != 1 || snap.Instances[0].Rejections[store.ReasonRateLimit].M5 != 1 {
		t.Errorf("rate_limit not attributed to e1: %+v", snap.Instances)
	}
}

func TestUnestablishedAndUnrenewedConnectionsAreReleased(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 10, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	pending := admit(t, tr, "chat")
	live := admit(t, tr, "chat")
	if err := tr.Establish(live.Conn); err != nil {
		t.Fatal(err)
	}
	load := func() int64 {
		t.Helper()
		s, err := tr.Store().Summary(context.Background(), "chat", clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s.Live
	}
	clk.Advance(11 * time.Second) // past EstablishTimeout
	heartbeat(t, tr)
	if got := load(); got != 1 {
		t.Fatalf("after the establish timeout live = %d, want 1 (the established one)", got)
	}
	if err := tr.Renew(pending.Conn); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("renew of an expired connection: %v, want ErrUnknownConn", err)
	}
	for i := 0; i < 3; i++ { // renewed in time: kept
		clk.Advance(20 * time.Second)
		if err := tr.Renew(live.Conn); err != nil {
			t.Fatal(err)
		}
		heartbeat(t, tr)
	}
	if got := load(); got != 1 {
		t.Fatalf("renewed connection dropped: live = %d", got)
	}
	clk.Advance(31 * time.Second) // past LeaseTTL without renewal
	heartbeat(t, tr)
	if got := load(); got != 0 {
		t.Fatalf("after the lease expired live = %d, want 0", got)
	}
}

// TestExpiredButRenewedConnectionIsCountedAgain: a connection released for
// lost renewals that Envoy then reports alive is counted again.
func TestExpiredButRenewedConnectionIsCountedAgain(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 10, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	c := admit(t, tr, "chat")
	if err := tr.Establish(c.Conn); err != nil {
		t.Fatal(err)
	}
	clk.Advance(31 * time.Second) // renewals lost past the lease
	heartbeat(t, tr)
	if err := tr.Renew(c.Conn); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Fatalf("renewal of an expired connection: %v", err)
	}
	if err := tr.Adopt("chat", c.Conn, c.Pod, true); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("end of an expired connection: %v, want ErrUnknownConn (nothing to give back)", err)
	}
	if err := tr.Adopt("chat", c.Conn, c.Pod, false); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr)
	s, err := tr.Store().Summary(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.Live != 1 {
		t.Errorf("Redis counts %d after Envoy reported the connection alive, want 1", s.Live)
	}
	if err := tr.Release(context.Background(), c.Conn); err != nil {
		t.Errorf("the counted-again connection cannot be released: %v", err)
	}
}

func TestReleaseFreesTheSlotAndRejectsUnknownIDs(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	a := admit(t, tr, "chat")
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonCapacity || r.RetryAfter != 5*time.Second {
		t.Fatalf("admission over the cap = %+v, want capacity with the default Retry-After", r)
	}
	release(t, tr, a.Conn)
	if err := tr.Release(context.Background(), a.Conn); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("second release: %v, want ErrUnknownConn", err)
	}
	if err := tr.Release(context.Background(), ""); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("release of an empty id: %v, want ErrUnknownConn", err)
	}
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("admission after release = %+v", r)
	}
	if _, err := tr.Admit(context.Background(), "nope"); !errors.Is(err, tracker.ErrUnknownFleet) {
		t.Errorf("unknown fleet: %v, want ErrUnknownFleet", err)
	}
}

// sumLocal adds up the trackers' own counts per pod.
func sumLocal(t *testing.T, fleet string, trs ...*tracker.Tracker) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, tr := range trs {
		c, err := tr.LocalCounts(fleet)
		if err != nil {
			t.Fatal(err)
		}
		for p, n := range c {
			out[p] += n
		}
	}
	return out
}

// twoTrackers is the smallest fleet of issue 10's reproductions: two
// instances, one pod, cap 2, both heartbeated once.
func twoTrackers(t *testing.T, mode tracker.FallbackMode) (a, b *tracker.Tracker, mr *miniredis.Miniredis, clk *clock) {
	t.Helper()
	rdb, mr := miniClient(t)
	clk = newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80")
	a = newTracker(t, rdb, "a", clk, mode, fc)
	b = newTracker(t, rdb, "b", clk, mode, fc)
	start(t, mr, clk, a, b)
	return a, b, mr, clk
}

func podHolds(t *testing.T, trs ...*tracker.Tracker) int {
	t.Helper()
	return sumLocal(t, "chat", trs...)["10.0.0.1:80"]
}

// A: b's last view shows the pod empty; a fills it through Redis; Redis
// dies before b's next heartbeat. b's fallback must not add to it.
func TestShareFallbackCannotUseAnOlderView(t *testing.T) {
	a, b, mr, _ := twoTrackers(t, tracker.FallbackShare)
	admit(t, a, "chat")
	admit(t, a, "chat")
	mr.SetError("ERR outage")
	for i := 0; i < 4; i++ {
		if r := admit(t, b, "chat"); r.Admitted {
			t.Fatalf("b admitted from its older view: %+v", r)
		}
	}
	if n := podHolds(t, a, b); n != 2 {
		t.Errorf("pod holds %d, want 2", n)
	}
}

// The share fallback reuses exactly the slots its own connections freed
// while Redis could not be told: Redis still counts them for it.
func TestShareFallbackReusesOnlyItsOwnFreedSlots(t *testing.T) {
	a, b, mr, _ := twoTrackers(t, tracker.FallbackShare)
	admit(t, a, "chat")
	held := admit(t, b, "chat")
	mr.SetError("ERR outage")
	release(t, b, held.Conn)
	got := map[string]int{}
	for i := 0; i < 4; i++ {
		for name, tr := range map[string]*tracker.Tracker{"a": a, "b": b} {
			if r := admit(t, tr, "chat"); r.Admitted {
				if !r.Fallback {
					t.Fatalf("%s admitted through Redis during the outage", name)
				}
				got[name]++
			} else if r.Reason != store.ReasonRedisDown {
				t.Fatalf("%s: rejection %+v, want redis_down", name, r)
			}
		}
	}
	if got["a"] != 0 || got["b"] != 1 {
		t.Errorf("fallback admissions %v, want only b's freed slot reused", got)
	}
	if !b.Degraded("chat") {
		t.Error("b does not report the fallback")
	}
	// Back: Redis counts what the instances hold, and rejections are flushed.
	mr.SetError("")
	heartbeat(t, a, b)
	if b.Degraded("chat") {
		t.Error("fallback still on after a successful heartbeat")
	}
	snap, err := a.Store().Snapshot(context.Background(), "chat", storetest.T0)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Load["10.0.0.1:80"] != 2 || podHolds(t, a, b) != 2 {
		t.Errorf("after recovery Redis %v, instances %d; want 2 and 2", snap.Load, podHolds(t, a, b))
	}
	if r := snap.Rejections[store.ReasonRedisDown].M5; r != 7 {
		t.Errorf("redis_down rejections flushed = %d, want 7", r)
	}
}

// B1: one of a's admissions fails (its reply is lost). a refuses that one
// and leaves Redis until its next heartbeat; b admits through Redis.
func TestOneFailedReplyCostsOneAdmission(t *testing.T) {
	a, b, mr, _ := twoTrackers(t, tracker.FallbackShare)
	admit(t, a, "chat")
	mr.SetError("ERR lost reply")
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a admitted without Redis: %+v", r)
	}
	mr.SetError("")
	if r := admit(t, b, "chat"); !r.Admitted || r.Fallback {
		t.Fatalf("b through Redis: %+v", r)
	}
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a admitted before its next heartbeat: %+v", r)
	}
	if n := podHolds(t, a, b); n != 2 {
		t.Errorf("pod holds %d, want 2", n)
	}
	heartbeat(t, a)
	if r := admit(t, a, "chat"); r.Admitted || r.Reason != store.ReasonCapacity {
		t.Errorf("a after its heartbeat: %+v, want a capacity rejection through Redis", r)
	}
}

// D: Redis restarts empty and a heartbeats first (a new epoch). b missed it
// and its next admission reaches the new, incomplete Redis: the epoch
// fences it.
func TestEpochFencesAnInstanceThatMissedARestart(t *testing.T) {
	a, b, mr, _ := twoTrackers(t, tracker.FallbackShare)
	admit(t, a, "chat")
	admit(t, b, "chat")
	mr.FlushAll()
	heartbeat(t, a)
	if r := admit(t, b, "chat"); r.Admitted || r.Reason != store.ReasonRecovering {
		t.Fatalf("b on a new epoch it has not joined: %+v, want recovering (Redis answered)", r)
	}
	if n := podHolds(t, a, b); n != 2 {
		t.Errorf("pod holds %d, want 2", n)
	}
}

// After data loss nothing is granted for one instance TTL, whoever has
// re-published: an instance may exist that nobody remembers (E: two empty
// restarts in a row).
func TestAfterDataLossNothingIsGrantedForALease(t *testing.T) {
	a, b, mr, clk := twoTrackers(t, tracker.FallbackShare)
	admit(t, a, "chat")
	at := time.Now()
	both := func(d time.Duration) { at = at.Add(d); mr.SetTime(at); clk.Advance(d) }
	both(0)
	for restart := 0; restart < 2; restart++ {
		mr.FlushAll()
		heartbeat(t, a) // only a re-publishes: b's 0 is all Redis could learn from b
		both(4 * time.Second)
		heartbeat(t, a)
		if r := admit(t, a, "chat"); r.Admitted {
			t.Fatalf("restart %d: admitted during the recovery wait: %+v", restart, r)
		}
	}
	both(1100 * time.Millisecond) // 5.1s after the second restart
	heartbeat(t, a, b)
	if r := admit(t, a, "chat"); !r.Admitted || r.Fallback {
		t.Fatalf("after the recovery wait: %+v, want admitted through Redis", r)
	}
	if n := podHolds(t, a, b); n != 2 {
		t.Errorf("pod holds %d, want 2", n)
	}
}

// Redis' clock steps forward during a recovery wait: the wait is not over
// until a tracker has seen a TTL pass on its own clock.
func TestRedisClockStepDoesNotEndTheRecoveryWait(t *testing.T) {
	a, b, mr, clk := twoTrackers(t, tracker.FallbackShare)
	admit(t, a, "chat")
	admit(t, a, "chat")
	mr.FlushAll()
	heartbeat(t, b) // b alone re-publishes (nothing); a has not yet
	mr.SetTime(time.Now().Add(time.Hour))
	clk.Advance(time.Second)
	heartbeat(t, b)
	for i := 0; i < 3; i++ {
		if r := admit(t, b, "chat"); r.Admitted {
			t.Fatalf("b admitted after Redis' clock stepped past the wait: %+v", r)
		}
	}
	clk.Advance(4 * time.Second)
	heartbeat(t, a, b) // a re-publishes its 2; b confirms the wait
	if r := admit(t, b, "chat"); r.Admitted || r.Reason != store.ReasonCapacity {
		t.Fatalf("b after the wait: %+v, want a capacity rejection through Redis", r)
	}
}

// F: Redis' clock steps 11 s forward. Leases are judged by it, but a reaper
// must also have watched an instance stand still for a lease on its own
// clock: nobody alive is reaped.
func TestAClockStepReapsNobody(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80")
	a, b := newReapingTracker(t, rdb, "a", clk, fc), newReapingTracker(t, rdb, "b", clk, fc)
	start(t, mr, clk, a, b)
	admit(t, b, "chat")
	admit(t, b, "chat")
	mr.SetTime(time.Now().Add(11 * time.Second))
	heartbeat(t, a)
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a took b's slot after Redis' clock stepped: %+v", r)
	}
	// b really dies: a reaps it once its own clock saw b stand still a lease.
	for i := 0; i < 6; i++ {
		clk.Advance(time.Second)
		mr.SetTime(time.Now().Add(time.Duration(12+i) * time.Second))
		heartbeat(t, a)
	}
	if r := admit(t, a, "chat"); !r.Admitted {
		t.Fatalf("b's slots not given back after it stood still for a lease: %+v", r)
	}
}

// G, the safe setting: with ExpiredInstances keep an instance that stopped
// heartbeating keeps its slots.
func TestExpiredKeepNeverGivesSlotsAway(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80")
	mk := func(id string) *tracker.Tracker {
		return newTrackerCfg(t, rdb, clk, tracker.Config{
			InstanceID: id, Fleets: []fleets.Fleet{fc}, Heartbeat: time.Second, InstanceTTL: 5 * time.Second,
			RedisTimeout: time.Second, ExpiredInstances: fleets.ExpiredKeep,
		})
	}
	a, b := mk("a"), mk("b")
	start(t, mr, clk, a, b)
	admit(t, b, "chat")
	admit(t, b, "chat")
	for i := 0; i < 8; i++ { // b is cut off for well over its lease
		clk.Advance(time.Second)
		mr.SetTime(time.Now().Add(time.Duration(i+1) * time.Second))
		heartbeat(t, a)
	}
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a took the slots of a cut-off instance with keep: %+v", r)
	}
}

// An instance cut off from Redis longer than its lease may have been
// reaped by one that is not: it stops reusing its freed slots.
func TestFallbackEndsWithTheLease(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 4, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	var held []string
	for i := 0; i < 2; i++ {
		held = append(held, admit(t, tr, "chat").Conn)
	}
	mr.SetError("ERR partition")
	for _, c := range held {
		release(t, tr, c)
	}
	clk.Advance(4 * time.Second) // within the 5s lease
	if r := admit(t, tr, "chat"); !r.Admitted {
		t.Fatalf("within its lease: %+v", r)
	}
	clk.Advance(time.Second) // the lease has run out
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonRedisDown {
		t.Fatalf("after its lease: %+v, want redis_down", r)
	}
}

func TestFallbackClosedAndOpen(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	closed := newTracker(t, rdb, "closed", clk, tracker.FallbackClosed, fleetCfg("chat", 2, "10.0.0.1:80"))
	open := newTracker(t, rdb, "open", clk, tracker.FallbackOpen, fleetCfg("chat", 2, "10.0.0.1:80"))
	start(t, mr, clk, closed, open)
	held := admit(t, closed, "chat")
	mr.SetError("ERR injected outage")
	release(t, closed, held.Conn)
	if r := admit(t, closed, "chat"); r.Admitted || r.Reason != store.ReasonRedisDown {
		t.Errorf("closed fallback admitted: %+v", r)
	}
	// open: up to the cap as if the other instance admitted nothing.
	for i := 0; i < 2; i++ {
		if r := admit(t, open, "chat"); !r.Admitted || !r.Fallback {
			t.Errorf("open fallback admission %d = %+v", i, r)
		}
	}
	if r := admit(t, open, "chat"); r.Admitted {
		t.Errorf("open fallback went past the cap on its own counts: %+v", r)
	}
}

func TestFallbackNeedsOneHeartbeat(t *testing.T) {
	rdb, mr := miniClient(t)
	mr.SetError("ERR down from the start")
	tr := newTracker(t, rdb, "e1", newClock(), tracker.FallbackShare, fleetCfg("chat", 2, "10.0.0.1:80"))
	if err := tr.Heartbeat(context.Background()); err == nil {
		t.Fatal("heartbeat succeeded against a failing Redis")
	}
	// Without an entitlement nothing can be admitted safely.
	if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonRedisDown {
		t.Errorf("admission before any heartbeat = %+v, want redis_down", r)
	}
	if err := tr.Ready(); err == nil {
		t.Error("Ready() before any heartbeat reached Redis")
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	base := func() tracker.Config {
		return tracker.Config{InstanceID: "e1", Fleets: []fleets.Fleet{{Name: "chat"}}}
	}
	cases := map[string]struct {
		mut  func(*tracker.Config)
		want string
	}{
		"no fleets":     {func(c *tracker.Config) { c.Fleets = nil }, "fleets"},
		"bad instance":  {func(c *tracker.Config) { c.InstanceID = "a b" }, "instance id"},
		"bad cap":       {func(c *tracker.Config) { c.Fleets[0].MaxConnectionsPerPod = -1 }, "maxConnectionsPerPod"},
		"bad policy":    {func(c *tracker.Config) { c.Fleets[0].Policy = "random" }, "policy"},
		"bad rate":      {func(c *tracker.Config) { c.Fleets[0].RatePerSecond = -2 }, "ratePerSecond"},
		"bad pod":       {func(c *tracker.Config) { c.Fleets[0].Pods = []string{"pod-a:80"} }, "not an IP"},
		"dup pod":       {func(c *tracker.Config) { c.Fleets[0].Pods = []string{"10.0.0.1:80", "10.0.0.1:80"} }, "twice"},
		"dup fleet":     {func(c *tracker.Config) { c.Fleets = append(c.Fleets, c.Fleets[0]) }, "defined twice"},
		"bad fallback":  {func(c *tracker.Config) { c.Fallback = "maybe" }, "fallback"},
		"ttl too short": {func(c *tracker.Config) { c.Heartbeat, c.InstanceTTL = time.Second, time.Second }, "instanceTTL"},
		"svc and pods":  {func(c *tracker.Config) { c.Fleets[0].Service, c.Fleets[0].Pods = "chat", []string{"10.0.0.1:80"} }, "choose one"},
		"wait replicas": {func(c *tracker.Config) { c.WaitReplicas = -1 }, "waitReplicas -1"},
		"wait timeout": {func(c *tracker.Config) { c.WaitReplicas, c.WaitTimeout = 1, 100*time.Millisecond },
			"waitTimeout 100ms: must be shorter than redisTimeout 100ms"},
		"wait 0ms":  {func(c *tracker.Config) { c.WaitReplicas, c.WaitTimeout = 1, 500*time.Microsecond }, "waitTimeout 500µs: must be at least 1ms"},
		"bad check": {func(c *tracker.Config) { c.ReplicationCheck = "maybe" }, "replicationCheck \"maybe\": want warn or refuse"},
	}
	for name, c := range cases {
		cfg := base()
		c.mut(&cfg)
		_, err := tracker.New(cfg, nil)
		if err == nil || !contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", name, err, c.want)
		}
	}
}

func TestParseFleets(t *testing.T) {
	fcs, err := fleets.Parse([]byte("fleets:\n- name: chat\n  retryAfter: 2s\n  pods: ['10.0.0.1:80']\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := fcs[0]
	if f.MaxConnectionsPerPod != 2 || f.RatePerSecond != 1 || f.Burst != 1 || f.Policy != fleets.PolicyPack || time.Duration(f.RetryAfter) != 2*time.Second {
		t.Errorf("defaults not applied: %+v", f)
	}
	for doc, want := range map[string]string{
		"fleets:\n- name: chat\n  maxConectionsPerPod: 3\n": "maxConectionsPerPod",
		"fleets:\n- name: chat\n  retryAfter: 5\n":          "duration",
		"fleets: []\n":          "no fleets",
		"fleets:\n- name: ''\n": "fleet name",
	} {
		if _, err := fleets.Parse([]byte(doc)); err == nil || !contains(err.Error(), want) {
			t.Errorf("ParseFleets(%q) = %v, want an error naming %q", doc, err, want)
		}
	}
}

// TestFleetsFileErrorsNameTheLine: an error of the fleets file names the
// file and the line, suggests the field an unknown one misspells, and
// reads as YAML, not as the JSON it used to be converted to.
func TestFleetsFileErrorsNameTheLine(t *testing.T) {
	head := "# the fleets\nfleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n- name: demo\n  ratePerSecond: 5\n"
	for doc, want := range map[string]string{
		head + "  maxConectionsPerPod: 3\n":    `fleets.yaml:7: fleet demo: unknown field "maxConectionsPerPod" (did you mean "maxConnectionsPerPod"?)`,
		head + "  maxConnectionsPerPod: ten\n": `fleets.yaml:7: fleet demo: maxConnectionsPerPod "ten": want a whole number`,
		head + "  maxConnectionsPerPod: -1\n":  `fleets.yaml:7: fleet demo: maxConnectionsPerPod -1: must be at least 1`,
		head + "  maxConnectionsPerPod: 0\n":   `fleets.yaml:7: fleet demo: maxConnectionsPerPod 0: must be at least 1 (leave it out for the default 2)`,
		head + "  retryAfter: 5\n":             `fleets.yaml:7: fleet demo: retryAfter 5: want a duration such as "5s"`,
		head + "  policy: pck\n":               `fleets.yaml:7: fleet demo: policy "pck": want pack or spread`,
		head + "- name: chat\n":                `fleets.yaml:7: fleet chat: defined twice (first at line 3)`,
		head + "flets: []\n":                   `fleets.yaml:7: unknown field "flets" (did you mean "fleets"?)`,
		head + "\tburst: 3\n":                  `fleets.yaml:6: not valid YAML: found a tab character that violates indentation`,
		"fleet:\n- name: chat\n":               `fleets.yaml:1: unknown field "fleet" (did you mean "fleets"?)`,
	} {
		_, err := fleets.ParseFile("fleets.yaml", []byte(doc))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ParseFleetsFile(%q) = %v, want an error starting %q", doc, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "JSON") || strings.Contains(err.Error(), "json")) {
			t.Errorf("ParseFleetsFile(%q) = %v, speaks of JSON", doc, err)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestRestartedTrackerKeepsItsConnectionsCounted: a tracker that restarts
// while its Envoy keeps its connections must not publish an empty truth.
func TestRestartedTrackerKeepsItsConnectionsCounted(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80", "10.0.0.2:80")
	before := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc)
	start(t, mr, clk, before)
	var held []tracker.Result
	for i := 0; i < 3; i++ {
		held = append(held, admit(t, before, "chat"))
	}
	heartbeat(t, before)

	after := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc) // same instance, new process
	heartbeat(t, after)
	live := func() int64 {
		s, err := after.Store().Summary(context.Background(), "chat", clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s.Live
	}
	if got := live(); got != 3 {
		t.Fatalf("after the restart Redis counts %d, want the 3 Envoy still holds", got)
	}
	if r := admit(t, after, "chat"); !r.Admitted {
		t.Fatalf("the one free slot was not admitted: %+v", r)
	} else if r2 := admit(t, after, "chat"); r2.Admitted {
		t.Fatalf("admitted past the cap after a restart: %+v", r2)
	}
	// Envoy's access log names two of the old connections: one renews, one ends.
	if err := after.Adopt("chat", held[0].Conn, held[0].Pod, false); err != nil {
		t.Fatal(err)
	}
	if err := after.Adopt("chat", held[1].Conn, held[1].Pod, true); err != nil {
		t.Fatal(err)
	}
	if err := after.Adopt("chat", held[1].Conn, held[1].Pod, true); !errors.Is(err, tracker.ErrUnknownConn) {
		t.Errorf("a second end of the same connection: %v, want ErrUnknownConn", err)
	}
	if err := after.Adopt("chat", "x", "not-an-address", false); err == nil {
		t.Error("adopted a connection to a malformed pod address")
	}
	heartbeat(t, after)
	if got := live(); got != 3 {
		t.Fatalf("after one end and one renewal Redis counts %d, want 3 (2 old + 1 new)", got)
	}
	// One lease later the never-named inherited connection is gone; the
	// adopted one, renewed, stays.
	clk.Advance(25 * time.Second)
	if err := after.Renew(held[0].Conn); err != nil {
		t.Fatal(err)
	}
	clk.Advance(6 * time.Second)
	heartbeat(t, after)
	if err := after.Renew(held[0].Conn); err != nil {
		t.Fatalf("adopted connection lost: %v", err)
	}
	if got := live(); got != 1 {
		t.Errorf("after the inherited lease Redis counts %d, want 1 (the adopted one; the new one expired unestablished)", got)
	}
}

// An instance that learns from Redis that its lease ended (it may have been
// reaped) reuses nothing it frees afterwards until its next heartbeat: those
// slots may belong to someone else now, even while its own clock says that
// its lease still runs (here b's clock stands still).
func TestAReapedInstanceReusesNothing(t *testing.T) {
	rdb, mr := miniClient(t)
	clk, still := newClock(), newClock()
	fc := fleetCfg("chat", 2, "10.0.0.1:80")
	a := newReapingTracker(t, rdb, "a", clk, fc)
	b := newReapingTracker(t, rdb, "b", still, fc)
	start(t, mr, clk, a, b)
	held := admit(t, b, "chat")
	admit(t, b, "chat")
	// a watches b stand still for a lease, Redis' clock passes b's lease:
	// a reaps b.
	for i := 0; i < 7; i++ {
		clk.Advance(time.Second)
		mr.SetTime(time.Now().Add(time.Duration(6+i) * time.Second))
		heartbeat(t, a)
	}
	if r := admit(t, a, "chat"); !r.Admitted {
		t.Fatalf("a could not take the reaped instance's slots: %+v", r)
	}
	if r := admit(t, b, "chat"); r.Admitted { // refused: lease
		t.Fatalf("b admitted after it was reaped: %+v", r)
	}
	release(t, b, held.Conn)
	if r := admit(t, b, "chat"); r.Admitted {
		t.Fatalf("b reused a slot after it was reaped: %+v", r)
	}
}

// TestExplicitZeroIsAnError: a zero written in the fleets file names its
// field; left out, the field keeps its default.
func TestExplicitZeroIsAnError(t *testing.T) {
	for _, field := range []string{"maxConnectionsPerPod: 0", "ratePerSecond: 0", "ratePerSecond: 0.0", "burst: 0", "retryAfter: 0s"} {
		doc := "fleets:\n- name: chat\n  pods: ['10.0.0.1:80']\n  " + field + "\n"
		name := field[:indexByte(field, ':')]
		_, err := fleets.Parse([]byte(doc))
		if err == nil || !contains(err.Error(), name) || !contains(err.Error(), "default") {
			t.Errorf("%s: %v, want an error naming %s and its default", field, err, name)
		}
	}
	if _, err := fleets.Parse([]byte("fleets:\n- name: chat\n  maxConnectionsPerPod: 3\n")); err != nil {
		t.Errorf("non-zero cap: %v", err)
	}
}

func indexByte(s string, b byte) int {
	for i := range len(s) {
		if s[i] == b {
			return i
		}
	}
	return -1
}

// Past its local lease a tracker sends no admission to Redis, although
// Redis, which no longer reads the instance's lease on admission, would
// grant it (PROTOCOL.md, "One read for the fence"): a reaper may take
// what it holds from then on. Its next heartbeat brings it back.
func TestNoRedisAdmissionPastTheLocalLease(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 4, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	admit(t, tr, "chat")
	clk.Advance(5 * time.Second) // the lease has run out by its own clock, not by Redis'
	if r := admit(t, tr, "chat"); r.Admitted {
		t.Fatalf("past its local lease: %+v; want refused", r)
	}
	if n := storetest.Counted(t, storeOn(rdb), "chat"); n != 1 {
		t.Fatalf("Redis counts %d; want 1: nothing asked of it past the lease", n)
	}
	heartbeat(t, tr)
	if r := admit(t, tr, "chat"); !r.Admitted || r.Fallback {
		t.Fatalf("after its next heartbeat: %+v; want admitted through Redis", r)
	}
}

// --release-linger (Config.ReleaseLinger) is how long a release waits for
// an admit call to carry it before it goes alone: the freed slot stays
// counted in Redis at least that long.
func TestReleaseLingerIsConfigured(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	const linger = 400 * time.Millisecond
	tr := newTrackerCfg(t, rdb, clk, tracker.Config{
		InstanceID: "e1", Fleets: []fleets.Fleet{fleetCfg("chat", 4, "10.0.0.1:80")}, Heartbeat: time.Second, InstanceTTL: 5 * time.Second,
		EstablishTimeout: 10 * time.Second, LeaseTTL: 30 * time.Second, RedisTimeout: time.Second, Fallback: tracker.FallbackShare,
		ReleaseLinger: linger,
	})
	start(t, mr, clk, tr)
	c := admit(t, tr, "chat")
	began := time.Now()
	if err := tr.Release(context.Background(), c.Conn); err != nil {
		t.Fatal(err)
	}
	s := storeOn(rdb)
	for storetest.Counted(t, s, "chat") != 0 {
		if time.Since(began) > time.Minute {
			t.Fatal("the release never reached Redis")
		}
		time.Sleep(time.Millisecond) // polled: the release has no event to await
	}
	if took := time.Since(began); took < linger {
		t.Fatalf("the release reached Redis after %v; want at least the linger %v", took, linger)
	}
}

func TestReleaseLingerIsValidated(t *testing.T) {
	base := tracker.Config{InstanceID: "e1", Fleets: []fleets.Fleet{fleetCfg("chat", 4, "10.0.0.1:80")}, Heartbeat: time.Second}
	for _, c := range []struct {
		linger time.Duration
		want   string
	}{
		{-time.Millisecond, "releaseLinger -1ms: must be positive"},
		{time.Second, "releaseLinger 1s: must be shorter than heartbeat 1s"},
	} {
		cfg := base
		cfg.ReleaseLinger = c.linger
		if err := cfg.WithDefaults().Validate(); err == nil || err.Error() != c.want {
			t.Errorf("linger %v: %v; want %q", c.linger, err, c.want)
		}
	}
	if got := base.WithDefaults().ReleaseLinger; got != tracker.DefaultReleaseLinger {
		t.Errorf("default linger %v; want %v", got, tracker.DefaultReleaseLinger)
	}
}
