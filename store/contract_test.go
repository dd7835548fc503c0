package store_test

// The store's contract tests that compare calls with each other, and those
// of the hot scripts on a real redis-server (moved from tracker's tests:
// they test the store alone).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
)

// Admit of n connections leaves Redis as n admissions in a row leave it: the same count
// on every pod under pack, the same counts (up to which of equally loaded
// pods gets a last one) under spread, the same rejections; checked on
// random loads, caps and batch sizes, on miniredis and a real redis-server
// (whose Lua the scripts run in production).
func TestAdmitNIsAdmissionsInARow(t *testing.T) { storetest.Backends(t, checkAdmitN) }

func checkAdmitN(t *testing.T, _ *store.Store, b storetest.Backend) {
	ctx, rdb := context.Background(), b.Client
	rng := rand.New(rand.NewPCG(1, 2))
	stores := map[string]*store.Store{"seq": b.Store("seq"), "batch": b.Store("batch")}
	for round := range 60 {
		policy := []fleets.Policy{fleets.PolicyPack, fleets.PolicySpread}[round%2]
		pods := 1 + rng.IntN(6)
		limit := 1 + rng.IntN(4)
		n := 1 + rng.IntN(12)
		var addrs []string
		var counts []store.PodCount
		for p := range pods {
			addr := fmt.Sprintf("10.0.%d.%d:80", rng.IntN(3), p)
			addrs = append(addrs, addr)
			if c := rng.IntN(limit + 1); c > 0 { // some pods full already
				counts = append(counts, store.PodCount{Pod: addr, Live: c, Established: c})
			}
		}
		if rng.IntN(8) == 0 {
			addrs = nil // no pod at all: no_pods
		}
		run := func(prefix string, admit func(s *store.Store, epoch string) []string) (map[string]float64, []string, store.Summary) {
			s := stores[prefix]
			fleet := fmt.Sprintf("r%d", round)
			storetest.SetPods(t, s, fleet, storetest.Pods(addrs...))
			if _, err := s.Sync(ctx, store.SyncRequest{Fleet: fleet, Instance: "other", Lease: 1 << 40, Counts: counts}); err != nil {
				t.Fatal(err)
			}
			got := admit(s, storetest.EpochOf(t, s, fleet, "e1"))
			load, err := rdb.ZRangeWithScores(ctx, s.Keys(fleet).Avail(), 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			m := map[string]float64{}
			for _, z := range load {
				m[z.Member.(string)] = z.Score
			}
			slices.Sort(got)
			return m, got, storetest.Summary(t, s, fleet, storetest.T0)
		}
		fleet := fmt.Sprintf("r%d", round)
		var reasonSeq, reasonBatch store.Reason
		oneByOne, seqPods, seqSum := run("seq", func(s *store.Store, epoch string) []string {
			var pods []string
			for range n {
				a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: fleet, MaxPerPod: limit, Policy: policy, Instance: "e1", Epoch: epoch, Now: storetest.T0})
				if err != nil || a.Fence != "" {
					t.Fatalf("admit: %+v %v", a, err)
				}
				if a.Pod != "" {
					pods = append(pods, a.Pod)
				} else {
					reasonSeq = a.Reason
				}
			}
			return pods
		})
		batched, batchPods, batchSum := run("batch", func(s *store.Store, epoch string) []string {
			a, err := s.Admit(ctx, store.AdmitRequest{Fleet: fleet, MaxPerPod: limit, Policy: policy, Instance: "e1", Epoch: epoch, Now: storetest.T0, N: n})
			if err != nil || a.Fence != "" {
				t.Fatalf("admit %d: %+v %v", n, a, err)
			}
			reasonBatch = a.Reason
			return a.Pods
		})
		desc := fmt.Sprintf("round %d: %s, cap %d, %d admissions, loads %v", round, policy, limit, n, counts)
		if len(seqPods) != len(batchPods) || reasonSeq != reasonBatch {
			t.Errorf("%s: one by one %d granted (%q), batched %d (%q)", desc, len(seqPods), reasonSeq, len(batchPods), reasonBatch)
		}
		if seqSum.Live != batchSum.Live || !maps.Equal(seqSum.Rejections, batchSum.Rejections) {
			t.Errorf("%s: summaries differ: live %d/%d, rejections %v/%v", desc, seqSum.Live, batchSum.Live, seqSum.Rejections, batchSum.Rejections)
		}
		if policy == fleets.PolicyPack {
			if !maps.Equal(oneByOne, batched) || !slices.Equal(seqPods, batchPods) {
				t.Errorf("%s: one by one %v (%v), batched %v (%v)", desc, oneByOne, seqPods, batched, batchPods)
			}
			continue
		}
		a, b := slices.Sorted(maps.Values(oneByOne)), slices.Sorted(maps.Values(batched))
		if !slices.Equal(a, b) {
			t.Errorf("%s: counts one by one %v, batched %v", desc, oneByOne, batched)
		}
	}
}

