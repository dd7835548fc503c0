package tracker_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/tracker"
)

// An admission that comes while a release of this instance is still
// queued takes its slot back: no script call, the release is never sent,
// and Redis counted the slot for this instance all along.
func TestReuseTakesBackAQueuedRelease(t *testing.T) {
	tr, h := countedTracker(t, 1)
	tracker.SetReleaseLinger(tr, "chat", time.Hour)
	live := func() int64 { return redisLive(t, tr) }
	first := admit(t, tr, "chat")
	queueRelease(t, tr, first.Conn)
	second := admit(t, tr, "chat")
	if !second.Admitted || !second.Reused || second.Fallback || second.Pod != first.Pod {
		t.Fatalf("second admission: %+v; want the freed slot on %s reused", second, first.Pod)
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, admits, releases := live(), h.get("8"), h.get("5"); got != 1 || admits != 1 || releases != 0 {
		t.Fatalf("after reuse and Flush: live %d, %d admit calls, %d release calls; want 1, 1, 0", got, admits, releases)
	}
	if n := testutil.ToFloat64(tr.Metrics().Reused.WithLabelValues("chat")); n != 1 {
		t.Errorf("reused_slots_total = %v, want 1", n)
	}
	release(t, tr, second.Conn)
	if got, releases := live(), h.get("5"); got != 0 || releases != 1 {
		t.Fatalf("after the second release: live %d, %d release calls; want 0, 1", got, releases)
	}
}

// onePodOfCap1 is trackers a and b, started, on fleet chat: one pod, cap 1.
func onePodOfCap1(t *testing.T) (a, b *tracker.Tracker, mr *miniredis.Miniredis) {
	t.Helper()
	rdb, mr := miniClient(t)
	clk := newClock()
	fc := fleetCfg("chat", 1, "10.0.0.1:80")
	a = newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
	b = newTracker(t, rdb, "b", clk, tracker.FallbackShare, fc)
	start(t, mr, clk, a, b)
	return a, b, mr
}

// A release that left the queue took its slot out of ent before it was
// sent: nothing can reuse it after Redis gave it away, not even the share
// fallback (the model's SPARE_KEPT).
func TestSentReleaseIsNotReused(t *testing.T) {
	a, b, mr := onePodOfCap1(t)
	release(t, a, admit(t, a, "chat").Conn)
	if r := admit(t, b, "chat"); !r.Admitted || r.Fallback || r.Reused {
		t.Fatalf("b: %+v; want the slot a gave back, through Redis", r)
	}
	mr.SetError("ERR outage")
	if r := admit(t, a, "chat"); r.Admitted {
		t.Fatalf("a admitted into the slot it had given back: %+v", r)
	}
	if n := podHolds(t, a, b); n != 1 {
		t.Errorf("the pod holds %d, cap 1", n)
	}
}

// Reuse follows the last heartbeat's view of the fleet: no slot is taken
// back on a pod that is no longer placeable, that is above a lowered cap,
// or that the policy would not pick (under spread, one well above the
// emptiest); nor after a heartbeat (it published the release) or past the
// instance's lease.
func TestReuseOnlyWhereTheAdmitScriptCouldPlace(t *testing.T) {
	const p1, p2 = "10.0.0.1:80", "10.0.0.2:80"
	var rdbOfLast *redis.Client // the client of the last setup's tracker
	setup := func(t *testing.T, fc fleets.Fleet) (*tracker.Tracker, *scriptCalls, *clock) {
		rdb, mr := miniClient(t)
		rdbOfLast = rdb
		h := newScriptCalls()
		rdb.AddHook(h)
		clk := newClock()
		tr := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fc)
		start(t, mr, clk, tr)
		tracker.SetReleaseLinger(tr, "chat", time.Hour)
		return tr, h, clk
	}
	// through Redis: one more admit call, and the queued release rode on it
	viaRedis := func(t *testing.T, r tracker.Result, h *scriptCalls, admits int) {
		t.Helper()
		if r.Reused || r.Fallback {
			t.Fatalf("admission %+v; want it decided by Redis", r)
		}
		if got := h.get("8"); got != admits {
			t.Fatalf("%d admit calls, want %d", got, admits)
		}
	}
	// and the scene allows reuse where the rule does: r's slot, freed, is
	// taken back by the connection it returns
	reusable := func(t *testing.T, tr *tracker.Tracker, r tracker.Result) tracker.Result {
		t.Helper()
		queueRelease(t, tr, r.Conn)
		again := admit(t, tr, "chat")
		if !again.Reused || again.Pod != r.Pod {
			t.Fatalf("admission after %s's release: %+v; want its slot on %s reused", r.Conn, again, r.Pod)
		}
		return again
	}

	t.Run("not placeable", func(t *testing.T) {
		tr, h, _ := setup(t, fleetCfg("chat", 2, p1, p2))
		held := admit(t, tr, "chat")
		other := map[string]string{p1: p2, p2: p1}[held.Pod]
		pods := []fleets.Pod{{Addr: held.Pod, Name: held.Pod, Ready: true, Draining: true}, {Addr: other, Name: other, Ready: true}}
		if err := tr.Store().SetPods(context.Background(), "chat", pods); err != nil {
			t.Fatal(err)
		}
		heartbeat(t, tr)
		queueRelease(t, tr, held.Conn)
		r := admit(t, tr, "chat")
		viaRedis(t, r, h, 2)
		if r.Pod != other {
			t.Fatalf("admitted on %s; want %s, the draining pod's slot not reused", r.Pod, other)
		}
		reusable(t, tr, r)
	})

	t.Run("above a lowered cap", func(t *testing.T) {
		fc := fleetCfg("chat", 2, p1)
		tr, h, _ := setup(t, fc)
		first, second := admit(t, tr, "chat"), admit(t, tr, "chat")
		heartbeat(t, tr)               // the view: p1 holds 2
		first = reusable(t, tr, first) // at the cap in force: reused
		fc.MaxConnectionsPerPod = 1
		if _, err := tr.Apply([]fleets.Fleet{fc}); err != nil {
			t.Fatal(err)
		}
		queueRelease(t, tr, first.Conn)
		r := admit(t, tr, "chat")
		viaRedis(t, r, h, 3)
		if r.Admitted || r.Reason != store.ReasonCapacity {
			t.Fatalf("admission %+v; want capacity: p1 still holds %s, at the new cap", r, second.Conn)
		}
	})

	t.Run("spread, well above the emptiest", func(t *testing.T) {
		fc := fleetCfg("chat", 4, p1, p2)
		fc.Policy = fleets.PolicySpread
		tr, h, _ := setup(t, fc)
		// another instance packs 2 on the pod a's first connection is on
		pack := fc
		pack.Policy = fleets.PolicyPack
		b := newTrackerCfg(t, rdbOfLast, newClock(), tracker.Config{InstanceID: "b", Fleets: []fleets.Fleet{pack},
			Heartbeat: time.Second, InstanceTTL: 5 * time.Second, EstablishTimeout: 10 * time.Second, LeaseTTL: 30 * time.Second, RedisTimeout: time.Second})
		mine := map[string]string{} // pod -> a's connection on it
		for range 2 {
			r := admit(t, tr, "chat")
			mine[r.Pod] = r.Conn
		}
		heartbeat(t, b)
		full := admit(t, b, "chat").Pod
		if r := admit(t, b, "chat"); r.Pod != full {
			t.Fatalf("pack placed b's second connection on %s, its first on %s", r.Pod, full)
		}
		heartbeat(t, tr) // the view: full holds 3, the other 1
		queueRelease(t, tr, mine[full])
		r := admit(t, tr, "chat")
		viaRedis(t, r, h, 5) // a's two, b's two (one client), this one
		if r.Pod == full {
			t.Fatalf("admitted on %s, the fullest pod; want the emptiest", r.Pod)
		}
		reusable(t, tr, r)
	})

	t.Run("after a heartbeat", func(t *testing.T) {
		tr, h, _ := setup(t, fleetCfg("chat", 1, p1))
		queueRelease(t, tr, admit(t, tr, "chat").Conn)
		heartbeat(t, tr) // publishes the release: the slot is Redis' again
		r := admit(t, tr, "chat")
		viaRedis(t, r, h, 2)
		if !r.Admitted {
			t.Fatalf("admission %+v; want the slot the heartbeat gave back", r)
		}
		reusable(t, tr, r)
	})

	t.Run("past the lease", func(t *testing.T) {
		tr, h, clk := setup(t, fleetCfg("chat", 1, p1))
		held := reusable(t, tr, admit(t, tr, "chat")) // within the lease: reused
		queueRelease(t, tr, held.Conn)
		clk.Advance(5 * time.Second) // its own clock: the lease may be over
		// Not reused, and not asked of Redis either: past its local lease a
		// tracker sends no admission (PROTOCOL.md, "One read for the fence").
		if r := admit(t, tr, "chat"); r.Reused || r.Admitted {
			t.Fatalf("admission past the lease %+v; want refused", r)
		}
		if got := h.get("8"); got != 1 {
			t.Fatalf("%d admit calls, want 1: none past the lease", got)
		}
		heartbeat(t, tr)
		viaRedis(t, admit(t, tr, "chat"), h, 2)
	})
}

