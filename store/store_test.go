package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
)

func TestAdmitPackFillsTheFullestPodFirst(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
		got := map[string]int{}
		var order []string
		for i := 0; i < 6; i++ {
			a := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0)
			if a.Pod == "" {
				t.Fatalf("admission %d rejected (%s) with room left", i, a.Reason)
			}
			got[a.Pod]++
			order = append(order, a.Pod)
		}
		// pack: the second connection goes where the first went.
		if order[0] != order[1] || order[2] != order[3] || order[4] != order[5] {
			t.Errorf("pack did not fill pods one after another: %v", order)
		}
		for pod, n := range got {
			if n != 2 {
				t.Errorf("pod %s holds %d, want 2", pod, n)
			}
		}
		a := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0)
		if a.Pod != "" || a.Reason != store.ReasonCapacity {
			t.Fatalf("seventh admission = %+v, want capacity rejection", a)
		}
		storetest.Republish(t, s, "chat", storetest.T0, "e1") // publishes e1's total
		sum := storetest.Summary(t, s, "chat", storetest.T0)
		if sum.Live != 6 || sum.Rejections[store.ReasonCapacity].M5 != 1 {
			t.Errorf("summary live=%d capacity=%+v, want 6 and one rejection", sum.Live, sum.Rejections[store.ReasonCapacity])
		}
	})
}

func TestAdmitSpreadPicksTheEmptiestPod(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
		seen := map[string]bool{}
		for i := 0; i < 3; i++ {
			a := storetest.Admit(t, s, "chat", 5, fleets.PolicySpread, "e1", storetest.T0)
			if seen[a.Pod] {
				t.Fatalf("spread placed two of the first three connections on %s", a.Pod)
			}
			seen[a.Pod] = true
		}
	})
}

func TestAdmitWithoutReadyPodsSaysNoPods(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		a := storetest.Admit(t, s, "empty", 2, fleets.PolicyPack, "e1", storetest.T0)
		if a.Reason != store.ReasonNoPods {
			t.Fatalf("admission on a fleet without pods = %+v, want no_pods", a)
		}
		pods := storetest.Pods("10.0.0.1:80", "10.0.0.2:80")
		pods[0].Ready = false
		pods[1].Draining = true
		storetest.SetPods(t, s, "empty", pods)
		if a := storetest.Admit(t, s, "empty", 2, fleets.PolicyPack, "e1", storetest.T0); a.Reason != store.ReasonNoPods {
			t.Fatalf("admission with only a not-ready and a draining pod = %+v, want no_pods", a)
		}
		sum := storetest.Summary(t, s, "empty", storetest.T0)
		if sum.Pods != 2 || sum.Ready != 1 || sum.Draining != 1 || sum.Placeable != 0 {
			t.Errorf("summary pods=%d ready=%d draining=%d placeable=%d, want 2 1 1 0", sum.Pods, sum.Ready, sum.Draining, sum.Placeable)
		}
		if got := sum.Rejections[store.ReasonNoPods].M5; got != 2 {
			t.Errorf("no_pods rejections = %d, want 2", got)
		}
	})
}

func TestReleaseGivesBackOnlyWhatTheInstanceHolds(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		a := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0)
		storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e2", storetest.T0)
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: storetest.EpochOf(t, s, "chat", "e1"), Seq: 0, Releases: []store.ReleaseCount{{Pod: a.Pod, N: 1, Pending: 1}}}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v; want 1", n, err)
		}
		// A duplicate release, or e1 releasing e2's connection, changes nothing.
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: storetest.EpochOf(t, s, "chat", "e1"), Seq: 0, Releases: []store.ReleaseCount{{Pod: a.Pod, N: 1, Pending: 1}}}); err != nil || n != 0 {
			t.Fatalf("duplicate release = %d, %v; want 0", n, err)
		}
		snap, err := s.Snapshot(ctx, "chat", storetest.T0)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Load[a.Pod] != 1 || snap.Live != 1 {
			t.Errorf("after release load=%v live=%d, want 1 and 1", snap.Load, snap.Live)
		}
		// The freed slot is placeable again.
		if b := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0); b.Pod != a.Pod {
			t.Errorf("admission after release = %+v, want %s", b, a.Pod)
		}
	})
}

