package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/wsgate/wsgate/store/storetest"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
	"github.com/wsgate/wsgate/tracker"
)

// AdmitN(n) leaves Redis as n admissions in a row leave it: the same count
// on every pod under pack, the same counts (up to which of equally loaded
// pods gets a last one) under spread, the same rejections; checked on
// random loads, caps and batch sizes, on miniredis and a real redis-server
// (whose Lua the scripts run in production).
func TestAdmitNIsAdmissionsInARow(t *testing.T) { onMiniAndReal(t, checkAdmitN) }

// onMiniAndReal runs check on miniredis and on a real redis-server (whose
// Lua the scripts run in production).
func onMiniAndReal(t *testing.T, check func(t *testing.T, rdb *redis.Client, mini bool)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		check(t, rdb, true)
	})
	t.Run("redis-server", func(t *testing.T) {
		check(t, redistest.Start(t).Client(), false)
	})
}

// twinStores are stores on rdb under each of prefixes: the same calls on
// them must leave the same state.
func twinStores(rdb *redis.Client, mini bool, prefixes ...string) map[string]*store.Store {
	stores := map[string]*store.Store{}
	for _, prefix := range prefixes {
		stores[prefix] = store.NewStore(rdb, prefix)
		if mini {
			stores[prefix] = stores[prefix].WithoutRestartDetection()
		}
	}
	return stores
}

func checkAdmitN(t *testing.T, rdb *redis.Client, mini bool) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	stores := twinStores(rdb, mini, "seq", "batch")
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
			load, err := rdb.ZRangeWithScores(ctx, s.KeyPrefix(fleet)+"avail", 0, -1).Result()
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
				a, err := s.Admit(ctx, fleet, limit, policy, "e1", epoch, storetest.T0)
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
			a, err := s.AdmitN(ctx, fleet, limit, policy, "e1", epoch, storetest.T0, n)
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

// refused is an error reply of Redis to the command itself: proof that a
// script never ran (tracker's notRun).
type refused struct{}

func (refused) Error() string { return "ERR refused by the test" }
func (refused) RedisError()   {}

// holdRelease makes the first release call wait for the test, then fail
// as refused.
type holdRelease struct {
	entered, unblock chan struct{}
	once             sync.Once
}

func (h *holdRelease) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdRelease) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *holdRelease) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		// release.lua is the script with 7 keys.
		if a := cmd.Args(); cmd.Name() == "evalsha" && len(a) > 2 && fmt.Sprint(a[2]) == "7" {
			first := false
			h.once.Do(func() { first = true })
			if first {
				close(h.entered)
				<-h.unblock
				cmd.SetErr(refused{})
				return refused{}
			}
		}
		return next(ctx, cmd)
	}
}

// A queued release that Redis refused gives the slot back to the
// instance's entitlement only if no heartbeat was sent since: a heartbeat
// that ran meanwhile published the pod without it, and the share fallback
// must then not reuse a slot Redis no longer counts for it.
func TestRefusedReleaseAfterAHeartbeatGivesNothingBack(t *testing.T) {
	rdb, mr := miniClient(t)
	hold := &holdRelease{entered: make(chan struct{}), unblock: make(chan struct{})}
	rdb.AddHook(hold)
	clk := newClock()
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fleetCfg("chat", 1, "10.0.0.1:80"))
	start(t, mr, clk, a)
	c := admit(t, a, "chat")
	if !c.Admitted {
		t.Fatalf("admit: %+v", c)
	}
	if err := a.Release(context.Background(), c.Conn); err != nil {
		t.Fatal(err)
	}
	<-hold.entered
	heartbeat(t, a) // publishes the pod empty for a
	close(hold.unblock)
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	mr.SetError("ERR outage")
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("the share fallback reused a slot Redis no longer counts for it: %+v", r)
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
		a, err := s.Admit(ctx, "chat", 5, fleets.PolicyPack, "e1", epoch, storetest.T0)
		if err != nil || a.Pod == "" {
			t.Fatalf("admit %d after SCRIPT FLUSH: %+v %v", i, a, err)
		}
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if n, err := s.Release(ctx, "chat", "e1", epoch, 0, store.ReleaseCount{Pod: a.Pod, N: 1}); err != nil || n != 1 {
			t.Fatalf("release %d after SCRIPT FLUSH: %d %v", i, n, err)
		}
	}
}

