package tracker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

func podAddrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.0.%d.%d:8080", i/200, i%200+1)
	}
	return out
}

// TestNoOverAdmission races 4 instances x 64 goroutines of admissions and
// releases (heartbeats running too) on 10 pods with cap 2.
func TestNoOverAdmission(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	pods := podAddrs(10)
	const cap, instances, workers, rounds = 2, 4, 64, 40
	var trs []*tracker.Tracker
	for i := 0; i < instances; i++ {
		tr := newTracker(t, srv.Client(), fmt.Sprintf("e%d", i), clk, tracker.FallbackShare, fleetCfg("chat", cap, pods...))
		trs = append(trs, tr)
	}
	startReal(t, clk, trs...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var violations atomic.Int64
	limit := float64(cap)
	var watchers sync.WaitGroup
	watchers.Add(2)
	go func() { // Redis never shows a pod over the cap
		defer watchers.Done()
		rdb := srv.Client()
		p := trs[0].Store().Keys("chat")
		checks := 0
		for ctx.Err() == nil {
			// A pod's count is in avail while placeable, in load otherwise.
			for _, key := range []string{p.Avail(), p.Load()} {
				counts, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
				if err != nil {
					continue
				}
				checks++
				for _, z := range counts {
					if z.Score > limit {
						violations.Add(1)
						t.Errorf("Redis shows %v connections on %v", z.Score, z.Member)
					}
				}
			}
		}
		if checks < 10 {
			t.Errorf("the watcher read Redis only %d times", checks)
		}
	}()
	go func() { // heartbeats interleave with admissions
		defer watchers.Done()
		for ctx.Err() == nil {
			for _, tr := range trs {
				_ = tr.Heartbeat(ctx)
			}
		}
	}()

	admitted, rejected, over := churn(t, ctx, trs, workers, rounds, cap, nil)
	violations.Add(over)
	cancel()
	watchers.Wait()
	if admitted == 0 || rejected == 0 {
		t.Fatalf("admitted %d, rejected %d: the race never reached the cap", admitted, rejected)
	}
	heartbeat(t, trs...)
	sum, err := trs[0].Store().Summary(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Live != 0 || len(sumLocal(t, "chat", trs...)) != 0 {
		t.Errorf("after all releases Redis live=%d, local %v; want 0", sum.Live, sumLocal(t, "chat", trs...))
	}
	t.Logf("admitted %d, rejected %d, violations %d", admitted, rejected, violations.Load())
}

// churn races workers goroutines per tracker, each admitting a connection
// of fleet chat and releasing it, rounds times, while Redis is up (a
// fallback is an error). held counts what the test itself holds: raised
// after an admission returned, lowered before its release starts, so held
// <= Redis <= cap; a pod above cap is an error, counted in over. seen, if
// not nil, is told every admission.
func churn(t *testing.T, ctx context.Context, trs []*tracker.Tracker, workers, rounds int, cap int64, seen func(tracker.Result)) (admitted, rejected, over int64) {
	var held sync.Map // pod -> *atomic.Int64
	counter := func(pod string) *atomic.Int64 {
		v, _ := held.LoadOrStore(pod, new(atomic.Int64))
		return v.(*atomic.Int64)
	}
	var wg sync.WaitGroup
	var nAdmitted, nRejected, nOver atomic.Int64
	for i := range len(trs) * workers {
		tr := trs[i%len(trs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				res, err := tr.Admit(ctx, "chat")
				if err != nil {
					t.Error(err)
					return
				}
				if res.Fallback || res.Fleet != "chat" {
					t.Errorf("admission fell back with Redis up, or names no fleet: %+v", res)
					return
				}
				if !res.Admitted {
					nRejected.Add(1)
					continue
				}
				nAdmitted.Add(1)
				if seen != nil {
					seen(res)
				}
				if n := counter(res.Pod).Add(1); n > cap {
					nOver.Add(1)
					t.Errorf("pod %s holds %d admitted connections", res.Pod, n)
				}
				counter(res.Pod).Add(-1)
				release(t, tr, res.Conn)
			}
		}()
	}
	wg.Wait()
	return nAdmitted.Load(), nRejected.Load(), nOver.Load()
}

// TestRedisRestart kills Redis under load, keeps admitting through the
// share fallback, then restarts it empty: one heartbeat restores the truth.
func TestRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	pods := podAddrs(10)
	const cap = 2
	var trs []*tracker.Tracker
	for i := 0; i < 3; i++ {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		trs = append(trs, newTracker(t, rdb, fmt.Sprintf("e%d", i), clk, tracker.FallbackShare, fleetCfg("chat", cap, pods...)))
	}
	startReal(t, clk, trs...)
	before, err := trs[0].Store().Summary(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	var conns [][]string
	for i, tr := range trs {
		conns = append(conns, nil)
		for j := 0; j < 3; j++ {
			if r := admit(t, tr, "chat"); r.Admitted {
				conns[i] = append(conns[i], r.Conn)
			}
		}
	}
	for round := 0; round < 3; round++ { // every instance knows all the others
		clk.Advance(time.Second)
		heartbeat(t, trs...)
	}

	srv.Kill()
	fallbacks := 0
	for round := 0; round < 10; round++ {
		for i, tr := range trs {
			r := admit(t, tr, "chat")
			if r.Admitted {
				fallbacks++
				conns[i] = append(conns[i], r.Conn)
			}
		}
		// Releases during the outage only change local truth.
		if round == 3 {
			release(t, trs[1], conns[1][0])
			conns[1] = conns[1][1:]
		}
	}
	if fallbacks != 1 {
		t.Fatalf("%d admitted during the outage, want 1: the slot e1's release freed, which Redis still counts for it", fallbacks)
	}
	for pod, n := range sumLocal(t, "chat", trs...) {
		if n > cap {
			t.Errorf("during the outage pod %s holds %d across instances, cap %d", pod, n, cap)
		}
	}

	srv.Restart()
	clk.Advance(time.Second)
	heartbeat(t, trs...) // one heartbeat each
	after, err := trs[0].Store().Snapshot(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if after.Epoch == "" || after.Epoch == before.Epoch {
		t.Errorf("epoch after restart %q, before %q: want a new one", after.Epoch, before.Epoch)
	}
	local := sumLocal(t, "chat", trs...)
	for _, pod := range pods {
		if after.Load[pod] != local[pod] {
			t.Errorf("pod %s: Redis %d, instances %d", pod, after.Load[pod], local[pod])
		}
	}
	for i, tr := range trs {
		mine, _ := tr.LocalCounts("chat")
		for _, in := range after.Instances {
			if in.ID == fmt.Sprintf("e%d", i) && fmt.Sprint(in.Live) != fmt.Sprint(mine) {
				t.Errorf("instance e%d: Redis %v, local %v", i, in.Live, mine)
			}
		}
	}
	if len(after.Synced) != 3 || len(after.Pods) != len(pods) {
		t.Errorf("after restart synced=%v pods=%d; want all 3 instances and the static registry back", after.Synced, len(after.Pods))
	}
	// Nothing is granted during the recovery wait (one instance TTL of
	// Redis' clock); then admission through Redis resumes and respects what
	// is already held.
	if r := admit(t, trs[0], "chat"); r.Admitted {
		t.Fatalf("admitted during the recovery wait: %+v", r)
	}
	deadline := time.Now().Add(30 * time.Second)
	for r := admit(t, trs[0], "chat"); !r.Admitted || r.Fallback; r = admit(t, trs[0], "chat") {
		if time.Now().After(deadline) {
			t.Fatalf("admission through Redis did not resume after the recovery wait: %+v", r)
		}
		recoverReal(t, clk, trs...)
	}
	for i := 0; i < 30; i++ {
		if r := admit(t, trs[i%3], "chat"); r.Admitted && r.Fallback {
			t.Fatalf("still in fallback after recovery: %+v", r)
		}
	}
	for pod, n := range sumLocal(t, "chat", trs...) {
		if n > cap {
			t.Errorf("after recovery pod %s holds %d, cap %d", pod, n, cap)
		}
	}
}

// TestDeadInstanceIsReaped: an instance that stops heartbeating loses its
// connections once its lease has ended by Redis' clock and a reaper has
// watched it stand still for a lease of its own; the others' are untouched.
func TestDeadInstanceIsReaped(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	pods := podAddrs(4)
	cfg := func(id string) tracker.Config {
		return tracker.Config{InstanceID: id, Fleets: []fleets.Fleet{fleetCfg("chat", 2, pods...)},
			Heartbeat: 100 * time.Millisecond, InstanceTTL: time.Second, RedisTimeout: time.Second,
			ExpiredInstances: fleets.ExpiredReap}
	}
	alive := newTrackerCfg(t, srv.Client(), clk, cfg("alive"))
	dead := newTrackerCfg(t, srv.Client(), clk, cfg("dead"))
	startReal(t, clk, alive, dead)
	for i := 0; i < 3; i++ {
		admit(t, alive, "chat")
		admit(t, dead, "chat")
	}
	heartbeat(t, alive, dead)
	total := func() int64 {
		s, err := alive.Store().Summary(context.Background(), "chat", clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return s.Live
	}
	if got := total(); got != 6 {
		t.Fatalf("live = %d, want 6", got)
	}
	// dead stops; alive goes on. Until alive's own clock has seen dead
	// stand still for a lease, nothing changes, however late Redis' clock.
	heartbeat(t, alive)
	clk.Advance(900 * time.Millisecond)
	srvClockPasses(t, srv, 1100*time.Millisecond)
	heartbeat(t, alive)
	heartbeat(t, alive)
	if got := storetest.Counted(t, alive.Store(), "chat"); got != 6 {
		t.Fatalf("reaped before the reaper watched a full lease: Redis counts %d", got)
	}
	// The scaler counts what Redis counts: dead's slots, and so its
	// connections, until it is reaped.
	if got := total(); got != 6 {
		t.Fatalf("dead's lease ended, not reaped: the summary counts %d, want 6", got)
	}
	clk.Advance(200 * time.Millisecond)
	heartbeat(t, alive) // names dead
	heartbeat(t, alive) // reaps it
	if got := total(); got != 3 {
		t.Fatalf("dead reaped: the summary counts %d, want alive's 3", got)
	}
	snap, err := alive.Store().Snapshot(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	mine, _ := alive.LocalCounts("chat")
	if snap.Live != 3 || len(snap.Instances) != 1 || fmt.Sprint(snap.Instances[0].Live) != fmt.Sprint(mine) {
		t.Errorf("after the lease: live=%d instances=%+v; want only alive's 3 (%v)", snap.Live, snap.Instances, mine)
	}
}

// srvClockPasses waits until Redis' own clock has moved d on from now.
func srvClockPasses(t *testing.T, srv *redistest.Server, d time.Duration) {
	t.Helper()
	c := srv.Client()
	start, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for {
		now, err := c.Time(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if now.Sub(start) >= d {
			return
		}
		time.Sleep(10 * time.Millisecond) // Redis' clock has no event to await
	}
}

// TestRedisCluster runs every script on a 3-master cluster for two fleets
// whose keys live in different slots.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	clk := newClock()
	fleets := []string{"chat", "game"}
	st := store.NewStore(rdb, "wsgate")
	slot := func(key string) int64 {
		t.Helper()
		s, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if slot(st.Keys("chat").Load()) == slot(st.Keys("game").Load()) {
		t.Fatal("test fleets hash to the same slot; pick other names")
	}
	var trs []*tracker.Tracker
	for i := 0; i < 2; i++ {
		trs = append(trs, newTracker(t, rdb, fmt.Sprintf("e%d", i), clk, tracker.FallbackShare,
			fleetCfg("chat", 2, podAddrs(3)...), fleetCfg("game", 1, podAddrs(2)...)))
	}
	startReal(t, clk, trs...)
	for _, f := range fleets {
		var conns []string
		owner := map[string]*tracker.Tracker{}
		for i := 0; i < 8; i++ {
			r := admit(t, trs[i%2], f)
			if r.Fallback {
				t.Fatalf("%s: admission fell back on a healthy cluster: %+v", f, r)
			}
			if r.Admitted {
				conns = append(conns, r.Conn)
				owner[r.Conn] = trs[i%2]
			}
		}
		if len(conns) == 0 || len(conns) == 8 {
			t.Fatalf("%s: admitted %d of 8; want the cap to bite", f, len(conns))
		}
		rejected := 8 - len(conns)
		if err := owner[conns[0]].Release(ctx, conns[0]); err != nil {
			t.Fatalf("%s: release: %v", f, err)
		}
		conns = conns[1:]
		heartbeat(t, trs...)
		sum, err := st.Summary(ctx, f, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		if sum.Live != int64(len(conns)) || sum.Rejections[store.ReasonCapacity].M5 != int64(rejected) || sum.Synced != 2 {
			t.Errorf("%s: summary %+v, want live %d, %d capacity rejections, 2 synced", f, sum, len(conns), rejected)
		}
		if _, err := st.Snapshot(ctx, f, clk.Now()); err != nil {
			t.Errorf("%s: snapshot: %v", f, err)
		}
		if _, err := st.Reap(ctx, f, []string{"e0", "e1"}); err != nil {
			t.Errorf("%s: reap: %v", f, err)
		}
	}
	// Every key of a fleet lives in that fleet's slot.
	err := rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		keys, err := node.Keys(ctx, "*").Result()
		if err != nil {
			return err
		}
		for _, k := range keys {
			for _, f := range fleets {
				if strings.HasPrefix(k, st.Keys(f).Prefix()) && slot(k) != slot(st.Keys(f).Load()) {
					t.Errorf("key %s is not in fleet %s's slot", k, f)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReleasesRacingHeartbeatsDoNotUndercount: a heartbeat that runs
// between a release's local update and its script must not let the script
// take the connection off a second time.
func TestReleasesRacingHeartbeatsDoNotUndercount(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	tr := newTracker(t, srv.Client(), "e1", clk, tracker.FallbackShare, fleetCfg("chat", 1000, podAddrs(4)...))
	startReal(t, clk, tr)
	var conns []string
	for i := 0; i < 400; i++ {
		conns = append(conns, admit(t, tr, "chat").Conn)
	}
	heartbeat(t, tr)
	// The heartbeats end between two, never by cancelling one: a heartbeat
	// cancelled after it numbered itself may not run, and Redis then
	// over-counts the releases it superseded until the next one (safe,
	// and not what this test is about).
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			if err := tr.Heartbeat(context.Background()); err != nil {
				t.Errorf("heartbeat: %v", err)
			}
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 300; i += 8 {
				release(t, tr, conns[i])
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	<-done
	// No heartbeat since the last release: Redis must already be right.
	sum, err := tr.Store().Summary(context.Background(), "chat", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Live != 100 {
		t.Errorf("Redis counts %d live connections after the releases, the tracker holds 100", sum.Live)
	}
}

// startReal is the trackers' first heartbeat on a real Redis, then
// recoverReal: an empty Redis may have lost its data and grants nothing for
// an instance TTL.
func startReal(t *testing.T, clk *clock, trs ...*tracker.Tracker) {
	t.Helper()
	heartbeat(t, trs...)
	recoverReal(t, clk, trs...)
}

// recoverReal lets the recovery wait of a new epoch pass on both clocks:
// the trackers' (one TTL, then a heartbeat confirms it) and Redis' own
// (awaited), then heartbeats again, since their leases in Redis ran on.
func recoverReal(t *testing.T, clk *clock, trs ...*tracker.Tracker) {
	t.Helper()
	clk.Advance(trs[0].Config().InstanceTTL)
	heartbeat(t, trs...)
	for _, f := range trs[0].Fleets() {
		if err := trs[0].Store().AwaitRecovery(context.Background(), f); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat(t, trs...)
}