func TestSyncReplacesTheInstanceCountsAndFixesLoad(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
		storetest.Register(t, s, "chat", "e1", "e2")
		for i := 0; i < 3; i++ {
			storetest.Admit(t, s, "chat", 2, fleets.PolicySpread, "e1", storetest.T0)
		}
		storetest.Admit(t, s, "chat", 2, fleets.PolicySpread, "e2", storetest.T0)
		// e1's local truth: one connection on pod 2 (its release of the others was lost).
		res, err := s.Sync(ctx, store.SyncRequest{
			Fleet: "chat", Instance: "e1", Lease: 10 * time.Second,
			Counts: []store.PodCount{{Pod: "10.0.0.2:80", Live: 1, Established: 1}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.EpochCreated || res.Epoch == "" {
			t.Errorf("e1's second sync: epoch %q created=%v, want the epoch its first one created", res.Epoch, res.EpochCreated)
		}
		snap, err := s.Snapshot(ctx, "chat", storetest.T0)
		if err != nil {
			t.Fatal(err)
		}
		e2 := 0
		for _, in := range snap.Instances {
			if in.ID == "e2" {
				for _, n := range in.Live {
					e2 += n
				}
			}
			if in.ID == "e1" && (len(in.Live) != 1 || in.Live["10.0.0.2:80"] != 1 || in.Established["10.0.0.2:80"] != 1) {
				t.Errorf("e1 after sync live=%v est=%v, want exactly its local truth", in.Live, in.Established)
			}
		}
		var total int
		for _, n := range snap.Load {
			total += n
		}
		if total != 1+e2 || snap.Live != int64(total) {
			t.Errorf("load %v (live %d) does not equal e1's 1 + e2's %d", snap.Load, snap.Live, e2)
		}
		if res.Avail["10.0.0.1:80"]+res.Avail["10.0.0.2:80"] != total {
			t.Errorf("sync's avail view %v does not match load %v", res.Avail, snap.Load)
		}
		// Once e2 heartbeats too, the summary's live count (the totals
		// both published) is the pods' counts.
		storetest.Republish(t, s, "chat", storetest.T0, "e2")
		if sum := storetest.Summary(t, s, "chat", storetest.T0); sum.Live != int64(total) {
			t.Errorf("after both heartbeats summary live %d, want the pods' %d", sum.Live, total)
		}

		// Redis loses everything: the next sync opens a new epoch and restores e1's part.
		if err := b.Client.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		res2, err := s.Sync(ctx, store.SyncRequest{
			Fleet: "chat", Instance: "e1", Lease: 11 * time.Second,
			Counts: []store.PodCount{{Pod: "10.0.0.2:80", Live: 1}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if !res2.EpochCreated || res2.Epoch == res.Epoch {
			t.Errorf("after data loss: epoch %q created=%v, want a new one (old %q)", res2.Epoch, res2.EpochCreated, res.Epoch)
		}
		if sum := storetest.Summary(t, s, "chat", storetest.T0.Add(time.Second)); sum.Live != 1 || sum.Synced != 1 {
			t.Errorf("after re-sync live=%d synced=%d, want 1 and 1", sum.Live, sum.Synced)
		}
	})
}

// Reaping needs both witnesses: the reaper names the instance (it watched
// its seq stand still), and its lease has ended by Redis' own clock.
func TestSyncReapsOnlyNamedInstancesExpiredByRedisClock(t *testing.T) {
	// miniredis only: the test sets Redis' clock.
	s, mr := storetest.NewMini(t)
	ctx := context.Background()
	mr.SetTime(storetest.T0)
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
	sync := func(inst string, reap []string, counts ...store.PodCount) store.SyncResult {
		t.Helper()
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: inst, Lease: 10 * time.Second, Counts: counts, Reap: reap, WatchInstances: true})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	sync("dead", nil, store.PodCount{Pod: "10.0.0.1:80", Live: 2})
	sync("alive", nil, store.PodCount{Pod: "10.0.0.2:80", Live: 1})
	mr.SetTime(storetest.T0.Add(5 * time.Second))
	if res := sync("alive", []string{"dead"}, store.PodCount{Pod: "10.0.0.2:80", Live: 1}); len(res.Reaped) != 0 {
		t.Fatalf("reaped %v before the lease ended by Redis' clock", res.Reaped)
	}
	mr.SetTime(storetest.T0.Add(11 * time.Second))
	if res := sync("alive", nil, store.PodCount{Pod: "10.0.0.2:80", Live: 1}); len(res.Reaped) != 0 {
		t.Fatalf("reaped %v that the caller did not name", res.Reaped)
	}
	res := sync("alive", []string{"dead", "alive", "unknown"}, store.PodCount{Pod: "10.0.0.2:80", Live: 1})
	if len(res.Reaped) != 1 || res.Reaped[0] != "dead" {
		t.Fatalf("reaped %v, want [dead]", res.Reaped)
	}
	if _, ok := res.Instances["alive"]; len(res.Instances) != 1 || !ok {
		t.Errorf("live instances %v, want [alive]", res.Instances)
	}
	if res.Avail["10.0.0.1:80"] != 0 || res.Avail["10.0.0.2:80"] != 1 {
		t.Errorf("avail after reap %v, want the dead instance's 2 gone and the live one's 1 kept", res.Avail)
	}
	// The scaler's reap finds nothing more to do.
	if ids, err := s.Reap(ctx, "chat", []string{"dead", "alive"}); err != nil || len(ids) != 0 {
		t.Errorf("second reap = %v, %v; want nothing", ids, err)
	}
}

func TestRejectionWindowsAgeOut(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		// no pods: every admission is a no_pods rejection, recorded at its time.
		at := []time.Duration{0, 2 * time.Minute, 10 * time.Minute, 40 * time.Minute, 40 * time.Minute}
		for _, d := range at {
			storetest.Admit(t, s, "f", 1, fleets.PolicyPack, "e1", storetest.T0.Add(d))
		}
		// rate_limit rejections arrive through sync, attributed to the instance.
		_, err := s.Sync(ctx, store.SyncRequest{Fleet: "f", Instance: "e1", Lease: time.Hour,
			Rejections: []store.RejectionCount{{Reason: store.ReasonRateLimit, Bucket: store.Bucket(storetest.T0.Add(41 * time.Minute)), Count: 7}}})
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			now       time.Duration
			noPods    store.Windows
			rateLimit store.Windows
		}{
			{0, store.Windows{M5: 1, M15: 1, H1: 1}, store.Windows{}},
			{3 * time.Minute, store.Windows{M5: 2, M15: 2, H1: 2}, store.Windows{}},
			{12 * time.Minute, store.Windows{M5: 1, M15: 3, H1: 3}, store.Windows{}},
			{42 * time.Minute, store.Windows{M5: 2, M15: 2, H1: 5}, store.Windows{M5: 7, M15: 7, H1: 7}},
			{65 * time.Minute, store.Windows{M5: 0, M15: 0, H1: 3}, store.Windows{M5: 0, M15: 0, H1: 7}},
			{101 * time.Minute, store.Windows{}, store.Windows{}},
		}
		for _, c := range cases {
			sum := storetest.Summary(t, s, "f", storetest.T0.Add(c.now))
			if got := sum.Rejections[store.ReasonNoPods]; got != c.noPods {
				t.Errorf("at +%s no_pods = %+v, want %+v", c.now, got, c.noPods)
			}
			if got := sum.Rejections[store.ReasonRateLimit]; got != c.rateLimit {
				t.Errorf("at +%s rate_limit = %+v, want %+v", c.now, got, c.rateLimit)
			}
		}
		snap, err := s.Snapshot(ctx, "f", storetest.T0.Add(42*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Instances) != 1 || snap.Instances[0].Rejections[store.ReasonRateLimit].M5 != 7 || snap.Instances[0].Rejections[store.ReasonNoPods].H1 != 5 {
			t.Errorf("per-instance rejections = %+v, want e1 with 7 rate_limit and 5 no_pods", snap.Instances)
		}
	})
}

func TestRejectionMemoryIsBounded(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, b storetest.Backend) {
		// Three hours of rejections, one per bucket: the ring keeps one hour.
		for now := storetest.T0; now.Before(storetest.T0.Add(3 * time.Hour)); now = now.Add(store.BucketWidth) {
			storetest.Admit(t, s, "f", 1, fleets.PolicyPack, "e1", now)
		}
		fields, err := b.Client.HKeys(context.Background(), s.Keys("f").Rej(store.ReasonNoPods)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if max := 2 * int(store.BucketSlots); len(fields) > max {
			t.Errorf("rejection ring holds %d fields, want at most %d", len(fields), max)
		}
		if got := storetest.Summary(t, s, "f", storetest.T0.Add(3*time.Hour-time.Second)).Rejections[store.ReasonNoPods].H1; got != store.BucketSlots {
			t.Errorf("1h window = %d, want %d (one per bucket)", got, store.BucketSlots)
		}
	})
}

