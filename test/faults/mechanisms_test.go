package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wsgate/wsgate/test/await"
)

// The tests below reproduce, one each, the mechanisms by which a pod went
// above its cap in issue 10 (A–G; tracker/PROTOCOL.md argues why none can
// any more). Two trackers A and B, one backend, cap 2. Each logs what the
// fault cost ("cost: ..." lines) and checks that the system admits again
// and that every count drains to 0 once the clients closed.

// waitCh waits for ch to close.
func (h *harness) waitCh(what string, ch <-chan struct{}, d time.Duration) {
	h.t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		h.t.Fatalf("%s: not within %s", what, d)
	}
}

// sleepUntil is for faults defined by their timing ("~100 ms after B's
// heartbeat"), never to wait for an event.
func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }

// TestBaseline is the control: churn with no fault stays within the cap,
// so a breach in the tests below is the fault's, not the harness'.
func TestBaseline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{backends: 2})
	h.settle()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	start := time.Now()
	stop := h.churn(ctx, 8, 1, func() []*trackerProc { return h.trackers })
	stop()
	h.checkCap("baseline")
	h.stats.mu.Lock()
	admitted := h.stats.admitted
	h.stats.mu.Unlock()
	if admitted < 10 {
		t.Errorf("baseline admitted only %d connections in %s", admitted, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("baseline: admitted %d, rejected %s, max %d/%d", admitted, h.stats, h.maxHeld(), h.o.cap)
	h.awaitDrained(20 * time.Second)
}

// TestA_ShareFallbackFromOlderView: right after B's heartbeat (pod 0/2 in
// B's view) A admits 2 through Redis; Redis is killed or frozen before B's
// next heartbeat, and B dials from its fallback during the outage. B must
// not take a slot A holds.
func TestA_ShareFallbackFromOlderView(t *testing.T) {
	t.Parallel()
	for _, variant := range []string{"kill", "stop"} {
		t.Run(variant, func(t *testing.T) {
			t.Parallel()
			fault := "A-" + variant
			hb := 2 * time.Second
			h := newHarness(t, options{heartbeat: hb, instanceTTL: 6 * time.Second})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var held conns
			defer held.closeAll()
			for attempt := 1; ; attempt++ {
				beat := h.nextHeartbeat(b, 3*hb)
				got := h.hold(&held, a, 2)
				if got == 2 && time.Since(beat) < hb/2 {
					break
				}
				if attempt == 5 {
					t.Fatalf("A could not admit 2 within half a heartbeat of B's (last: %d admitted, %s after B's heartbeat)", got, time.Since(beat))
				}
				held.closeAll()
				h.awaitDrained(20 * time.Second)
			}
			h.awaitBackends(2, 5*time.Second)
			h.stats.reset()
			if variant == "kill" {
				h.redis.Kill()
			} else {
				h.redis.Stop()
			}
			h.hold(&held, b, 3)
			h.awaitBackends(int64(held.len()), 5*time.Second)
			h.checkCap(fault)
			if variant == "kill" {
				h.redis.Restart()
			} else {
				h.redis.Cont()
			}
			h.recover(fault, &held, time.Now())
		})
	}
}

// TestB1_OneSlowAdmissionReply: one admission of A waits past
// --redis-timeout (its request held back: the script runs after A gave
// up; or its reply held back: the script ran at once) while B, unaffected,
// admits through Redis. One slow reply may cost that admission, never the
// cap.
func TestB1_OneSlowAdmissionReply(t *testing.T) {
	t.Parallel()
	for _, v := range []struct {
		name string
		side side
	}{{"late-script", onRequest}, {"late-reply", onReply}} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			fault := "B1-" + v.name
			h := newHarness(t, options{})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var held conns
			defer held.closeAll()
			h.stats.reset()
			rule := a.proxy.delayNext(isAdmit, v.side, 2*time.Second)
			h.hold(&held, a, 1)
			h.waitCh("A's admission held back", rule.fired, 10*time.Second)
			h.hold(&held, b, 2)
			select {
			case <-rule.done:
				t.Fatalf("A's slow admission ended before B had admitted (B too slow for the 2s delay)")
			default:
			}
			h.waitCh("A's slow admission passed on", rule.done, 10*time.Second)
			healed := time.Now()
			h.hold(&held, a, 1)
			h.hold(&held, b, 1)
			h.awaitBackends(int64(held.len()), 5*time.Second)
			h.checkCap(fault)
			h.recover(fault, &held, healed)
		})
	}
}

