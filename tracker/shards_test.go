package tracker_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// shardedCfg is fleetCfg with shards.
func shardedCfg(name string, shards, cap int, pods ...string) fleets.Fleet {
	fc := fleetCfg(name, cap, pods...)
	fc.Shards = shards
	return fc
}

// startShards is startReal for trackers of sharded fleets: the recovery
// wait of every group's new epoch passes.
func startShards(t *testing.T, clk *clock, trs ...*tracker.Tracker) {
	t.Helper()
	heartbeat(t, trs...)
	clk.Advance(trs[0].Config().InstanceTTL)
	heartbeat(t, trs...)
	for _, fc := range trs[0].Config().Fleets {
		for _, g := range fc.GroupNames() {
			if err := trs[0].Store().AwaitRecovery(context.Background(), g); err != nil {
				t.Fatal(err)
			}
		}
	}
	heartbeat(t, trs...)
}

// groupCounts is what Redis counts per pod in group, all instances: a
// pod's count is in avail while placeable, in load otherwise.
func groupCounts(t *testing.T, rdb redis.UniversalClient, tr *tracker.Tracker, group string) map[string]float64 {
	t.Helper()
	k := tr.Store().Keys(group)
	out := map[string]float64{}
	for _, key := range []string{k.Avail(), k.Load()} {
		zs, err := rdb.ZRangeWithScores(context.Background(), key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			out[z.Member.(string)] += z.Score
		}
	}
	return out
}

// TestShardsSpreadAdmissionsAndKeepTheCap: three trackers churn on a fleet
// of 3 shards on a real redis-server. Admissions land in every group, each
// in its pod's group; no pod ever holds more than the cap (counted by the
// test from the trackers' results and read from Redis, where no pod is
// counted outside its group); every release reaches the group it was
// admitted in; each group's registry holds its static pods only.
func TestShardsSpreadAdmissionsAndKeepTheCap(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	pods := podAddrs(12)
	const shards, cap, instances, workers, rounds = 3, 2, 3, 32, 40
	var trs []*tracker.Tracker
	for i := range instances {
		trs = append(trs, newTracker(t, rdb, fmt.Sprintf("e%d", i), clk, tracker.FallbackShare, shardedCfg("chat", shards, cap, pods...)))
	}
	startShards(t, clk, trs...)
	groups := trs[0].Config().Fleets[0].GroupNames()

	for k, g := range groups {
		reg, err := rdb.HKeys(context.Background(), trs[0].Store().Keys(g).Pods()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(reg) == 0 {
			t.Fatalf("group %s has no pods: pick pods that hash into every group", g)
		}
		for _, p := range reg {
			if fleets.GroupOf(p, shards) != k {
				t.Errorf("pod %s is in group %s's registry; its group is %d", p, g, fleets.GroupOf(p, shards))
			}
		}
	}

	var perGroup [shards]atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var watchers sync.WaitGroup
	watchers.Add(2)
	go func() { // Redis: no pod over the cap, none outside its group
		defer watchers.Done()
		for ctx.Err() == nil {
			for k, g := range groups {
				counts := map[string]float64{}
				for _, key := range []string{trs[0].Store().Keys(g).Avail(), trs[0].Store().Keys(g).Load()} {
					zs, _ := rdb.ZRangeWithScores(ctx, key, 0, -1).Result() // an error: read again
					for _, z := range zs {
						counts[z.Member.(string)] += z.Score
					}
				}
				for pod, n := range counts {
					if n > cap {
						t.Errorf("Redis counts %v connections on %s in %s", n, pod, g)
					}
					if fleets.GroupOf(pod, shards) != k && n > 0 {
						t.Errorf("Redis counts %s in group %s; its group is %d", pod, g, fleets.GroupOf(pod, shards))
					}
				}
			}
		}
	}()
	go func() {
		defer watchers.Done()
		for ctx.Err() == nil {
			for _, tr := range trs {
				_ = tr.Heartbeat(ctx)
			}
		}
	}()
	admitted, rejected, _ := churn(t, ctx, trs, workers, rounds, cap, func(res tracker.Result) {
		perGroup[fleets.GroupOf(res.Pod, shards)].Add(1)
	})
	cancel()
	watchers.Wait()
	if admitted == 0 || rejected == 0 {
		t.Fatalf("admitted %d, rejected %d: the race never reached the cap", admitted, rejected)
	}
	for k := range perGroup {
		if perGroup[k].Load() == 0 {
			t.Errorf("group %s admitted nothing (per group: %v %v %v)", groups[k], perGroup[0].Load(), perGroup[1].Load(), perGroup[2].Load())
		}
	}
	// Every release went to its group: once published, Redis counts
	// nothing in any group.
	heartbeat(t, trs...)
	for _, g := range groups {
		for pod, n := range groupCounts(t, rdb, trs[0], g) {
			if n != 0 {
				t.Errorf("after every release, Redis counts %v on %s in %s", n, pod, g)
			}
		}
	}
}

// TestShardsReleaseToTheGroupOfAdmission: a connection is counted in its
// pod's group only, for this instance, and its release empties it there.
func TestShardsReleaseToTheGroupOfAdmission(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, shardedCfg("chat", 3, 1, podAddrs(12)...))
	startShards(t, clk, tr)
	groups := tr.Config().Fleets[0].GroupNames()
	tracker.SetReuse(tr, "chat", false)
	var conns []tracker.Result
	seen := map[int]bool{}
	for len(seen) < 3 {
		res := admit(t, tr, "chat")
		if !res.Admitted || res.Fallback {
			t.Fatalf("admission %d: %+v", len(conns), res)
		}
		conns = append(conns, res)
		seen[fleets.GroupOf(res.Pod, 3)] = true
	}
	for _, c := range conns {
		k := fleets.GroupOf(c.Pod, 3)
		for j, g := range groups {
			mine, err := rdb.HGet(context.Background(), tr.Store().Keys(g).Inst("e1"), c.Pod).Int()
			if err != nil && err != redis.Nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[j == k]; mine != want {
				t.Errorf("pod %s (group %d): group %s counts %d for the instance, want %d", c.Pod, k, g, mine, want)
			}
		}
	}
	for _, c := range conns {
		release(t, tr, c.Conn)
	}
	for _, g := range groups {
		for pod, n := range groupCounts(t, rdb, tr, g) {
			if n != 0 {
				t.Errorf("after the releases' calls, %s counts %v on %s", g, n, pod)
			}
		}
	}
}