func TestSetPodsFollowsTheRegistry(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
		a := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0)
		// The pod holding the connection becomes not ready: it leaves avail, its load stays.
		pods := storetest.Pods("10.0.0.1:80", "10.0.0.2:80")
		for i := range pods {
			if pods[i].Addr == a.Pod {
				pods[i].Ready = false
			}
		}
		storetest.SetPods(t, s, "chat", pods)
		b := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0)
		if b.Pod == a.Pod {
			t.Fatalf("admitted to not-ready pod %s", a.Pod)
		}
		snap, err := s.Snapshot(ctx, "chat", storetest.T0)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Load[a.Pod] != 1 || snap.Pods[a.Pod].Ready {
			t.Errorf("not-ready pod: load %d ready %v, want its connection still counted and ready=false", snap.Load[a.Pod], snap.Pods[a.Pod].Ready)
		}
		// Ready again: it comes back with its count, so the cap still holds.
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80"))
		for i := 0; i < 2; i++ {
			storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0)
		}
		if c := storetest.Admit(t, s, "chat", 2, fleets.PolicyPack, "e1", storetest.T0); c.Reason != store.ReasonCapacity {
			t.Fatalf("fifth admission on 2 pods x cap 2 = %+v, want capacity", c)
		}
		// A pod that leaves the registry is gone from it.
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		if snap, _ = s.Snapshot(ctx, "chat", storetest.T0); len(snap.Pods) != 1 {
			t.Errorf("registry after removal = %v, want one pod", snap.Pods)
		}
		if err := s.SetPods(ctx, "chat", []fleets.Pod{{Addr: "pod-a"}}); err == nil {
			t.Error("SetPods accepted a pod address without a port")
		}
	})
}