// TestB2_OnlyHeartbeatSlow: only A's heartbeat is slow (past
// --redis-timeout); an admission of A arrives while it is in flight, and
// B admits through Redis.
func TestB2_OnlyHeartbeatSlow(t *testing.T) {
	t.Parallel()
	for _, v := range []struct {
		name string
		side side
	}{{"late-script", onRequest}, {"late-reply", onReply}} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			fault := "B2-" + v.name
			hb := 2 * time.Second
			h := newHarness(t, options{heartbeat: hb, instanceTTL: 6 * time.Second})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var held conns
			defer held.closeAll()
			h.stats.reset()
			rule := a.proxy.delayNext(isHeartbeat, v.side, 1500*time.Millisecond)
			h.waitCh("A's heartbeat held back", rule.fired, 3*hb)
			h.hold(&held, a, 1)
			h.hold(&held, b, 2)
			h.waitCh("A's slow heartbeat passed on", rule.done, 10*time.Second)
			healed := time.Now()
			h.hold(&held, a, 1)
			h.hold(&held, b, 1)
			h.awaitBackends(int64(held.len()), 5*time.Second)
			h.checkCap(fault)
			h.recover(fault, &held, healed)
		})
	}
}

// TestB3_AdmissionQueuedBehindSlowHeartbeat: an admission of A waits for
// the gate while A's heartbeat is in flight; the heartbeat times out and
// its script runs later (the chaos test found this). The admission must
// not go through Redis once the heartbeat gave up: the late script would
// replace A's slots with the count it was sent with, one short, and B
// would take that slot. The Redis timeout is longer than the gateway
// needs to reach the tracker, so the admission reliably arrives while the
// heartbeat holds the gate and outlasts it.
func TestB3_AdmissionQueuedBehindSlowHeartbeat(t *testing.T) {
	t.Parallel()
	fault := "B3"
	hb := 4 * time.Second
	h := newHarness(t, options{heartbeat: hb, instanceTTL: 12 * time.Second, redisTimeout: time.Second, admitTimeout: 5 * time.Second})
	h.settle()
	a, b := h.tracker("A"), h.tracker("B")
	var held conns
	defer held.closeAll()
	h.stats.reset()
	rule := a.proxy.delayNext(isHeartbeat, onRequest, 3*time.Second)
	h.waitCh("A's heartbeat held back", rule.fired, 3*hb)
	// Mid-heartbeat: the admission then still has most of its Redis
	// timeout left when the heartbeat gives the gate up.
	sleepUntil(time.Now().Add(400 * time.Millisecond))
	h.hold(&held, a, 1)
	h.waitCh("A's late heartbeat ran", rule.done, 10*time.Second)
	h.hold(&held, b, 2)
	healed := time.Now()
	// A decided it from its fallback, not through Redis after the heartbeat
	// had given up.
	if v, _ := a.metric(`wsgate_tracker_fallback_decisions_total{fleet="chat",why="degraded"}`); v < 1 {
		t.Errorf("A's admission behind the failed heartbeat: %v fallback decisions (why=degraded), want 1", v)
	}
	h.awaitBackends(int64(held.len()), 5*time.Second)
	h.checkCap(fault)
	h.recover(fault, &held, healed)
}

// TestC_RedisRestartedWithData: Redis dies, both trackers admit during
// the outage, and Redis comes back with old data under the same epoch as
// before, counting nothing of what the trackers did meanwhile.
//
// aof: nothing is held when Redis dies (its append-only file, complete up
// to the kill, says pod 0/2); each tracker dials once during the outage.
// rdb: the snapshot (BGSAVE) is taken at pod 0/2, then A and B each admit
// 1 through Redis; during the outage each closes its connection and dials
// again once it knows Redis is down (reusing a slot Redis still counts for
// it is what a fallback may do); Redis comes back from the older snapshot
// (pod 0/2 while 2 are held).
//
// After each of the first heartbeats into the restarted Redis, both
// trackers try to admit 2 more.
func TestC_RedisRestartedWithData(t *testing.T) {
	t.Parallel()
	for _, variant := range []string{"aof", "rdb"} {
		t.Run(variant, func(t *testing.T) {
			t.Parallel()
			fault := "C-" + variant
			var args []string
			if variant == "aof" {
				args = []string{"--appendonly", "yes", "--appendfsync", "always"}
			}
			h := newHarness(t, options{redisArgs: args})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var held conns
			defer held.closeAll()
			if variant == "rdb" {
				h.redis.BGSave()
				if got := h.holdAll(&held, a, 1) + h.holdAll(&held, b, 1); got != 2 {
					t.Fatalf("A and B admitted %d of 2 before the outage", got)
				}
				h.awaitBackends(2, 5*time.Second)
				// Both heartbeats publish the 2 before Redis dies.
				h.nextHeartbeat(a, 10*time.Second)
				h.nextHeartbeat(b, 10*time.Second)
			}
			h.stats.reset()
			h.redis.Kill()
			if variant == "rdb" {
				// Closed once the trackers know Redis is down: a release
				// they cannot send keeps the slot counted for them.
				h.awaitFallback(a, 10*time.Second)
				h.awaitFallback(b, 10*time.Second)
				held.closeAll()
				h.awaitBackends(0, 5*time.Second)
			}
			h.hold(&held, a, 1)
			h.hold(&held, b, 1)
			h.awaitBackends(int64(held.len()), 5*time.Second)
			t.Logf("%s: admitted during the outage: %d", fault, held.len())
			h.redis.RestartWithData()
			healed := time.Now()
			for range 2 {
				h.nextAnyHeartbeat(10 * time.Second)
				h.hold(&held, a, 2)
				h.hold(&held, b, 2)
			}
			h.awaitBackends(int64(held.len()), 5*time.Second)
			h.checkCap(fault)
			h.recover(fault, &held, healed)
		})
	}
}

