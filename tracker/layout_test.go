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

// podOutsideGroupZero is a pod of pods that GroupOf puts in another group
// than 0 under n shards.
func podOutsideGroupZero(t *testing.T, pods []string, n int) string {
	t.Helper()
	for _, p := range pods {
		if fleets.GroupOf(p, n) != 0 {
			return p
		}
	}
	t.Fatalf("every pod of %v is in group 0 of %d", pods, n)
	return ""
}

// A tracker restarted with shards 3 while Redis records 1, its Envoy
// still carrying a connection on a pod GroupOf puts in group 1 or 2: the
// connection is adopted into group 0, where the previous run counted it
// (inherited), and stays counted there, so a tracker of the recorded
// layout cannot place a second one on the pod (review finding 4). Late:
// Envoy reports it only after the inherited slots' lease (30s): under the
// mismatch they do not expire meanwhile.
func TestShardsAdoptionAfterARestartWithOtherShards(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(map[bool]string{false: "at_once", true: "late"}[late], func(t *testing.T) {
			rdb, mr := miniClient(t)
			c := newLayoutClock(mr)
			p := podOutsideGroupZero(t, podAddrs(12), 3)
			before := newTracker(t, rdb, "e1", c.clk, tracker.FallbackShare, shardedCfg("chat", 1, 1, p))
			other := newTracker(t, rdb, "c", c.clk, tracker.FallbackShare, shardedCfg("chat", 1, 1, p))
			c.pastRecovery(before, other)
			res := admit(t, before, "chat")
			if !res.Admitted {
				t.Fatalf("%+v", res)
			}
			if err := before.Establish(res.Conn); err != nil {
				t.Fatal(err)
			}
			heartbeat(t, before)
			after := newTracker(t, rdb, "e1", c.clk, tracker.FallbackShare, shardedCfg("chat", 3, 1, p))
			_ = after.Heartbeat(context.Background())
			step := func() {
				c.advance(5 * time.Second)
				_ = after.Heartbeat(context.Background())
				heartbeat(t, other)
			}
			if late {
				for range 8 {
					step()
				}
				if r := admit(t, other, "chat"); r.Admitted {
					t.Fatalf("before Envoy reported it, admitted %+v on %s, which holds its cap of 1 already", r, p)
				}
			}
			if err := after.Adopt("chat", res.Conn, p, false); err != nil {
				t.Fatalf("adopt: %v", err)
			}
			// past the connection's lease and the inherited slots' (30s):
			// Envoy keeps renewing the connection
			for range 8 {
				if err := after.Renew(res.Conn); err != nil {
					t.Fatalf("renew: %v", err)
				}
				step()
			}
			if r := admit(t, other, "chat"); r.Admitted {
				t.Errorf("the recorded layout's tracker admitted %+v on %s, which holds its cap of 1 already", r, p)
			}
		})
	}
}

// A registry written in group 0 only (as discovery did before it wrote
// each pod into its group) while the trackers run 3 shards: a restarted
// tracker adopts its connection into group 0, which counted it, not into
// the group GroupOf names, where the pod is in no registry (review
// finding 1).
func TestShardsAdoptionFindsTheGroupThatCountsThePod(t *testing.T) {
	rdb, mr := miniClient(t)
	c := newLayoutClock(mr)
	p := podOutsideGroupZero(t, podAddrs(12), 3)
	fc := shardedCfg("chat", 3, 1) // no static pods: discovery
	if err := storeOn(rdb).SetPods(context.Background(), "chat", []fleets.Pod{{Addr: p, Ready: true}}); err != nil {
		t.Fatal(err)
	}
	before := newTracker(t, rdb, "e1", c.clk, tracker.FallbackShare, fc)
	other := newTracker(t, rdb, "c", c.clk, tracker.FallbackShare, fc)
	c.pastRecovery(before, other)
	res := admit(t, before, "chat")
	if !res.Admitted || res.Pod != p {
		t.Fatalf("%+v", res)
	}
	if err := before.Establish(res.Conn); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, before)
	after := newTracker(t, rdb, "e1", c.clk, tracker.FallbackShare, fc)
	heartbeat(t, after)
	if err := after.Adopt("chat", res.Conn, p, false); err != nil {
		t.Fatalf("adopt after the restart: %v", err)
	}
	for range 8 {
		c.advance(5 * time.Second)
		if err := after.Adopt("chat", res.Conn, p, false); err != nil { // Envoy's renewals
			t.Fatalf("adopt: %v", err)
		}
		heartbeat(t, after, other)
	}
	if r := admit(t, other, "chat"); r.Admitted {
		t.Errorf("admitted %+v on %s, which holds its cap of 1 already", r, p)
	}
}

// Under a layout the tracker does not run (here frozen by forget-layout)
// its fallback is closed, whatever --fallback says: a share fallback would
// admit into ent - held, slots of the group this tracker's shards name,
// which the recorded layout may count elsewhere (review finding 5). Its
// decisions are why="layout", and its fallback is shown active.
func TestShardsFallbackIsClosedUnderAnotherLayout(t *testing.T) {
	rdb, mr := miniClient(t)
	c := newLayoutClock(mr)
	pods := podAddrs(1)
	tr := newTracker(t, rdb, "e1", c.clk, tracker.FallbackShare, fleetCfg("chat", 4, pods...))
	c.pastRecovery(tr)
	var conns []string
	for range 2 {
		res := admit(t, tr, "chat")
		if !res.Admitted || res.Fallback {
			t.Fatalf("%+v", res)
		}
		conns = append(conns, res.Conn)
	}
	if err := tr.Store().SetLayout(context.Background(), "chat", store.LayoutFrozen); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr) // publishes 2: ent 2
	if _, mismatch, _ := tr.LayoutMismatch("chat"); !mismatch {
		t.Fatal("a frozen layout is no mismatch")
	}
	// the release cannot reach Redis: held 1, ent 2, a slot share would
	// take back
	if err := tr.Release(context.Background(), conns[0]); err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(tr.Metrics().Fallbacks.WithLabelValues("chat", "layout"))
	if res := admit(t, tr, "chat"); res.Admitted {
		t.Errorf("admitted under a frozen layout: %+v", res)
	}
	if got := testutil.ToFloat64(tr.Metrics().Fallbacks.WithLabelValues("chat", "layout")) - before; got != 1 {
		t.Errorf("fallback decisions why=layout: +%v, want +1", got)
	}
	if got := testutil.ToFloat64(tr.Metrics().Degraded.WithLabelValues("chat")); got != 1 {
		t.Errorf("wsgate_tracker_fallback_active = %v, want 1", got)
	}
	if err := tr.Ready(); err == nil {
		t.Error("ready under a frozen layout")
	}
}