func TestFleetsLiveInTheirOwnHashSlot(t *testing.T) {
	s, _ := storetest.NewMini(t)
	if got := s.Keys("chat").Prefix(); got != "{wsgate:chat}:" {
		t.Errorf("key prefix = %q", got)
	}
}

func TestStoreReportsRedisErrors(t *testing.T) {
	// miniredis only: the test makes Redis answer errors.
	s, mr := storetest.NewMini(t)
	mr.SetError("LOADING Redis is loading the dataset in memory")
	_, err := s.AdmitOne(context.Background(), store.AdmitRequest{Fleet: "chat", MaxPerPod: 2, Policy: fleets.PolicyPack, Instance: "e1", Epoch: "", Now: storetest.T0})
	if err == nil {
		t.Fatal("admit succeeded on a Redis that answers errors")
	}
	if want := "admit chat: LOADING"; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Errorf("error %q does not say what was attempted", err)
	}
}

// Pending (not yet established) is what the instance's last heartbeat
// said: an admission since counts as established, as nearly all are within
// milliseconds, and costs no Redis call of its own.
func TestPendingIsWhatTheLastHeartbeatSaid(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		storetest.Register(t, s, "chat", "e1")
		a := storetest.Admit(t, s, "chat", 5, fleets.PolicyPack, "e1", storetest.T0)
		storetest.Admit(t, s, "chat", 5, fleets.PolicyPack, "e1", storetest.T0)
		est := func() int {
			t.Helper()
			snap, err := s.Snapshot(ctx, "chat", storetest.T0)
			if err != nil || len(snap.Instances) != 1 {
				t.Fatalf("snapshot: %+v %v", snap.Instances, err)
			}
			return snap.Instances[0].Established[a.Pod]
		}
		if got := est(); got != 2 {
			t.Fatalf("established right after admission = %d, want 2", got)
		}
		// The heartbeat reports one of the two established.
		if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Minute,
			Counts: []store.PodCount{{Pod: a.Pod, Live: 2, Established: 1}}}); err != nil {
			t.Fatal(err)
		}
		if got := est(); got != 1 {
			t.Fatalf("established after the heartbeat = %d, want 1", got)
		}
		// Releasing the pending one leaves the established one.
		if _, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: storetest.EpochOf(t, s, "chat", "e1"), Seq: 0, Releases: []store.ReleaseCount{{Pod: a.Pod, N: 1, Pending: 1}}}); err != nil {
			t.Fatal(err)
		}
		if got := est(); got != 1 {
			t.Fatalf("established after releasing the pending connection = %d, want 1", got)
		}
	})
}