// TestShardsRateLimitIsOneBucket: the rate limit is one token bucket per
// fleet and tracker, not one per group: of 20 admissions at once, the
// burst of 5 is admitted, and those 5 landed in every group (two pods of
// cap 1 per group: no group holds 5), so a bucket per group would have
// admitted more; a second later the bucket has refilled one token, not one
// per group.
func TestShardsRateLimitIsOneBucket(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	var pods []string
	per := map[int]int{}
	for _, p := range podAddrs(40) {
		if g := fleets.GroupOf(p, 3); per[g] < 2 {
			per[g]++
			pods = append(pods, p)
		}
	}
	fc := shardedCfg("chat", 3, 1, pods...)
	fc.RatePerSecond, fc.Burst = 1, 5
	tr := newTracker(t, srv.Client(), "e1", clk, tracker.FallbackShare, fc)
	startShards(t, clk, tr)
	burst := func(n int) (ok, limited int) {
		t.Helper()
		for range n {
			switch res := admit(t, tr, "chat"); {
			case res.Admitted:
				ok++
			case res.Reason == "rate_limit":
				limited++
			default:
				t.Fatalf("refused for another reason: %+v", res)
			}
		}
		return ok, limited
	}
	if ok, limited := burst(20); ok != 5 || limited != 15 {
		t.Fatalf("admitted %d, rate-limited %d; want 5 and 15 (one bucket of 5)", ok, limited)
	}
	for _, g := range tr.Status().Fleets[0].Groups {
		if g.Connections == 0 {
			t.Errorf("group %s took none of the 5 admissions: the test shows nothing of the groups' buckets", g.Fleet)
		}
	}
	clk.Advance(time.Second)
	if ok, _ := burst(3); ok != 1 {
		t.Errorf("a second later, %d admitted; want 1 (one token refilled)", ok)
	}
}

