package load

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/tracker"
)

// An open loop's connections are held for holdMin to holdMax, uniformly:
// long enough that they overlap (about 22 live at 200/s), short enough
// that a block drains quickly.
const (
	holdMin = 20 * time.Millisecond
	holdMax = 200 * time.Millisecond
	// openIdle is the window after each block's lifecycles in which nothing
	// runs but the tracker's heartbeat and Redis' own cron: their rate is
	// taken out of the decisions' window, which they share.
	openIdle = 500 * time.Millisecond
)

// openLoop runs lifecycles that arrive at rate per second whether or not
// earlier ones finished (arrivals scheduled by the clock, not by
// completions), each holding its connection for holdMin..holdMax before
// its end entry, against decisions arriving at the same rate. Blocks of
// seconds of arrivals each: lifecycles until Redis counts every slot
// free, the idle window, then the decisions. A block begins with no slot
// to reuse (about rate × 110 ms admissions ask Redis before the first
// release) and ends with releases no admission carries: longer blocks pay
// that once for more lifecycles, nearer to a tracker's steady churn.
//
// At a modest rate per tracker a release finds few admissions within its
// linger (tracker.DefaultReleaseLinger) to ride on or to reuse its slot,
// and a call rarely has company to share it: this is where a lifecycle
// may cost Redis more than a decision.
//
// Redis' own cron (p.cron) is taken out of both sides: over these windows
// it is a large share of the decisions' (1.5 ms of CPU a second on the
// VM of the README's figures). The tracker heartbeats every 200 ms in this
// rig (the default is 2 s): cpu-ratio charges the lifecycles with those
// heartbeats, as the closed loops do; cpu-ratio-no-hb takes them out too,
// a lower bound; cpu-ratio-hb-2s charges them at the default's rate (the
// idle window's heartbeat cost, a tenth of it), what a tracker with the
// default --heartbeat costs. The decisions are charged with none of them:
// the idle window's rate (cron and heartbeats) is taken out of theirs.
func (p *peerRig) openLoop(b *testing.B, rate, seconds int) {
	ctx := context.Background()
	every := time.Second / time.Duration(rate)
	decision := func() {
		key := "ratelimit_peer_" + strconv.Itoa(rand.IntN(64))
		_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Incr(ctx, key)
			pipe.Expire(ctx, key, time.Second)
			return nil
		})
		if err != nil {
			b.Error(err)
		}
	}
	lifecycle := func() { p.lifecycle(b, holdMin+rand.N(holdMax-holdMin)) }

	var ws, idle, peer redisStats
	var wsT, idleT, peerT time.Duration
	var wsN, peerN, late int
	reuse := p.reuse()
	b.ResetTimer()
	for done := 0; done < b.N; done += rate * seconds {
		n := min(rate*seconds, b.N-done)
		r0, t0 := redisCost(b, p.rdb), time.Now()
		late += arrive(n, every, lifecycle)
		p.released(b)
		r1, t1 := redisCost(b, p.rdb), time.Now()
		time.Sleep(openIdle) // a measured window, not a wait for an event
		r2, t2 := redisCost(b, p.rdb), time.Now()
		late += arrive(n, every, decision)
		r3, t3 := redisCost(b, p.rdb), time.Now()
		ws, wsT, wsN = ws.add(r1.sub(r0)), wsT+t1.Sub(t0), wsN+n
		idle, idleT = idle.add(r2.sub(r1)), idleT+t2.Sub(t1)
		peer, peerT, peerN = peer.add(r3.sub(r2)), peerT+t3.Sub(t2), peerN+n
	}
	b.StopTimer()
	// What ran besides the load, at its rate per second over a window of
	// d: Redis' cron alone (p.cron), or with the tracker's heartbeats (the
	// idle windows').
	cron := func(d time.Duration) redisStats { return redisStats{cpu: p.cron * d.Seconds()} }
	bg := func(d time.Duration) redisStats {
		f := d.Seconds() / idleT.Seconds()
		return redisStats{idle.cmds * f, idle.scripts * f, idle.cpu * f}
	}
	peer = peer.sub(bg(peerT))
	ratio := p.report(b, ws.sub(cron(wsT)), wsN, peer, peerN, reuse)
	if noHB := ws.sub(bg(wsT)); ratio > 0 {
		perDecision := peer.cpu / float64(peerN)
		peerRuns.metric(b, noHB.cpu/float64(wsN)/perDecision, "cpu-ratio-no-hb")
		// the heartbeats' share of the lifecycles' window (bg less cron) at
		// the default period's rate
		hb := bg(wsT).sub(cron(wsT)).cpu * float64(rigHeartbeat) / float64(tracker.DefaultHeartbeat)
		peerRuns.metric(b, (noHB.cpu+hb)/float64(wsN)/perDecision, "cpu-ratio-hb-2s")
	}
	peerRuns.metric(b, p.cron*1e6, "redis-cron-cpu-µs/s")
	peerRuns.metric(b, idle.cpu/idleT.Seconds()*1e6, "redis-idle-cpu-µs/s")
	// Arrivals that started more than one interval after their time: the
	// share of the schedule this machine did not keep.
	peerRuns.metric(b, float64(late)/float64(wsN+peerN), "late-share")
}