// A release or heartbeat that reaches Redis after a later heartbeat of its
// instance (its reply timed out, then it ran) is already in that
// heartbeat's counts: its seq gives it away, and it changes nothing.
func TestLateCallsOfAnInstanceAreIgnored(t *testing.T) {
	storetest.Backends(t, func(t *testing.T, s *store.Store, _ storetest.Backend) {
		ctx := context.Background()
		storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
		counts := []store.PodCount{{Pod: "10.0.0.1:80", Live: 2, Established: 2}}
		res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, Seq: 5, Counts: counts})
		if err != nil || res.Stale {
			t.Fatalf("sync: %+v %v", res, err)
		}
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: res.Epoch, Seq: 4, Releases: []store.ReleaseCount{{Pod: "10.0.0.1:80", N: 1, Pending: 0}}}); err != nil || n != 0 {
			t.Errorf("release sent before the heartbeat = %d, %v; want ignored", n, err)
		}
		late, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, Seq: 3})
		if err != nil || !late.Stale || late.Seq != 5 {
			t.Errorf("late heartbeat: %+v %v; want stale, last seq 5", late, err)
		}
		if sum := storetest.Summary(t, s, "chat", storetest.T0); sum.Live != 2 {
			t.Errorf("live = %d after late calls, want the heartbeat's 2", sum.Live)
		}
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: res.Epoch, Seq: 5, Releases: []store.ReleaseCount{{Pod: "10.0.0.1:80", N: 1, Pending: 0}}}); err != nil || n != 1 {
			t.Errorf("release of a connection that ended after the heartbeat (its seq) = %d, %v; want 1", n, err)
		}
		if _, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: "another-epoch", Seq: 7, Releases: []store.ReleaseCount{{Pod: "10.0.0.1:80", N: 1, Pending: 0}}}); !errors.Is(err, store.ErrEpochFenced) {
			t.Errorf("release in another epoch: %v, want ErrEpochFenced", err)
		}
	})
}
