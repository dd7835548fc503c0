package store_test

import (
	"context"
	"maps"
	"strconv"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

// The admit script's fence is one read of the epoch (PROTOCOL.md, "One
// read for the fence"): an instance is refused 'lease' once it was reaped
// or left, not when its lease ended by Redis' clock, which the script no
// longer reads. Its releases then give nothing back: it holds nothing.
func TestAdmitIsRefusedOnceReapedNotOnceExpired(t *testing.T) {
	// miniredis only: the test sets Redis' clock.
	s, mr := storetest.NewMini(t)
	ctx := context.Background()
	mr.SetTime(storetest.T0)
	const pod = "10.0.0.1:80"
	storetest.SetPods(t, s, "chat", storetest.Pods(pod))
	seq := map[string]uint64{}
	confirm := ""
	sync := func(inst string, reap ...string) store.SyncResult {
		t.Helper()
		seq[inst]++
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: inst, Lease: 10 * time.Second, Seq: seq[inst], Reap: reap, Confirm: confirm})
		if err != nil || res.Stale {
			t.Fatalf("heartbeat of %s: %+v, %v", inst, res, err)
		}
		return res
	}
	epoch := sync("a").Epoch
	confirm = epoch // no recovery wait, confirmed: open
	sync("b")
	admit := func(inst string) store.Admission {
		t.Helper()
		a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 10, Policy: fleets.PolicyPack, Instance: inst, Epoch: epoch, Now: storetest.T0})
		if err != nil {
			t.Fatalf("admit for %s: %v", inst, err)
		}
		return a
	}
	if a := admit("a"); a.Pod != pod {
		t.Fatalf("admit in an open epoch: %+v; want %s", a, pod)
	}

	// Both leases ended by Redis' clock; nobody reaped a: still counted for
	// it, so what it is granted is counted too (a late call's, or one in
	// flight as its lease ended: "One read for the fence").
	mr.SetTime(storetest.T0.Add(11 * time.Second))
	if a := admit("a"); a.Pod != pod {
		t.Fatalf("admit after the lease ended by Redis' clock, not reaped: %+v; want granted", a)
	}
	if n := storetest.Counted(t, s, "chat"); n != 2 {
		t.Fatalf("Redis counts %d; want a's 2", n)
	}

	// b reaps a: a's slots go, and its admissions are refused from now on.
	if res := sync("b", "a"); len(res.Reaped) != 1 {
		t.Fatalf("b's heartbeat reaped %v; want [a]", res.Reaped)
	}
	if a := admit("a"); a.Fence != store.FenceLease || a.Pod != "" {
		t.Fatalf("admit after a was reaped: %+v; want refused (lease)", a)
	}
	if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "a", Epoch: epoch, Seq: seq["a"], Releases: []store.ReleaseCount{{Pod: pod, N: 1}}}); err != nil || n != 0 {
		t.Fatalf("release after a was reaped: %d, %v; want 0 (it holds nothing)", n, err)
	}
	if n := storetest.Counted(t, s, "chat"); n != 0 {
		t.Fatalf("Redis counts %d after the reap; want 0", n)
	}

	// a's next heartbeat brings it back.
	sync("a")
	if a := admit("a"); a.Pod != pod {
		t.Fatalf("admit after a's next heartbeat: %+v; want granted", a)
	}

	// b leaves: refused too.
	seq["b"]++
	if _, err := s.Leave(ctx, store.LeaveRequest{Fleet: "chat", Instance: "b", Seq: seq["b"]}); err != nil {
		t.Fatal(err)
	}
	if a := admit("b"); a.Fence != store.FenceLease {
		t.Fatalf("admit after b left: %+v; want refused (lease)", a)
	}
}

// The first admission after the recovery wait (over by Redis' clock and
// confirmed) opens the epoch (`open`), as a heartbeat would: the calls
// after it read no clock, so a backward step of Redis' clock does not
// bring the wait back (it was over in real time: confirmed).
func TestTheFirstAdmissionAfterTheWaitOpensTheEpoch(t *testing.T) {
	s, mr := storetest.NewMini(t)
	ctx := context.Background()
	mr.SetTime(storetest.T0)
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	var seq uint64
	sync := func(confirm string) store.SyncResult {
		t.Helper()
		seq++
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "a", Lease: time.Hour, RecoveryWait: 10 * time.Second, Seq: seq, Confirm: confirm})
		if err != nil || res.Stale {
			t.Fatalf("heartbeat: %+v, %v", res, err)
		}
		return res
	}
	res := sync("")
	if !res.EpochCreated || res.Recovering != 10*time.Second {
		t.Fatalf("first heartbeat: %+v; want a new epoch waiting 10s", res)
	}
	admit := func() store.Admission {
		t.Helper()
		a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 10, Policy: fleets.PolicyPack, Instance: "a", Epoch: res.Epoch, Now: storetest.T0})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	mr.SetTime(storetest.T0.Add(4 * time.Second))
	if a := admit(); a.Fence != store.FenceRecovering || a.Wait != 6*time.Second {
		t.Fatalf("admit 4s into a wait of 10s: %+v; want recovering for 6s", a)
	}
	// Confirmed (the tracker's own clock saw a TTL) while Redis' is still in the wait.
	sync(res.Epoch)
	if a := admit(); a.Fence != store.FenceRecovering || a.Wait != 6*time.Second {
		t.Fatalf("admit confirmed, 4s into a wait of 10s: %+v; want recovering for 6s", a)
	}
	mr.SetTime(storetest.T0.Add(11 * time.Second))
	if a := admit(); a.Pod == "" {
		t.Fatalf("admit after the confirmed wait, no heartbeat since: %+v; want granted", a)
	}
	mr.SetTime(storetest.T0.Add(4 * time.Second)) // Redis' clock steps back
	if a := admit(); a.Pod == "" {
		t.Fatalf("admit in the open epoch after Redis' clock stepped back: %+v; want granted", a)
	}
	if left, err := s.Recovery(ctx, "chat"); err != nil || left != 0 {
		t.Fatalf("recovery once open: %v, %v; want 0", left, err)
	}
}

