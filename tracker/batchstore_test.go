package tracker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/tracker"
)

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
		// release.lua is the script with 5 keys.
		if a := cmd.Args(); cmd.Name() == "evalsha" && hotKeys(a) == "5" {
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

// slowAdmits delays every admit call (the script with 9 keys) by d.
type slowAdmits struct{ d time.Duration }

func (h slowAdmits) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h slowAdmits) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h slowAdmits) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); cmd.Name() == "evalsha" && hotKeys(a) == "8" {
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
	for name, keys := range map[string]string{"admit": "8", "release": "5"} {
		if retry, seen := h.retryable[keys]; !seen || retry {
			t.Errorf("%s call: seen %v, retryable %v; want seen and never retried", name, seen, retry)
		}
	}
}

// hotKeys is the number of keys of an EVALSHA of the admit script ("8")
// or the release script ("5"), "" for another script: those two are the
// scripts whose first key is the fleet's load (the summary has 9 keys
// too).
func hotKeys(a []any) string {
	if len(a) < 4 || !strings.HasSuffix(fmt.Sprint(a[3]), ":load") {
		return ""
	}
	return fmt.Sprint(a[2])
}

// scriptCalls counts the EVALSHA calls by their number of keys (9 is the
// admit script, 5 the release script) and records whether the client may
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
		if a := cmd.Args(); cmd.Name() == "evalsha" && hotKeys(a) != "" {
			h.mu.Lock()
			h.n[hotKeys(a)]++
			h.retryable[hotKeys(a)] = !cmd.NoRetry()
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

// redisLive is the live count Redis holds for tr's fleet chat: its pods'
// counts, which the admit and release scripts move at once.
func redisLive(t *testing.T, tr *tracker.Tracker) int64 {
	t.Helper()
	return int64(storetest.Counted(t, tr.Store(), "chat"))
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
	if got, admits, releases := live(), h.get("8"), h.get("5"); got != 1 || admits != 2 || releases != 0 {
		t.Fatalf("after the second admission: live %d, %d admit calls, %d release calls; want 1, 2, 0", got, admits, releases)
	}
	if err := tr.Release(context.Background(), second.Conn); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, releases := live(), h.get("5"); got != 0 || releases != 1 {
		t.Fatalf("after Flush: live %d, %d release calls; want 0, 1", got, releases)
	}
}