// holdAdmit holds the first admit call (the script with 9 keys) until
// the test lets it go.
type holdAdmit struct {
	entered, unblock chan struct{}
	once             sync.Once
}

func (h *holdAdmit) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdAdmit) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *holdAdmit) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); cmd.Name() == "evalsha" && hotKeys(a) == "8" {
			first := false
			h.once.Do(func() { first = true })
			if first {
				close(h.entered)
				<-h.unblock
			}
		}
		return next(ctx, cmd)
	}
}

// An admission that waits behind a call in flight when releases are
// queued takes one slot back as its batch is about to be sent: no second
// admit call. The other release stays queued for its linger (an admit
// call does not carry a young spare release), so the next admission takes
// its slot back too, and neither release is ever sent.
func TestQueuedAdmissionTakesBackASlotReleasedMeanwhile(t *testing.T) {
	rdb, mr := miniClient(t)
	calls := newScriptCalls()
	rdb.AddHook(calls)
	clk := newClock()
	tr := newTracker(t, rdb, "a", clk, tracker.FallbackShare, fleetCfg("chat", 3, "10.0.0.1:80"))
	start(t, mr, clk, tr)
	tracker.SetReleaseLinger(tr, "chat", time.Hour)
	held, held2 := admit(t, tr, "chat"), admit(t, tr, "chat")
	hold := &holdAdmit{entered: make(chan struct{}), unblock: make(chan struct{})}
	rdb.AddHook(hold)

	results := make(chan tracker.Result, 2)
	go func() { results <- admit(t, tr, "chat") }() // through Redis, held
	<-hold.entered
	go func() { results <- admit(t, tr, "chat") }() // queued behind it: nothing spare yet
	tracker.AwaitQueuedAdmissions(tr, "chat", 1)
	queueRelease(t, tr, held.Conn)
	queueRelease(t, tr, held2.Conn)
	close(hold.unblock)
	var reused, viaRedis int
	for range 2 {
		switch r := <-results; {
		case !r.Admitted:
			t.Fatalf("admission %+v: want admitted", r)
		case r.Reused:
			reused++
		default:
			viaRedis++
		}
	}
	if r := admit(t, tr, "chat"); r.Reused {
		reused++
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if reused != 2 || viaRedis != 1 || calls.get("8") != 3 || calls.get("5") != 0 || redisLive(t, tr) != 3 {
		t.Fatalf("%d reused, %d through Redis, %d admit calls, %d release calls, Redis live %d; want 2, 1, 3, 0, 3",
			reused, viaRedis, calls.get("8"), calls.get("5"), redisLive(t, tr))
	}
}

// afterLeave runs on once, right after the next leave call (the script
// with 1 key).
type afterLeave struct {
	armed atomic.Bool
	on    func()
}

func (h *afterLeave) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *afterLeave) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *afterLeave) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if a := cmd.Args(); (cmd.Name() == "evalsha" || cmd.Name() == "eval") && len(a) > 2 && fmt.Sprint(a[2]) == "1" && h.armed.Swap(false) {
			h.on()
		}
		return err
	}
}

