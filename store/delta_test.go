package store_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

// deltaInstance drives one instance's heartbeats the way the tracker does
// (PROTOCOL.md, "Delta heartbeats"): seq numbers its calls, base names its
// last acknowledged one, held is what it holds per pod (what its
// heartbeats sent), whose sum each heartbeat publishes.
type deltaInstance struct {
	t    *testing.T
	s    *store.Store
	id   string
	seq  uint64
	base store.SyncBase
	held map[string]int
}

// total is the instance's live connections, all pods: what a heartbeat
// publishes, a delta's too.
func (d *deltaInstance) total() int {
	n := 0
	for _, c := range d.held {
		n += c
	}
	return n
}

func (d *deltaInstance) sync(delta bool, counts ...store.PodCount) store.SyncResult {
	d.t.Helper()
	d.seq++
	if !delta || d.held == nil {
		d.held = map[string]int{}
	}
	for _, c := range counts {
		if d.held[c.Pod] = c.Live; c.Live == 0 {
			delete(d.held, c.Pod)
		}
	}
	req := store.SyncRequest{Fleet: "chat", Instance: d.id, Lease: time.Minute, Seq: d.seq, Counts: counts, Live: d.total(), WatchInstances: true}
	if delta {
		base := d.base
		req.Base = &base
	}
	res, err := d.s.Sync(context.Background(), req)
	if err != nil || res.Stale {
		d.t.Fatalf("heartbeat %d of %s: %+v, %v", d.seq, d.id, res, err)
	}
	if !res.NeedFull {
		d.base = store.SyncBase{Epoch: res.Epoch, Seq: d.seq}
	}
	return res
}

// counted is what Redis counts for instance id: live and established per
// pod, and the fleet's load (each pod's live count, all instances). These
// tests make no admission or release: every count in Redis is one a
// heartbeat published, so the summary's live count, the totals the alive
// instances' heartbeats published, must equal both the sum of the
// instances' counts and that of the pods'.
func counted(t *testing.T, s *store.Store, id string) (live, est, load map[string]int) {
	t.Helper()
	snap, err := s.Snapshot(context.Background(), "chat", storetest.T0)
	if err != nil {
		t.Fatal(err)
	}
	live, est = map[string]int{}, map[string]int{}
	held := 0
	for _, in := range snap.Instances {
		if in.ID == id {
			maps.Copy(live, in.Live)
			maps.Copy(est, in.Established)
		}
		for _, n := range in.Live {
			held += n
		}
	}
	total := 0
	for _, n := range snap.Load {
		total += n
	}
	sum := storetest.Summary(t, s, "chat", storetest.T0)
	if int64(total) != sum.Live || held != total {
		t.Errorf("load %v sums to %d, the instances hold %d, the heartbeats' totals %d", snap.Load, total, held, sum.Live)
	}
	return live, est, snap.Load
}

func wantCounts(t *testing.T, s *store.Store, id string, live, est map[string]int) {
	t.Helper()
	l, e, load := counted(t, s, id)
	if !maps.Equal(l, live) || !maps.Equal(e, est) {
		t.Errorf("Redis counts %s live=%v est=%v; want live=%v est=%v", id, l, e, live, est)
	}
	for pod, n := range live {
		if load[pod] != n { // the only instance
			t.Errorf("load of %s %d; want %d", pod, load[pod], n)
		}
	}
}

// A delta heartbeat applies what it sends, pod by pod, and leaves the rest
// of the instance's counts as they are.
func TestDeltaSyncAppliesOnlyWhatItSends(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"))
		e1 := &deltaInstance{t: t, s: s, id: "e1"}
		e1.sync(false, store.PodCount{Pod: "10.0.0.1:80", Live: 2, Established: 2},
			store.PodCount{Pod: "10.0.0.2:80", Live: 1}, store.PodCount{Pod: "10.0.0.3:80", Live: 3, Established: 3})
		wantCounts(t, s, "e1", map[string]int{"10.0.0.1:80": 2, "10.0.0.2:80": 1, "10.0.0.3:80": 3},
			map[string]int{"10.0.0.1:80": 2, "10.0.0.3:80": 3})

		// pod 2 grows and one is established, pod 3 holds none any more,
		// pod 4 is new; pod 1 is not sent.
		if res := e1.sync(true, store.PodCount{Pod: "10.0.0.2:80", Live: 2, Established: 1},
			store.PodCount{Pod: "10.0.0.3:80"}, store.PodCount{Pod: "10.0.0.4:80", Live: 1, Established: 1}); res.NeedFull {
			t.Fatalf("a delta on its acknowledged base was refused: %+v", res)
		}
		live := map[string]int{"10.0.0.1:80": 2, "10.0.0.2:80": 2, "10.0.0.4:80": 1}
		est := map[string]int{"10.0.0.1:80": 2, "10.0.0.2:80": 1, "10.0.0.4:80": 1}
		wantCounts(t, s, "e1", live, est)
		// The delta published e1's whole total, pod 1 too, not the 3 of
		// the pods it sent.
		if sum := storetest.Summary(t, s, "chat", storetest.T0); sum.Live != 5 {
			t.Errorf("after the delta the summary counts %d; want e1's 5", sum.Live)
		}
		// nothing moved: an empty delta changes no count, and renews
		res := e1.sync(true)
		if res.NeedFull || res.Seq != e1.seq || res.Instances["e1"] != e1.seq {
			t.Fatalf("an empty delta: %+v; want applied at seq %d", res, e1.seq)
		}
		wantCounts(t, s, "e1", live, est)
	})
}