// arrive starts op n times, the i-th at start + i*every, each in its own
// goroutine, and waits for all. It returns how many started more than one
// interval late (they start at once: the schedule is not stretched).
func arrive(n int, every time.Duration, op func()) (late int) {
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
			time.Sleep(d) // the arrival's time: the clock is the event
		} else if d < -every {
			late++
		}
		wg.Add(1)
		go func() { defer wg.Done(); op() }()
	}
	wg.Wait()
	return late
}

// reuseMark is the tracker's reused and admitted counts at a moment.
type reuseMark struct{ reused, admitted float64 }

func (p *peerRig) reuse() reuseMark {
	m := p.tr.Metrics()
	return reuseMark{testutil.ToFloat64(m.Reused.WithLabelValues(fleet)),
		testutil.ToFloat64(m.Admissions.WithLabelValues(fleet, "admitted", ""))}
}

// report reports the peer comparison's figures and returns the CPU ratio
// (0 when the decisions' CPU did not register).
func (p *peerRig) report(b *testing.B, ws redisStats, wsN int, peer redisStats, peerN int, from reuseMark) (ratio float64) {
	peerRuns.metric(b, ws.cmds/float64(wsN), "redis-cmds/lifecycle")
	peerRuns.metric(b, peer.cmds/float64(peerN), "redis-cmds/decision")
	peerRuns.metric(b, ws.scripts/float64(wsN), "scripts/lifecycle")
	peerRuns.metric(b, ws.cpu/float64(wsN)*1e6, "redis-cpu-µs/lifecycle")
	peerRuns.metric(b, peer.cpu/float64(peerN)*1e6, "redis-cpu-µs/decision")
	if now := p.reuse(); now.admitted > from.admitted {
		peerRuns.metric(b, (now.reused-from.reused)/(now.admitted-from.admitted), "reused-share")
	}
	if peer.cpu > 0 {
		ratio = ws.cpu / float64(wsN) / (peer.cpu / float64(peerN))
		peerRuns.metric(b, ratio, "cpu-ratio")
	}
	return ratio
}

// runs holds each benchmark's reported metrics per run (one per -count),
// for the summary of ranges printed after all benchmarks.
type runs struct {
	mu    sync.Mutex
	names []string // in order of first run
	by    map[string][]*benchRun
}

// benchRun is one run of a benchmark: testing makes a *testing.B per run (per
// -count) and calls the function on it with growing b.N; the last call's
// figures are the run's.
type benchRun struct {
	b      *testing.B
	n      int
	figure map[string]float64
}

var peerRuns = &runs{by: map[string][]*benchRun{}}

// metric reports v as the benchmark's unit and keeps it as its run's.
func (r *runs) metric(b *testing.B, v float64, unit string) {
	b.ReportMetric(v, unit)
	r.mu.Lock()
	defer r.mu.Unlock()
	name := b.Name()
	rs, ok := r.by[name]
	if !ok {
		r.names = append(r.names, name)
	}
	if len(rs) == 0 || rs[len(rs)-1].b != b {
		rs = append(rs, &benchRun{b: b})
		r.by[name] = rs
	}
	last := rs[len(rs)-1]
	if last.figure == nil || last.n != b.N {
		last.n, last.figure = b.N, map[string]float64{}
	}
	last.figure[unit] = v
}

// summary prints, per benchmark, the median [min–max] over runs of the
// figures the peer comparison is read by.
func (r *runs) summary(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, name := range r.names {
		rs := r.by[name]
		var parts []string
		for _, unit := range []string{"cpu-ratio", "cpu-ratio-hb-2s", "cpu-ratio-no-hb", "redis-cmds/lifecycle", "scripts/lifecycle", "reused-share", "late-share"} {
			var vs []float64
			for _, run := range rs {
				if v, ok := run.figure[unit]; ok {
					vs = append(vs, v)
				}
			}
			if len(vs) == 0 {
				continue
			}
			slices.Sort(vs)
			median := (vs[(len(vs)-1)/2] + vs[len(vs)/2]) / 2
			parts = append(parts, fmt.Sprintf("%s %.2f [%.2f–%.2f]", unit, median, vs[0], vs[len(vs)-1]))
		}
		fmt.Fprintf(w, "summary %s over %d runs (median [min–max]): %s\n", name, len(rs), strings.Join(parts, ", "))
	}
}
