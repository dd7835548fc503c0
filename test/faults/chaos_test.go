package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chaosFault is one fault TestChaos may inject; run applies it and, for
// all but the one-shot delays, ends it before returning.
type chaosFault struct {
	name string
	run  func(h *harness, rng *rand.Rand) string
}

// between is a random duration in [lo, hi).
func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

func pick(rng *rand.Rand, h *harness) *trackerProc { return h.trackers[rng.IntN(len(h.trackers))] }

func chaosFaults(ttl time.Duration, keep bool) []chaosFault {
	fs := []chaosFault{
		{"redis-kill-empty", func(h *harness, rng *rand.Rand) string {
			d := between(rng, 200*time.Millisecond, 2*time.Second)
			h.redis.Kill()
			time.Sleep(d)
			h.redis.Restart()
			return "down " + d.Round(time.Millisecond).String()
		}},
		{"redis-kill-aof", func(h *harness, rng *rand.Rand) string {
			d := between(rng, 200*time.Millisecond, 2*time.Second)
			h.redis.Kill()
			time.Sleep(d)
			h.redis.RestartWithData()
			return "down " + d.Round(time.Millisecond).String()
		}},
		{"redis-quick-empty", func(h *harness, _ *rand.Rand) string {
			h.redis.Restart()
			return ""
		}},
		{"redis-two-empty", func(h *harness, rng *rand.Rand) string {
			d := between(rng, 500*time.Millisecond, 2500*time.Millisecond)
			h.redis.Restart()
			time.Sleep(d)
			h.redis.Restart()
			return "apart " + d.Round(time.Millisecond).String()
		}},
		{"redis-stop", func(h *harness, rng *rand.Rand) string {
			d := between(rng, 300*time.Millisecond, 3*time.Second)
			h.redis.Stop()
			time.Sleep(d)
			h.redis.Cont()
			return "stopped " + d.Round(time.Millisecond).String()
		}},
		{"slow-admit", func(h *harness, rng *rand.Rand) string {
			tp, s, d := pick(rng, h), side(rng.IntN(2)), between(rng, 300*time.Millisecond, 1500*time.Millisecond)
			tp.proxy.delayNext(isAdmit, s, d)
			return fmt.Sprintf("%s side %d by %s", tp.id, s, d.Round(time.Millisecond))
		}},
		{"slow-heartbeat", func(h *harness, rng *rand.Rand) string {
			tp, s, d := pick(rng, h), side(rng.IntN(2)), between(rng, 300*time.Millisecond, 1500*time.Millisecond)
			tp.proxy.delayNext(isHeartbeat, s, d)
			return fmt.Sprintf("%s side %d by %s", tp.id, s, d.Round(time.Millisecond))
		}},
		{"tracker-stop", func(h *harness, rng *rand.Rand) string {
			tp, d := pick(rng, h), between(rng, 300*time.Millisecond, ttl/2)
			tp.stop()
			time.Sleep(d)
			tp.cont()
			return fmt.Sprintf("%s for %s", tp.id, d.Round(time.Millisecond))
		}},
		{"tracker-kill", func(h *harness, rng *rand.Rand) string {
			tp, d := pick(rng, h), between(rng, 200*time.Millisecond, ttl/2)
			tp.kill()
			time.Sleep(d)
			tp.start()
			return fmt.Sprintf("%s, back after %s", tp.id, d.Round(time.Millisecond))
		}},
		{"tracker-cut", func(h *harness, rng *rand.Rand) string {
			tp, d := pick(rng, h), between(rng, 300*time.Millisecond, ttl/2)
			tp.proxy.blackhole()
			time.Sleep(d)
			tp.proxy.heal()
			return fmt.Sprintf("%s for %s", tp.id, d.Round(time.Millisecond))
		}},
		{"tracker-drop", func(h *harness, rng *rand.Rand) string {
			tp, d := pick(rng, h), between(rng, 300*time.Millisecond, ttl/2)
			tp.proxy.drop()
			time.Sleep(d)
			tp.proxy.heal()
			return fmt.Sprintf("%s for %s", tp.id, d.Round(time.Millisecond))
		}},
	}
	if keep {
		// With --expired-instances=keep a partition longer than the lease
		// keeps the cap too (PROTOCOL.md, Partitions).
		fs = append(fs, chaosFault{"tracker-cut-long", func(h *harness, rng *rand.Rand) string {
			tp, d := pick(rng, h), between(rng, ttl+time.Second, 2*ttl)
			tp.proxy.blackhole()
			time.Sleep(d)
			tp.proxy.heal()
			return fmt.Sprintf("%s for %s", tp.id, d.Round(time.Millisecond))
		}})
	}
	return fs
}