// TestApplyRefusesAShardsChange: a running fleet's shards cannot change;
// the whole configuration is refused and the old one stays.
func TestApplyRefusesAShardsChange(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fleetCfg("chat", 2, podAddrs(3)...), fleetCfg("game", 2, podAddrs(3)...))
	start(t, mr, clk, tr)
	_, err := tr.Apply([]fleets.Fleet{shardedCfg("chat", 3, 5, podAddrs(3)...), fleetCfg("game", 9, podAddrs(3)...)})
	if err == nil || !strings.Contains(err.Error(), "shards 1 -> 3") || !strings.Contains(err.Error(), "Sharded fleets") {
		t.Fatalf("apply changing shards: %v; want a refusal naming the change and what to do", err)
	}
	for _, fc := range tr.Config().Fleets {
		if fc.MaxConnectionsPerPod != 2 || fc.Shards != 1 {
			t.Errorf("after a refused apply, %s is %+v; want it unchanged", fc.Name, fc)
		}
	}
}

// TestLayoutGuard: a tracker whose shards differ from the layout Redis
// recorded admits nothing through Redis (its fallback only, which has no
// slot of its own), says so in /status and its gauge, and writes no
// registry; the other way round too. Once they agree, it admits.
func TestLayoutGuard(t *testing.T) {
	for _, tc := range []struct{ first, second int }{{1, 3}, {3, 1}} {
		t.Run(fmt.Sprintf("recorded %d, then %d", tc.first, tc.second), func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client()
			clk := newClock()
			pods := podAddrs(12)
			a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, shardedCfg("chat", tc.first, 2, pods...))
			startShards(t, clk, a)
			var held []string
			res := admit(t, a, "chat")
			if !res.Admitted || res.Fallback {
				t.Fatalf("the first layout's tracker: %+v", res)
			}
			held = append(held, res.Conn)
			reg := func(g string) int64 {
				n, err := rdb.HLen(context.Background(), a.Store().Keys(g).Pods()).Result()
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			before := map[string]int64{}
			for k := range max(tc.first, tc.second) {
				g := fleets.GroupName("chat", k)
				before[g] = reg(g)
			}

			b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, shardedCfg("chat", tc.second, 2, pods...))
			heartbeat(t, b)
			clk.Advance(b.Config().InstanceTTL)
			heartbeat(t, a, b)
			heartbeat(t, a, b)
			for range 10 {
				res := admit(t, b, "chat")
				if res.Admitted || !res.Fallback {
					t.Fatalf("a tracker with shards %d against a layout of %d: %+v; want the fallback's refusal", tc.second, tc.first, res)
				}
			}
			st := b.Status().Fleets[0]
			if !st.LayoutMismatch || st.RedisLayout != tc.first || st.Granting {
				t.Errorf("status: %+v; want the mismatch with %d, not granting", st, tc.first)
			}
			if got := testutil.ToFloat64(b.Metrics().LayoutMismatch.WithLabelValues("chat")); got != 1 {
				t.Errorf("wsgate_tracker_layout_mismatch = %v, want 1", got)
			}
			if rec, mismatch, err := b.LayoutMismatch("chat"); err != nil || !mismatch || rec != tc.first {
				t.Errorf("LayoutMismatch = %d %v %v", rec, mismatch, err)
			}
			for g, n := range before {
				if got := reg(g); got != n {
					t.Errorf("registry of %s: %d pods, was %d: the refused tracker wrote it", g, got, n)
				}
			}
			if res := admit(t, a, "chat"); !res.Admitted || res.Fallback {
				t.Errorf("the recorded layout's tracker: %+v", res)
			} else {
				held = append(held, res.Conn)
			}
			if got := testutil.ToFloat64(a.Metrics().LayoutMismatch.WithLabelValues("chat")); got != 0 {
				t.Errorf("the agreeing tracker's wsgate_tracker_layout_mismatch = %v, want 0", got)
			}

			// The operator's offline change, as forget-layout does it: the
			// fleet drained, the layout frozen (both trackers refuse, a's
			// fallback too), the drain checked again, then "record the
			// next": b's is recorded at its next heartbeat, and a is
			// refused instead.
			for _, id := range held {
				release(t, a, id)
			}
			if err := b.Store().SetLayout(context.Background(), "chat", store.LayoutFrozen); err != nil {
				t.Fatal(err)
			}
			heartbeat(t, a, b)
			if res := admit(t, a, "chat"); res.Admitted {
				t.Errorf("admitted under a frozen layout: %+v", res)
			}
			for k := range max(tc.first, tc.second) {
				g := fleets.GroupName("chat", k)
				if sum, err := a.Store().Summary(context.Background(), g, time.Now()); err != nil || sum.Live != 0 {
					t.Fatalf("group %s after the drain: %+v %v", g, sum, err)
				}
			}
			if err := b.Store().SetLayout(context.Background(), "chat", store.LayoutNext); err != nil {
				t.Fatal(err)
			}
			heartbeat(t, b, a)
			if st := b.Status().Fleets[0]; st.LayoutMismatch {
				t.Errorf("after the layout was forgotten, b's status: %+v", st)
			}
			if st := a.Status().Fleets[0]; !st.LayoutMismatch || st.RedisLayout != tc.second {
				t.Errorf("after b recorded its layout, a's status: %+v; want the mismatch", st)
			}
		})
	}
}