// nextAnyHeartbeat waits for the next heartbeat of any tracker and returns
// whose it was.
func (h *harness) nextAnyHeartbeat(d time.Duration) *trackerProc {
	h.t.Helper()
	s0 := map[*trackerProc]float64{}
	for _, tp := range h.trackers {
		s0[tp] = h.score(tp.id)
	}
	var who *trackerProc
	await.Until(h.t, "a heartbeat", d, func() (bool, string) {
		for _, tp := range h.trackers {
			if s := h.score(tp.id); s >= 0 && s != s0[tp] {
				who = tp
				return true, ""
			}
		}
		return false, "none"
	})
	return who
}

// quickRestartOptions: A heartbeats often, B rarely, so that A's
// heartbeats land between an empty restart and B's next one.
func quickRestartOptions() options {
	return options{
		trackers:    []trackerOptions{{id: "A", heartbeat: 500 * time.Millisecond}, {id: "B", heartbeat: 4 * time.Second}},
		instanceTTL: 9 * time.Second,
	}
}

// TestD_QuickEmptyRestart: B holds 2; Redis restarts empty ~100 ms after
// B's heartbeat, so quickly that B's client redials without a failed call;
// A's heartbeat re-creates the fleet in the new Redis; B dials before its
// own next heartbeat, into a Redis that does not count B's 2.
func TestD_QuickEmptyRestart(t *testing.T) {
	t.Parallel()
	const fault = "D"
	h := newHarness(t, quickRestartOptions())
	h.settle()
	a, b := h.tracker("A"), h.tracker("B")
	var held conns
	defer held.closeAll()
	for attempt := 1; ; attempt++ {
		if got := h.holdAll(&held, b, 2); got != 2 {
			t.Fatalf("B admitted %d of 2 before the fault", got)
		}
		h.awaitBackends(2, 5*time.Second)
		h.stats.reset()
		beat := h.nextHeartbeat(b, 10*time.Second)
		sleepUntil(beat.Add(100 * time.Millisecond))
		h.redis.Restart()
		h.awaitPresent(a, 5*time.Second)
		if time.Since(beat) < 3*time.Second {
			break
		}
		if attempt == 3 {
			t.Fatalf("A's heartbeat never came between the restart and B's next heartbeat")
		}
		held.closeAll()
		h.awaitAdmitting(30 * time.Second)
		h.awaitDrained(20 * time.Second)
	}
	healed := time.Now()
	h.hold(&held, b, 3)
	h.awaitBackends(int64(held.len()), 5*time.Second)
	h.checkCap(fault)
	h.recover(fault, &held, healed)
}