// The admit and release calls load their script again when Redis does not
// know it (NOSCRIPT after a restart, a failover or SCRIPT FLUSH).
func TestHotScriptsAfterScriptFlush(t *testing.T) {
	rdb := redistest.Start(t).Client()
	ctx := context.Background()
	s := store.NewStore(rdb, "wsgate")
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	for i := range 2 {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicyPack, Instance: "e1", Epoch: epoch, Now: storetest.T0})
		if err != nil || a.Pod == "" {
			t.Fatalf("admit %d after SCRIPT FLUSH: %+v %v", i, a, err)
		}
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if n, err := s.Release(ctx, store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: epoch, Seq: 0, Releases: []store.ReleaseCount{{Pod: a.Pod, N: 1}}}); err != nil || n != 1 {
			t.Fatalf("release %d after SCRIPT FLUSH: %d %v", i, n, err)
		}
	}
}

// A store without restart detection builds its own commands: the run id
// check travels in them, and the original must keep its own.
func TestStoreCopiesKeepTheirRunIDCheck(t *testing.T) {
	rdb := redistest.Start(t).Client()
	ctx := context.Background()
	s := store.NewStore(rdb, "wsgate")
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	// The copy is the first to build e1's commands.
	if _, err := s.WithoutRestartDetection().Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour}); err != nil {
		t.Fatal(err)
	}
	epoch := storetest.EpochOf(t, s, "chat", "e1")
	if a, err := s.AdmitOne(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicyPack, Instance: "e1", Epoch: epoch, Now: storetest.T0}); err != nil || a.Pod == "" {
		t.Fatalf("admit through the original after its copy: %+v %v (the copy's run id check leaked)", a, err)
	}
}

// Admit with releases leaves Redis as Release then Admit leave it, and answers
// as they do: checked on random loads, releases (some more than the
// instance holds, some pending, some stale) and batch sizes, on miniredis
// and a real redis-server.
func TestAdmitReleaseIsReleaseThenAdmit(t *testing.T) { storetest.Backends(t, checkAdmitRelease) }