// TestShardsAdoptIntoThePodsGroup: a restarted tracker adopts the
// connections Envoy's access log names into their pods' groups, where its
// previous run left them counted, and refuses a pod outside the fleet's
// registry. The fleet's admission metrics carry the fleet's name only.
func TestShardsAdoptIntoThePodsGroup(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	fc := shardedCfg("chat", 3, 2, podAddrs(12)...)
	before := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc)
	startShards(t, clk, before)
	var conns []tracker.Result
	groups := map[int]bool{}
	for len(groups) < 3 || len(conns) < 6 {
		res := admit(t, before, "chat")
		if !res.Admitted {
			t.Fatalf("admission %d: %+v", len(conns), res)
		}
		if err := before.Establish(res.Conn); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, res)
		groups[fleets.GroupOf(res.Pod, 3)] = true
	}
	heartbeat(t, before)
	for _, name := range []string{"chat#1", "chat#2"} {
		if n := testutil.CollectAndCount(before.Metrics().Admissions, "wsgate_tracker_admissions_total"); n == 0 {
			t.Fatal("no admission series")
		}
		if got := testutil.ToFloat64(before.Metrics().Admissions.WithLabelValues(name, "admitted", "")); got != 0 {
			t.Errorf("admissions counted under the group's name %s: %v", name, got)
		}
	}
	if got := testutil.ToFloat64(before.Metrics().Admissions.WithLabelValues("chat", "admitted", "")); got != float64(len(conns)) {
		t.Errorf("admissions of chat: %v, want %d", got, len(conns))
	}

	after := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, fc) // the restart
	heartbeat(t, after)
	for _, c := range conns {
		if err := after.Adopt("chat", c.Conn, c.Pod, false); err != nil {
			t.Fatalf("adopting %s on %s: %v", c.Conn, c.Pod, err)
		}
	}
	if err := after.Adopt("chat", conns[0].Conn+"0", "10.9.9.9:80", false); err == nil || !strings.Contains(err.Error(), "registry") {
		t.Errorf("adopting on a pod outside the registry: %v", err)
	}
	want := map[string]int{}
	for _, c := range conns {
		want[c.Pod]++
	}
	got, err := after.LocalCounts("chat")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after adoption the tracker holds %v, want %v", got, want)
	}
	heartbeat(t, after)
	for k, g := range fc.GroupNames() {
		for pod, n := range groupCounts(t, rdb, after, g) {
			if fleets.GroupOf(pod, 3) != k && n > 0 {
				t.Errorf("group %s counts %v on %s, a pod of group %d", g, n, pod, fleets.GroupOf(pod, 3))
			}
			if int(n) != want[pod] {
				t.Errorf("group %s counts %v on %s, want %d", g, n, pod, want[pod])
			}
		}
	}
}

