package store_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

// The hot scripts keep no fleet total (PROTOCOL.md, "The fleet's live
// count"): admissions granted or refused, releases alone or carried by an
// admit call, in an open epoch or its recovery wait, write nothing to the
// stats hash, which holds only what the registry (setpods.lua) and leave
// (left) write.
func TestAdmitAndReleaseWriteNoStats(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		const pod = "10.0.0.1:80"
		storetest.SetPods(t, s, "chat", storetest.Pods(pod))
		stats := func() map[string]string {
			t.Helper()
			m, err := b.Client.HGetAll(ctx, s.Keys("chat").Stats()).Result()
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		before := stats()
		epoch := storetest.EpochOf(t, s, "chat", "e1")
		for range 3 {
			storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0) // 2 granted, 1 refused
		}
		rel := []store.ReleaseCount{{Pod: pod, N: 1}}
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: epoch, Releases: rel}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v; want 1", n, err)
		}
		a, err := s.Admit(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack, Instance: "e1", Epoch: epoch,
			Now: storetest.T0, N: 2, Releases: rel})
		if err != nil || a.Released != 1 || len(a.Pods) == 0 {
			t.Fatalf("admit carrying a release: %+v, %v; want 1 released and a grant", a, err)
		}
		// In a recovery wait: the admit call's releases apply, nothing is granted.
		if err := b.Client.Del(ctx, s.Keys("chat").Epoch()).Err(); err != nil {
			t.Fatal(err)
		}
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, RecoveryWait: time.Hour, Seq: 1,
			Counts: []store.PodCount{{Pod: pod, Live: 2, Established: 2}}})
		if err != nil || res.Recovering == 0 {
			t.Fatalf("sync: %+v %v; want a recovery wait", res, err)
		}
		a, err = s.Admit(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack, Instance: "e1", Epoch: res.Epoch,
			Now: storetest.T0, N: 1, Seq: 1, Releases: rel})
		if err != nil || a.Fence != store.FenceRecovering || a.Released != 1 {
			t.Fatalf("in the recovery wait: %+v, %v; want recovering and 1 released", a, err)
		}
		if after := stats(); !maps.Equal(after, before) {
			t.Errorf("the stats hash went from %v to %v; the hot scripts must not write it", before, after)
		}
		if _, ok := before["live"]; ok {
			t.Errorf("the registry wrote stats live: %v", before)
		}
	})
}

// The summary's live count is the sum of the totals the instances Redis
// still counts published in the epoch: an instance whose lease ended but
// was not reaped (keep, kube) still holds its slots, and stays in it; a
// leave, a reap and a new epoch remove what it published. Published counts
// the alive instances that published a total in the epoch.
func TestSummaryLiveSumsTheCountedInstancesTotals(t *testing.T) {
	// miniredis only: the test sets Redis' clock.
	s, mr := storetest.NewMini(t)
	ctx := context.Background()
	mr.SetTime(storetest.T0)
	pods := []string{"10.0.0.1:80", "10.0.0.2:80"}
	storetest.SetPods(t, s, "chat", storetest.Pods(pods...))
	seq := map[string]uint64{}
	epoch := ""
	beat := func(inst string, lease time.Duration, n int) {
		t.Helper()
		seq[inst]++
		var counts []store.PodCount
		if n > 0 { // over both pods: the total is what is summed, not a pod
			counts = []store.PodCount{{Pod: pods[0], Live: n - n/2, Established: n - n/2}, {Pod: pods[1], Live: n / 2}}
		}
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: inst, Lease: lease, Seq: seq[inst], Counts: counts, Confirm: epoch})
		if err != nil || res.Stale || res.NeedFull {
			t.Fatalf("heartbeat of %s: %+v, %v", inst, res, err)
		}
		epoch = res.Epoch
	}
	want := func(live, alive, published int64, why string) {
		t.Helper()
		sum := storetest.Summary(t, s, "chat", storetest.T0)
		if sum.Live != live || sum.Alive != alive || sum.Published != published {
			t.Fatalf("%s: live %d, %d instances alive, %d published; want %d, %d, %d", why, sum.Live, sum.Alive, sum.Published, live, alive, published)
		}
	}
	published := func(inst string) bool {
		t.Helper()
		return mr.HGet(s.Keys("chat").Epoch(), "h:"+inst) != ""
	}

	beat("a", 10*time.Second, 2)
	beat("b", time.Hour, 3)
	beat("c", time.Hour, 4)
	want(9, 3, 3, "three instances")

	mr.SetTime(storetest.T0.Add(11 * time.Second))
	want(9, 2, 2, "a's lease ended, not reaped: its slots are still counted")
	if !published("a") {
		t.Fatal("a's total is gone before it was reaped; the test shows nothing")
	}
	if n := storetest.Counted(t, s, "chat"); n != 9 {
		t.Fatalf("the pods count %d; want 9: a's stay counted until it is reaped", n)
	}

	if there, err := s.Leave(ctx, store.LeaveRequest{Fleet: "chat", Instance: "c", Seq: seq["c"] + 1}); err != nil || !there {
		t.Fatalf("leave of c: %v, %v", there, err)
	}
	want(5, 1, 1, "c left")
	if published("c") {
		t.Error("c's total outlived its leave")
	}

	if reaped, err := s.Reap(ctx, "chat", []string{"a"}); err != nil || !slices.Equal(reaped, []string{"a"}) {
		t.Fatalf("reap of a: %v, %v", reaped, err)
	}
	want(3, 1, 1, "a reaped")
	if published("a") {
		t.Error("a's total outlived its reap")
	}

	beat("a", time.Hour, 1) // a full heartbeat brings it back
	want(4, 2, 2, "a back")

	// A new epoch: every total is gone until each instance heartbeats in it.
	mr.Del(s.Keys("chat").Epoch())
	beat("b", time.Hour, 3)
	want(3, 2, 1, "a new epoch, only b re-published")
	snap, err := s.Snapshot(ctx, "chat", storetest.T0)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range snap.Instances {
		if in.Published != (in.ID == "b") {
			t.Errorf("snapshot: %s published %v; only b re-published in the new epoch", in.ID, in.Published)
		}
	}
	beat("a", time.Hour, 1)
	want(4, 2, 2, "both re-published")
}

// A full heartbeat's total is the sum of its counts: a Live that says
// otherwise is refused before anything reaches Redis, as is a negative
// one.
func TestSyncRefusesAWrongTotal(t *testing.T) {
	s, _ := storetest.NewMini(t)
	counts := []store.PodCount{{Pod: "10.0.0.1:80", Live: 2}}
	for _, req := range []store.SyncRequest{
		{Fleet: "chat", Instance: "e1", Lease: time.Hour, Counts: counts, Live: 3},
		{Fleet: "chat", Instance: "e1", Lease: time.Hour, Base: &store.SyncBase{Epoch: "1-x", Seq: 1}, Live: -1},
	} {
		if _, err := s.Sync(context.Background(), req); err == nil {
			t.Errorf("sync with Live %d over counts %v: no error", req.Live, req.Counts)
		}
	}
	if _, err := s.Sync(context.Background(), store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, Counts: counts, Live: 2}); err != nil {
		t.Errorf("sync with the right Live: %v", err)
	}
}