// TestE_TwoEmptyRestarts: B holds 2; Redis restarts empty twice, ~2 s
// apart, both times before B heartbeats again; A heartbeats after each
// (after the first, A sees only itself), then A dials.
func TestE_TwoEmptyRestarts(t *testing.T) {
	t.Parallel()
	const fault = "E"
	h := newHarness(t, quickRestartOptions())
	h.settle()
	a, b := h.tracker("A"), h.tracker("B")
	var held conns
	defer held.closeAll()
	for attempt := 1; ; attempt++ {
		if got := h.holdAll(&held, b, 2); got != 2 {
			t.Fatalf("B admitted %d of 2 before the fault", got)
		}
		h.awaitBackends(2, 5*time.Second)
		h.stats.reset()
		beat := h.nextHeartbeat(b, 10*time.Second)
		sleepUntil(beat.Add(100 * time.Millisecond))
		h.redis.Restart()
		h.awaitPresent(a, 5*time.Second)
		sleepUntil(beat.Add(2100 * time.Millisecond))
		h.redis.Restart()
		h.awaitPresent(a, 5*time.Second)
		if time.Since(beat) < 3500*time.Millisecond {
			break
		}
		if attempt == 3 {
			t.Fatalf("A's heartbeats never came between the restarts and B's next heartbeat")
		}
		held.closeAll()
		h.awaitAdmitting(30 * time.Second)
		h.awaitDrained(20 * time.Second)
	}
	healed := time.Now()
	h.hold(&held, a, 3)
	h.awaitBackends(int64(held.len()), 5*time.Second)
	h.checkCap(fault)
	h.recover(fault, &held, healed)
}

// F, a wall-clock step, cannot run here. Leases were compared across the
// instances' wall clocks (issue 10: a tracker whose clock jumped 11 s
// reaped two live peers); the fix judges them by Redis' TIME only, and a
// reaper must also have watched the heartbeat counter stand still for a
// TTL of its own monotonic clock. Stepping a clock from outside a process
// is not possible for these binaries: Go reads the clock through the vDSO
// (no LD_PRELOAD faketime), the system clock needs CAP_SYS_TIME and would
// step every test on the host, and redis-server under libfaketime is not
// available on the test machines. F is covered in-process by the tracker's
// own tests (TestAClockStepReapsNobody: Redis' clock steps 11 s, nobody
// alive is reaped), not here.

// TestG_PartitionLongerThanLease: A, holding 2, is cut off from Redis
// (its traffic black-holed) for longer than its instance TTL while its
// gateway keeps the connections. With --expired-instances=keep the cap
// holds; with reap a breach is the documented availability trade-off,
// logged, not failed.
func TestG_PartitionLongerThanLease(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"keep", "reap"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			fault := "G-" + mode
			flag := mode
			if !trackerHasFlag("expired-instances") {
				if mode == "keep" {
					t.Fatalf("wsgate tracker has no --expired-instances flag: the safe setting keep cannot be chosen")
				}
				flag = "" // reap is what a tracker without the flag does
			}
			hb, ttl := time.Second, 3*time.Second
			h := newHarness(t, options{heartbeat: hb, instanceTTL: ttl, expired: flag})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var held conns
			defer held.closeAll()
			if got := h.holdAll(&held, a, 2); got != 2 {
				t.Fatalf("A admitted %d of 2 before the partition", got)
			}
			h.awaitBackends(2, 5*time.Second)
			h.stats.reset()
			a.proxy.blackhole()
			await.Until(h.t, "A's lease over by Redis' clock", 4*ttl, func() (bool, string) {
				s := h.score(a.id)
				now := h.redisNowMs()
				return now > 0 && s < float64(now), fmt.Sprintf("lease %.0f, redis time %d", s, now)
			})
			if mode == "reap" {
				await.Until(h.t, "A reaped", 6*ttl, func() (bool, string) {
					s := h.score(a.id)
					return s < 0, fmt.Sprint(s)
				})
			} else {
				// Long enough for B to have reaped A were it allowed to:
				// a full TTL of B's heartbeats past A's expiry, and more.
				for range int(ttl/hb) + 3 {
					h.nextHeartbeat(b, 5*hb)
				}
			}
			h.hold(&held, b, 3)
			h.awaitBackends(int64(held.len()), 5*time.Second)
			if mode == "keep" {
				h.checkCap(fault)
			} else if m := h.maxHeld(); m > int64(h.o.cap) {
				t.Logf("%s: a backend held %d connections, cap %d: the documented availability trade-off of reap (a cut-off instance's slots were given away while its Envoy kept them)", fault, m, h.o.cap)
			}
			a.proxy.heal()
			healed := time.Now()
			h.nextHeartbeat(a, 10*time.Second)
			h.recover(fault, &held, healed)
		})
	}
}

// redisNowMs is Redis' clock in ms (0 when Redis does not answer).
func (h *harness) redisNowMs() int64 {
	ctx, cancel := rctx()
	defer cancel()
	tm, err := h.rdb.Time(ctx).Result()
	if err != nil {
		return 0
	}
	return tm.UnixMilli()
}
