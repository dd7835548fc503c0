package tracker_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/tracker"
)

// Regression tests of the layout guard's gaps an independent review found
// (PROTOCOL.md, "Shards"): each breached the cap, or hid a guard that
// refused Redis, before the fix it names.

// layoutClock moves Redis' and the trackers' clocks together.
type layoutClock struct {
	mr   *miniredis.Miniredis
	clk  *clock
	base time.Time
}

func newLayoutClock(mr *miniredis.Miniredis) *layoutClock {
	c := &layoutClock{mr: mr, clk: newClock(), base: time.Now()}
	mr.SetTime(c.base)
	return c
}

func (c *layoutClock) advance(d time.Duration) {
	c.base = c.base.Add(d)
	c.mr.SetTime(c.base)
	c.clk.Advance(d)
}

// pastRecovery heartbeats trs, lets a recovery wait (an instance TTL) pass
// on both clocks and heartbeats them again; errors are the guard's to
// cause, so they are not the test's.
func (c *layoutClock) pastRecovery(trs ...*tracker.Tracker) {
	for _, tr := range trs {
		_ = tr.Heartbeat(context.Background())
	}
	c.advance(6 * time.Second)
	for range 3 {
		for _, tr := range trs {
			_ = tr.Heartbeat(context.Background())
		}
	}
}

// fillFleet admits into fleet until tr refuses; what it placed per pod.
func fillFleet(t *testing.T, tr *tracker.Tracker, fleet string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range 100 {
		res := admit(t, tr, fleet)
		if !res.Admitted {
			break
		}
		out[res.Pod]++
	}
	return out
}

// overCap lists the pods a and b together hold more than limit of.
func overCap(a, b map[string]int, limit int) []string {
	var bad []string
	for p, n := range a {
		if n+b[p] > limit {
			bad = append(bad, p)
		}
	}
	return bad
}

// A fleet last run by a version without the layout has state in group 0
// and no layout: a 3-shard tracker must find the layout 1 (every pod in
// group 0), not record its own 3 and admit in groups 1-2 on pods group 0
// still counts (review finding 2).
func TestShardsUpgradeFromBeforeTheLayoutRecordsOne(t *testing.T) {
	rdb, mr := miniClient(t)
	c := newLayoutClock(mr)
	pods := podAddrs(12)
	old := newTracker(t, rdb, "a", c.clk, tracker.FallbackShare, shardedCfg("chat", 1, 1, pods...))
	c.pastRecovery(old)
	held := fillFleet(t, old, "chat")
	if len(held) != len(pods) {
		t.Fatalf("the unsharded tracker filled %d pods of %d", len(held), len(pods))
	}
	mr.Del(store.FleetKeys("wsgate", "chat").Layout()) // as a version before the layout left it
	mr.Del(store.FleetKeys("wsgate", "chat#1").Layout())
	sharded := newTracker(t, rdb, "b", c.clk, tracker.FallbackShare, shardedCfg("chat", 3, 1, pods...))
	c.pastRecovery(sharded)
	if rec, mismatch, _ := sharded.LayoutMismatch("chat"); !mismatch || rec != 1 {
		t.Errorf("the 3-shard tracker found layout %d (mismatch %v), want 1", rec, mismatch)
	}
	if bad := overCap(held, fillFleet(t, sharded, "chat"), 1); len(bad) > 0 {
		t.Errorf("pods over their cap of 1: %v", bad)
	}
}

// Group 0's node loses its data while two configurations run: the layout
// comes back from its mirror in group 1's tag, and the tracker whose
// shards differ stays out (review finding 3).
func TestShardsLayoutSurvivesGroupZerosDataLoss(t *testing.T) {
	rdb, mr := miniClient(t)
	c := newLayoutClock(mr)
	pods := podAddrs(12)
	a := newTracker(t, rdb, "a", c.clk, tracker.FallbackShare, shardedCfg("chat", 3, 1, pods...))
	c.pastRecovery(a)
	held := fillFleet(t, a, "chat")
	for _, k := range mr.Keys() {
		if strings.HasPrefix(k, store.FleetKeys("wsgate", "chat").Prefix()) { // group 0's slot only
			mr.Del(k)
		}
	}
	b := newTracker(t, rdb, "b", c.clk, tracker.FallbackShare, shardedCfg("chat", 1, 1, pods...))
	_ = b.Heartbeat(context.Background()) // b first: it would record its 1
	c.pastRecovery(b, a)
	if rec, mismatch, _ := b.LayoutMismatch("chat"); !mismatch || rec != 3 {
		t.Errorf("the unsharded tracker found layout %d (mismatch %v), want 3", rec, mismatch)
	}
	if bad := overCap(held, fillFleet(t, b, "chat"), 1); len(bad) > 0 {
		t.Errorf("pods over their cap of 1: %v", bad)
	}
}

// A layout check that cannot succeed (here the mirror's key has another
// type, as a NOPERM or a dead group-0 primary would fail it) keeps the
// fleet out of Redis, and says so: an error log at a bounded rate,
// wsgate_tracker_layout_unknown, /status and /readyz (review finding 6).
func TestShardsLayoutUnknownIsVisible(t *testing.T) {
	rdb, mr := miniClient(t)
	c := newLayoutClock(mr)
	if err := mr.Set(store.FleetKeys("wsgate", "chat#1").Layout(), "not a hash"); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Fleets: []fleets.Fleet{fleetCfg("chat", 2, podAddrs(2)...)},
		Heartbeat: time.Second, InstanceTTL: 5 * time.Second, RedisTimeout: time.Second, Fallback: tracker.FallbackShare},
		storeOn(rdb), tracker.WithClock(c.clk.Now), tracker.WithLogger(slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	c.pastRecovery(tr)
	if res := admit(t, tr, "chat"); res.Admitted {
		t.Errorf("admitted with the layout unknown: %+v", res)
	}
	if got := testutil.ToFloat64(tr.Metrics().LayoutUnknown.WithLabelValues("chat")); got != 1 {
		t.Errorf("wsgate_tracker_layout_unknown = %v, want 1", got)
	}
	if got := testutil.ToFloat64(tr.Metrics().Degraded.WithLabelValues("chat")); got != 1 {
		t.Errorf("wsgate_tracker_fallback_active = %v, want 1", got)
	}
	st := tr.Status().Fleets[0]
	if !st.LayoutUnknown || !strings.Contains(st.LayoutError, "WRONGTYPE") {
		t.Errorf("status: %+v; want layoutUnknown and the error", st)
	}
	if err := tr.Ready(); err == nil || !strings.Contains(err.Error(), "layout") {
		t.Errorf("Ready: %v; want the layout named", err)
	}
	mu.Lock()
	n := strings.Count(logs.String(), "level=ERROR msg=\"cannot read the fleet's layout")
	mu.Unlock()
	if n != 1 {
		t.Errorf("%d error lines over 4 failed checks, want 1 (rate-limited):\n%s", n, logs.String())
	}

	mr.Del(store.FleetKeys("wsgate", "chat#1").Layout())
	_ = tr.Heartbeat(context.Background())
	if got := testutil.ToFloat64(tr.Metrics().LayoutUnknown.WithLabelValues("chat")); got != 0 {
		t.Errorf("once a check succeeded, wsgate_tracker_layout_unknown = %v", got)
	}
	if st := tr.Status().Fleets[0]; st.LayoutUnknown || st.LayoutError != "" {
		t.Errorf("once a check succeeded, status: %+v", st)
	}
	if res := admit(t, tr, "chat"); !res.Admitted || res.Fallback {
		t.Errorf("once a check succeeded: %+v", res)
	}
}
