package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/await"
	"github.com/wsgate/wsgate/test/wsdial"
)

// TestLateRestartCountsWhatEnvoyCarries (issue 26, item 4): A's gateway
// fills both pods to the cap; A is SIGKILLed and restarted with the same
// id only after its instance TTL (with reap, once B has reaped it; a
// container restart in CrashLoopBackOff waits longer than that), while its
// gateway keeps every connection. After the restart, within a few
// access-log intervals, Redis counts on each pod what the backend holds,
// the restarted tracker's count coming from the connections its access log
// names (not from what Redis still held for it), and an admission through
// B is refused. With reap, B first fills the slots the reap gave it (the
// documented trade-off G: the pods go over the cap), and the restarted A
// then publishes its connections truthfully, above the cap.
//
// kube runs the trackers in kube mode without the scaler (which needs
// Kubernetes, and would not reap an instance whose pod is still listed, as
// a restarted container's pod is): what is checked is the trackers' side.
func TestLateRestartCountsWhatEnvoyCarries(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"reap", "keep", "kube"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			fault := "late-restart-" + mode
			hb, ttl, flush := 500*time.Millisecond, 3*time.Second, 500*time.Millisecond
			h := newHarness(t, options{backends: 2, cap: 2, heartbeat: hb, instanceTTL: ttl, flush: flush, expired: mode})
			h.settle()
			a, b := h.tracker("A"), h.tracker("B")
			var held conns
			defer held.closeAll()
			if got := h.holdAll(&held, a, 4); got != 4 {
				t.Fatalf("A admitted %d of 4 (2 pods, cap 2)", got)
			}
			h.awaitCounted(4, 10*time.Second)

			a.kill()
			await.Until(t, "A's lease over by Redis' clock", 4*ttl, func() (bool, string) {
				s, now := h.score(a.id), h.redisNowMs()
				return now > 0 && s < float64(now), fmt.Sprintf("lease %.0f, redis time %d", s, now)
			})
			if mode == "reap" {
				await.Until(t, "A reaped", 6*ttl, func() (bool, string) {
					s := h.score(a.id)
					return s < 0, fmt.Sprint(s)
				})
				// B takes the slots the reap freed, though A's gateway
				// still carries their connections.
				if got := h.hold(&held, b, 4); got == 0 {
					t.Fatal("B admitted nothing after A was reaped")
				}
			} else {
				// Long enough for B to have reaped A were it allowed to.
				for range int(ttl/hb) + 3 {
					h.nextHeartbeat(b, 5*hb)
				}
				if r := h.dial(b); r.Conn != nil {
					r.Conn.CloseNow()
					t.Fatalf("%s: B admitted while A's expired slots are kept", fault)
				}
			}
			carried := int64(held.len())
			h.awaitBackends(carried, 10*time.Second)

			a.start()
			restarted := time.Now()
			// Within a few access-log intervals and a heartbeat, Redis counts
			// on each pod what its backend holds.
			await.Until(t, "Redis counts what the backends hold, pod by pod", 8*flush+4*hb, func() (bool, string) {
				got := h.podCounts()
				ok := true
				for _, be := range h.backends {
					ok = ok && got[be.Addr] == be.Live.Load()
				}
				return ok, fmt.Sprintf("redis %v, backends %v", got, h.backendCounts())
			})
			counted := time.Since(restarted)
			// The restarted process counts them because its access log named
			// them (adopted), not only because Redis still held them for A
			// (kept for one connection lease, then dropped).
			await.Until(t, "A's access log names its 4 connections", 4*flush+10*time.Second, func() (bool, string) {
				n := adopted(a)
				return n >= 4, fmt.Sprint(n)
			})
			if pods, _ := h.redisCount(); pods != carried {
				t.Errorf("Redis' live count %d, want the %d the backends hold", pods, carried)
			}
			// and the scaler's, once each tracker's heartbeat published
			// what it holds
			await.Until(t, "the summary counts what the backends hold", 4*hb+5*time.Second, func() (bool, string) {
				_, live := h.redisCount()
				return live == carried, fmt.Sprintf("summary %d, backends %d", live, carried)
			})
			// Every pod is at (or, with reap, above) its cap: nothing more,
			// through either tracker. In keep and kube Redis counted A's
			// connections before A's first heartbeat (it kept them), and
			// until that heartbeat's reply A admits nothing through Redis
			// (redis_down): wait for two of its heartbeats, the second sent
			// only once the first's reply was taken.
			for range 2 {
				h.nextHeartbeat(a, 5*hb)
			}
			for _, tp := range []*trackerProc{b, a} {
				if r := dialDecided(h, tp, hb); r.Conn != nil {
					r.Conn.CloseNow()
					t.Errorf("%s: %s admitted onto pods holding %v with a cap of %d", fault, tp.id, h.backendCounts(), h.o.cap)
				} else if r.Outcome() != string(store.ReasonCapacity) {
					t.Errorf("%s: %s refused with %s, want %s", fault, tp.id, r.Outcome(), store.ReasonCapacity)
				}
			}
			if mode == "reap" {
				t.Logf("%s: backends held up to %d on a cap of %d: the documented trade-off of reap, ended by the restart", fault, h.maxHeld(), h.o.cap)
			} else {
				h.checkCap(fault)
			}
			t.Logf("cost: fault=%s counted=%.1fs after the restart (flush %s, heartbeat %s) carried=%d max=%d/%d",
				fault, counted.Seconds(), flush, hb, carried, h.maxHeld(), h.o.cap)
			held.closeAll()
			h.awaitDrained(20 * time.Second)
		})
	}
}