// TestChaos mixes the faults above, one after another at random (seeded;
// WSGATE_CHAOS_SEED replays a run (random: a new one), WSGATE_CHAOS_DURATION changes its
// length), under churn through three trackers onto three backends. No
// backend may ever hold more than the cap; once the faults end and the
// clients close, the system admits again and every count drains to 0.
func TestChaos(t *testing.T) {
	t.Parallel()
	// A fixed seed by default, so that CI replays one known sequence;
	// WSGATE_CHAOS_SEED=random draws a new one. This one reached 3 on a cap
	// of 2 in 2 of 4 runs, through an admission that waited for the gate
	// behind a heartbeat that timed out (now TestB3).
	seed := uint64(1796164846832562941)
	if s := os.Getenv("WSGATE_CHAOS_SEED"); s == "random" {
		seed = uint64(time.Now().UnixNano())
	} else if s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WSGATE_CHAOS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	dur := 25 * time.Second
	if s := os.Getenv("WSGATE_CHAOS_DURATION"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("WSGATE_CHAOS_DURATION=%q: %v", s, err)
		}
		dur = v
	}
	t.Logf("chaos seed %d (replay: WSGATE_CHAOS_SEED=%d), %s of faults", seed, seed, dur)
	rng := rand.New(rand.NewPCG(seed, 0))
	hb, ttl := time.Second, 5*time.Second
	keep := trackerHasFlag("expired-instances")
	expired := ""
	if keep {
		expired = "keep"
	}
	h := newHarness(t, options{
		backends:  3,
		trackers:  []trackerOptions{{id: "A"}, {id: "B"}, {id: "C"}},
		redisArgs: []string{"--appendonly", "yes", "--appendfsync", "always"},
		heartbeat: hb, instanceTTL: ttl, expired: expired,
	})
	h.settle()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopChurn := h.churn(ctx, 12, seed, func() []*trackerProc { return h.trackers })
	faults := chaosFaults(ttl, keep)
	applied := map[string]int{}
	start := time.Now()
	for time.Since(start) < dur {
		f := faults[rng.IntN(len(faults))]
		applied[f.name]++
		at := time.Since(start)
		desc := f.run(h, rng)
		t.Logf("chaos +%.1fs %s %s; max so far %d/%d", at.Seconds(), f.name, desc, h.maxHeld(), h.o.cap)
		time.Sleep(between(rng, 200*time.Millisecond, 1200*time.Millisecond))
	}
	// End every fault that may still be in effect.
	if !h.redis.Running() {
		h.redis.RestartWithData()
	}
	h.redis.Cont()
	for _, tp := range h.trackers {
		tp.proxy.heal()
		tp.cont()
		if !tp.running() {
			tp.start()
		}
	}
	healed := time.Now()
	cancel()
	stopChurn()
	h.stats.mu.Lock()
	admitted := h.stats.admitted
	h.stats.mu.Unlock()
	rejected := h.stats.take()
	h.awaitAdmitting(3*ttl + 20*time.Second)
	recovery := time.Since(healed)
	h.checkCap("chaos")
	var names []string
	for n, c := range applied {
		names = append(names, fmt.Sprintf("%s:%d", n, c))
	}
	sort.Strings(names)
	t.Logf("chaos faults applied: %s; 12 clients admitted %d", strings.Join(names, ","), admitted)
	h.logCost(fmt.Sprintf("chaos(seed=%d)", seed), rejected, recovery, h.stats.take())
	h.awaitDrained(30 * time.Second)
}