// A connection this process let go (its renewals were lost) and Adopt
// took over again is not in Redis' count for the instance until a
// heartbeat publishes it. Its release must not take another connection's
// slot off Redis.
func TestReleaseOfAnAdoptedConnectionFreesNoOtherSlot(t *testing.T) {
	a, b, _, clk := twoTrackers(t, tracker.FallbackShare) // cap 2, one pod
	x, y := established(t, a), established(t, a)
	clk.Advance(31 * time.Second) // past LeaseTTL without renewals
	heartbeat(t, a, b)            // x and y expire: a publishes the pod empty
	for _, c := range []tracker.Result{x, y} {
		if err := a.Adopt("chat", c.Conn, c.Pod, false); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat(t, a, b) // both published again: Redis counts 2 for a
	release(t, a, x.Conn)
	clk.Advance(31 * time.Second)
	if err := a.Renew(y.Conn); err != nil {
		t.Fatal(err)
	}
	if err := a.Adopt("chat", x.Conn, x.Pod, false); err != nil { // not counted in Redis
		t.Fatal(err)
	}
	release(t, a, x.Conn) // must leave y's slot counted
	for range 3 {
		admit(t, b, "chat")
	}
	if n := podHolds(t, a, b); n > 2 {
		t.Fatalf("the pod holds %d with a cap of 2", n)
	}
}

// ... and a release of it that Redis refused must not give the instance an
// entitlement it never had (the share fallback would admit into it).
func TestRefusedReleaseOfAnAdoptedConnectionGivesNothing(t *testing.T) {
	a, b, mr, clk := twoTrackers(t, tracker.FallbackShare) // cap 2, one pod
	x := established(t, a)
	clk.Advance(31 * time.Second)
	heartbeat(t, a, b) // x expired: Redis counts nothing for a
	if err := a.Adopt("chat", x.Conn, x.Pod, false); err != nil {
		t.Fatal(err)
	}
	mr.SetError("ERR outage")
	if err := a.Release(context.Background(), x.Conn); err != nil {
		t.Fatal(err)
	}
	admit(t, a, "chat") // Redis refuses: a is degraded
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	mr.SetError("")
	for range 2 {
		if r := admit(t, b, "chat"); !r.Admitted {
			t.Fatalf("b: %+v", r)
		}
	}
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a admitted into a full pod (fallback %v)", r.Fallback)
	}
}

func established(t *testing.T, tr *tracker.Tracker) tracker.Result {
	t.Helper()
	r := admit(t, tr, "chat")
	if !r.Admitted {
		t.Fatalf("admit: %+v", r)
	}
	if err := tr.Establish(r.Conn); err != nil {
		t.Fatal(err)
	}
	return r
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
	if a, err := s.Admit(ctx, "chat", 5, fleets.PolicyPack, "e1", epoch, storetest.T0); err != nil || a.Pod == "" {
		t.Fatalf("admit through the original after its copy: %+v %v (the copy's run id check leaked)", a, err)
	}
}

// slowAdmits delays every admit call (the script with 11 keys) by d.
type slowAdmits struct{ d time.Duration }

func (h slowAdmits) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h slowAdmits) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h slowAdmits) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); cmd.Name() == "evalsha" && len(a) > 2 && fmt.Sprint(a[2]) == "11" {
			time.Sleep(h.d) // a slow Redis, not synchronisation
		}
		return next(ctx, cmd)
	}
}