// A leave gives up every slot in Redis, the ones kept for reuse too: a
// fleet removed from the configuration whose last connection's release
// was still queued when it left, and that is configured again meanwhile,
// reuses nothing (the queued release is stale by the leave's seq and
// would not take its slot out). Found by review: 2 on a pod of cap 1.
func TestLeaveGivesUpTheSpareSlots(t *testing.T) {
	const p1 = "10.0.0.1:80"
	rdb, mr := miniClient(t)
	clk := newClock()
	chat, other := fleetCfg("chat", 1, p1), fleetCfg("other", 1, "10.0.0.9:80")
	a := newTracker(t, rdb, "a", clk, tracker.FallbackShare, chat, other)
	b := newTracker(t, rdb, "b", clk, tracker.FallbackShare, chat)
	start(t, mr, clk, a, b)
	tracker.SetReleaseLinger(a, "chat", time.Hour)
	c := admit(t, a, "chat")
	if _, err := a.Apply([]fleets.Fleet{other}); err != nil {
		t.Fatal(err)
	}
	queueRelease(t, a, c.Conn)
	readd := &afterLeave{on: func() {
		if _, err := a.Apply([]fleets.Fleet{chat, other}); err != nil {
			t.Error(err)
		}
	}}
	readd.armed.Store(true)
	rdb.AddHook(readd)
	if err := tracker.Retire(a, "chat"); err != nil {
		t.Fatal(err)
	}
	if readd.armed.Load() {
		t.Fatal("retire did not leave")
	}
	if r := admit(t, a, "chat"); r.Reused {
		t.Fatalf("a reused a slot it had left: %+v", r)
	}
	admit(t, b, "chat")
	if n := podHolds(t, a, b); n > 1 {
		t.Errorf("the pod holds %d, cap 1", n)
	}
}

// A spare slot that the share fallback took while Redis was failing is
// held again: its queued release must not be sent when Redis is back,
// or Redis would count one connection fewer than the instance holds.
func TestSpareTakenByTheFallbackIsNotReleased(t *testing.T) {
	a, b, mr := onePodOfCap1(t)
	tracker.SetReleaseLinger(a, "chat", time.Hour)
	queueRelease(t, a, admit(t, a, "chat").Conn)
	mr.SetError("ERR outage")
	tracker.SetReuse(a, "chat", false) // this admission is the fallback's, not reuse's
	if r := admit(t, a, "chat"); !r.Admitted || !r.Fallback {
		t.Fatalf("a during the outage: %+v; want the fallback to reuse its freed slot", r)
	}
	tracker.SetReuse(a, "chat", true)
	mr.SetError("")
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := redisLive(t, a); got != 1 {
		t.Fatalf("Redis counts %d live; want 1: a holds the slot again", got)
	}
	if r := admit(t, b, "chat"); r.Admitted {
		t.Fatalf("b admitted onto the pod a fills: %+v", r)
	}
}