// A delta is refused, and changes no count, whenever Redis' copy of the
// instance may differ from what its last acknowledged heartbeat left: a
// heartbeat of it ran whose reply was lost, it was reaped or left (or
// forgotten), a new epoch began, or the base names another epoch. The
// full heartbeat after it re-states everything.
func TestDeltaSyncIsRefusedWhenRedisMayDiffer(t *testing.T) {
	const p1, p2 = "10.0.0.1:80", "10.0.0.2:80"
	held := []store.PodCount{{Pod: p1, Live: 2, Established: 2}, {Pod: p2, Live: 1, Established: 1}}
	heldLive := map[string]int{p1: 2, p2: 1}
	cases := []struct {
		name string
		// diverge changes Redis behind e1's back; it returns what Redis
		// counts for e1 afterwards, which the refused delta must not change.
		diverge func(t *testing.T, e1 *deltaInstance, b storetest.Backend) map[string]int
	}{
		{"lost reply", func(t *testing.T, e1 *deltaInstance, b storetest.Backend) map[string]int {
			// it ran, but e1 never read the reply: base stays
			base := e1.base
			e1.sync(false, store.PodCount{Pod: p1, Live: 1, Established: 1})
			e1.base = base
			return map[string]int{p1: 1}
		}},
		{"reaped", func(t *testing.T, e1 *deltaInstance, b storetest.Backend) map[string]int {
			// a lease of a millisecond, then reaped once it ended by Redis' clock
			e1.seq++
			if _, err := e1.s.Sync(context.Background(), store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Millisecond, Seq: e1.seq,
				Base: &e1.base, Live: e1.total()}); err != nil {
				t.Fatal(err)
			}
			e1.base.Seq = e1.seq
			deadline := time.Now().Add(10 * time.Second)
			for {
				reaped, err := e1.s.Reap(context.Background(), "chat", []string{"e1"})
				if err != nil {
					t.Fatal(err)
				}
				if len(reaped) == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("e1 was never reaped")
				}
				time.Sleep(time.Millisecond) // Redis' clock: no event to await
			}
			return map[string]int{}
		}},
		{"left", func(t *testing.T, e1 *deltaInstance, b storetest.Backend) map[string]int {
			if _, err := e1.s.Leave(context.Background(), store.LeaveRequest{Fleet: "chat", Instance: "e1", Seq: e1.seq}); err != nil {
				t.Fatal(err)
			}
			return map[string]int{}
		}},
		{"new epoch", func(t *testing.T, e1 *deltaInstance, b storetest.Backend) map[string]int {
			if err := b.Client.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			storetest.SetPods(t, e1.s, "chat", storetest.Pods(p1, p2))
			return map[string]int{}
		}},
		{"another epoch", func(t *testing.T, e1 *deltaInstance, b storetest.Backend) map[string]int {
			e1.base.Epoch = "1-other"
			return heldLive
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
				storetest.SetPods(t, s, "chat", storetest.Pods(p1, p2))
				e1 := &deltaInstance{t: t, s: s, id: "e1"}
				e1.sync(false, held...)
				there := c.diverge(t, e1, b)
				before := e1.seq
				res := e1.sync(true) // nothing moved as far as e1 knows
				if !res.NeedFull {
					t.Fatalf("a delta after Redis' copy diverged was applied: %+v", res)
				}
				if l, _, _ := counted(t, s, "e1"); !maps.Equal(l, there) {
					t.Errorf("the refused delta changed e1's counts to %v; want %v", l, there)
				}
				if res.Seq > before {
					t.Errorf("the refused delta stored its seq %d (last %d)", res.Seq, before)
				}
				// the full one re-states what e1 holds
				if res := e1.sync(false, held...); res.NeedFull {
					t.Fatalf("a full heartbeat was refused: %+v", res)
				}
				wantCounts(t, s, "e1", heldLive, heldLive)
				if res := e1.sync(true); res.NeedFull {
					t.Fatalf("a delta on the full one's base was refused: %+v", res)
				}
				wantCounts(t, s, "e1", heldLive, heldLive)
			})
		})
	}
}