// TestShardsApplyWritesEachGroupsPods: static pods a running sharded
// fleet gains or loses go to their groups' registries at the next
// heartbeat, and the new cap applies in every group.
func TestShardsApplyWritesEachGroupsPods(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	pods := podAddrs(12)
	tr := newTracker(t, rdb, "e1", clk, tracker.FallbackShare, shardedCfg("chat", 3, 1, pods[:6]...))
	startShards(t, clk, tr)
	ch, err := tr.Apply([]fleets.Fleet{shardedCfg("chat", 3, 2, pods[3:]...)})
	if err != nil || len(ch.Changed) != 1 {
		t.Fatalf("apply: %+v %v", ch, err)
	}
	heartbeat(t, tr)
	for k, g := range tr.Config().Fleets[0].GroupNames() {
		reg, err := rdb.HKeys(context.Background(), tr.Store().Keys(g).Pods()).Result()
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, p := range pods[3:] {
			if fleets.GroupOf(p, 3) == k {
				want = append(want, p)
			}
		}
		if fmt.Sprint(sorted(reg)) != fmt.Sprint(sorted(want)) {
			t.Errorf("registry of %s after apply: %v, want %v", g, reg, want)
		}
	}
	held := map[string]int{}
	for {
		res := admit(t, tr, "chat")
		if !res.Admitted {
			break
		}
		held[res.Pod]++
	}
	if len(held) != 9 {
		t.Errorf("admitted on %d pods, want the 9 now configured: %v", len(held), held)
	}
	for pod, n := range held {
		if n != 2 {
			t.Errorf("pod %s took %d, want the new cap 2", pod, n)
		}
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// TestLayoutMismatchIsLoggedOncePerChange: the guard's error is logged
// when the mismatch begins or Redis' layout changes, not per heartbeat,
// and names the fleet, both layouts and what to do.
func TestLayoutMismatchIsLoggedOncePerChange(t *testing.T) {
	rdb, _ := miniClient(t)
	clk := newClock()
	var logs bytes.Buffer
	var mu sync.Mutex
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Fleets: []fleets.Fleet{shardedCfg("chat", 3, 2, podAddrs(6)...)},
		Heartbeat: time.Second, InstanceTTL: 5 * time.Second, RedisTimeout: time.Second},
		storeOn(rdb), tracker.WithClock(clk.Now), tracker.WithLogger(slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	st := tr.Store()
	if _, err := st.Layout(context.Background(), "chat", 2); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(logs.String(), "differ from the layout Redis recorded")
	}
	for range 3 {
		heartbeat(t, tr)
	}
	if n := count(); n != 1 {
		t.Fatalf("after 3 heartbeats against another layout, %d error lines; want 1:\n%s", n, logs.String())
	}
	mu.Lock()
	line := logs.String()
	mu.Unlock()
	for _, want := range []string{"fleet=chat", "shards=3", "redis_layout=2", "forget-layout"} {
		if !strings.Contains(line, want) {
			t.Errorf("the error line lacks %q:\n%s", want, line)
		}
	}
	if err := st.SetLayout(context.Background(), "chat", store.LayoutNext); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Layout(context.Background(), "chat", 4); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, tr)
	heartbeat(t, tr)
	if n := count(); n != 2 {
		t.Fatalf("after Redis' layout changed, %d error lines; want 2", n)
	}
	if err := tr.SetStaticPods(context.Background(), "chat"); err == nil || !strings.Contains(err.Error(), "layout of 4") {
		t.Errorf("writing static pods against another layout: %v; want it refused", err)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
