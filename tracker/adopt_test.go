package tracker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/tracker"
)

// onBackends runs test on miniredis and on a real redis-server
// (storetest.Backends); start is the trackers' start on that backend (the
// first heartbeat, then the new epoch's recovery wait on both clocks).
func onBackends(t *testing.T, test func(t *testing.T, rdb *redis.Client, start func(clk *clock, trs ...*tracker.Tracker))) {
	storetest.Backends(t, func(t *testing.T, _ *store.Store, be storetest.Backend) {
		rdb := be.Client
		if be.Mini != nil {
			minis.Store(rdb, true) // storeOn: no restart detection on miniredis
			t.Cleanup(func() { minis.Delete(rdb) })
		}
		test(t, rdb, func(clk *clock, trs ...*tracker.Tracker) {
			t.Helper()
			if be.Mini != nil {
				start(t, be.Mini, clk, trs...)
				return
			}
			startReal(t, clk, trs...)
		})
	})
}

// counted is what Redis counts on pod: for instance inst (its inst:<id>
// field) and for all instances (the pod's score in avail or load).
func counted(t *testing.T, rdb *redis.Client, tr *tracker.Tracker, inst, pod string) (mine, all int64) {
	t.Helper()
	ctx := context.Background()
	k := tr.Store().Keys("chat")
	mine, err := rdb.HGet(ctx, k.Inst(inst), pod).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	for _, key := range []string{k.Avail(), k.Load()} {
		s, err := rdb.ZScore(ctx, key, pod).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		all += int64(s)
	}
	return mine, all
}

// accessLogNames does what the access-log receiver does with a periodic
// entry naming connection c: renew it, or take it over when the tracker
// does not hold it.
func accessLogNames(tr *tracker.Tracker, c tracker.Result) error {
	err := tr.Renew(c.Conn)
	if errors.Is(err, tracker.ErrUnknownConn) {
		return tr.Adopt("chat", c.Conn, c.Pod, false)
	}
	return err
}

// TestRestartCountsEveryConnectionEnvoyStillCarries (issue 26, item 4): a
// restarted tracker whose Envoy carries more of its previous run's
// connections than Redis still counts for it (here the previous run let
// one go when its renewals were lost; a reap, a forget-instance or a Redis
// that lost its data do the same) publishes every one the access log
// names, truthfully even above the cap, and the pod then takes nothing
// more, through any tracker, until it is under the cap again.
func TestRestartCountsEveryConnectionEnvoyStillCarries(t *testing.T) {
	onBackends(t, func(t *testing.T, rdb *redis.Client, start func(*clock, ...*tracker.Tracker)) {
		const pod = "10.0.0.1:80"
		clk := newClock()
		fc := fleetCfg("chat", 2, pod)
		a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
		b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
		start(clk, a, b)
		x, y := established(t, a), established(t, a)
		// Envoy keeps both; x's renewals are lost, so a lets it go and
		// publishes 1. Then a is killed.
		clk.Advance(20 * time.Second)
		if err := a.Renew(y.Conn); err != nil {
			t.Fatal(err)
		}
		clk.Advance(11 * time.Second)
		heartbeat(t, a, b)
		if mine, _ := counted(t, rdb, a, "a", pod); mine != 1 {
			t.Fatalf("before the restart Redis counts %d for a, want 1 (x let go)", mine)
		}

		// The same instance, a new process: Redis holds 1 for it.
		a2 := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
		heartbeat(t, a2, b)
		// b takes the slot Redis shows free: the backend now carries 3.
		z := admit(t, b, "chat")
		if !z.Admitted {
			t.Fatalf("b: %+v", z)
		}
		// Envoy's access log names both of the previous run's connections:
		// one takes the inherited slot, the other is beyond what Redis
		// held for a, and is counted all the same.
		for _, c := range []tracker.Result{x, y} {
			if err := accessLogNames(a2, c); err != nil {
				t.Fatalf("access log names %s: %v", c.Conn, err)
			}
		}
		heartbeat(t, a2)
		if mine, all := counted(t, rdb, a2, "a", pod); mine != 2 || all != 3 {
			t.Fatalf("after the adoption Redis counts %d for a and %d on the pod, want 2 and 3 (what the backend carries, above the cap of 2)", mine, all)
		}
		for _, tr := range []*tracker.Tracker{b, a2} {
			if r := admit(t, tr, "chat"); r.Admitted || r.Reason != store.ReasonCapacity {
				t.Fatalf("%s admitted onto a pod carrying 3 with a cap of 2: %+v", tr.Config().InstanceID, r)
			}
		}
		// Adopted connections are a2's own: they renew, and their ends
		// reach Redis. Once the pod is under the cap it admits again.
		if err := accessLogNames(a2, x); err != nil {
			t.Fatal(err)
		}
		release(t, b, z.Conn)
		release(t, a2, x.Conn)
		if mine, all := counted(t, rdb, a2, "a", pod); mine != 1 || all != 1 {
			t.Fatalf("after two ends Redis counts %d for a and %d on the pod, want 1 and 1", mine, all)
		}
		if r := admit(t, b, "chat"); !r.Admitted {
			t.Fatalf("b refused on a pod under its cap: %+v", r)
		}
		if r := admit(t, b, "chat"); r.Admitted {
			t.Fatalf("b admitted past the cap: %+v", r)
		}
	})
}