// A heartbeat's reply names every live instance with its seq
// (what a reaper watches), read in one HMGET per 1,000 instances.
func TestSyncReportsEveryInstancesSeq(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		const n = 1001 // more than one chunk
		var res store.SyncResult
		for i := range n {
			var err error
			res, err = s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e" + strconv.Itoa(i), Lease: time.Hour, Seq: uint64(100 + i), WatchInstances: true})
			if err != nil || res.Stale {
				t.Fatalf("heartbeat %d: %+v, %v", i, res.Stale, err)
			}
		}
		if len(res.Instances) != n {
			t.Fatalf("%d instances in the reply; want %d", len(res.Instances), n)
		}
		// Not asked for, not read.
		if r, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e0", Lease: time.Hour, Seq: 99 + 2*n}); err != nil || r.Instances != nil {
			t.Fatalf("heartbeat that does not watch: instances %v, %v; want none", r.Instances, err)
		}
		for i := range n {
			if seq, ok := res.Instances["e"+strconv.Itoa(i)]; !ok || seq != uint64(100+i) {
				t.Fatalf("instance e%d: seq %d, %v; want seq %d", i, seq, ok, 100+i)
			}
		}
	})
}

// A heartbeat's reply carries each placeable pod's count, all instances
// together, read after its script: after a SCRIPT FLUSH too (the script
// is loaded again, the read follows it), and none from a stale heartbeat,
// which did nothing.
func TestSyncReturnsThePlaceablePodsCounts(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
		for range 2 {
			storetest.Admit(t, s, "chat", 5, fleets.PolicyPack, "e1", storetest.T0)
		}
		storetest.Admit(t, s, "chat", 5, fleets.PolicySpread, "e2", storetest.T0)
		want := map[string]int{}
		zs, err := b.Client.ZRangeWithScores(ctx, s.Keys("chat").Avail(), 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			want[z.Member.(string)] = int(z.Score)
		}
		if len(want) != 3 || want["10.0.0.1:80"]+want["10.0.0.2:80"]+want["10.0.0.3:80"] != 3 {
			t.Fatalf("the placeable pods' counts in Redis: %v; want 3 pods holding 3", want)
		}
		// e3 publishes nothing: what it sees is the others' connections.
		sync := func(seq uint64) store.SyncResult {
			t.Helper()
			res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e3", Lease: time.Hour, Seq: seq})
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		if res := sync(10); res.Stale || !maps.Equal(res.Avail, want) {
			t.Fatalf("heartbeat's view: %v (stale %v); want %v", res.Avail, res.Stale, want)
		}
		if err := b.Client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if res := sync(11); res.Stale || !maps.Equal(res.Avail, want) {
			t.Fatalf("heartbeat's view after SCRIPT FLUSH: %v (stale %v); want %v", res.Avail, res.Stale, want)
		}
		if res := sync(5); !res.Stale || len(res.Avail) != 0 {
			t.Fatalf("a stale heartbeat: %v (stale %v); want stale and no view", res.Avail, res.Stale)
		}
	})
}

// A leave that runs after a later call of its instance (sent before it,
// run late) does nothing: removing the instance then would erase counts
// of connections it went on to hold. One at or above the instance's seq
// removes it.
func TestLateLeaveIsStale(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, Seq: 10,
			Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 1, Established: 1}}}); err != nil {
			t.Fatal(err)
		}
		if there, err := s.Leave(ctx, store.LeaveRequest{Fleet: "chat", Instance: "e1", Seq: 9}); err != nil || there {
			t.Fatalf("a leave below the instance's seq: %v, %v; want ignored", there, err)
		}
		if seqs, err := s.Instances(ctx, "chat"); err != nil || seqs["e1"] != 10 {
			t.Fatalf("after a stale leave: instances %v, %v; want e1 at seq 10", seqs, err)
		}
		if sum, err := s.Summary(ctx, "chat", storetest.T0); err != nil || sum.Live != 1 {
			t.Fatalf("after a stale leave Redis counts %d (%v); want e1's 1", sum.Live, err)
		}
		if there, err := s.Leave(ctx, store.LeaveRequest{Fleet: "chat", Instance: "e1", Seq: 11}); err != nil || !there {
			t.Fatalf("a leave above the instance's seq: %v, %v; want e1 gone", there, err)
		}
		if sum, err := s.Summary(ctx, "chat", storetest.T0); err != nil || sum.Live != 0 {
			t.Fatalf("after e1 left Redis counts %d (%v); want 0", sum.Live, err)
		}
	})
}