// dialDecided dials through tp until Redis decided (a few tries, every
// one of which must be refused by the caller's check): a gateway that got
// no answer within its admit timeout (250 ms) refuses with
// tracker_unavailable, and a tracker whose Redis call or heartbeat just
// timed out (--redis-timeout 200ms; a busy machine, the race detector)
// refuses with redis_down until its next heartbeat. Neither says anything
// of the counts.
func dialDecided(h *harness, tp *trackerProc, hb time.Duration) wsdial.Result {
	h.t.Helper()
	var r wsdial.Result
	for try := range 5 {
		r = h.dial(tp)
		if r.Conn != nil || (r.Outcome() != "tracker_unavailable" && r.Outcome() != string(store.ReasonRedisDown)) {
			return r
		}
		h.t.Logf("%s refused with %s (try %d): no decision on the counts, dialing again after its next heartbeat", tp.id, r.Outcome(), try+1)
		h.nextHeartbeat(tp, 5*hb)
	}
	return r
}

// adopted is how many access-log entries tp's tracker process took over
// (wsgate_tracker_access_log_entries_total, outcome adopted, every type);
// 0 while it does not answer.
func adopted(tp *trackerProc) float64 {
	var n float64
	for _, typ := range []string{"established", "periodic", "end"} {
		v, _ := tp.metric(`wsgate_tracker_access_log_entries_total{outcome="adopted",type="` + typ + `"}`)
		n += v
	}
	return n
}

// podCounts is what Redis counts per pod, all instances (the pod's score
// in avail or load); empty when Redis does not answer.
func (h *harness) podCounts() map[string]int64 {
	ctx, cancel := rctx()
	defer cancel()
	out := map[string]int64{}
	for _, k := range []string{keys.avail, keys.load} {
		zs, err := h.rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		if err != nil {
			return map[string]int64{}
		}
		for _, z := range zs {
			out[fmt.Sprint(z.Member)] += int64(z.Score)
		}
	}
	return out
}

// backendCounts is what each backend holds now, by address.
func (h *harness) backendCounts() map[string]int64 {
	out := map[string]int64{}
	for _, be := range h.backends {
		out[be.Addr] = be.Live.Load()
	}
	return out
}