func checkAdmitRelease(t *testing.T, _ *store.Store, b storetest.Backend) {
	ctx, rdb := context.Background(), b.Client
	rng := rand.New(rand.NewPCG(3, 4))
	stores := map[string]*store.Store{"apart": b.Store("apart"), "together": b.Store("together")}
	type state struct {
		avail, load, inst, pend string
		summary                 store.Summary
		pods                    []string
		reason                  store.Reason
		released                int
	}
	dump := func(s *store.Store, fleet string) (st state) {
		p := s.Keys(fleet)
		for key, out := range map[string]*string{p.Avail(): &st.avail, p.Load(): &st.load} {
			z, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			*out = fmt.Sprint(z)
		}
		for key, out := range map[string]*string{p.Inst("e1"): &st.inst, p.Pend("e1"): &st.pend} {
			h, err := rdb.HGetAll(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			*out = fmt.Sprint(h)
		}
		st.summary = storetest.Summary(t, s, fleet, storetest.T0)
		st.summary.Epoch, st.summary.RedisNow = "", time.Time{} // the stores' own
		return st
	}
	for round := range 60 {
		fleet := fmt.Sprintf("r%d", round)
		policy := []fleets.Policy{fleets.PolicyPack, fleets.PolicySpread}[round%2]
		limit := 1 + rng.IntN(4)
		var addrs []string
		var mine, others []store.PodCount
		var rs []store.ReleaseCount
		for p := range 1 + rng.IntN(5) {
			addr := fmt.Sprintf("10.0.0.%d:80", p)
			addrs = append(addrs, addr)
			held := rng.IntN(limit + 1)
			if held > 0 {
				mine = append(mine, store.PodCount{Pod: addr, Live: held, Established: rng.IntN(held + 1)})
			}
			if o := rng.IntN(limit - held + 1); o > 0 {
				others = append(others, store.PodCount{Pod: addr, Live: o, Established: o})
			}
			if n := rng.IntN(held + 2); n > 0 { // at times one more than it holds
				rs = append(rs, store.ReleaseCount{Pod: addr, N: n, Pending: rng.IntN(n + 1)})
			}
		}
		seq := uint64(1 + rng.IntN(2)) // 1: stale, below the heartbeat's 2
		n := rng.IntN(8)
		got := map[string]state{}
		for prefix, s := range stores {
			storetest.SetPods(t, s, fleet, storetest.Pods(addrs...))
			if _, err := s.Sync(ctx, store.SyncRequest{Fleet: fleet, Instance: "other", Lease: 1 << 40, Counts: others}); err != nil {
				t.Fatal(err)
			}
			epoch := storetest.EpochOf(t, s, fleet, "e1")
			if _, err := s.Sync(ctx, store.SyncRequest{Fleet: fleet, Instance: "e1", Lease: 1 << 40, Seq: 2, Counts: mine}); err != nil {
				t.Fatal(err)
			}
			var a store.AdmitReply
			var released int
			var err error
			if prefix == "apart" {
				if released, err = s.Release(ctx, store.ReleaseRequest{Fleet: fleet, Instance: "e1", Epoch: epoch, Seq: seq, Releases: rs}); err == nil {
					a, err = s.Admit(ctx, store.AdmitRequest{Fleet: fleet, MaxPerPod: limit, Policy: policy, Instance: "e1", Epoch: epoch, Now: storetest.T0, N: n})
				}
			} else {
				a, err = s.Admit(ctx, store.AdmitRequest{Fleet: fleet, MaxPerPod: limit, Policy: policy, Instance: "e1", Epoch: epoch, Now: storetest.T0, N: n, Seq: seq, Releases: rs})
				released = a.Released
			}
			if err != nil || a.Fence != "" {
				t.Fatalf("round %d, %s: %+v %v", round, prefix, a, err)
			}
			st := dump(s, fleet)
			st.pods, st.reason, st.released = a.Pods, a.Reason, released
			slices.Sort(st.pods)
			got[prefix] = st
		}
		apart, together := got["apart"], got["together"]
		desc := fmt.Sprintf("round %d: %s, cap %d, holds %v, others %v, releases %v at seq %d, %d admissions", round, policy, limit, mine, others, rs, seq, n)
		if policy == fleets.PolicySpread {
			// Which of equally loaded pods gets a last one may differ.
			apart.avail, together.avail, apart.inst, together.inst, apart.pods, together.pods = "", "", "", "", nil, nil
		}
		if !reflect.DeepEqual(apart, together) {
			t.Errorf("%s:\n  release, then admit: %+v\n  in one call:         %+v", desc, apart, together)
		}
	}
}

// An admit call whose epoch Redis refuses applies none of the releases it
// carries; one refused as recovering applies them (as a release call
// would), and grants nothing.
func TestAdmitReleaseRefused(t *testing.T) {
	rdb := redistest.Start(t).Client()
	ctx := context.Background()
	s := store.NewStore(rdb, "wsgate")
	storetest.SetPods(t, s, "chat", storetest.Pods("10.0.0.1:80"))
	if a := storetest.Admit(t, s, "chat", 5, fleets.PolicyPack, "e1", storetest.T0); a.Pod == "" {
		t.Fatal("not admitted")
	}
	rs := store.ReleaseCount{Pod: "10.0.0.1:80", N: 1}
	a, err := s.Admit(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicyPack, Instance: "e1", Epoch: "another-epoch", Now: storetest.T0, N: 1, Seq: 0, Releases: []store.ReleaseCount{rs}})
	if !errors.Is(err, store.ErrEpochFenced) || a.Fence != store.FenceEpoch || a.Released != 0 {
		t.Fatalf("with another epoch: %+v, %v; want fenced (epoch) and ErrEpochFenced", a, err)
	}
	if live := storetest.Counted(t, s, "chat"); live != 1 {
		t.Fatalf("Redis counts %d after a fenced call; want 1: nothing released", live)
	}
	// A new epoch, still in its recovery wait: e1 syncs what it holds.
	if err := rdb.Del(ctx, s.Keys("chat").Epoch()).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, RecoveryWait: time.Hour, Seq: 1,
		Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 1, Established: 1}}})
	if err != nil || res.Recovering == 0 {
		t.Fatalf("sync: %+v %v; want a recovery wait", res, err)
	}
	a, err = s.Admit(ctx, store.AdmitRequest{Fleet: "chat", MaxPerPod: 5, Policy: fleets.PolicyPack, Instance: "e1", Epoch: res.Epoch, Now: storetest.T0, N: 1, Seq: 1, Releases: []store.ReleaseCount{rs}})
	if err != nil || a.Fence != store.FenceRecovering || a.Released != 1 {
		t.Fatalf("in the recovery wait: %+v, %v; want recovering and 1 released", a, err)
	}
	if live := storetest.Counted(t, s, "chat"); live != 0 {
		t.Fatalf("Redis counts %d after the release in the recovery wait; want 0", live)
	}
}
