package tracker_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// pickCalls is how many range reads (the admit script's pick) Redis ran.
func pickCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	c := redistest.CommandCalls(t, rdb)
	return c["zrangebyscore"] + c["zrevrangebyscore"]
}

// hintTrackers are n trackers of fleet chat (cap, policy, four pods) on a
// real Redis, granting, each with a view of the empty fleet.
func hintTrackers(t *testing.T, rdb *redis.Client, policy fleets.Policy, cap, n int) []*tracker.Tracker {
	t.Helper()
	fc := fleetCfg("chat", cap, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
	fc.Policy = policy
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var trs []*tracker.Tracker
	for i := range n {
		tr, err := tracker.New(tracker.Config{InstanceID: "e" + strconv.Itoa(i), Heartbeat: 100 * time.Millisecond, InstanceTTL: time.Second,
			RedisTimeout: 5 * time.Second, EstablishTimeout: time.Minute, Fleets: []fleets.Fleet{fc}}, store.NewStore(rdb, "wsgate"))
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.AwaitGranting(ctx); err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
	}
	heartbeat(t, trs...) // every view sees every pod
	return trs
}

// podCounts is what Redis counts on each of the four pods.
func podCounts(t *testing.T, rdb *redis.Client) []int {
	t.Helper()
	out := make([]int, 4)
	for i := range out {
		n, err := rdb.ZScore(context.Background(), store.NewStore(nil, "wsgate").Keys("chat").Avail(), "10.0.0."+strconv.Itoa(i+1)+":80").Result()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		out[i] = int(n)
	}
	return out
}

// Admissions that go to Redis one at a time carry the tracker's guess of
// the pick, and the script takes it: no range read, and the fleet fills as
// the policy says, a round of one connection per pod at a time under
// spread, one pod after the other under pack.
func TestHintedAdmissionsFollowThePolicy(t *testing.T) {
	for _, tc := range []struct {
		policy fleets.Policy
		after4 []int // the counts after four admissions
	}{
		{fleets.PolicySpread, []int{1, 1, 1, 1}},
		{fleets.PolicyPack, []int{0, 0, 1, 3}}, // highest name first, as the pick
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			rdb := redistest.Start(t).Client()
			tr := hintTrackers(t, rdb, tc.policy, 3, 1)[0]
			picks := pickCalls(t, rdb)
			for i := range 4 {
				if res := admit(t, tr, "chat"); !res.Admitted || res.Reused {
					t.Fatalf("admission %d: %+v", i, res)
				}
			}
			if got := podCounts(t, rdb); !slices.Equal(got, tc.after4) {
				t.Errorf("counts after 4 admissions %v; want %v", got, tc.after4)
			}
			if got := pickCalls(t, rdb) - picks; got != 0 {
				t.Errorf("4 admissions ran the pick %d times; want none: each took its hint", got)
			}
			if got := testutil.ToFloat64(tr.Metrics().Hints.WithLabelValues("chat", "taken")); got != 4 {
				t.Errorf("admit_hints_total{outcome=taken} %v; want 4", got)
			}
		})
	}
}

// Several trackers guessing from the same view: a guess another tracker's
// admissions made wrong is refused, the pick decides, and the fleet fills
// as evenly as before, to the cap and not one beyond.
func TestHintsOfSeveralTrackersKeepTheCap(t *testing.T) {
	rdb := redistest.Start(t).Client()
	trs := hintTrackers(t, rdb, fleets.PolicySpread, 3, 3)
	for i := range 12 {
		tr := trs[i%3]
		if res := admit(t, tr, "chat"); !res.Admitted {
			t.Fatalf("admission %d refused with room left: %+v", i, res)
		}
		counts := podCounts(t, rdb)
		lo, hi := counts[0], counts[0]
		for _, n := range counts {
			lo, hi = min(lo, n), max(hi, n)
		}
		// spread within one of the emptiest, as far as the view goes: the
		// view saw every pod empty, so no pod has more than two before
		// every pod has one.
		if hi > 3 || (lo == 0 && hi > 2) {
			t.Fatalf("after admission %d the counts are %v", i, counts)
		}
	}
	if got := podCounts(t, rdb); !slices.Equal(got, []int{3, 3, 3, 3}) {
		t.Fatalf("counts %v; want every pod at the cap", got)
	}
	// The first two admissions (each its tracker's first guess, of a pod
	// at most at 1) were granted on their guesses.
	taken := 0.0
	for _, tr := range trs {
		taken += testutil.ToFloat64(tr.Metrics().Hints.WithLabelValues("chat", "taken"))
	}
	if taken < 2 {
		t.Errorf("%v guesses taken; want at least 2", taken)
	}
	for _, tr := range trs {
		if res := admit(t, tr, "chat"); res.Admitted {
			t.Fatalf("admitted beyond the cap: %+v", res)
		}
	}
}