// TestAdoptTrustsOnlyThisInstancesIdsOnTheFleetsPods: what the access log
// names is adopted only if the id is of this instance (its tag) and well
// formed, and its pod is one of the fleet's; an end of a previous run's
// connection that Redis no longer counts needs nothing. None of it
// changes what Redis counts.
func TestAdoptTrustsOnlyThisInstancesIdsOnTheFleetsPods(t *testing.T) {
	onBackends(t, func(t *testing.T, rdb *redis.Client, start func(*clock, ...*tracker.Tracker)) {
		clk := newClock()
		fc := fleetCfg("chat", 2, "10.0.0.1:80", "10.0.0.2:80")
		a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
		b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
		start(clk, a, b)
		x, other := established(t, a), established(t, b)
		pod, empty := x.Pod, "10.0.0.1:80" // empty: where a holds nothing
		if empty == pod {
			empty = "10.0.0.2:80"
		}
		a2 := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc) // a restarted
		heartbeat(t, a2)
		tag := x.Conn[:8] // instanceTag("a")
		refused := map[string]struct{ id, pod string }{
			"an id of instance b":                 {other.Conn, pod},
			"a pod outside the registry":          {x.Conn, "10.9.9.9:80"},
			"a random part that is not hex":       {tag + "zzzzzzzzzzzz1", pod},
			"a counter of 0":                      {tag + "0123456789ab0", pod},
			"a counter that is not base 36":       {tag + "0123456789ab-1", pod},
			"no counter":                          {tag + "0123456789ab", pod},
			"an id longer than any this one made": {tag + "0123456789ab" + strings.Repeat("1", 14), pod},
		}
		for what, e := range refused {
			if err := a2.Adopt("chat", e.id, e.pod, false); !errors.Is(err, tracker.ErrNotAdoptable) {
				t.Errorf("%s (%s on %s): %v, want ErrNotAdoptable", what, e.id, e.pod, err)
			}
		}
		// A previous run's connection that Redis does not count for a
		// (none on that pod: it was never counted, or ended already)
		// reports its end: nothing to do.
		if err := a2.Adopt("chat", tag+"0123456789ab1", empty, true); !errors.Is(err, tracker.ErrUnknownConn) {
			t.Errorf("an end of a previous run's connection not inherited: %v, want ErrUnknownConn", err)
		}
		heartbeat(t, a2, b)
		for p, want := range map[string]int64{pod: 1, empty: 0, "10.9.9.9:80": 0} {
			if mine, _ := counted(t, rdb, a2, "a", p); mine != want {
				t.Errorf("Redis counts %d for a on %s, want %d", mine, p, want)
			}
		}
		if s := storetest.Summary(t, a2.Store(), "chat", clk.Now()); s.Live != 2 {
			t.Errorf("Redis counts %d live, want 2 (x, inherited, and b's)", s.Live)
		}
	})
}