// A slow Redis (each admit call takes 0.6 of --redis-timeout) is not a
// failing one: admissions queued behind a call in flight are sent when it
// returns and wait for their own call; none falls back, the fleet does not
// degrade.
func TestSlowRedisQueuesAdmissionsWithoutDegrading(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTrackerCfg(t, rdb, clk, tracker.Config{
		InstanceID: "a", Fleets: []fleets.Fleet{fleetCfg("chat", 1000, "10.0.0.1:80")}, Heartbeat: time.Second,
		InstanceTTL: 5 * time.Second, EstablishTimeout: 10 * time.Second, LeaseTTL: 30 * time.Second,
		RedisTimeout: 500 * time.Millisecond, Fallback: tracker.FallbackShare,
	})
	start(t, mr, clk, tr)
	rdb.AddHook(slowAdmits{300 * time.Millisecond})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []tracker.Result
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				r, err := tr.Admit(context.Background(), "chat")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, r := range got {
		if !r.Admitted || r.Fallback {
			t.Errorf("admission %+v: want admitted through Redis", r)
		}
	}
	if tr.Degraded("chat") {
		t.Error("a slow Redis degraded the fleet")
	}
	// They went in fewer calls than admissions, and the metric says so.
	var m dto.Metric
	if err := tr.Metrics().BatchSize.WithLabelValues("admit").(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	if h := m.GetHistogram(); h.GetSampleSum() != float64(len(got)) || h.GetSampleCount() >= uint64(len(got)) {
		t.Errorf("batch sizes: %d admissions in %d calls, want all %d in fewer calls", int(h.GetSampleSum()), h.GetSampleCount(), len(got))
	}
}

// A caller that has left is not admitted.
func TestAdmitAfterTheCallerLeft(t *testing.T) {
	rdb, mr := miniClient(t)
	clk := newClock()
	tr := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fleetCfg("chat", 2, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r, err := tr.Admit(ctx, "chat"); err == nil {
		t.Fatalf("admitted for a caller that left: %+v", r)
	}
	if n := podHolds(t, tr); n != 0 {
		t.Errorf("the pod holds %d for a caller that left", n)
	}
}

// The client never retries an admit or release call: one whose reply was
// lost may have run, and a release run twice frees another connection's
// slot (a Cluster client retries after EOF and timeouts whatever
// MaxRetries says).
func TestHotCallsAreNeverRetried(t *testing.T) {
	tr, h := countedTracker(t, 2)
	release(t, tr, admit(t, tr, "chat").Conn)
	for name, keys := range map[string]string{"admit": "11", "release": "7"} {
		if retry, seen := h.retryable[keys]; !seen || retry {
			t.Errorf("%s call: seen %v, retryable %v; want seen and never retried", name, seen, retry)
		}
	}
}

// AdmitRelease leaves Redis as Release then AdmitN leave it, and answers
// as they do: checked on random loads, releases (some more than the
// instance holds, some pending, some stale) and batch sizes, on miniredis
// and a real redis-server.
func TestAdmitReleaseIsReleaseThenAdmit(t *testing.T) { onMiniAndReal(t, checkAdmitRelease) }

func checkAdmitRelease(t *testing.T, rdb *redis.Client, mini bool) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	stores := twinStores(rdb, mini, "apart", "together")
	type state struct {
		avail, load, inst, pend string
		summary                 store.Summary
		pods                    []string
		reason                  store.Reason
		released                int
	}
	dump := func(s *store.Store, fleet string) (st state) {
		p := s.KeyPrefix(fleet)
		for key, out := range map[string]*string{"avail": &st.avail, "load": &st.load} {
			z, err := rdb.ZRangeWithScores(ctx, p+key, 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			*out = fmt.Sprint(z)
		}
		for key, out := range map[string]*string{"inst:e1": &st.inst, "pend:e1": &st.pend} {
			h, err := rdb.HGetAll(ctx, p+key).Result()
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
			var a store.Admissions
			var released int
			var err error
			if prefix == "apart" {
				if released, err = s.Release(ctx, fleet, "e1", epoch, seq, rs...); err == nil {
					a, err = s.AdmitN(ctx, fleet, limit, policy, "e1", epoch, storetest.T0, n)
				}
			} else {
				a, released, err = s.AdmitRelease(ctx, fleet, limit, policy, "e1", epoch, storetest.T0, n, seq, rs...)
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

// scriptCalls counts the EVALSHA calls by their number of keys (11 is the
// admit script, 7 the release script) and records whether the client may
// retry them.
type scriptCalls struct {
	mu        sync.Mutex
	n         map[string]int
	retryable map[string]bool
}

func newScriptCalls() *scriptCalls {
	return &scriptCalls{n: map[string]int{}, retryable: map[string]bool{}}
}

func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); cmd.Name() == "evalsha" && len(a) > 2 {
			h.mu.Lock()
			h.n[fmt.Sprint(a[2])]++
			h.retryable[fmt.Sprint(a[2])] = !cmd.NoRetry()
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

// countedTracker is a started tracker of fleet chat (one pod, cap) whose
// script calls h counts.
func countedTracker(t *testing.T, cap int) (*tracker.Tracker, *scriptCalls) {
	rdb, mr := miniClient(t)
	h := newScriptCalls()
	rdb.AddHook(h)
	clk := newClock()
	tr := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fleetCfg("chat", cap, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	return tr, h
}

// redisLive is the live count Redis holds for tr's fleet chat.
func redisLive(t *testing.T, tr *tracker.Tracker) int64 {
	t.Helper()
	return storetest.Summary(t, tr.Store(), "chat", storetest.T0).Live
}

// queueRelease ends connection id and leaves its release in the queue.
func queueRelease(t *testing.T, tr *tracker.Tracker, id string) {
	t.Helper()
	if err := tr.Release(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

func (h *scriptCalls) get(keys string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[keys]
}

// A release waits for the next admit call and rides on it, applied before
// its admissions: one script call for both. One that no admission comes
// for goes alone (here: when Flush asks for it).
func TestReleaseRidesOnTheNextAdmitCall(t *testing.T) {
	tr, h := countedTracker(t, 1)
	tracker.SetReleaseLinger(tr, "chat", time.Hour)
	tracker.SetReuse(tr, "chat", false) // else the second admission takes the slot back without a call
	live := func() int64 { return redisLive(t, tr) }
	first := admit(t, tr, "chat")
	queueRelease(t, tr, first.Conn)
	if got := live(); got != 1 {
		t.Fatalf("Redis counts %d live right after the release; want 1: it waits for an admit call", got)
	}
	// The pod's cap is 1: the second admission gets it only if the release
	// went first, in the same call.
	second := admit(t, tr, "chat")
	if !second.Admitted || second.Fallback {
		t.Fatalf("second admission: %+v; want admitted through Redis on the slot the release freed", second)
	}
	if got, admits, releases := live(), h.get("11"), h.get("7"); got != 1 || admits != 2 || releases != 0 {
		t.Fatalf("after the second admission: live %d, %d admit calls, %d release calls; want 1, 2, 0", got, admits, releases)
	}
	if err := tr.Release(context.Background(), second.Conn); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, releases := live(), h.get("7"); got != 0 || releases != 1 {
		t.Fatalf("after Flush: live %d, %d release calls; want 0, 1", got, releases)
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
	a, n, err := s.AdmitRelease(ctx, "chat", 5, fleets.PolicyPack, "e1", "another-epoch", storetest.T0, 1, 0, rs)
	if !errors.Is(err, store.ErrFenced) || a.Fence != store.FenceEpoch || n != 0 {
		t.Fatalf("with another epoch: %+v, %d, %v; want fenced (epoch) and ErrFenced", a, n, err)
	}
	if live := storetest.Summary(t, s, "chat", storetest.T0).Live; live != 1 {
		t.Fatalf("live %d after a fenced call; want 1: nothing released", live)
	}
	// A new epoch, still in its recovery wait: e1 syncs what it holds.
	if err := rdb.Del(ctx, s.KeyPrefix("chat")+"epoch").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: time.Hour, RecoveryWait: time.Hour, Seq: 1,
		Counts: []store.PodCount{{Pod: "10.0.0.1:80", Live: 1, Established: 1}}})
	if err != nil || res.Recovering == 0 {
		t.Fatalf("sync: %+v %v; want a recovery wait", res, err)
	}
	a, n, err = s.AdmitRelease(ctx, "chat", 5, fleets.PolicyPack, "e1", res.Epoch, storetest.T0, 1, 1, rs)
	if err != nil || a.Fence != store.FenceRecovering || n != 1 {
		t.Fatalf("in the recovery wait: %+v, %d, %v; want recovering and 1 released", a, n, err)
	}
	if live := storetest.Summary(t, s, "chat", storetest.T0).Live; live != 0 {
		t.Fatalf("live %d after the release in the recovery wait; want 0", live)
	}
}
